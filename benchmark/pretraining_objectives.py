"""The objectives that pretrain a stand-in encoder offline (benchmark/encoder_pretraining.py), each a
module around the stand-in (a timm ViT; I-JEPA's a transformers ``IJepaModel``; CLIP's open_clip's image
tower; Depth-Anything's the DINOv2 backbone of a transformers ``DepthAnythingForDepthEstimation``), whose weights are the ones kept.

    mae   He et al. 2022 (MAE), Sec. 3: mask a random 75% of the patches, encode the visible ones,
          a light decoder with mask tokens predicts the masked patches' pixels, each patch normalised
          by its own mean and variance; L = mean over masked patches of ||x_hat - x||^2.
    dino  Caron et al. 2021 (DINO), Sec. 3.1: a student and its EMA teacher (momentum cosine from
          0.996 to 1) see augmented views (2 global, n local crops; the teacher only the global ones);
          L = sum over pairs (global v for the teacher, any other view v' for the student) of
          H(P_t(v), P_s(v')), P = softmax(g(x) / tau) with the teacher's output centred by an EMA of
          its batch means (tau_t = 0.04, tau_s = 0.1).
    ijepa Assran et al. 2023 (I-JEPA), Sec. 3: from one context block (85-100% of the image) less M = 4
          target blocks (15-20% each), a narrow predictor with mask tokens at the targets' positions
          predicts what an EMA target encoder gives the target blocks' patches (layer-normalised);
          L = (1 / M) sum over blocks of the mean over the block's patches of ||s_hat - s||^2 (Eq. 1).
    siglip Zhai et al. 2023 (SigLIP), Sec. 3.2: an image tower and a text tower; every image-caption pair
          of the batch is a binary classification, L = -(1 / |B|) sum_ij log sigmoid(z_ij (t x_i . y_j + b)),
          z_ij = 1 for a matching pair, else -1.
    clip  Radford et al. 2021 (CLIP), Fig. 3: the symmetric cross-entropy of the temperature-scaled cosine
          similarities of the batch's images and captions, each row's target spread over its matching
          captions (UniCL, Yang et al. 2022: CLIP's diagonal when every caption differs).
    depth Yang et al. 2024 (Depth Anything V2), Sec. 4: a DPT head on the backbone predicts disparity,
          trained on synthetic images with exact depth (the built-in scenes'); L = L_ssi + 2 L_gm, MiDaS's
          scale-and-shift-invariant L1 and gradient matching (Ranftl et al. 2022, Eq. 5-6 and 11).
          siglip and clip are language-supervised, not self-supervised: their captions are the data's
          class names in a template, the only text the built-in data has.

Views are drawn per image on the batch's device with kornia (no per-image work in the data loader).
``tokenizer.encoder.pretrain`` is checked here (:data:`PretrainOptions`): the training loop's options
(benchmark/config.py ``TrainConfig``) and the objective's own.
"""

from __future__ import annotations

import copy
import functools
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from benchmark import distributed
from benchmark.config import TRAIN_KEYS, TrainConfig
from benchmark.errors import ConfigError
from benchmark.layers import hf_layers, patchify
from benchmark.options import check_options, init_params, nested


class Normalize(nn.Module):
    """The encoder family's input normalisation (images in [0, 1])."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        return (images - self.mean) / self.std


class Objective(nn.Module, ABC):
    """A self-supervised objective around a stand-in ``vit`` (the weights that are kept)."""

    name: ClassVar[str]
    recipe: ClassVar[dict[str, Any]]  # TrainConfig defaults of the source's recipe
    library: ClassVar[str] = "timm"  # the library of the stand-in it trains (benchmark/encoder_backends.py)
    # what the training data gives besides each image (:meth:`training_data`): "labels" (its class; read by
    # the image-text objectives only) or "depth" (its scene's depth map: benchmark/data.py DepthPairs)
    targets: ClassVar[str] = "labels"

    def __init__(self, vit: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.vit, self.normalize = vit, Normalize(mean, std)

    @property
    def num_views(self) -> int:
        """How many views of each image :meth:`augmentations` makes (known without importing kornia)."""
        return 1

    @property
    def input_size(self) -> tuple[int, int]:
        """The stand-in's input size (H, W), at which :meth:`augmentations` gives every view: its config's
        (transformers) or its patch embedding's (timm)."""
        if self.library == "transformers":
            return (self.vit.config.image_size,) * 2
        return tuple(self.vit.patch_embed.img_size)

    def augmentations(self) -> list[nn.Module]:
        """One kornia augmentation pipeline per view: each draws its own random parameters per image, on
        the batch's device (no per-image work in the data loader). By default one view, only resized to
        the input size (the image-text objectives' preprocessing; the depth objective's)."""
        import kornia.augmentation as K

        return [K.Resize(self.input_size, antialias=True)]

    def training_data(self, dataset: Dataset) -> Dataset:
        """The (image, target) pairs it trains on, from the training split's (image, label) ones."""
        return dataset

    def example_targets(self, n: int) -> Tensor:
        """Targets of ``n`` images, of the shape the loss takes (for counting its FLOPs)."""
        return torch.zeros(n, dtype=torch.long)

    @functools.cached_property
    def _pipelines(self) -> list[nn.Module]:  # built once, outside the module's state
        return self.augmentations()

    def views(self, images: Tensor) -> list[Tensor]:
        """The augmented views of a batch of images in [0, 1] (B, 3, H, W), at the same resolution."""
        with torch.no_grad():
            return [augment(images).clamp(0, 1) for augment in self._pipelines]

    def before_step(self, step: int, total: int) -> None:
        """Called before each optimisation step (DINO's teacher follows the student here)."""

    @abstractmethod
    def loss(self, views: list[Tensor], targets: Tensor | None = None) -> dict[str, Tensor]:
        """The objective's loss terms on the views of a batch and its :attr:`targets` (class labels, which
        only an image-caption objective, :class:`CaptionedObjective`, reads; depth maps)."""

    def collapse(self, images: Tensor) -> str | None:
        """Why the trained encoder is degenerate on ``images`` (None: it is not, or the objective cannot
        collapse): checked after training, so that a collapsed pretraining fails loudly."""
        return None

    def probe_metrics(self, images: Tensor, targets: Tensor) -> dict[str, float]:
        """What the trained encoder does on a probe batch (and its targets), for the stage's record (none by
        default)."""
        return {}

    @property
    def kept(self) -> nn.Module:
        """The network an objective's authors publish: the trained ViT (DINO's: its EMA teacher)."""
        return self.vit

    def save(self, folder: Path) -> None:
        """The stand-in saved the way its library saves it, for ``weights: folder`` to load it: a
        transformers ``save_pretrained`` folder, else (timm) a ``save_for_hf`` one."""
        vit = self.kept.cpu().eval()
        if self.library == "transformers":
            vit.save_pretrained(folder, safe_serialization=True)
        else:
            import timm

            timm.models.save_for_hf(vit, str(folder), safe_serialization=True)

    def forward(self, images: Tensor, targets: Tensor | None = None) -> dict[str, Tensor]:
        """The objective's loss terms on a batch of images in [0, 1] and its targets."""
        return self.loss(self.views(images), targets)


class MaskedAutoencoder(Objective):
    """MAE (He et al. 2022): the ViT encodes a random ``1 - mask_ratio`` of the patches; a decoder of
    ``decoder_depth`` blocks of width ``decoder_dim`` (default: half the encoder's, as MAE's 512 for
    ViT-L) with fixed 2D sin-cos positions predicts every patch; the loss is the per-patch-normalised
    pixel MSE on the masked patches (Sec. 3, "norm_pix_loss")."""

    name = "mae"
    # MAE's pretraining recipe (Appendix A.1): AdamW, betas (0.9, 0.95), weight decay 0.05, cosine schedule
    recipe: ClassVar[dict[str, Any]] = {"beta2": 0.95, "weight_decay": 0.05, "schedule": "cosine", "grad_clip": 0.0}

    def __init__(
        self,
        vit: nn.Module,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        mask_ratio: float = 0.75,
        decoder_dim: int | None = None,
        decoder_depth: int = 1,
        decoder_heads: int | None = None,
        crop_scale: tuple[float, float] = (0.2, 1.0),
    ) -> None:
        from timm.layers import build_sincos2d_pos_embed
        from timm.models.vision_transformer import Block

        super().__init__(vit, mean, std)
        if not 0.0 < mask_ratio < 1.0:
            raise ConfigError(f"tokenizer.encoder.pretrain.mask_ratio must lie in (0, 1), got {mask_ratio}")
        width = vit.embed_dim
        dim = decoder_dim or max(16, width // 2)
        heads = decoder_heads or max(1, dim // 32)
        self.mask_ratio, self.crop_scale = mask_ratio, crop_scale
        self.patch = vit.patch_embed.patch_size[0]
        grid = tuple(vit.patch_embed.grid_size)
        self.decoder_embed = nn.Linear(width, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("decoder_pos", build_sincos2d_pos_embed(grid, dim)[None], persistent=False)
        self.decoder = nn.Sequential(*(Block(dim, heads, mlp_ratio=4.0) for _ in range(decoder_depth)))
        self.decoder_norm = nn.LayerNorm(dim)
        self.decoder_pred = nn.Linear(dim, self.patch * self.patch * 3)
        nn.init.normal_(self.mask_token, std=0.02)

    def augmentations(self) -> list[nn.Module]:
        """MAE's: a random resized crop (scale ``crop_scale``) and a horizontal flip (Appendix A.1)."""
        import kornia.augmentation as K

        size = self.input_size
        return [K.AugmentationSequential(K.RandomResizedCrop(size, scale=self.crop_scale), K.RandomHorizontalFlip())]

    def loss(self, views: list[Tensor], labels: Tensor | None = None) -> dict[str, Tensor]:
        x = self.normalize(views[0])
        tokens, prefix = self.vit._pos_embed(self.vit.patch_embed(x)), self.vit.num_prefix_tokens  # prefix first
        patches = tokens[:, prefix:]
        b, n, d = patches.shape
        keep = max(1, round(n * (1 - self.mask_ratio)))
        order = torch.rand(b, n, device=x.device).argsort(dim=1)  # a random permutation per image
        restore = order.argsort(dim=1)
        visible = patches.gather(1, order[:, :keep, None].expand(-1, -1, d))
        latent = self.vit.norm(self.vit.blocks(self.vit.norm_pre(torch.cat([tokens[:, :prefix], visible], dim=1))))
        y = self.decoder_embed(latent)
        masked = self.mask_token.expand(b, n - keep, -1)
        full = torch.cat([y[:, prefix:], masked], dim=1).gather(1, restore[:, :, None].expand(-1, -1, y.shape[-1]))
        y = torch.cat([y[:, :prefix], full + self.decoder_pos], dim=1)
        pred = self.decoder_pred(self.decoder_norm(self.decoder(y)))[:, prefix:]
        target = patchify(x, self.patch)
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
        per_patch = (pred - target).pow(2).mean(-1)
        mask = torch.ones(b, n, device=x.device).scatter_(1, order[:, :keep], 0.0)  # 1: masked
        return {"mae": (per_patch * mask).sum() / mask.sum()}


class DINOHead(nn.Module):
    """DINO's projection head: a 3-layer MLP to a ``bottleneck``, l2-normalised, then a weight-normalised
    linear layer (norm fixed to 1) onto ``out_dim`` prototypes."""

    def __init__(self, width: int, out_dim: int, hidden: int, bottleneck: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, bottleneck)
        )
        self.prototypes = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck, out_dim, bias=False))
        self.prototypes.parametrizations.weight.original0.data.fill_(1.0)
        self.prototypes.parametrizations.weight.original0.requires_grad = False

    def forward(self, x: Tensor) -> Tensor:
        return self.prototypes(F.normalize(self.mlp(x), dim=-1))


class SelfDistillation(Objective):
    """DINO (Caron et al. 2021): cross-entropy between the centred, sharpened teacher distribution of each
    global view and the student's distribution of every other view (Sec. 3.1, Algorithm 1); the teacher
    is an EMA of the student (momentum cosine from ``momentum`` to 1 over training)."""

    name = "dino"
    # 2: the teacher is what is saved, as DINO publishes and evaluates it (benchmark/method_versions.py)
    version = 2
    # DINO's recipe (Sec. 4 / Appendix): AdamW, weight decay 0.04, cosine schedule, gradient clipping 3.0
    recipe: ClassVar[dict[str, Any]] = {"weight_decay": 0.04, "schedule": "cosine", "grad_clip": 3.0}

    def __init__(
        self,
        vit: nn.Module,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        out_dim: int = 1024,
        hidden_dim: int | None = None,
        bottleneck_dim: int | None = None,
        teacher_temp: float = 0.04,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        momentum: float = 0.996,
        local_crops: int = 2,
        global_scale: tuple[float, float] = (0.4, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.4),
    ) -> None:
        super().__init__(vit, mean, std)
        width = vit.embed_dim
        self.head = DINOHead(width, out_dim, hidden_dim or 4 * width, bottleneck_dim or max(16, width // 2))
        self.teacher = copy.deepcopy(vit).requires_grad_(False)
        self.teacher_head = copy.deepcopy(self.head).requires_grad_(False)
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.teacher_temp, self.student_temp = teacher_temp, student_temp
        self.center_momentum, self.momentum = center_momentum, momentum
        self.local_crops, self.global_scale, self.local_scale = local_crops, global_scale, local_scale

    @property
    def num_views(self) -> int:
        return 2 + self.local_crops

    def augmentations(self) -> list[nn.Module]:
        """DINO's (its Appendix, after BYOL): random resized crops, flips, colour jitter, grayscale, Gaussian
        blur (always on the first global view, 10% on the second, 50% on local ones) and solarisation (20%,
        second global view); local crops are resized to the global resolution (a stand-in ViT has one
        input size)."""
        import kornia.augmentation as K

        size = self.input_size

        def view(scale: tuple[float, float], blur: float, solarize: float) -> nn.Module:
            return K.AugmentationSequential(
                K.RandomResizedCrop(size, scale=scale),
                K.RandomHorizontalFlip(),
                K.ColorJitter(0.4, 0.4, 0.2, 0.1, p=0.8),
                K.RandomGrayscale(p=0.2),
                K.RandomGaussianBlur((3, 3), (0.1, 2.0), p=blur),
                K.RandomSolarize(0.0, 0.0, p=solarize),  # threshold 0.5
            )

        globals_ = [view(self.global_scale, 1.0, 0.0), view(self.global_scale, 0.1, 0.2)]
        return globals_ + [view(self.local_scale, 0.5, 0.0) for _ in range(self.local_crops)]

    def before_step(self, step: int, total: int) -> None:
        """theta_t <- m theta_t + (1 - m) theta_s, m following a cosine from ``momentum`` to 1 (Sec. 3.1)."""
        if step == 0:
            return
        m = 1 - (1 - self.momentum) * (math.cos(math.pi * (step - 1) / max(1, total)) + 1) / 2
        teacher = [*self.teacher.parameters(), *self.teacher_head.parameters()]
        student = [*self.vit.parameters(), *self.head.parameters()]
        with torch.no_grad():
            torch._foreach_lerp_(teacher, student, 1 - m)

    @property
    def kept(self) -> nn.Module:
        """The EMA teacher: DINO's released weights and its evaluations (eval_linear.py, eval_knn.py:
        ``--checkpoint_key teacher``) are the teacher's, which outperforms the student (Sec. 3.1)."""
        return self.teacher

    def _class_token(self, vit: nn.Module, images: Tensor) -> Tensor:
        return vit.forward_features(self.normalize(images))[:, 0]

    @torch.no_grad()
    def collapse(self, images: Tensor) -> str | None:
        """DINO's two collapses (Sec. 5.3, Fig. 7): the teacher's centred, sharpened output uniform for every
        image (its entropy within 1% of log K), or one prototype for every image (the entropy of its
        batch-mean under 10% of log K)."""
        out = self.teacher_head(self._class_token(self.teacher, images))
        p = F.softmax((out - self.center) / self.teacher_temp, dim=-1)
        entropy = -(p * p.clamp_min(1e-12).log()).sum(-1).mean().item()
        mean = p.mean(0)
        spread = -(mean * mean.clamp_min(1e-12).log()).sum().item()
        top = math.log(p.shape[-1])
        if entropy > 0.99 * top:
            return f"the teacher's output is uniform for every image (entropy {entropy:.3f} of log K = {top:.3f})"
        if spread < 0.1 * top:
            return f"the teacher gives every image the same prototype (batch-mean entropy {spread:.3f})"
        return None

    def loss(self, views: list[Tensor], labels: Tensor | None = None) -> dict[str, Tensor]:
        student = self.head(self._class_token(self.vit, torch.cat(views))).chunk(len(views))
        with torch.no_grad():
            out = self.teacher_head(self._class_token(self.teacher, torch.cat(views[:2])))
            targets = F.softmax((out - self.center) / self.teacher_temp, dim=-1).chunk(2)
            # the batch mean over every rank's views (DINO's update_center all-reduces it): each rank then
            # keeps the same centre, which the objective's DDP would otherwise overwrite with rank 0's
            batch_mean = distributed.mean_over_ranks(out.mean(0, keepdim=True))
            self.center.mul_(self.center_momentum).add_(batch_mean, alpha=1 - self.center_momentum)
        loss, pairs = student[0].new_zeros(()), 0
        for i, target in enumerate(targets):
            for j, s in enumerate(student):
                if i != j:
                    loss = loss - (target * F.log_softmax(s / self.student_temp, dim=-1)).sum(-1).mean()
                    pairs += 1
        return {"dino": loss / pairs}


def block_size(grid: tuple[int, int], scale: tuple[float, float], aspect: tuple[float, float]) -> tuple[int, int]:
    """A mask block's (height, width) in patches: ``scale`` of the grid's patches and an aspect ratio
    (height / width) in ``aspect``, each drawn uniformly, rounded and kept inside the grid (I-JEPA Sec. 3,
    "Targets" and "Context"). Drawn on the CPU once per batch, as the official collator does: every
    image's block has as many patches."""
    s, a = torch.rand(2, device="cpu").tolist()
    area = (scale[0] + s * (scale[1] - scale[0])) * grid[0] * grid[1]
    ratio = aspect[0] + a * (aspect[1] - aspect[0])
    height = min(grid[0], max(1, round(math.sqrt(area * ratio))))
    return height, min(grid[1], max(1, round(math.sqrt(area / ratio))))


def block_patches(batch: int, grid: tuple[int, int], size: tuple[int, int], device: torch.device) -> Tensor:
    """The raster indices (B, h * w) of a block of ``size`` placed uniformly in each image's patch grid."""
    (rows, cols), (h, w) = grid, size
    top = torch.randint(0, rows - h + 1, (batch, 1, 1), device=device) + torch.arange(h, device=device)[:, None]
    left = torch.randint(0, cols - w + 1, (batch, 1, 1), device=device) + torch.arange(w, device=device)
    return (top * cols + left).flatten(1)


def context_without_targets(context: Tensor, targets: Tensor) -> Tensor:
    """Each image's context block (B, N) bool less its target blocks (B, M, t) indices, so that predicting
    them is not trivial (I-JEPA Sec. 3, "Context"). Where that leaves no patch, it is less the first target
    blocks only, as many as leave one (the official collator likewise lets the context overlap the last
    targets when it finds no room)."""
    b, m, _ = targets.shape
    hit = torch.zeros(b, m, context.shape[1], dtype=torch.int32, device=context.device).scatter_(2, targets, 1)
    covered = torch.cat([torch.zeros_like(hit[:, :1]), hit.cumsum(1)], dim=1) > 0  # by the first 0, 1, ..., M
    kept = context[:, None] & ~covered
    return kept[torch.arange(b, device=context.device), kept.any(-1).sum(1) - 1]


def sample_masks(
    batch: int,
    grid: tuple[int, int],
    num_targets: int,
    target_scale: tuple[float, float],
    target_aspect: tuple[float, float],
    context_scale: tuple[float, float],
    device: torch.device,
) -> tuple[Tensor, Tensor]:
    """I-JEPA's masks for a batch (Sec. 3): the context's patches (B, k) and the ``num_targets`` target
    blocks' (B, M, t), raster indices on the patch ``grid``, placed per image on ``device``. The context
    is one block of aspect 1 less the targets; each image keeps its first k context patches, k the fewest
    any image has (the official collator's truncation); on the meta device (plan-time cost, shapes only)
    k is the context block's size."""
    size = block_size(grid, target_scale, target_aspect)
    targets = torch.stack([block_patches(batch, grid, size, device) for _ in range(num_targets)], dim=1)
    block = block_patches(batch, grid, block_size(grid, context_scale, (1.0, 1.0)), device)
    inside = torch.zeros(batch, grid[0] * grid[1], dtype=torch.bool, device=device).scatter_(1, block, True)
    context = context_without_targets(inside, targets)
    keep = block.shape[1] if context.is_meta else int(context.sum(1).min())
    return context.to(torch.uint8).argsort(dim=1, descending=True, stable=True)[:, :keep], targets


def gather_patches(tokens: Tensor, index: Tensor) -> Tensor:
    """The tokens (B, N, D) at per-image patch indices (B, ...): (B, ..., D)."""
    rows = torch.arange(tokens.shape[0], device=tokens.device).view(-1, *[1] * (index.ndim - 1))
    return tokens[rows, index]


class JEPAPredictor(nn.Module):
    """I-JEPA's predictor (Sec. 3, "Prediction"): a narrow ViT of ``depth`` blocks of width ``dim`` on the
    embedded context tokens and, for each target block, one shared learnable mask token per target patch,
    every token plus the fixed 2D sin-cos embedding of its patch; the mask tokens' outputs are normalised
    and projected back to the encoder's ``width``."""

    def __init__(self, width: int, dim: int, depth: int, heads: int, grid: tuple[int, int]) -> None:
        from timm.layers import build_sincos2d_pos_embed
        from timm.models.vision_transformer import Block

        super().__init__()
        self.embed = nn.Linear(width, dim)
        self.mask_token = nn.Parameter(torch.zeros(dim))
        self.register_buffer("pos", build_sincos2d_pos_embed(grid, dim), persistent=False)  # (N, dim)
        self.blocks = nn.Sequential(*(Block(dim, heads, mlp_ratio=4.0) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, width)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, context: Tensor, context_index: Tensor, target_index: Tensor) -> Tensor:
        """Predicted representations (B, M, t, width) of the target blocks' patches ``target_index``
        (B, M, t) from the encoded context (B, k, width) at ``context_index`` (B, k). The M blocks are
        stacked along the batch: each is predicted from the context and its own mask tokens alone."""
        b, m, t = target_index.shape
        x = (self.embed(context) + self.pos[context_index]).repeat(m, 1, 1)  # block-major: (M * B, k, dim)
        queries = (self.mask_token + self.pos[target_index]).transpose(0, 1).flatten(0, 1)  # (M * B, t, dim)
        out = self.proj(self.norm(self.blocks(torch.cat([x, queries], dim=1))[:, -t:]))
        return out.unflatten(0, (m, b)).transpose(0, 1)


class JointEmbeddingPredictive(Objective):
    """I-JEPA (Assran et al. 2023): the context encoder (the stand-in ``IJepaModel``) sees the context
    block's patches; a predictor of ``predictor_depth`` blocks of width ``predictor_dim`` (default: about
    half the encoder's) predicts, for each of ``num_targets`` target blocks, the layer-normalised output
    of the target encoder (an EMA of the context encoder, momentum linear from ``momentum`` to 1 over
    training; Sec. 3 and Appendix A.1) on the whole image at the block's patches; the loss is Eq. 1's
    squared L2 distance, averaged over the blocks' patches and the blocks."""

    name, library = "ijepa", "transformers"
    # I-JEPA's recipe (Appendix A.1): AdamW, weight decay 0.04 (its start value), a linear warm-up (15 of 300
    # epochs: 5% of the default 1000 steps) then a cosine schedule, no gradient clipping
    recipe: ClassVar[dict[str, Any]] = {
        "weight_decay": 0.04,
        "schedule": "cosine",
        "warmup_steps": 50,
        "grad_clip": 0.0,
    }

    def __init__(
        self,
        vit: nn.Module,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        momentum: float = 0.996,
        predictor_dim: int | None = None,
        predictor_depth: int = 2,
        predictor_heads: int | None = None,
        num_targets: int = 4,
        target_scale: tuple[float, float] = (0.15, 0.2),
        target_aspect: tuple[float, float] = (0.75, 1.5),
        context_scale: tuple[float, float] = (0.85, 1.0),
        crop_scale: tuple[float, float] = (0.3, 1.0),
    ) -> None:
        super().__init__(vit, mean, std)
        cfg = vit.config
        dim = predictor_dim or 4 * max(4, cfg.hidden_size // 8)  # the sin-cos embedding wants a multiple of 4
        if dim % 4 or num_targets < 1:
            raise ConfigError(
                "pretraining objective 'ijepa': predictor_dim must be a multiple of 4 and num_targets at least 1, "
                f"got {dim} and {num_targets}"
            )
        heads = predictor_heads or next(h for h in range(max(1, dim // 32), 0, -1) if dim % h == 0)
        self.grid = (cfg.image_size // cfg.patch_size,) * 2
        self.predictor = JEPAPredictor(cfg.hidden_size, dim, predictor_depth, heads, self.grid)
        self.target_encoder = copy.deepcopy(vit).requires_grad_(False)
        self.momentum, self.num_targets, self.crop_scale = momentum, num_targets, crop_scale
        self.target_scale, self.target_aspect, self.context_scale = target_scale, target_aspect, context_scale

    def augmentations(self) -> list[nn.Module]:
        """I-JEPA's only augmentation, a random resized crop (scale ``crop_scale``, 0.3-1 in the official
        configs) to the stand-in's input size: no flips or colour changes, the objective needs no
        hand-crafted view augmentations (Sec. 1)."""
        import kornia.augmentation as K

        return [K.RandomResizedCrop(self.input_size, scale=self.crop_scale)]

    def before_step(self, step: int, total: int) -> None:
        """theta_t <- m theta_t + (1 - m) theta_c, m linear from ``momentum`` to 1 over training (Appendix A.1)."""
        if step == 0:
            return
        m = self.momentum + (1 - self.momentum) * (step - 1) / max(1, total)
        with torch.no_grad():
            torch._foreach_lerp_([*self.target_encoder.parameters()], [*self.vit.parameters()], 1 - m)

    @staticmethod
    def encode(model: nn.Module, x: Tensor, keep: Tensor | None = None) -> Tensor:
        """``model``'s output (after its final norm) on the patches ``keep`` (B, k) of normalised images
        (None: all of them): patch and position embeddings, its blocks, its final LayerNorm."""
        tokens = model.embeddings(x)
        if keep is not None:
            tokens = gather_patches(tokens, keep)
        for layer in hf_layers(model):
            out = layer(tokens)
            tokens = out[0] if isinstance(out, tuple) else out  # transformers < 5: (hidden_states, ...)
        return model.layernorm(tokens)

    def masks(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The context's patches (B, k) and the target blocks' (B, M, t) for the images ``x`` (Sec. 3)."""
        return sample_masks(
            x.shape[0], self.grid, self.num_targets, self.target_scale, self.target_aspect, self.context_scale, x.device
        )

    def loss(self, views: list[Tensor], labels: Tensor | None = None) -> dict[str, Tensor]:
        x = self.normalize(views[0])
        context_index, target_index = self.masks(x)
        with torch.no_grad():
            s = self.encode(self.target_encoder, x)
            targets = gather_patches(F.layer_norm(s, s.shape[-1:]), target_index)  # (B, M, t, D)
        predicted = self.predictor(self.encode(self.vit, x, context_index), context_index, target_index)
        return {"ijepa": (predicted - targets).pow(2).sum(-1).mean()}

    @torch.no_grad()
    def collapse(self, images: Tensor) -> str | None:
        """Representation collapse (Sec. 2: a joint-embedding architecture's failure mode, which the EMA
        target encoder averts): the target encoder's mean-pooled features the same for every image, their
        spread across images (the mean over dimensions of the std) under 1e-4 of their mean magnitude."""
        if images.shape[-2:] != self.input_size:
            images = F.interpolate(images, size=self.input_size, mode="bilinear", antialias=True, align_corners=False)
        pooled = self.encode(self.target_encoder, self.normalize(images)).mean(1)
        spread, scale = pooled.std(0).mean().item(), pooled.abs().mean().item()
        if spread < 1e-4 * scale:
            return f"the target encoder gives every image the same features (spread {spread:.1e} of {scale:.1e})"
        return None


def ssi_normalize(disparity: Tensor) -> Tensor:
    """MiDaS's scale-and-shift alignment (Ranftl et al. 2022, Eq. 5-6) of disparity maps (B, H, W): each
    map minus its median t(d), divided by its mean absolute deviation from it s(d)."""
    flat = disparity.flatten(1)
    shift = flat.median(1).values
    scale = (flat - shift[:, None]).abs().mean(1).clamp_min(1e-6)
    return (disparity - shift[:, None, None]) / scale[:, None, None]


def gradient_matching(residual: Tensor, scales: int) -> Tensor:
    """MiDaS's gradient-matching loss (Eq. 11) on the aligned residual R = d_hat - d_hat* (B, H, W): the mean
    over pixels of |grad_x R^k| + |grad_y R^k|, summed over ``scales`` scales k (R subsampled by 2^k)."""
    total = residual.new_zeros(())
    for k in range(scales):
        r = residual[:, :: 2**k, :: 2**k]
        if min(r.shape[-2:]) < 2:
            break
        grads = (r[:, :, 1:] - r[:, :, :-1]).abs().sum() + (r[:, 1:] - r[:, :-1]).abs().sum()
        total = total + grads / r.numel()
    return total


def align_least_squares(prediction: Tensor, target: Tensor) -> Tensor:
    """``prediction`` (B, H, W) under the per-map scale and shift that fit ``target`` best in the least-squares
    sense: the alignment of relative depth's evaluation (MiDaS, Sec. 6; Depth Anything)."""
    p, t = prediction.flatten(1), target.flatten(1)
    p_c, t_c = p - p.mean(1, keepdim=True), t - t.mean(1, keepdim=True)
    scale = (p_c * t_c).sum(1) / (p_c * p_c).sum(1).clamp_min(1e-12)
    return (scale[:, None] * p_c + t.mean(1, keepdim=True)).view_as(prediction)


class RelativeDepth(Objective):
    """Depth Anything V2 (Yang et al. 2024): its DPT head on the DINOv2 backbone (the stand-in; the whole
    transformers ``DepthAnythingForDepthEstimation`` is trained and saved) predicts relative depth as
    disparity, trained on synthetic images with exact depth: DA2's teacher stage (Sec. 4), on the built-in
    scenes' depth maps (benchmark/data.py ``render_procedural``). Both maps are aligned per image by median
    and mean absolute deviation (:func:`ssi_normalize`); the loss is the scale-and-shift-invariant L1 of
    the aligned residual plus ``gradient_weight`` times its gradient matching over ``scales`` scales
    (:func:`gradient_matching`; DA2's weights 1 : 2). Views: a horizontal flip of image and depth
    together, then the resize to the backbone's input size."""

    name, library, targets = "depth", "transformers", "depth"
    # Depth Anything trains with AdamW and a decaying schedule, its head at 10x the backbone's rate; here one
    # rate for both (a stand-in's backbone starts random, not from DINOv2), AdamW's default weight decay
    recipe: ClassVar[dict[str, Any]] = {"weight_decay": 0.01, "schedule": "cosine"}

    def __init__(
        self,
        vit: nn.Module,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        model_cfg: Any = None,
        gradient_weight: float = 2.0,
        scales: int = 4,
    ) -> None:
        from transformers import DepthAnythingForDepthEstimation

        super().__init__(vit, mean, std)
        if model_cfg is None or gradient_weight < 0 or scales < 1:
            raise ConfigError(
                "pretraining objective 'depth': needs the stand-in's Depth-Anything config, gradient_weight >= 0 "
                f"and scales >= 1, got gradient_weight {gradient_weight} and scales {scales}"
            )
        self.model = DepthAnythingForDepthEstimation(model_cfg)
        self.model.backbone = vit  # the stand-in itself: its weights are the ones kept
        # The head ends in a ReLU (disparity >= 0). From random weights its output is ~1e-4, less than one
        # AdamW step (~lr), so the first steps can push every pixel below zero for good (a dead head, measured
        # on 1 seed of 3 at lr 1.5e-3). Its last bias starts at 1 instead of 0: every pixel in the ReLU's active
        # range, where the scale-and-shift-invariant loss gives that bias no gradient.
        nn.init.constant_(self.model.head.conv3.bias, 1.0)
        self.gradient_weight, self.scales = gradient_weight, scales

    def training_data(self, dataset: Dataset) -> Dataset:
        from benchmark.data import DepthPairs

        return DepthPairs(dataset)

    def example_targets(self, n: int) -> Tensor:
        return torch.ones(n, 1, *self.input_size)

    def predict(self, images: Tensor) -> Tensor:
        """Disparity maps (B, H', W') of images in [0, 1] at the backbone's input size."""
        return self.model(pixel_values=self.normalize(images)).predicted_depth

    @staticmethod
    def disparity(depth: Tensor, size: tuple[int, int]) -> Tensor:
        """Target disparity 1 / depth (B, *size) of depth maps (B, 1, H, W)."""
        return 1.0 / F.interpolate(depth, size=size, mode="bilinear", antialias=True, align_corners=False)[:, 0]

    def forward(self, images: Tensor, targets: Tensor | None = None) -> dict[str, Tensor]:
        if targets is None:
            raise ValueError("pretraining objective 'depth' learns depth maps: give them as the targets")
        flip = (torch.rand(len(images), device=images.device) < 0.5).view(-1, 1, 1, 1)
        images, targets = (torch.where(flip, t.flip(-1), t) for t in (images, targets))
        return self.loss(self.views(images), targets)

    def loss(self, views: list[Tensor], targets: Tensor | None = None) -> dict[str, Tensor]:
        predicted = self.predict(views[0])
        residual = ssi_normalize(predicted) - ssi_normalize(self.disparity(targets, predicted.shape[-2:]))
        return {
            "ssi": residual.abs().mean(),
            "gradient": self.gradient_weight * gradient_matching(residual, self.scales),
        }

    @torch.no_grad()
    def probe_metrics(self, images: Tensor, targets: Tensor) -> dict[str, float]:
        """Relative depth's zero-shot metrics (MiDaS, Sec. 6): the prediction aligned to the true disparity by
        least squares, then AbsRel (mean |z - z*| / z*) and delta1 (share of pixels with max(z / z*, z* / z)
        < 1.25) in depth; and AbsRel of the best flat map, the floor a model that learnt nothing reaches."""
        predicted = self.predict(self.views(images)[0])
        truth = self.disparity(targets, predicted.shape[-2:])
        aligned = align_least_squares(predicted, truth).clamp_min(truth.amin().item() / 10)
        depth, true_depth = 1.0 / aligned, 1.0 / truth
        ratio = torch.maximum(depth / true_depth, true_depth / depth)
        flat = 1.0 / truth.flatten(1).mean(1)[:, None, None]
        return {
            "abs_rel": ((depth - true_depth).abs() / true_depth).mean().item(),
            "delta1": (ratio < 1.25).float().mean().item(),
            "abs_rel_flat": ((flat - true_depth).abs() / true_depth).mean().item(),
        }

    @torch.no_grad()
    def collapse(self, images: Tensor) -> str | None:
        """The head predicts a flat map for every image (a dead final ReLU, say): no depth is left to learn
        from, and the backbone's features carry nothing of the scenes."""
        predicted = self.predict(self.views(images)[0]).flatten(1)
        spread, scale = predicted.std(1).max().item(), predicted.abs().mean().item()
        if spread <= 1e-6 * max(scale, 1e-12):
            return f"the head predicts a flat depth map for every image (largest spread {spread:.1e})"
        return None

    def save(self, folder: Path) -> None:
        """The whole Depth-Anything model, as transformers saves one (``save_pretrained``): the encoder entry
        loads it with ``from_pretrained`` and keeps its backbone."""
        self.model.cpu().eval().save_pretrained(folder, safe_serialization=True)


def caption_bytes(captions: Sequence[str], length: int, pad: int, end: int | None = None) -> Tensor:
    """Captions as byte ids (UTF-8, one id per byte), followed by ``end`` when given (CLIP's end-of-text
    token), truncated to ``length`` and right-padded with ``pad``: (len(captions), length). Bytes, not a
    learned vocabulary: no tokenizer file to fetch, and any class name (a word, a WordNet id) is a caption."""
    ids = torch.full((len(captions), length), pad, dtype=torch.long)
    for i, caption in enumerate(captions):
        encoded = list(caption.encode("utf-8"))[: length - (end is not None)] + ([end] if end is not None else [])
        ids[i, : len(encoded)] = torch.tensor(encoded, dtype=torch.long)
    return ids


class CaptionedObjective(Objective):
    """An image tower and a text tower trained on image-caption pairs. The built-in data's only text is its
    class names: image i's caption is ``template`` filled with its class name (:attr:`captions`, one row per
    class, as bytes), so a batch holds the same caption several times and a pair is positive when its
    captions match. Images are only resized to the tower's input size: SigLIP's preprocessing, and CLIP's
    random square crop of the resized image is the whole of a square image. Captions are ``context_length``
    bytes, padded with the class's :attr:`caption_pad` after its :attr:`caption_end` (None: none)."""

    caption_pad: ClassVar[int]
    caption_end: ClassVar[int | None] = None

    def __init__(
        self,
        vit: nn.Module,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        class_names: Sequence[str] = (),
        template: str = "a photo of a {}.",
        context_length: int = 32,
    ) -> None:
        super().__init__(vit, mean, std)
        if not class_names or "{}" not in template:
            raise ConfigError(
                f"pretraining objective '{self.name}': needs the dataset's class names (captions) and a template "
                f"with '{{}}' for the name, got {len(class_names)} names and template {template!r}"
            )
        texts = [template.format(n) for n in class_names]
        self.register_buffer("captions", caption_bytes(texts, context_length, self.caption_pad, self.caption_end))

    @abstractmethod
    def embed_images(self, images: Tensor) -> Tensor:
        """The image tower's embedding of normalised-to-[0, 1] images at its input size, l2-normalised."""

    @abstractmethod
    def embed_captions(self, ids: Tensor) -> Tensor:
        """The text tower's embedding of captions (rows of :attr:`captions`), l2-normalised."""

    def pair_logits(self, views: list[Tensor], labels: Tensor | None) -> tuple[Tensor, Tensor]:
        """The batch's image-caption logits (B, B) as the objective scales them, and which pairs match."""
        if labels is None:
            raise ValueError(f"pretraining objective '{self.name}' pairs images with their captions: give the labels")
        similarity = self.embed_images(views[0]) @ self.embed_captions(self.captions[labels]).T
        return self.scaled(similarity), labels[:, None] == labels[None, :]

    @abstractmethod
    def scaled(self, similarity: Tensor) -> Tensor:
        """Logits from cosine similarities (the learned temperature, and bias)."""

    @torch.no_grad()
    def probe_metrics(self, images: Tensor, labels: Tensor) -> dict[str, float]:
        """Zero-shot accuracy: how often an image's nearest caption, among every class name's, is its own."""
        nearest = (self.embed_images(self.views(images)[0]) @ self.embed_captions(self.captions).T).argmax(1)
        return {"zero_shot_accuracy": nearest.eq(labels).float().mean().item()}

    @torch.no_grad()
    def collapse(self, images: Tensor) -> str | None:
        """The image tower's embeddings the same for every image (the mean cosine similarity of distinct
        images above 0.999): no caption can then be told from another."""
        x = self.embed_images(self.views(images)[0])
        n = len(x)
        similarity = ((x @ x.T).sum() - n) / max(1, n * (n - 1))
        if similarity.item() > 0.999:
            return f"the image tower gives every image the same embedding (mean cosine {similarity.item():.4f})"
        return None


class SigmoidLanguageImage(CaptionedObjective):
    """SigLIP (Zhai et al. 2023): the image tower (the stand-in ViT, its MAP head's pooled output) and a
    text tower (transformers' ``SiglipTextModel``, of the image tower's width: its last position,
    layer-normalised, through a linear head; captions as bytes right-padded with id 256) trained with
    the pairwise sigmoid loss (Sec. 3.2, Algorithm 1): for every image-caption pair (i, j) of the batch,
    logit t x_i . y_j + b on l2-normalised embeddings, L = -(1 / |B|) sum_ij log sigmoid(z_ij logit_ij),
    t = exp(t') and b learned from t' = log 10, b = -10; z_ij = 1 when captions i and j are the same
    (Algorithm 1's diagonal when every caption differs), else -1."""

    name, caption_pad = "siglip", 256
    # SigLIP's recipe (Sec. 4): AdamW with beta2 = 0.95 (its stabilisation), weight decay 1e-4, cosine schedule
    recipe: ClassVar[dict[str, Any]] = {"beta2": 0.95, "weight_decay": 1e-4, "schedule": "cosine"}

    def __init__(
        self,
        vit: nn.Module,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        text_depth: int | None = None,
        text_heads: int | None = None,
        **captions: Any,
    ) -> None:
        from transformers import SiglipTextConfig, SiglipTextModel

        super().__init__(vit, mean, std, **captions)
        if getattr(vit, "attn_pool", None) is None:
            raise ConfigError(
                "pretraining objective 'siglip': the image tower needs SigLIP's MAP head (global_pool='map')"
            )
        width = vit.embed_dim
        self.text = SiglipTextModel(
            SiglipTextConfig(
                vocab_size=257,  # 256 bytes and the padding
                hidden_size=width,
                intermediate_size=4 * width,
                num_hidden_layers=text_depth or len(vit.blocks),
                num_attention_heads=text_heads or vit.blocks[0].attn.num_heads,
                max_position_embeddings=self.captions.shape[1],
                projection_size=width,
                pad_token_id=256,
                bos_token_id=None,
                eos_token_id=None,
            )
        )
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))  # t'
        self.logit_bias = nn.Parameter(torch.tensor(-10.0))  # b

    def embed_images(self, images: Tensor) -> Tensor:
        vit = self.vit
        return F.normalize(vit.forward_head(vit.forward_features(self.normalize(images)), pre_logits=True), dim=-1)

    def embed_captions(self, ids: Tensor) -> Tensor:
        return F.normalize(self.text(input_ids=ids).pooler_output, dim=-1)

    def scaled(self, similarity: Tensor) -> Tensor:
        return similarity * self.logit_scale.exp() + self.logit_bias

    def loss(self, views: list[Tensor], labels: Tensor | None = None) -> dict[str, Tensor]:
        logits, match = self.pair_logits(views, labels)
        z = 2.0 * match.float() - 1.0
        return {"siglip": -F.logsigmoid(z * logits).sum() / len(logits)}


class ContrastiveLanguageImage(CaptionedObjective):
    """CLIP (Radford et al. 2021): open_clip's CLIP model, its image tower the stand-in and its text tower
    (causal, of the image tower's width, depth and heads; captions as bytes, then the end-of-text id 256
    that it pools at, padded with 0), trained with the symmetric cross-entropy of the scaled cosine
    similarities (Fig. 3; temperature learned from 0.07, logits scaled by at most 100, Sec. 2.5). A
    batch of class-name captions repeats them, and CLIP's targets (the diagonal) would push an image
    away from its own caption on other rows: as UniCL (Yang et al. 2022, Eq. 3-4) does for image-label
    data, each row's target spreads evenly over the pairs whose captions match, which is CLIP's loss
    when every caption differs. The saved folder is open_clip's (``open_clip_config.json`` and
    ``open_clip_model.safetensors`` of the whole model), loaded with ``local-dir:``."""

    name, library = "clip", "open_clip"
    caption_pad, caption_end = 0, 256
    # CLIP's recipe (Sec. 2.5): Adam with decoupled weight decay 0.2, beta2 = 0.98 for its ViTs, cosine schedule
    recipe: ClassVar[dict[str, Any]] = {"beta2": 0.98, "weight_decay": 0.2, "schedule": "cosine"}

    def __init__(
        self,
        vit: nn.Module,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        model_cfg: Mapping[str, Any] | None = None,
        **captions: Any,
    ) -> None:
        import open_clip

        super().__init__(vit, mean, std, **captions)
        if model_cfg is None:
            raise ConfigError("pretraining objective 'clip': needs the stand-in's open_clip model config")
        block = vit.transformer.resblocks[0]
        text_cfg = {
            "context_length": self.captions.shape[1],
            "vocab_size": 257,  # 256 bytes and the end of text; 0 (a NUL byte, never in a caption) pads
            "width": vit.transformer.width,
            "heads": block.attn.num_heads,
            "layers": len(vit.transformer.resblocks),
        }
        self.model_cfg = {**model_cfg, "text_cfg": text_cfg}
        cfg = {k: v for k, v in self.model_cfg.items() if k in ("embed_dim", "vision_cfg", "text_cfg", "quick_gelu")}
        self.clip = open_clip.CLIP(**cfg)
        self.clip.visual = vit  # the stand-in itself: its weights are the ones kept

    @property
    def input_size(self) -> tuple[int, int]:
        return tuple(self.vit.image_size)

    def embed_images(self, images: Tensor) -> Tensor:
        return F.normalize(self.clip.encode_image(self.normalize(images)), dim=-1)

    def embed_captions(self, ids: Tensor) -> Tensor:
        return F.normalize(self.clip.encode_text(ids), dim=-1)

    def scaled(self, similarity: Tensor) -> Tensor:
        return similarity * self.clip.logit_scale.exp().clamp(max=100.0)

    def loss(self, views: list[Tensor], labels: Tensor | None = None) -> dict[str, Tensor]:
        logits, match = self.pair_logits(views, labels)
        targets = match.float() / match.sum(1, keepdim=True)  # symmetric: the same targets for both directions
        per_image = -(targets * F.log_softmax(logits, dim=1)).sum(1).mean()
        per_caption = -(targets * F.log_softmax(logits.T, dim=1)).sum(1).mean()
        return {"clip": (per_image + per_caption) / 2}

    def save(self, folder: Path) -> None:
        """The whole CLIP model as open_clip saves one for ``local-dir:`` (its config and safetensors)."""
        from open_clip.push_to_hf_hub import HF_CONFIG_NAME, HF_SAFE_WEIGHTS_NAME, save_config_for_hf
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        model = self.clip.cpu().eval()
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / HF_SAFE_WEIGHTS_NAME)
        save_config_for_hf(model, folder / HF_CONFIG_NAME, model_config=self.model_cfg)


OBJECTIVES: dict[str, type[Objective]] = {
    cls.name: cls
    for cls in (
        MaskedAutoencoder,
        SelfDistillation,
        JointEmbeddingPredictive,
        RelativeDepth,
        SigmoidLanguageImage,
        ContrastiveLanguageImage,
    )
}
HARNESS_ARGS = frozenset({"vit", "mean", "std", "class_names", "model_cfg"})


def split_options(spec: Mapping[str, Any], default: str | None, where: str) -> tuple[str, dict, dict]:
    """``pretrain``'s objective name, training-loop options and objective options (checked)."""
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: expected a mapping of pretraining options, got {spec!r}")
    name = spec.get("objective", default)
    if name not in OBJECTIVES:
        raise ConfigError(
            f"{where}.objective: {name!r} is not a pretraining objective; choose from {', '.join(OBJECTIVES)}"
        )
    train = {k: v for k, v in spec.items() if k in TRAIN_KEYS}
    options = {k: v for k, v in spec.items() if k not in TRAIN_KEYS and k != "objective"}
    params = init_params(OBJECTIVES[name], HARNESS_ARGS)
    check_options(options, params, where, f"pretraining objective '{name}' (or the training loop's)")
    check_options(train, TRAIN_KEYS, where, "the training loop")
    return name, train, options


def check_pretrain(spec: Any, where: str) -> None:
    """Plan-time check of ``tokenizer.encoder.pretrain`` as one of the objectives takes it (the encoder entry
    checks it against its own family's objective: ``PretrainedEncoder``)."""
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: expected a mapping of pretraining options, got {spec!r}")
    if "objective" in spec:
        split_options(spec, None, where)
        return
    errors = []
    for name in OBJECTIVES:
        try:
            split_options(spec, name, where)
            return
        except ConfigError as exc:
            errors.append(str(exc))
    known = set(TRAIN_KEYS).union(*(init_params(cls, HARNESS_ARGS) for cls in OBJECTIVES.values()))
    unknown = sorted(k for k in spec if k not in known)
    if unknown:  # not one objective's: naming the first objective's options would mislead
        raise ConfigError(
            f"{where}.{unknown[0]}: not an option of any pretraining objective ({', '.join(OBJECTIVES)}) "
            "or of the training loop"
        )
    raise ConfigError(errors[0])


PretrainOptions = nested(check_pretrain)


def train_config(name: str, train: Mapping[str, Any]) -> TrainConfig:
    """The pretraining's loop options: the objective's recipe under the ones given."""
    return TrainConfig(**{"checkpoint_every": 500, "log_every": 50, **OBJECTIVES[name].recipe, **train})

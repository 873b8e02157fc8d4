"""The self-supervised objectives that pretrain a stand-in encoder offline (benchmark/encoder_pretraining.py),
each a module around a timm ViT, whose weights are the ones kept.

    mae   He et al. 2022 (MAE), Sec. 3: mask a random 75% of the patches, encode the visible ones,
          a light decoder with mask tokens predicts the masked patches' pixels, each patch normalised
          by its own mean and variance; L = mean over masked patches of ||x_hat - x||^2.
    dino  Caron et al. 2021 (DINO), Sec. 3.1: a student and its EMA teacher (momentum cosine from
          0.996 to 1) see augmented views (2 global, n local crops; the teacher only the global ones);
          L = sum over pairs (global v for the teacher, any other view v' for the student) of
          H(P_t(v), P_s(v')), P = softmax(g(x) / tau) with the teacher's output centred by an EMA of
          its batch means (tau_t = 0.04, tau_s = 0.1).

Views are drawn per image on the batch's device with kornia (no per-image work in the data loader).
``tokenizer.encoder.pretrain`` is checked here (:data:`PretrainOptions`): the training loop's options
(benchmark/config.py ``TrainConfig``) and the objective's own.
"""

from __future__ import annotations

import copy
import functools
import math
import typing
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.config import TrainConfig
from benchmark.errors import ConfigError
from benchmark.layers import patchify
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
    """A self-supervised objective around a timm ViT ``vit`` (the weights that are kept)."""

    name: ClassVar[str]
    recipe: ClassVar[dict[str, Any]]  # TrainConfig defaults of the source's recipe

    def __init__(self, vit: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.vit, self.normalize = vit, Normalize(mean, std)

    @property
    def num_views(self) -> int:
        """How many views of each image :meth:`augmentations` makes (known without importing kornia)."""
        return 1

    @abstractmethod
    def augmentations(self) -> list[nn.Module]:
        """One kornia augmentation pipeline per view: each draws its own random parameters per image, on
        the batch's device (no per-image work in the data loader)."""

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
    def loss(self, views: list[Tensor]) -> dict[str, Tensor]:
        """The objective's loss terms on the views of a batch."""

    def collapse(self, images: Tensor) -> str | None:
        """Why the trained encoder is degenerate on ``images`` (None: it is not, or the objective cannot
        collapse): checked after training, so that a collapsed pretraining fails loudly."""
        return None

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """The objective's loss terms on a batch of images in [0, 1]."""
        return self.loss(self.views(images))


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

        size = tuple(self.vit.patch_embed.img_size)
        return [K.AugmentationSequential(K.RandomResizedCrop(size, scale=self.crop_scale), K.RandomHorizontalFlip())]

    def loss(self, views: list[Tensor]) -> dict[str, Tensor]:
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

        size = tuple(self.vit.patch_embed.img_size)

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

    def loss(self, views: list[Tensor]) -> dict[str, Tensor]:
        student = self.head(self._class_token(self.vit, torch.cat(views))).chunk(len(views))
        with torch.no_grad():
            out = self.teacher_head(self._class_token(self.teacher, torch.cat(views[:2])))
            targets = F.softmax((out - self.center) / self.teacher_temp, dim=-1).chunk(2)
            self.center.mul_(self.center_momentum).add_(out.mean(0, keepdim=True), alpha=1 - self.center_momentum)
        loss, pairs = student[0].new_zeros(()), 0
        for i, target in enumerate(targets):
            for j, s in enumerate(student):
                if i != j:
                    loss = loss - (target * F.log_softmax(s / self.student_temp, dim=-1)).sum(-1).mean()
                    pairs += 1
        return {"dino": loss / pairs}


OBJECTIVES: dict[str, type[Objective]] = {cls.name: cls for cls in (MaskedAutoencoder, SelfDistillation)}
HARNESS_ARGS = frozenset({"vit", "mean", "std"})
TRAIN_KEYS = typing.get_type_hints(TrainConfig)


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
    raise ConfigError(errors[0])


PretrainOptions = nested(check_pretrain)


def train_config(name: str, train: Mapping[str, Any]) -> TrainConfig:
    """The pretraining's loop options: the objective's recipe under the ones given."""
    return TrainConfig(**{"checkpoint_every": 500, "log_every": 50, **OBJECTIVES[name].recipe, **train})

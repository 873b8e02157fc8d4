"""SelfBootTok: global tokens for the generator, local tokens bootstrapped from them (paper Sec. 3).

    z_G   = Enc(I)                                            (Eq. 1: K_g global tokens, ViT encoder)
    Z     = sum_k q(k | z) c_k,  q = softmax(-||z - C|| / tau) (Eq. 2-3, soft VQ; C_tot = {C_global,
                                                               C_local1D, C_local2D}, Eq. 1)
    z_L1  = MLP(Z_G)                                          (Eq. 8: per token, into a wider token space)
    z_L2 ~ prod_i p(t_i | Z_G, t_<i)                          (Eq. 9: the autoregressive local 2D aligner)
    x_hat = Dec(Fuse(Z_G, Z_L1, Z_L2); Z_L1; Z_L2)            (Eq. 10: locals also read by cross-attention)
    Fuse  = a Z_G + b W Z_L1 + (1 - a - b) Z_L2  |  Concat[Z_G; W Z_L1; Z_L2]  (Eq. 11; W: wide z_L1 -> d)

    L       = L_recon + l1 L_percep + l2 L_adv + l3 L_align + l4 L_KL          (Eq. 4)
    L_align = m1 L_repa^global + m2 L_repa^local + m3 L_OT                      (Eq. 5)
    L_repa^global = PatchwiseSim(z_G, f_global(I))                              (Eq. 6, DINOv2)
    L_repa^local  = PatchwiseSim(z_L1 or z_L2, f_local(I))                      (Eq. 7, I-JEPA / DINOv2 / SigLIP)
    L_OT    = <P*, C>,  C_ij = ||x_i - z_L2,j||^2,  P* = Sinkhorn(exp(-C / eps))  (Eq. 12-13)

A generator models only Z_G: ``encode`` returns it and ``decode`` predicts the locals from it (Eq. 8-9;
the local 2D tokens decoded one by one with a KV cache) before fusing and decoding, which is how
generated global tokens become images. The 2D latents x of
the OT term come from the encoder of a frozen, registered 2D tokenizer (``latent_2d``); when their
width C differs from the token width, a learned linear map takes z_L2 to C before the cost.

Two-stage local scaling (Sec. 3.4): stage 1 trains everything with a small local 2D aligner; stage 2
loads the stage-1 weights (:meth:`SelfBootTok.load_stage1`), enlarges the aligner and trains it alone
(Sec. 3.4) or with everything else downstream of Z_G (Sec. 4.1; :meth:`SelfBootTok.freeze_for_stage2`),
so the generator trained on stage-1 global tokens is reused.

The paper gives no values for the loss weights, the fusion coefficients or the KL weight; the
defaults below are this implementation's choices (every alignment term weighted 1, KL 1e-4).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

from benchmark.align import Projector, TeacherOptions, build_teacher, patchwise_similarity_loss
from benchmark.base import Tokenizer, TokenizerOutput, TokenSpec
from benchmark.checkpoints import latent_2d_tokenizer
from benchmark.config import TRAIN_KEYS, check_train
from benchmark.encoders import EncoderOptions
from benchmark.errors import ConfigError, WeightsError
from benchmark.layers import Block, Frozen, init_vit_weights, unpatchify
from benchmark.objectives import AdversarialOptions, PerceptualOptions, PixelObjective, build_adversary
from benchmark.options import NonNegativeFloat, PositiveFloat, PositiveInt, check_options, nested
from benchmark.ot import ot_loss
from benchmark.quantizers import SoftVectorQuantizer, kl_to_uniform
from benchmark.registry import TOKENIZERS, register_tokenizer
from benchmark.vit import LatentViTEncoder, MaskTokenViTDecoder, vit_size

from .softvq import SOFTVQ_ADVERSARIAL

# Token groups of each ablation (Table 3): G, G + L1, G + L1 + L2.
BRANCHES: dict[str, tuple[str, ...]] = {
    "G": ("global",),
    "G+L1": ("global", "local1d"),
    "G+L1+L2": ("global", "local1d", "local2d"),
}
FUSIONS = ("soft_residual", "concat")
LOCAL2D_FORMS = ("autoregressive", "queries")
LOCAL_ALIGN_TOKENS = {"l1": "local1d", "l2": "local2d"}
# What stage 2 trains (Sec. 3.4 / Sec. 4.1): the enlarged aligner alone, or all that reads Z_G.
STAGE2_TRAIN = ("aligner", "all_but_encoder")

# (width, depth, heads) of the local 2D aligner, named by its parameter count at the paper's
# K_g = N_l = 64 tokens of width 32 (Sec. 3.4 / Fig. 6 scales it from 10M to 600M); "tiny" is smoke scale.
#
# "tiny-<paper size>" is the scaled-down ladder the smoke and repro profiles use in place of each paper
# size, so that a scaling curve keeps all five points at CPU scale. It keeps the paper's parameter ratios
# (1 : 10 : 20 : 40 : 60, measured at 16 tokens of width 8: 27k, 0.25M, 0.57M, 1.0M, 1.6M parameters) and
# its shape: width grows up to the 400M aligner, then the 600M one is deeper at the same width.
LOCAL2D_SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (64, 2, 4),
    "10M": (320, 8, 5),
    "100M": (768, 14, 12),
    "200M": (1024, 16, 16),
    "400M": (1280, 20, 20),
    "600M": (1280, 30, 20),
    "tiny-10M": (32, 2, 2),
    "tiny-100M": (64, 5, 4),
    "tiny-200M": (96, 5, 4),
    "tiny-400M": (128, 5, 4),
    "tiny-600M": (128, 8, 4),
}


# ---------------------------------------------------------------------------------------------
# Cross-attention (the decoder)


class CrossAttention(nn.Module):
    """Multi-head cross-attention softmax(Q(x) K(c)^T / sqrt(d)) V(c) through SDPA."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        b, n, d = x.shape
        h = self.num_heads
        q = self.q(x).view(b, n, h, d // h).transpose(1, 2)
        k, v = self.kv(context).view(b, context.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


class CrossAttentionBlock(Block):
    """Decoder block of Eq. 10: x + SelfAttn(LN(x)), then x + CrossAttn(LN(x), c), then x + MLP(LN(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__(dim, num_heads, mlp_ratio)
        self.norm_cross = nn.LayerNorm(dim)
        self.cross = CrossAttention(dim, num_heads)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        x = x + self.cross(self.norm_cross(x), context)
        return x + self.mlp(self.norm2(x))


def trains(*modules: nn.Module | None) -> bool:
    """Whether any parameter of ``modules`` takes gradients: a loss term reading only frozen ones is a constant."""
    return any(p.requires_grad for m in modules if m is not None for p in m.parameters())


# ---------------------------------------------------------------------------------------------
# The local 2D aligner (Eq. 9) and the decoder (Eq. 10)


def aligner_mask(num_global: int, num_local: int) -> Tensor:
    """Attention mask over [Z_G; local inputs]: the K_g global tokens attend to one another only; local
    position i attends to every global token and to local positions 0..i (Eq. 9's t_i | z_G, t_<i)."""
    n = num_global + num_local
    mask = torch.ones(n, n, dtype=torch.bool)
    mask[:num_global, num_global:] = False
    mask[num_global:, num_global:] = torch.ones(num_local, num_local, dtype=torch.bool).tril()
    return mask


def cached_block(
    block: Block, x: Tensor, cache: tuple[Tensor, Tensor] | None, mask: Tensor | None = None
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """``block`` (a benchmark.layers.Block, its own weights) on new tokens x (B, n, W) that attend to the
    keys / values of the m tokens before them (``cache``, each (B, heads, m, W / heads)) and to their
    own; ``mask``: SDPA's boolean (n, m + n) mask, None: every key. Returns the block's output and the
    cache with the new keys / values appended: one step of KV-cached decoding."""
    if block.post_norm:
        raise ValueError("KV-cached decoding is written for pre-norm blocks")
    attn = block.attn
    b, n, d = x.shape
    q, k, v = attn.qkv(block.norm1(x)).view(b, n, 3, attn.num_heads, d // attn.num_heads).permute(2, 0, 3, 1, 4)
    if cache is not None:
        k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    x = x + block.ls1(attn.proj(y.transpose(1, 2).reshape(b, n, d)))
    return x + block.ls2(block.mlp(block.norm2(x))), (k, v)


def check_local2d_form(form: str, causal: bool) -> None:
    """A known aligner form (:data:`LOCAL2D_FORMS`), and no ``causal: false`` for the autoregressive one."""
    if form not in LOCAL2D_FORMS:
        raise ConfigError(f"tokenizer.local2d_form: unknown form '{form}'; choose from {', '.join(LOCAL2D_FORMS)}")
    if form == "autoregressive" and not causal:
        raise ConfigError(
            "tokenizer.causal: the autoregressive local 2D aligner (Eq. 9) is causal by construction; "
            "causal: false needs tokenizer.local2d_form: queries"
        )


class Local2DAligner(nn.Module):
    """Eq. 9, p(z_L2 | z_G) = prod_i p(t_i | z_G, t_<i): transformer blocks over [Linear(Z_G) + global
    positions; N_l local inputs], read out (norm, linear) at the local positions as t_i of width d.

    ``form="autoregressive"`` (the paper's): local input i is a learned position embedding plus
    Linear(t_{i-1}) (nothing at i = 0), under the causal mask of :func:`aligner_mask`, so t_i is a
    function of z_G and of the previous tokens t_<i themselves. At inference (:meth:`generate`) the
    tokens are decoded one at a time, each fed back as the next input, with a KV cache.

    Teacher forcing (:meth:`forward` with ``prefix``): what are the "true" t_<i in training? The paper
    trains z_L2 only through the reconstruction (Eq. 10) and the OT alignment to the 2D latents
    (Eq. 12-13). Neither gives a target per position: the OT cost <P*, C> is invariant to a
    permutation of the N_l positions, so the sequence "transported from the 2D VAE latents" has no
    order of its own but the one the predictions give it, and feeding those transported latents would
    hand position i image information (the 2D latents) that inference never has, with copying the
    previous transported latent scoring as well as predicting under a permutation-invariant loss. What
    Eq. 9 conditions on at inference is the aligner's own previous tokens, so those are the
    teacher-forcing inputs: :meth:`predict` decodes them without gradient (KV cache), then one parallel
    pass teacher-forced on that detached prefix recomputes the same tokens (equal to the decoded ones
    up to float rounding) with gradients at every position. Training thus sees exactly the tokens
    decoding gives, and the gradient through the fed-back inputs is truncated, as teacher forcing does.
    The fed-back t_i are the raw tokens (Eq. 9's z_L2), not their soft-quantised Z_L2: quantisation
    follows the aligner (Sec. 3.2, "after the soft quantization of z_G, z_L1, and z_L2").

    ``form="queries"``: local input i is a learned query token alone, one parallel pass, so t_i is a
    function of z_G only; ``causal`` picks the causal mask or full attention (Table 3's "C" column).
    The autoregressive form is causal by construction.
    """

    def __init__(
        self,
        token_size: int,
        num_global: int,
        num_local: int,
        width: int,
        depth: int,
        heads: int,
        form: str = "autoregressive",
        causal: bool = True,
    ) -> None:
        super().__init__()
        check_local2d_form(form, causal)
        self.num_global, self.num_local = num_global, num_local
        self.embed = nn.Linear(token_size, width)
        self.global_positions = nn.Parameter(torch.zeros(1, num_global, width))
        # The query tokens (queries form) or the position embeddings the fed-back tokens add to (autoregressive).
        self.queries = nn.Parameter(torch.zeros(1, num_local, width))
        self.feedback = nn.Linear(token_size, width) if form == "autoregressive" else None
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, token_size)
        self.register_buffer("mask", aligner_mask(num_global, num_local) if causal else None, persistent=False)
        nn.init.trunc_normal_(self.global_positions, std=0.02)
        nn.init.trunc_normal_(self.queries, std=0.02)

    def forward(self, zq_global: Tensor, prefix: Tensor | None = None) -> Tensor:
        """One parallel pass: Z_G (B, K_g, d) -> z_L2 (B, N_l, d). The autoregressive form is teacher
        forced on ``prefix`` (B, N_l, d): output i reads prefix tokens 0..i-1 (never i or later)."""
        b = zq_global.shape[0]
        local = self.queries.expand(b, -1, -1)
        if self.feedback is not None:
            if prefix is None:
                raise ValueError("the autoregressive aligner's parallel pass is teacher forced: give the prefix")
            local = local + F.pad(self.feedback(prefix[:, :-1]), (0, 0, 1, 0))  # input i: t_{i-1}
        x = torch.cat([self.embed(zq_global) + self.global_positions, local], dim=1)
        for block in self.blocks:
            x = block(x, self.mask)
        return self.head(self.norm(x[:, self.num_global :]))

    @torch.no_grad()
    def generate(self, zq_global: Tensor) -> Tensor:
        """Eq. 9 decoded token by token with a KV cache (autoregressive form): step 0 runs [Z_G; input 0]
        under the causal mask, step i > 0 only input i = position i + Linear(t_{i-1}), attending to the
        cached keys / values of Z_G and of inputs < i. Returns z_L2 (B, N_l, d), without gradient."""
        if self.feedback is None:
            raise ValueError("the queries form of the local 2D aligner is one parallel pass; call it directly")
        x = torch.cat(
            [self.embed(zq_global) + self.global_positions, self.queries[:, :1].expand(len(zq_global), -1, -1)], 1
        )
        mask: Tensor | None = aligner_mask(self.num_global, 1).to(x.device)
        caches: list[tuple[Tensor, Tensor] | None] = [None] * len(self.blocks)
        tokens = []
        for i in range(self.num_local):
            for j, block in enumerate(self.blocks):
                x, caches[j] = cached_block(block, x, caches[j], mask)
            tokens.append(self.head(self.norm(x[:, -1:])))
            if i + 1 < self.num_local:
                x, mask = self.queries[:, i + 1 : i + 2] + self.feedback(tokens[-1]), None
        return torch.cat(tokens, dim=1)

    def predict(self, zq_global: Tensor) -> Tensor:
        """z_L2 as encode / decode / training use it. Queries form: the parallel pass. Autoregressive
        form: :meth:`generate` (KV cache); with gradients enabled, the same tokens recomputed by the
        parallel pass teacher forced on the decoded (detached) prefix, so every position has a gradient."""
        if self.feedback is None:
            return self(zq_global)
        tokens = self.generate(zq_global)
        return self(zq_global, tokens) if torch.is_grad_enabled() else tokens


class CrossAttentionViTDecoder(MaskTokenViTDecoder):
    """Eq. 10's Dec(Fuse(z_G, z_L1, z_L2); z_L1; z_L2): the 1D ViT decoder over [cls; mask tokens] ⊕
    [fused tokens], whose blocks also read the local tokens (one learned position per token and
    group) through cross-attention; ``context_tokens`` gives each local group's (count, width). With no
    local group (branches "G") it is the plain decoder."""

    def __init__(
        self,
        *,
        image_size: int,
        patch_size: int,
        width: int,
        depth: int,
        heads: int,
        num_latent_tokens: int,
        token_size: int,
        context_tokens: Mapping[str, tuple[int, int]],
    ) -> None:
        super().__init__(
            image_size=image_size,
            patch_size=patch_size,
            width=width,
            depth=depth,
            heads=heads,
            num_latent_tokens=num_latent_tokens,
            token_size=token_size,
        )
        if context_tokens:
            self.transformer = nn.ModuleList(CrossAttentionBlock(width, heads) for _ in range(depth))
        self.context_embed = nn.ModuleDict({g: nn.Linear(dim, width) for g, (_, dim) in context_tokens.items()})
        self.context_positions = nn.ParameterDict(
            {g: nn.Parameter(width**-0.5 * torch.randn(1, n, width)) for g, (n, _) in context_tokens.items()}
        )
        self.context_norm = nn.LayerNorm(width) if context_tokens else None

    def forward(self, tokens: Tensor, context: Mapping[str, Tensor]) -> Tensor:
        b = tokens.shape[0]
        masks = self.mask_token.expand(b, self.grid**2, -1)
        x = torch.cat([self.class_embedding.expand(b, -1, -1), masks], dim=1) + self.positional_embedding
        x = self.ln_pre(torch.cat([x, self.embed(tokens) + self.latent_positional_embedding], dim=1))
        if self.context_norm is None:
            x = self.transformer(x)
        else:
            c = torch.cat([self.context_embed[g](z) + self.context_positions[g] for g, z in context.items()], 1)
            c = self.context_norm(c)
            for block in self.transformer:
                x = block(x, c)
        patches = self.head(self.ln_post(x)[:, 1 : 1 + self.grid**2])
        return unpatchify(patches, self.patch_size, self.grid)


# ---------------------------------------------------------------------------------------------
# Frozen networks: alignment teachers and the 2D latent encoder of the OT term


def check_latent_2d(spec: Mapping[str, Any], where: str) -> None:
    """A ``latent_2d`` mapping: a registered tokenizer name, an optional checkpoint path or an optional
    ``train`` mapping (a :class:`~benchmark.config.TrainConfig`: the ``train_latent_2d`` stage trains it on
    the cell's data first), that tokenizer's own options."""
    opts = dict(spec)
    name, checkpoint, train = opts.pop("tokenizer", None), opts.pop("checkpoint", None), opts.pop("train", None)
    if not isinstance(name, str):
        raise ConfigError(
            f"{where}.tokenizer: expected the name of a registered 2D tokenizer (e.g. vqgan), got {name!r}"
        )
    if checkpoint is not None and not isinstance(checkpoint, str):
        raise ConfigError(f"{where}.checkpoint must be a path or null, got {checkpoint!r}")
    if train is not None:
        if checkpoint is not None:
            raise ConfigError(f"{where}: set checkpoint (trained elsewhere) or train (trained here), not both")
        if not isinstance(train, Mapping):
            raise ConfigError(f"{where}.train must be a mapping of training options, got {train!r}")
        check_options(train, TRAIN_KEYS, f"{where}.train", "the 2D tokenizer's training")
        check_train(train, f"{where}.train")
    check_options(opts, TOKENIZERS.params(name, where=f"{where}.tokenizer"), where, f"tokenizer '{name}'")


Latent2DOptions = nested(check_latent_2d)


def build_latent_2d(spec: Mapping[str, Any], image_size: int) -> Frozen:
    """The 2D tokenizer whose ``latent_grid(images) -> (B, h*w, C)`` gives the OT targets x (Sec. 3.3).

    ``spec``: ``{tokenizer: <registered name>, checkpoint: /path/model.safetensors | null, **options}``;
    the options are that tokenizer's own (checked against its constructor). Without a checkpoint the
    weights are random (smoke scale). Held in :class:`Frozen`: no parameters, no checkpoint entries.
    """
    where = "tokenizer.latent_2d"
    check_latent_2d(spec, where)
    opts, checkpoint = latent_2d_tokenizer(spec), spec.get("checkpoint")
    name = opts.pop("name")
    model = TOKENIZERS.build(name, image_size=image_size, **opts)
    if not callable(getattr(model, "latent_grid", None)):
        raise ConfigError(f"{where}.tokenizer: '{name}' has no latent_grid(images) method; choose a 2D tokenizer")
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        hint = (
            f"train the '{name}' tokenizer first (its run folder holds model.safetensors) and point "
            f"{where}.checkpoint at it, or set checkpoint: null for random weights (smoke scale)"
        )
        if not path.is_file():
            raise WeightsError(f"{where}.checkpoint {path} does not exist", hint)
        missing, unexpected = model.load_state_dict(load_file(str(path)), strict=False)
        missing, unexpected = (
            [k for k in keys if not k.startswith("adversary.")]  # its training discriminator
            for keys in (missing, unexpected)
        )
        if missing or unexpected:
            raise WeightsError(
                f"{where}.checkpoint {path} does not fit '{name}' with options {opts}: "
                f"missing {missing[:4]}, unexpected {unexpected[:4]}",
                hint,
            )
    return Frozen(model)


# ---------------------------------------------------------------------------------------------
# The tokenizer


@register_tokenizer("selfboottok")
class SelfBootTok(Tokenizer):
    """SelfBootTok: global tokens from a ViT, local 1D / 2D tokens bootstrapped from them, soft VQ, OT."""

    # 2: SoftVQ's discriminator setup as it trains it (a fixed GAN weight, LeCAM decaying 0.999) and the pixel
    # loss on [-1, 1], as its training code (benchmark/method_versions.py)
    version = 2

    tiny = {
        "image_size": 32,
        "size": "tiny",
        "patch_size": 8,
        "num_latent_tokens": 8,
        "token_size": 8,
        "codebook_size": 32,
        "local2d_size": "tiny",
        "perceptual": {"weight": 1.0, "net": "alex", "weights": "random"},
        "align_global": {
            "init": "dinov2",
            "stand_in": {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2},
        },
        "align_local": {
            "init": "dinov2",
            "stand_in": {"img_size": 32, "patch_size": 8, "embed_dim": 24, "depth": 1, "num_heads": 2},
        },
        "latent_2d": {"tokenizer": "vqgan", "size": "tiny", "bottleneck": "kl", "embed_dim": 4},
        "adversarial": {"kind": "stylegan", "start": 0, "width": 8},
    }

    def __init__(
        self,
        *,
        image_size: int = 256,
        size: str = "B",
        patch_size: PositiveInt = 16,
        num_latent_tokens: PositiveInt = 64,
        token_size: PositiveInt = 32,
        codebook_size: PositiveInt = 8192,
        tau: PositiveFloat = 0.07,
        l2_norm: bool = True,
        shared_codebook: bool = False,
        branches: str = "G+L1+L2",
        local1d_hidden: int | None = None,
        local1d_dim: int | None = None,
        local2d_size: str | None = None,
        local2d_form: str = "autoregressive",
        num_local_tokens: PositiveInt | None = None,
        causal: bool = True,
        fusion: str = "soft_residual",
        alpha: float = 0.5,
        beta: float = 0.25,
        recon_loss: str = "l2",
        recon_weight: NonNegativeFloat = 1.0,
        perceptual: PerceptualOptions | None = None,
        adversarial: AdversarialOptions | None = None,
        kl_weight: NonNegativeFloat = 1e-4,
        align_weight: NonNegativeFloat = 1.0,
        align_global: TeacherOptions | None = None,
        repa_global_weight: NonNegativeFloat = 1.0,
        align_local: TeacherOptions | None = None,
        repa_local_weight: NonNegativeFloat = 1.0,
        local_align_tokens: str = "l1",
        latent_2d: Latent2DOptions | None = None,
        ot_weight: NonNegativeFloat = 1.0,
        ot_epsilon: PositiveFloat = 0.05,
        stage: int = 1,
        stage2_train: str = "aligner",
        encoder: EncoderOptions | None = None,
    ) -> None:
        """Options (paper symbols in brackets):

        ``size``: ViT size of encoder and decoder; ``num_latent_tokens`` [K_g], ``token_size`` [d].
        ``codebook_size``, ``tau``, ``l2_norm``: the soft VQ of Eq. 2-3, one codebook per token group
        [C_global, C_local1D, C_local2D] unless ``shared_codebook`` (Table 3's "CB" column off).
        ``branches``: "G", "G+L1" or "G+L1+L2" (Table 3 rows). ``local1d_hidden``: hidden width of the
        Eq. 8 MLP (None: the encoder's width). ``local1d_dim``: the width of z_L1, the "higher-dimensional
        token space" Eq. 8 projects z_G into (Sec. 3.2). The paper gives no number; None is 2 d, the
        smallest doubling (64 at the paper's d = 32), or d with ``shared_codebook`` (one codebook holds
        every group's tokens, so they share its width; an explicit other width is an error there).
        z_L1 has its own codebook C_local1D of that width, the decoder's cross-attention reads it through
        its own linear embedding, and Eq. 11 (which adds or concatenates tokens of width d) takes it
        through a learned linear map W to d. ``local2d_size``: aligner preset, :data:`LOCAL2D_SIZES`
        (None: "tiny" when ``size`` is tiny, else "10M", the small stage-1 aligner). ``local2d_form``:
        "autoregressive" (Eq. 9 as written: previous tokens as inputs, KV-cached decoding) or "queries"
        (learned query tokens, t_i a function of z_G alone); see :class:`Local2DAligner`.
        ``num_local_tokens`` [N_l] (None: K_g). ``causal``: the queries form's causal mask (Table 3's
        "C"); the autoregressive form is causal by construction (``causal: false`` needs "queries").
        ``fusion``: Eq. 11, "soft_residual" with ``alpha``, ``beta`` (renormalised over the present
        groups) or "concat". ``perceptual`` [lambda1 = its ``weight``]: options of PixelObjective.
        ``adversarial`` [lambda2 = its ``weight``]: None for no GAN, else overrides of
        SoftVQ's setup, Sec. 4.1's "similar to SoftVQ" (tokenizers/softvq.py ``SOFTVQ_ADVERSARIAL``: StyleGAN
        discriminator, LeCAM, consistency, a fixed weight). ``kl_weight`` [lambda4]: KL of every codebook's
        posterior to a uniform prior. ``align_weight`` [lambda3] scales ``repa_global_weight`` [mu1],
        ``repa_local_weight`` [mu2] and ``ot_weight`` [mu3]. ``align_global`` / ``align_local``:
        frozen teachers (encoder specs of benchmark/encoders.py, with ``stand_in`` at smoke scale);
        ``local_align_tokens``: "l1" or "l2", the tokens aligned to the local teacher (Eq. 7).
        ``latent_2d``: the frozen 2D tokenizer of the OT term, ``{tokenizer: vqgan, checkpoint: ...,
        **its options}``, or with ``train: {steps: ..., ...}`` instead of a checkpoint: trained on the
        cell's data first by the ``train_latent_2d`` stage (the forward refuses to align to it before that
        stage gave its checkpoint); ``ot_epsilon``: Sinkhorn's entropic regularisation, relative to the mean cost.
        An alignment term whose tokens are absent under ``branches`` is off (so one base config serves
        every Table 3 row). ``stage``: 1, or 2 for the two-stage local scaling; ``stage2_train``: what
        stage 2 trains, "aligner" (Sec. 3.4: "fine-tune it while freezing the remaining components") or
        "all_but_encoder" (Sec. 4.1: "train the tokenizer pipeline ... keeping the ViT encoder frozen":
        everything downstream of Z_G, with the encoder and the codebook of Z_G frozen). Either keeps the
        global tokens, so the generator trained on stage 1's serves every aligner size.
        ``encoder``: a pretrained initialisation of the ViT encoder, copied in by the train stage.
        """
        super().__init__()
        if image_size % patch_size:
            raise ConfigError(f"tokenizer.patch_size {patch_size} does not divide the image size {image_size}")
        if branches not in BRANCHES:
            raise ConfigError(f"tokenizer.branches: unknown branches '{branches}'; choose from {', '.join(BRANCHES)}")
        if fusion not in FUSIONS:
            raise ConfigError(f"tokenizer.fusion: unknown fusion '{fusion}'; choose from {', '.join(FUSIONS)}")
        check_local2d_form(local2d_form, causal)
        if local_align_tokens not in LOCAL_ALIGN_TOKENS:
            raise ConfigError(f"tokenizer.local_align_tokens: '{local_align_tokens}' is not l1 or l2")
        if stage not in (1, 2):
            raise ConfigError(f"tokenizer.stage: {stage} is not 1 or 2")
        if stage2_train not in STAGE2_TRAIN:
            raise ConfigError(
                f"tokenizer.stage2_train: unknown choice '{stage2_train}'; choose from {', '.join(STAGE2_TRAIN)}"
            )
        if codebook_size < 2:
            raise ConfigError(f"tokenizer.codebook_size: {codebook_size} codes; soft VQ needs at least 2")
        if tau <= 0:
            raise ConfigError(f"tokenizer.tau: the soft-VQ temperature must be > 0, got {tau}")
        for name, value in (
            ("recon_weight", recon_weight),
            ("kl_weight", kl_weight),
            ("align_weight", align_weight),
            ("repa_global_weight", repa_global_weight),
            ("repa_local_weight", repa_local_weight),
            ("ot_weight", ot_weight),
        ):
            if value < 0:
                raise ConfigError(f"tokenizer.{name}: must be >= 0, got {value}")
        local2d_size = local2d_size or ("tiny" if size == "tiny" else "10M")
        if local2d_size not in LOCAL2D_SIZES:
            raise ConfigError(
                f"tokenizer.local2d_size: unknown size '{local2d_size}'; choose from {', '.join(LOCAL2D_SIZES)}"
            )
        num_local_tokens = num_local_tokens or num_latent_tokens
        self.groups = BRANCHES[branches]
        if local1d_dim is None:
            local1d_dim = token_size if shared_codebook else 2 * token_size
        if local1d_dim < 1:
            raise ConfigError(f"tokenizer.local1d_dim: the width of z_L1 must be >= 1, got {local1d_dim}")
        if shared_codebook and local1d_dim != token_size and "local1d" in self.groups:
            raise ConfigError(
                f"tokenizer.local1d_dim: a shared codebook holds every group's tokens, so z_L1 must have "
                f"the token width {token_size}, got {local1d_dim}; set it to null or use separate codebooks"
            )
        dims = {"global": token_size, "local1d": local1d_dim, "local2d": token_size}
        self.fusion = fusion
        if fusion == "soft_residual":
            if "local2d" in self.groups and num_local_tokens != num_latent_tokens:
                raise ConfigError(
                    f"tokenizer.num_local_tokens: soft residual fusion adds z_L2 to z_G token by "
                    f"token, so N_l ({num_local_tokens}) must equal num_latent_tokens "
                    f"({num_latent_tokens}); use fusion: concat"
                )
            if not (0 <= alpha <= 1 and 0 <= beta <= 1 and alpha + beta <= 1):
                raise ConfigError(
                    f"tokenizer.alpha / tokenizer.beta: soft residual fusion needs alpha, beta >= 0 "
                    f"and alpha + beta <= 1, got {alpha}, {beta}"
                )
            raw = {"global": alpha, "local1d": beta, "local2d": 1 - alpha - beta}
            total = sum(raw[g] for g in self.groups)
            if total <= 0:
                raise ConfigError(
                    f"tokenizer.alpha / tokenizer.beta: the fusion weights of the groups of "
                    f"branches '{branches}' sum to 0 (alpha {alpha}, beta {beta})"
                )
            self.fusion_weights = {g: raw[g] / total for g in self.groups}

        # Eq. 1: the global tokens z_G.
        width, depth, heads = vit_size(size)
        shape = {
            "image_size": image_size,
            "patch_size": patch_size,
            "width": width,
            "depth": depth,
            "heads": heads,
            "token_size": token_size,
        }
        self.encoder = LatentViTEncoder(num_latent_tokens=num_latent_tokens, **shape)
        # Eq. 8-9: the local tokens predicted from Z_G; z_L1 in the wider token space of width local1d_dim.
        self.local1d = self.local1d_fuse = None
        if "local1d" in self.groups:
            hidden = local1d_hidden or width
            self.local1d = nn.Sequential(nn.Linear(token_size, hidden), nn.GELU(), nn.Linear(hidden, local1d_dim))
            self.local1d_fuse = nn.Linear(local1d_dim, token_size) if local1d_dim != token_size else None
        a_width, a_depth, a_heads = LOCAL2D_SIZES[local2d_size]
        self.local2d = (
            Local2DAligner(
                token_size, num_latent_tokens, num_local_tokens, a_width, a_depth, a_heads, local2d_form, causal
            )
            if "local2d" in self.groups
            else None
        )
        # Eq. 1-3: soft VQ, one codebook per group (C_tot, each of its group's width) or one shared codebook.
        books = {"shared": token_size} if shared_codebook else {g: dims[g] for g in self.groups}
        self.quantizers = nn.ModuleDict(
            {g: SoftVectorQuantizer(codebook_size, dim, tau, l2_norm) for g, dim in books.items()}
        )
        # Eq. 10-11: the decoder over the fused tokens, reading the locals through cross-attention.
        counts = {"global": num_latent_tokens, "local1d": num_latent_tokens, "local2d": num_local_tokens}
        fused = sum(counts[g] for g in self.groups) if fusion == "concat" else num_latent_tokens
        self.decoder = CrossAttentionViTDecoder(
            num_latent_tokens=fused, **shape, context_tokens={g: (counts[g], dims[g]) for g in self.groups[1:]}
        )

        # Eq. 5-7: REPA teachers (plain objects, not modules) and their trainable projectors.
        self.align_weight = align_weight
        self.repa_global_weight, self.repa_local_weight, self.ot_weight = (
            repa_global_weight,
            repa_local_weight,
            ot_weight,
        )
        # A term weighted 0 gets no teacher, projector or OT target (nor their pretraining: benchmark/graph.py).
        self.teacher_global = self.projector_global = None
        if align_global is not None and align_weight * repa_global_weight > 0:
            self.teacher_global, dim = build_teacher(align_global, "tokenizer.align_global")
            self.projector_global = Projector(token_size, dim)
        self.local_align_group = LOCAL_ALIGN_TOKENS[local_align_tokens]
        self.teacher_local = self.projector_local = None
        if align_local is not None and self.local_align_group in self.groups and align_weight * repa_local_weight > 0:
            self.teacher_local, dim = build_teacher(align_local, "tokenizer.align_local")
            self.projector_local = Projector(dims[self.local_align_group], dim)
        # Eq. 12-13: the frozen 2D latent encoder, and z_L2 -> C when the widths differ.
        self.latent_2d, self.ot_proj, self.ot_epsilon = None, None, ot_epsilon
        uses_ot = latent_2d is not None and "local2d" in self.groups and align_weight * ot_weight > 0
        # a 2D tokenizer trained by the train_latent_2d stage, which has not given its checkpoint: never random
        self.ot_target_pending = uses_ot and latent_2d.get("train") is not None and not latent_2d.get("checkpoint")
        if uses_ot:
            self.latent_2d = build_latent_2d(latent_2d, image_size)
            with torch.no_grad():
                channels = self.latent_2d.net.latent_grid(torch.zeros(1, 3, image_size, image_size)).shape[-1]
            self.ot_proj = nn.Linear(token_size, channels) if channels != token_size else None
        self.apply(init_vit_weights)

        # Eq. 4's pixel terms and the adversary (which the trainer drives).
        # on images in [-1, 1], the range the model works in, as SoftVQ's training code (the baseline it builds on)
        self.pixel = PixelObjective(recon_loss, recon_weight, perceptual, pixel_range=(-1.0, 1.0))
        self.kl_weight = kl_weight
        self.adversary = (
            None if adversarial is None else build_adversary({**SOFTVQ_ADVERSARIAL, **adversarial}, image_size)
        )
        self.encoder_init = encoder
        self.token_spec = TokenSpec("continuous", (num_latent_tokens,), dim=token_size)
        self.stage2_train = stage2_train
        self.constant_terms: set[str] = set()  # REPA terms whose inputs stage 2 froze (freeze_for_stage2)
        if stage == 2:
            self.freeze_for_stage2()

    # -- tokens -----------------------------------------------------------------------------------

    def quantize_module(self, group: str) -> SoftVectorQuantizer:
        """The soft quantiser of a token group: its own codebook, or the shared one."""
        return self.quantizers["shared" if "shared" in self.quantizers else group]

    def quantize(self, group: str, z: Tensor) -> tuple[Tensor, Tensor]:
        """Eq. 2-3 with the group's codebook: (soft-quantised Z, code probabilities q)."""
        return self.quantize_module(group)(z)

    def global_tokens(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Eq. 1-3: (z_G, Z_G, q_G) for images in [0, 1]."""
        z = self.encoder(images * 2 - 1)
        return (z, *self.quantize("global", z))

    def local_tokens(self, zq_global: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
        """Eq. 8-9 then Eq. 2-3: the local tokens bootstrapped from Z_G, as (z, Z, q) per local group.

        The MLP and the aligner read the soft-quantised Z_G where the paper writes z_G ("z_L1 = MLP(z_G)"):
        decoding has only Z_G (what the generator models and :meth:`decode` receives), so training
        bootstraps the locals from the same input that inference gives them."""
        z: dict[str, Tensor] = {}
        if self.local1d is not None:
            z["local1d"] = self.local1d(zq_global)
        if self.local2d is not None:
            z["local2d"] = self.local2d.predict(zq_global)
        quantized = {g: self.quantize(g, t) for g, t in z.items()}
        return z, {g: zq for g, (zq, _) in quantized.items()}, {g: q for g, (_, q) in quantized.items()}

    def fuse(self, tokens: Mapping[str, Tensor]) -> Tensor:
        """Eq. 11 over the present groups: the soft residual sum, or the concatenation along the sequence;
        a z_L1 wider than the tokens (Eq. 8) enters through its linear map to the token width."""
        if self.local1d_fuse is not None:
            tokens = {**tokens, "local1d": self.local1d_fuse(tokens["local1d"])}
        if self.fusion == "concat":
            return torch.cat([tokens[g] for g in self.groups], dim=1)
        return sum(self.fusion_weights[g] * tokens[g] for g in self.groups)

    def reconstruct_from(self, zq_global: Tensor, zq_local: Mapping[str, Tensor]) -> Tensor:
        """Eq. 10: Dec(Fuse(Z_G, Z_L1, Z_L2); Z_L1; Z_L2), images in [0, 1] (not clamped)."""
        fused = self.fuse({"global": zq_global, **zq_local})
        return (self.decoder(fused, zq_local) + 1) / 2

    def encode(self, images: Tensor) -> Tensor:
        """Images (B, 3, H, W) in [0, 1] -> the soft-quantised global tokens Z_G (B, K_g, d)."""
        return self.global_tokens(images)[1]

    def decode(self, tokens: Tensor) -> Tensor:
        """Z_G (B, K_g, d) -> images: the locals are predicted from Z_G (Eq. 8-9), quantised, fused, decoded."""
        return self.reconstruct_from(tokens, self.local_tokens(tokens)[1]).clamp(0, 1)

    def encode_with_codes(self, images: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Z_G and argmax_k q(k | z) per token of each group: {"global": (B, K_g), "local1d": ..., "local2d": ...}."""
        _, zq_global, q_global = self.global_tokens(images)
        q = {"global": q_global, **self.local_tokens(zq_global)[2]}
        return zq_global, {g: p.argmax(-1) for g, p in q.items()}

    def codebook_sizes(self) -> dict[str, int]:
        """The size of the codebook behind each key of :meth:`encode_with_codes`' codes."""
        return {g: self.quantize_module(g).codebook_size for g in self.groups}

    def last_layer(self) -> Tensor:
        """Where the adaptive GAN weight compares the two losses' gradients: the decoder's output layer, or,
        in a stage 2 that freezes the decoder (``stage2_train: aligner``), the output layer of the local 2D
        aligner, the last trained layer both losses still reach (through the frozen decoder)."""
        head = self.decoder.head.weight
        return head if head.requires_grad else self.local2d.head.weight

    # -- training ---------------------------------------------------------------------------------

    def forward(self, images: Tensor) -> TokenizerOutput:
        """Eq. 4 without the adversarial term (the trainer adds it): recon, perceptual, kl, repa_global,
        repa_local, ot, each already weighted."""
        z_global, zq_global, q_global = self.global_tokens(images)
        z_local, zq_local, q_local = self.local_tokens(zq_global)
        recon = self.reconstruct_from(zq_global, zq_local)
        losses = self.pixel(images, recon)
        if self.kl_weight > 0:
            probs = [q_global, *q_local.values()]
            losses["kl"] = self.kl_weight * sum(kl_to_uniform(p) for p in probs)
        # A term whose inputs stage 2 froze is a constant: its teacher is not run (one weighted 0 has none).
        if self.teacher_global is not None and "repa_global" not in self.constant_terms:
            # Eq. 6
            sim = patchwise_similarity_loss(
                self.projector_global(z_global), self.teacher_global.teacher_features(images)
            )
            losses["repa_global"] = self.align_weight * self.repa_global_weight * sim
        if self.teacher_local is not None and "repa_local" not in self.constant_terms:
            # Eq. 7
            tokens = z_local[self.local_align_group]
            sim = patchwise_similarity_loss(self.projector_local(tokens), self.teacher_local.teacher_features(images))
            losses["repa_local"] = self.align_weight * self.repa_local_weight * sim
        if self.latent_2d is not None:  # Eq. 12-13
            if self.ot_target_pending and images.device.type != "meta":  # meta: plan-time shapes and costs
                raise ConfigError(
                    "tokenizer.latent_2d.train: the OT target's training (a train_latent_2d stage) has not "
                    "given it a checkpoint"
                )
            with torch.no_grad():
                grid = self.latent_2d.net.latent_grid(images)
            z_l2 = z_local["local2d"] if self.ot_proj is None else self.ot_proj(z_local["local2d"])
            losses["ot"] = self.align_weight * self.ot_weight * ot_loss(grid, z_l2, epsilon=self.ot_epsilon)
        return TokenizerOutput(recon=recon, losses=losses, tokens=zq_global.detach())

    # -- two-stage local scaling (Sec. 3.4) -------------------------------------------------------

    def load_stage1(self, state_dict: Mapping[str, Tensor]) -> list[str]:
        """Copy every tensor of a stage-1 checkpoint whose key and shape match this model's: all of them but
        a resized local 2D aligner's (and a discriminator's that only one side has). Returns the keys not
        copied, sorted: this model's keys that keep their initialisation and the checkpoint's keys that
        found no place (e.g. blocks of a deeper stage-1 aligner). Any other key that does not fit (a
        finetune that changed ``fusion``, ``num_local_tokens``, ...) is an error, not a fresh module."""
        own = self.state_dict()
        take = {k: v for k, v in state_dict.items() if k in own and own[k].shape == v.shape}
        skipped = sorted((set(own) | set(state_dict)) - set(take))
        misfits = [k for k in skipped if not k.startswith(("local2d.", "adversary."))]
        if misfits:
            raise WeightsError(
                f"the stage-1 checkpoint does not fit this tokenizer beyond its local 2D aligner: {misfits[:4]}",
                "stage 2 may change only tokenizer.local2d_size (and stage, stage2_train) of stage 1's tokenizer",
            )
        self.load_state_dict(take, strict=False)
        return skipped

    def freeze_for_stage2(self) -> None:
        """Stage 2: gradients off for what makes Z_G (the encoder and the codebook of Z_G), for the global
        REPA projector and, with ``stage2_train: aligner``, everything else but the local 2D aligner too (the
        local 1D MLP, the local codebooks, the decoder and the projectors stay as stage 1 left them). The
        adversary's discriminator keeps training: it is driven by its own optimiser and must keep up with
        the improving decoder output. The REPA terms left with no trained input are ``constant_terms``."""
        if self.local2d is None:
            raise ConfigError("tokenizer.stage: stage 2 scales the local 2D aligner; it needs branches G+L1+L2")
        self.requires_grad_(False)
        trained: list[nn.Module | None] = [self.local2d]
        if self.stage2_train == "all_but_encoder":
            locals_ = [q for g, q in self.quantizers.items() if g not in ("global", "shared")]
            trained += [self.local1d, self.local1d_fuse, self.decoder, self.projector_local, self.ot_proj, *locals_]
        for module in trained:
            if module is not None:
                module.requires_grad_(True)
        if self.adversary is not None:
            self.adversary.requires_grad_(True)
        local_source = self.local1d if self.local_align_group == "local1d" else self.local2d
        inputs = {
            "repa_global": (self.encoder, self.projector_global),
            "repa_local": (self.encoder, self.quantize_module("global"), local_source, self.projector_local),
        }
        self.constant_terms = {term for term, modules in inputs.items() if not trains(*modules)}

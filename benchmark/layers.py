"""Neural-network building blocks shared by the tokenizers and generators.

Transformer blocks use ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels on GPU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Attention(nn.Module):
    """Multi-head self-attention, softmax(QK^T / sqrt(d) + M) V, through SDPA; ``mask`` (optional) is
    SDPA's boolean mask (True: the query may attend to the key). ``qkv_bias``: whether the q / k / v
    projection has a bias (U-ViT's has none)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Sequential):
    """Two-layer GELU MLP of a transformer block."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class LayerScale(nn.Module):
    """Per-channel residual-branch scale ``gamma * x`` (CaiT, Touvron et al. 2021; timm's ``ls1`` / ``ls2``)."""

    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: Tensor) -> Tensor:
        return self.gamma * x


class Block(nn.Module):
    """Pre-norm ViT block: x + Attn(LN(x)), then x + MLP(LN(x)); ``mask`` goes to the attention.

    ``norm_eps``: the LayerNorms' epsilon (timm / DINOv2 ViTs use 1e-6). ``layer_scale``: when set, each
    residual branch is scaled per channel, x + gamma_1 * Attn(LN(x)), x + gamma_2 * MLP(LN(x)), with the
    gammas initialised to this value (timm's ``init_values``; SoftVQ's ViTs: 1e-5). ``post_norm``: the
    post-norm order of BERT (HF ``BertLayer``), x = LN_1(x + Attn(x)), then x = LN_2(x + MLP(x)).
    ``qkv_bias``: see :class:`Attention`.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        norm_eps: float = 1e-5,
        layer_scale: float | None = None,
        post_norm: bool = False,
        qkv_bias: bool = True,
    ) -> None:
        super().__init__()
        self.post_norm = post_norm
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        if layer_scale is not None:
            self.ls1, self.ls2 = LayerScale(dim, layer_scale), LayerScale(dim, layer_scale)
        else:
            self.ls1 = self.ls2 = nn.Identity()

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if self.post_norm:
            x = self.norm1(x + self.ls1(self.attn(x, mask)))
            return self.norm2(x + self.ls2(self.mlp(x)))
        x = x + self.ls1(self.attn(self.norm1(x), mask))
        return x + self.ls2(self.mlp(self.norm2(x)))


class Transformer(nn.Sequential):
    """A stack of ``depth`` ViT blocks (options of :class:`Block`)."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        norm_eps: float = 1e-5,
        layer_scale: float | None = None,
        post_norm: bool = False,
        qkv_bias: bool = True,
    ) -> None:
        super().__init__(
            *(Block(dim, num_heads, mlp_ratio, norm_eps, layer_scale, post_norm, qkv_bias) for _ in range(depth))
        )


def init_vit_weights(module: nn.Module) -> None:
    """ViT initialisation: truncated-normal(0.02) linear weights, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def patchify(images: Tensor, patch: int) -> Tensor:
    """(B, C, H, W) -> (B, H/p * W/p, p * p * C), patches in raster order."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def unpatchify(patches: Tensor, patch: int, grid: int, channels: int = 3) -> Tensor:
    """Inverse of :func:`patchify` for a square ``grid`` x ``grid`` of patches."""
    b = patches.shape[0]
    x = patches.reshape(b, grid, grid, patch, patch, channels).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, channels, grid * patch, grid * patch)


class Frozen(nn.Module):
    """A frozen loss network (perceptual net, alignment teacher, 2D latent encoder) held by a model.

    The wrapped network follows the owner's ``.to()`` / ``.float()`` and is called like a function,
    but it is not a registered child: its weights stay out of ``parameters()`` (so out of the
    optimiser, EMA and parameter counts) and out of ``state_dict()`` (so out of checkpoints, which
    hold only what training changes). It always runs in eval mode with gradients off for its own
    weights; gradients still flow through it to its inputs.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.__dict__["net"] = net.eval().requires_grad_(False)

    def _apply(self, fn, recurse: bool = True):  # type: ignore[no-untyped-def]
        self.__dict__["net"]._apply(fn)
        return super()._apply(fn, recurse)

    def train(self, mode: bool = True) -> Frozen:
        super().train(mode)
        self.__dict__["net"].eval()
        return self

    def forward(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return self.__dict__["net"](*args, **kwargs)


def hf_layers(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks of a transformers vision model (``encoder.layer``, or ``layers`` where the
    model holds them itself, as transformers 5's ``IJepaModel``)."""
    encoder = getattr(model, "encoder", model)
    return next(getattr(encoder, a) for a in ("layer", "layers") if hasattr(encoder, a))

"""Neural-network building blocks shared by the tokenizers and generators.

Transformer blocks use ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels on GPU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Attention(nn.Module):
    """Multi-head self-attention, softmax(QK^T / sqrt(d)) V, through SDPA."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Sequential):
    """Two-layer GELU MLP of a transformer block."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class Block(nn.Module):
    """Pre-norm ViT block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Sequential):
    """A stack of ``depth`` ViT blocks."""

    def __init__(self, dim: int, depth: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__(*(Block(dim, num_heads, mlp_ratio) for _ in range(depth)))


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


class VectorQuantizer(nn.Module):
    """Hard vector quantisation with a straight-through estimator (VQ-VAE, van den Oord et al. 2017).

    q(z) = e_k with k = argmin_j ||z - e_j||^2 (on the unit sphere when ``l2_norm``, as TiTok does).
    Losses: codebook ||sg[z] - e_k||^2 and commitment beta * ||z - sg[e_k]||^2; the decoder sees
    z + sg[e_k - z], so gradients pass straight through to the encoder.
    """

    def __init__(self, codebook_size: int, dim: int, commitment: float = 0.25, l2_norm: bool = True) -> None:
        super().__init__()
        self.codebook_size = codebook_size
        self.commitment = commitment
        self.l2_norm = l2_norm
        self.embedding = nn.Embedding(codebook_size, dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / codebook_size, 1.0 / codebook_size)

    def codebook(self) -> Tensor:
        w = self.embedding.weight
        return F.normalize(w, dim=-1) if self.l2_norm else w

    def indices(self, z: Tensor) -> Tensor:
        """Nearest code ids for vectors z (..., dim)."""
        if self.l2_norm:
            z = F.normalize(z, dim=-1)
        flat = z.reshape(-1, z.shape[-1]).float()
        codes = self.codebook().float()
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ codes.t() + codes.pow(2).sum(1)[None]
        return dist.argmin(1).view(z.shape[:-1])

    def lookup(self, ids: Tensor) -> Tensor:
        return F.embedding(ids, self.codebook())

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """z (..., dim) -> (straight-through quantised z, code ids, {codebook, commitment} losses)."""
        if self.l2_norm:
            z = F.normalize(z, dim=-1)
        ids = self.indices(z)
        zq = self.lookup(ids).to(z.dtype)
        losses = {
            "codebook": F.mse_loss(zq, z.detach()),
            "commitment": self.commitment * F.mse_loss(z, zq.detach()),
        }
        return z + (zq - z).detach(), ids, losses

"""REPA-style representation alignment (Yu et al. 2025), shared by SoftVQ-VAE, SelfBootTok (Eq. 6-7)
and SiT.

    L_align = -1/N sum_n cos(h_phi(z_n), y_n)

``z`` are a model's tokens or hidden states (B, N, C), ``h_phi`` a trainable MLP projector to the
teacher's width D, ``y`` a frozen teacher's patch features (B, M, D) resampled to N positions.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn


class Projector(nn.Sequential):
    """REPA's projector: Linear -> SiLU -> Linear -> SiLU -> Linear."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int | None = None) -> None:
        hidden = hidden or max(in_dim, out_dim) * 4
        super().__init__(nn.Linear(in_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                         nn.Linear(hidden, out_dim))


def resample_tokens(features: Tensor, n: int) -> Tensor:
    """Teacher features (B, M, D) at ``n`` positions: when M and n are both square the M patches are a
    grid, average-pooled to a sqrt(n) x sqrt(n) grid (each token sees one image region); otherwise the
    sequence is average-pooled in 1D. Identity when M == n."""
    b, m, d = features.shape
    if m == n:
        return features
    gm, gn = math.isqrt(m), math.isqrt(n)
    if gm * gm == m and gn * gn == n:
        grid = features.transpose(1, 2).reshape(b, d, gm, gm)
        return F.adaptive_avg_pool2d(grid, gn).flatten(2).transpose(1, 2)
    return F.adaptive_avg_pool1d(features.transpose(1, 2), n).transpose(1, 2)


def patchwise_similarity_loss(projected: Tensor, features: Tensor) -> Tensor:
    """PatchwiseSim of SelfBootTok Eq. 6-7 as a loss: mean negative cosine similarity between projected
    tokens (B, N, D) and teacher features (B, M, D) resampled to N positions."""
    target = resample_tokens(features.to(projected.dtype), projected.shape[1])
    return -F.cosine_similarity(projected, target, dim=-1).mean()

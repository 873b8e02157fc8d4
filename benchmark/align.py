"""REPA-style representation alignment (Yu et al. 2025), shared by SoftVQ-VAE, SelfBootTok (Eq. 6-7)
and SiT.

    L_align = -1/N sum_n cos(h_phi(z_n), y_n)

``z`` are a model's tokens or hidden states (B, N, C), ``h_phi`` a trainable MLP projector to the
teacher's width D, ``y`` a frozen teacher's patch features (B, M, D) resampled to N positions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.encoders import NoEncoder, PretrainedEncoder, build_encoder
from benchmark.errors import ConfigError
from benchmark.options import nested


def teacher_entry(spec: Mapping[str, Any], where: str) -> PretrainedEncoder:
    """The encoder entry a teacher mapping names (checked; nothing loaded); 'none' is refused."""
    teacher = build_encoder(spec, where=where)
    if isinstance(teacher, NoEncoder):
        raise ConfigError(
            f"{where}.init: 'none' has no features to align to; choose a pretrained encoder or set {where}: null"
        )
    return teacher


def build_teacher(spec: Mapping[str, Any], where: str) -> tuple[PretrainedEncoder, int]:
    """A frozen alignment teacher (a benchmark.encoders entry, a plain object: its weights stay out of
    the model's parameters and checkpoints) and its feature width D. A stand-in's width comes from a probe
    that loads it here, so its random weights are drawn at the same point of every build (not cached).

    A stand-in pretrained offline (``pretrain``) gets its ``weights`` from its pretraining stage in the
    stages that train with it (benchmark/encoder_pretraining.py ``with_pretrained_teachers``). Elsewhere
    (plan-time estimates; a trained model rebuilt for evaluation or sampling, which never calls its
    teacher) the width is probed on the same architecture with random weights, and the teacher refuses
    to give features (:meth:`PretrainedEncoder.model`)."""
    teacher = teacher_entry(spec, where)
    if teacher.pretrain is None or teacher.weights is not None:
        return teacher, teacher.feature_dim()
    return teacher, teacher_entry({k: v for k, v in spec.items() if k != "pretrain"}, where).feature_dim()


TeacherOptions = nested(teacher_entry)


class Projector(nn.Sequential):
    """REPA's projector: Linear -> SiLU -> Linear -> SiLU -> Linear."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int | None = None) -> None:
        hidden = hidden or max(in_dim, out_dim) * 4
        super().__init__(
            nn.Linear(in_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, out_dim)
        )


def resample_tokens(features: Tensor, n: int, grid: bool = True) -> Tensor:
    """Teacher features (B, M, D) at ``n`` positions. With ``grid``, when M and n are both square the M
    patches are a grid, average-pooled to a sqrt(n) x sqrt(n) grid (each token sees one image
    region); otherwise (or without ``grid``) contiguous runs of the raster-ordered patches are
    average-pooled in 1D. Identity when M == n."""
    b, m, d = features.shape
    if m == n:
        return features
    gm, gn = math.isqrt(m), math.isqrt(n)
    if grid and gm * gm == m and gn * gn == n:
        grid_features = features.transpose(1, 2).reshape(b, d, gm, gm)
        return F.adaptive_avg_pool2d(grid_features, gn).flatten(2).transpose(1, 2)
    return F.adaptive_avg_pool1d(features.transpose(1, 2), n).transpose(1, 2)


def patchwise_similarity_loss(projected: Tensor, features: Tensor, grid: bool = True) -> Tensor:
    """PatchwiseSim of SelfBootTok Eq. 6-7 as a loss: mean negative cosine similarity between projected
    tokens (B, N, D) and teacher features (B, M, D) resampled to N positions (:func:`resample_tokens`)."""
    target = resample_tokens(features.to(projected.dtype), projected.shape[1], grid)
    return -F.cosine_similarity(projected, target, dim=-1).mean()

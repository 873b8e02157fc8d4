"""Streaming evaluation metrics: reconstruction quality (PSNR, SSIM) and codebook statistics.

A metric sees the evaluation set one ``EvalBatch`` at a time through ``update`` and reports named
values from ``compute``. Batches stay on the evaluation device: per-image scores are computed there in
float32 (no autocast, no TF32: :func:`benchmark.precision.exact_float32`) and summed into float64 (or
int64) running totals on that device, read back once by ``compute``, so evaluation streams without a
host sync per batch and a result does not depend on how the set was split into batches. Under several
processes each rank updates its metrics on its own batches and :func:`gather_metrics` merges their
running statistics (``state`` / ``merge``), so every rank computes the results of the whole set.
Register a new metric with ``@register_metric("name")``; the first line of its docstring is its
description in ``python -m benchmark.list``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmark import distributed
from benchmark.base import TokenSpec
from benchmark.errors import ConfigError
from benchmark.precision import exact_float32
from benchmark.registry import METRICS, register_metric


@dataclass(frozen=True)
class EvalBatch:
    """One evaluation batch, its tensors on the evaluation device.

    ``images`` and ``recons`` are float (B, 3, H, W) in [0, 1]; ``tokens`` is what the tokenizer's
    ``encode`` returned: int64 ids (B, *token_spec.shape) for a discrete spec, floats
    (B, *token_spec.shape, dim) for a continuous one; ``labels`` are the (B,) class labels.
    ``codes`` are the hard code ids per codebook of tokenizers that have ``code_ids`` (soft-VQ and
    multi-codebook tokenizers, from ``encode_with_codes``), with each codebook's size in ``codebook_sizes``.
    """

    images: Tensor
    recons: Tensor
    tokens: Tensor
    labels: Tensor
    codes: dict[str, Tensor] | None = None
    codebook_sizes: dict[str, int] | None = None


class Metric(ABC):
    """A streaming metric: ``update`` once per batch, then ``compute`` over everything seen.

    Subclasses that take options add them as keyword-only, type-hinted ``__init__`` arguments.
    """

    registry_name: str

    def __init__(self, token_spec: TokenSpec) -> None:
        self.token_spec = token_spec

    @abstractmethod
    def update(self, batch: EvalBatch) -> None:
        """Add one batch to the running statistics."""

    @abstractmethod
    def compute(self) -> dict[str, float]:
        """Named results over all batches seen so far."""

    @abstractmethod
    def state(self) -> Any:
        """The running statistics as picklable CPU objects (None before any update), for :func:`gather_metrics`."""

    @abstractmethod
    def merge(self, states: list[Any]) -> None:
        """Take as running statistics those of every process's ``state()`` (in rank order) together."""

    def _name(self) -> str:
        return getattr(self, "registry_name", type(self).__name__)


class PerImageMean(Metric):
    """The mean over images of a per-image score: scores in float32 (or the inputs' wider float type) on
    the batch's device, summed there in float64 (on the CPU for MPS, which has no float64)."""

    key: str

    def __init__(self, token_spec: TokenSpec) -> None:
        super().__init__(token_spec)
        self._total: Tensor | None = None
        self._count = 0

    @abstractmethod
    def per_image(self, images: Tensor, recons: Tensor) -> Tensor:
        """Scores of shape (B,) for images and reconstructions (B, 3, H, W) clamped to [0, 1]."""

    @torch.no_grad()
    def update(self, batch: EvalBatch) -> None:
        images, recons = batch.images, batch.recons
        if images.shape != recons.shape or images.ndim != 4:
            raise ValueError(
                f"metric {self._name()}: images {tuple(images.shape)} and reconstructions "
                f"{tuple(recons.shape)} must have the same (B, C, H, W) shape"
            )
        dtype = torch.promote_types(torch.promote_types(images.dtype, recons.dtype), torch.float32)
        with exact_float32(images.device):
            scores = self.per_image(images.to(dtype).clamp(0, 1), recons.to(dtype).clamp(0, 1)).detach()
        if scores.device.type == "mps":
            scores = scores.cpu()
        total = scores.to(torch.float64).sum()
        self._total = total if self._total is None else self._total + total
        self._count += scores.numel()

    def state(self) -> tuple[Tensor, int] | None:
        """The float64 sum of the scores (CPU) and their count."""
        return None if self._total is None else (self._total.cpu(), self._count)

    def merge(self, states: list[tuple[Tensor, int] | None]) -> None:
        seen = [s for s in states if s is not None]
        self._total = sum(total for total, _ in seen) if seen else None
        self._count = sum(count for _, count in seen)

    def compute(self) -> dict[str, float]:
        if self._total is None or self._count == 0:
            raise RuntimeError(f"metric {self._name()}: compute() called before any update()")
        return {self.key: self._total.item() / self._count}


@register_metric("psnr")
class PSNR(PerImageMean):
    """Peak signal-to-noise ratio in dB, mean over images of 10 log10(1 / MSE) (data range 1)."""

    key = "psnr"
    min_mse = 1e-10  # an exact reconstruction scores 100 dB instead of inf

    def per_image(self, images: Tensor, recons: Tensor) -> Tensor:
        """PSNR = 10 log10(MAX^2 / MSE) with MAX = 1 and MSE over all pixels and channels."""
        mse = (images - recons).square().mean(dim=(1, 2, 3)).clamp_min(self.min_mse)
        return 10.0 * torch.log10(1.0 / mse)


@register_metric("ssim")
class SSIM(PerImageMean):
    """Structural similarity (Wang et al. 2004): 11x11 Gaussian window, sigma 1.5, mean over RGB."""

    # Hand written rather than a library call: it is small, runs batched on the GPU, adds no
    # dependency, and tests/test_metrics.py checks it against scikit-image.
    key = "ssim"
    sigma = 1.5
    radius = 5  # 11 taps, as scikit-image's int(3.5 * sigma + 0.5)
    k1, k2 = 0.01, 0.03

    def __init__(self, token_spec: TokenSpec) -> None:
        super().__init__(token_spec)
        x = torch.arange(-self.radius, self.radius + 1, dtype=torch.float64)
        window = torch.exp(-(x**2) / (2 * self.sigma**2))
        self._window = window / window.sum()
        self._on_device: dict[tuple[torch.device, torch.dtype], Tensor] = {}  # one copy per device: no sync per batch

    def _blur(self, x: Tensor) -> Tensor:
        """Separable Gaussian filter per channel, 'valid' region only (no padding)."""
        c = x.shape[1]
        key = (x.device, x.dtype)
        if key not in self._on_device:
            self._on_device[key] = self._window.to(device=x.device, dtype=x.dtype)
        w = self._on_device[key]
        x = F.conv2d(x, w.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        return F.conv2d(x, w.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)

    def per_image(self, images: Tensor, recons: Tensor) -> Tensor:
        """Mean over channels and valid window positions of the SSIM map

        SSIM = (2 mu_x mu_y + C1)(2 s_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2)),
        C1 = (0.01)^2, C2 = (0.03)^2, with Gaussian-weighted (population) moments.
        """
        size = 2 * self.radius + 1
        if min(images.shape[-2:]) < size:
            raise ValueError(f"metric ssim needs images of at least {size}x{size}, got {tuple(images.shape[-2:])}")
        x, y = images, recons
        mu_x, mu_y = self._blur(x), self._blur(y)
        var_x = self._blur(x * x) - mu_x**2
        var_y = self._blur(y * y) - mu_y**2
        cov = self._blur(x * y) - mu_x * mu_y
        c1, c2 = self.k1**2, self.k2**2
        ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
        return ssim_map.mean(dim=(1, 2, 3))


@register_metric("codebook_usage")
class CodebookUsage(Metric):
    """Codebook usage (percent of codes used), code perplexity exp(H) and entropy H, per codebook.

    A discrete tokenizer's ids are its one codebook; tokenizers with codebooks report every
    codebook (``codebook_usage_<name>``, ...), and the plain ``codebook_usage`` is that of the first.
    Usage counts per code are kept (:meth:`histogram`) for the codebook analyses. Counts and the range
    of the ids seen stay on the batches' device; ids outside a codebook are reported by ``compute`` and
    ``histogram`` (checking them in ``update`` would wait for the device every batch).
    """

    def __init__(self, token_spec: TokenSpec) -> None:
        super().__init__(token_spec)
        self._counts: dict[str, Tensor] = {}
        self._spans: dict[str, Tensor] = {}  # (min id, max id) seen, per codebook

    def _add(self, name: str, ids: Tensor, size: int) -> None:
        ids = ids.detach().reshape(-1).long()
        counts = self._counts.setdefault(name, torch.zeros(size, dtype=torch.int64, device=ids.device))
        if not ids.numel():
            return
        self._widen(name, torch.stack([ids.min(), ids.max()]))
        counts.index_add_(0, ids.clamp(0, size - 1), ((ids >= 0) & (ids < size)).long())

    def _widen(self, name: str, span: Tensor) -> None:
        """Extend the (min id, max id) seen in codebook ``name`` by ``span``."""
        if name in self._spans:
            span = torch.stack(
                [torch.minimum(self._spans[name][0], span[0]), torch.maximum(self._spans[name][1], span[1])]
            )
        self._spans[name] = span

    def state(self) -> tuple[dict[str, Tensor], dict[str, Tensor]] | None:
        """The usage counts and id spans of every codebook (CPU)."""
        if not self._counts:
            return None
        return {n: c.cpu() for n, c in self._counts.items()}, {n: s.cpu() for n, s in self._spans.items()}

    def merge(self, states: list[tuple[dict[str, Tensor], dict[str, Tensor]] | None]) -> None:
        self._counts, self._spans = {}, {}
        for counts, spans in filter(None, states):
            for name, c in counts.items():
                self._counts[name] = self._counts[name] + c if name in self._counts else c.clone()
            for name, span in spans.items():
                self._widen(name, span)

    def _checked(self) -> dict[str, Tensor]:
        """The counts (on the CPU), after checking that every id seen lies inside its codebook."""
        counts = {name: c.cpu() for name, c in self._counts.items()}
        for name, span in self._spans.items():
            low, high = span.tolist()
            if low < 0 or high >= len(counts[name]):
                raise ValueError(
                    f"metric codebook_usage: {name} ids span [{low}, {high}], outside [0, {len(counts[name])})"
                )
        return counts

    @torch.no_grad()
    def update(self, batch: EvalBatch) -> None:
        if batch.codes:
            sizes = batch.codebook_sizes or {}
            for name, ids in batch.codes.items():
                if name not in sizes:
                    raise ValueError(f"metric codebook_usage: no codebook size for '{name}'")
                self._add(name, ids, sizes[name])
        elif self.token_spec.kind == "discrete":
            self._add("codes", batch.tokens, self.token_spec.vocab_size)
        else:
            raise ConfigError(
                "metric codebook_usage needs discrete tokens or a tokenizer with code_ids "
                f"(token_spec.kind={self.token_spec.kind})"
            )

    def histogram(self, name: str | None = None) -> Tensor:
        """How many times each code of codebook ``name`` (default: the first) was used (CPU, int64)."""
        return self._checked()[name or next(iter(self._counts))]

    def histograms(self) -> dict[str, Tensor]:
        """Usage counts of every codebook (CPU, int64)."""
        return self._checked()

    def compute(self) -> dict[str, float]:
        """usage = 100 * #{k : n_k > 0} / V; H = -sum_k p_k ln p_k, p_k = n_k / sum n; perplexity = exp(H)."""
        if not self._counts:
            raise RuntimeError("metric codebook_usage: compute() called before any update()")
        out: dict[str, float] = {}
        for i, (name, counts) in enumerate(self._checked().items()):
            used = counts[counts > 0].to(torch.float64)
            p = used / used.sum()
            entropy = -(p * p.log()).sum().item()
            values = {
                "codebook_usage": 100.0 * used.numel() / len(counts),
                "codebook_perplexity": math.exp(entropy),
                "code_entropy": entropy,
            }
            if i == 0:
                out.update(values)
            if len(self._counts) > 1 or name != "codes":
                out.update({f"{k}_{name}": v for k, v in values.items()})
        return out


def build_metrics(
    names: list[str], token_spec: TokenSpec, options: dict[str, dict[str, Any]] | None = None
) -> list[Metric]:
    """The metrics ``names`` (as in the study's ``eval.metrics``) for a tokenizer's token spec;
    ``options[name]`` are keyword arguments for the metrics that take them (e.g. Inception weights)."""
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"eval.metrics: {', '.join(repeated)} listed more than once")
    options = options or {}
    return [METRICS.get(name, where="eval.metrics").obj(token_spec, **options.get(name, {})) for name in names]


def gather_metrics(metrics: list[Metric]) -> None:
    """Merge the running statistics of ``metrics`` over the data-parallel processes, each of which updated
    them on its own batches (batch b on rank b mod size): then every rank computes the whole set's results.
    Sums merge in float64 in rank order; a collective (every rank calls it)."""
    states = distributed.gather_objects([m.state() for m in metrics])
    for i, metric in enumerate(metrics):
        metric.merge([rank[i] for rank in states])


def protocols(metrics: list[Metric]) -> list[dict[str, Any]]:
    """The protocol records of the metrics that keep one (FID, IS)."""
    return [m.protocol().as_dict() for m in metrics if hasattr(m, "protocol")]


def compute_all(metrics: list[Metric]) -> dict[str, float]:
    """All metrics' results in one dict; two metrics reporting the same key is an error."""
    results: dict[str, float] = {}
    owner: dict[str, str] = {}
    for metric in metrics:
        for key, value in metric.compute().items():
            if key in results:
                raise ConfigError(f"metrics {owner[key]} and {metric._name()} both report '{key}'")
            results[key] = value
            owner[key] = metric._name()
    return results

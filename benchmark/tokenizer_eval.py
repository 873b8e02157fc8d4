"""Reconstruction evaluation of a tokenizer: one pass over a split, every metric streamed.

The ``evaluate_tokenizer`` stage and ``python -m benchmark.evaluate`` both call
:func:`evaluate_tokenizer`, so a checkpoint evaluated inside or outside its study gives the same
numbers and the same protocol record.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from benchmark.base import Tokenizer
from benchmark.checkpoints import load_tokenizer
from benchmark.config import EvalConfig
from benchmark.errors import DataError
from benchmark.metrics import EvalBatch, Metric, build_metrics, compute_all, protocols

PREVIEW = 8  # originals (and their reconstructions) kept for the preview grid


@dataclass
class TokenizerEvaluation:
    """What one evaluation measured: the metrics, the protocol record, a preview (the first originals
    above their reconstructions) and the per-code usage counts of each codebook."""

    metrics: dict[str, float]
    protocol: dict[str, Any]
    preview: Tensor | None = None
    histograms: dict[str, list[int]] = field(default_factory=dict)


def metric_options(cfg: EvalConfig, device: torch.device) -> dict[str, dict[str, Any]]:
    """Options the metrics that run a network (Inception, LPIPS) take from the eval config."""
    inception = {"weights": cfg.inception_weights, "device": str(device)}
    return {"rfid": inception, "inception_score": inception, "gfid": inception, "lpips": {"device": str(device)}}


def evaluate_batch(model: Tokenizer, images: Tensor, labels: Tensor, metrics: list[Metric]) -> Tensor:
    """One batch: one encode (tokens and code ids), one decode, every metric's update on the CPU
    copies; returns the reconstructions (CPU, float32)."""
    tokens, codes = model.encode_with_codes(images)
    recons = model.decode(tokens).float()
    batch = EvalBatch(
        images=images.cpu(),
        recons=recons.cpu(),
        tokens=tokens.cpu(),
        labels=labels,
        codes={k: v.cpu() for k, v in codes.items()} or None,
        codebook_sizes=model.codebook_sizes() if codes else None,
    )
    for metric in metrics:
        metric.update(batch)
    return batch.recons


@torch.no_grad()
def reconstruction_metrics(
    model: Tokenizer, dataset: Dataset, cfg: EvalConfig, device: torch.device, num_workers: int = 0
) -> tuple[list[Metric], Tensor | None]:
    """``cfg.metrics`` of ``model`` over ``dataset`` in order (the metric objects, after every update),
    and the first (up to) 8 originals over their reconstructions."""
    metrics = build_metrics(cfg.metrics, model.token_spec, metric_options(cfg, device))
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=False, num_workers=num_workers)
    preview = None
    for images, labels in loader:
        recons = evaluate_batch(model, images.to(device), labels, metrics)
        if preview is None:
            preview = torch.cat([images[:PREVIEW], recons[:PREVIEW]])
    return metrics, preview


def evaluate_tokenizer(
    folder: Path,
    data: Mapping[str, Any],
    cfg: EvalConfig,
    device: torch.device,
    *,
    split: str = "eval",
    num_workers: int = 0,
    seed: int = 0,
) -> TokenizerEvaluation:
    """``cfg.metrics`` of the tokenizer stored in ``folder`` on ``split`` of the dataset ``data``
    (its first ``cfg.num_images`` images), with the protocol record the reports print."""
    from benchmark.data import build_dataset

    torch.manual_seed(seed)
    model = load_tokenizer(folder, device)
    dataset = build_dataset(data, split)
    skipped = list(getattr(dataset, "skipped", []))  # unreadable images left out (data.on_bad_image: skip)
    if cfg.num_images is not None:
        dataset = Subset(dataset, range(min(cfg.num_images, len(dataset))))
    if len(dataset) == 0:
        raise DataError(f"the {split} split of {dict(data)} holds no images")
    metrics, preview = reconstruction_metrics(model, dataset, cfg, device, num_workers)
    histograms = {
        name: counts.tolist() for m in metrics if hasattr(m, "histograms") for name, counts in m.histograms().items()
    }
    protocol = {
        "split": split,
        "num_images": len(dataset),
        "metrics": cfg.metrics,
        "data": dict(data),
        "seed": seed,
        "precision": "float32",
        "metric_protocols": protocols(metrics),
        "checkpoint": str(folder),
    }
    if skipped:
        protocol["skipped_images"] = {"count": len(skipped), "first": skipped[:10]}
    return TokenizerEvaluation(compute_all(metrics), protocol, preview, histograms)

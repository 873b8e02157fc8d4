"""Reconstruction evaluation of a tokenizer: one pass over a split, every metric streamed.

The ``evaluate_tokenizer`` stage and ``python -m benchmark.evaluate`` both call
:func:`evaluate_tokenizer`, so a checkpoint evaluated inside or outside its study gives the same
numbers and the same protocol record. Everything stays on the device: batches are copied there once
(from pinned memory on CUDA), encoded and decoded under the inference precision (bf16 autocast on CUDA,
benchmark/precision.py), and the metrics update device-side running sums; only the preview comes back.
Under several processes (the stage's ``world``) each rank evaluates batches b = rank mod size and the
metrics' sums are merged (benchmark/metrics.py: ``gather_metrics``), so the numbers do not depend on
the number of processes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from benchmark.base import Tokenizer
from benchmark.checkpoints import load_tokenizer
from benchmark.config import EvalConfig
from benchmark.distributed import ONE_PROCESS, World, derived_seed, rank_batches
from benchmark.errors import DataError
from benchmark.metrics import EvalBatch, Metric, build_metrics, compute_all, gather_metrics, protocols
from benchmark.precision import InferencePrecision

if TYPE_CHECKING:
    from benchmark.fid import FeatureStats

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
    return {"rfid": inception, "inception_score": inception, "lpips": {"device": str(device)}}


def evaluate_batch(
    model: Tokenizer, images: Tensor, labels: Tensor, metrics: list[Metric], precision: InferencePrecision
) -> Tensor:
    """One batch on the model's device: one encode (tokens and code ids) and one decode under
    ``precision``, then every metric's update on the device tensors (float32 reconstructions); returns
    the reconstructions (on the device)."""
    with precision():
        tokens, codes = model.encode_with_codes(images)
        recons = model.decode(tokens)
    batch = EvalBatch(
        images=images,
        recons=recons.float(),
        tokens=tokens,
        labels=labels.to(images.device, non_blocking=True),
        codes=codes or None,
        codebook_sizes=model.codebook_sizes() if codes else None,
    )
    for metric in metrics:
        metric.update(batch)
    return batch.recons


@torch.no_grad()
def reconstruction_metrics(
    model: Tokenizer,
    dataset: Dataset,
    cfg: EvalConfig,
    device: torch.device,
    num_workers: int = 0,
    precision: str = "bf16",
    world: World = ONE_PROCESS,
    rfid_reference: FeatureStats | None = None,
    seed: int | None = None,
) -> tuple[list[Metric], Tensor | None]:
    """``cfg.metrics`` of ``model`` over ``dataset`` in order (the metric objects, after every update),
    and the first (up to) 8 originals over their reconstructions (CPU). With several processes in
    ``world`` (every rank calls it) each evaluates its share of the batches and the metrics are merged:
    every rank's metrics are those of the whole set; the preview is rank 0's (None on the others).
    ``rfid_reference``: the Inception statistics of ``dataset``'s images, computed before (the originals
    then do not run through Inception). ``seed``: batch b's random draws (a tokenizer that samples its
    tokens, e.g. a VAE's posterior) are seeded with (seed, b), whichever rank evaluates it; None: they
    continue the caller's random stream."""
    options = metric_options(cfg, device)
    if rfid_reference is not None:
        options["rfid"] = {**options["rfid"], "reference": rfid_reference}
    metrics = build_metrics(cfg.metrics, model.token_spec, options)
    batches = rank_batches(len(dataset), cfg.batch_size, world)
    loader = DataLoader(
        dataset,
        batch_sampler=batches,  # type: ignore[arg-type]
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    inference = InferencePrecision(device, precision)
    preview = None
    for rows, (images, labels) in zip(batches, loader, strict=True):
        if seed is not None:
            torch.manual_seed(derived_seed(seed, rows.start // cfg.batch_size))
        recons = evaluate_batch(model, images.to(device, non_blocking=True), labels, metrics, inference)
        if preview is None and world.main:  # rank 0's first batch is batch 0
            preview = torch.cat([images[:PREVIEW], recons[:PREVIEW].cpu()])
    if world.size > 1:
        gather_metrics(metrics)
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
    precision: str = "bf16",
    world: World = ONE_PROCESS,
    reference_cache: Path | None = None,
) -> TokenizerEvaluation:
    """``cfg.metrics`` of the tokenizer stored in ``folder`` on ``split`` of the dataset ``data``
    (its first ``cfg.num_images`` images), with the protocol record the reports print. ``precision``:
    of encode and decode (benchmark/precision.py); the metrics compute in float32. ``world``: the
    processes that share the batches (every rank calls it and gets the results; the preview is rank 0's).
    ``reference_cache``: where rFID keeps the Inception statistics of these originals
    (:func:`benchmark.fid.dataset_reference_stats`, the same images), so the evaluations of every cell
    that shares the eval split run the originals through Inception once; None: each evaluation does."""
    from benchmark.data import build_dataset

    torch.manual_seed(seed)
    model = load_tokenizer(folder, device)
    dataset = build_dataset(data, split)
    skipped = list(getattr(dataset, "skipped", []))  # unreadable images left out (data.on_bad_image: skip)
    if cfg.num_images is not None:
        dataset = Subset(dataset, range(min(cfg.num_images, len(dataset))))
    if len(dataset) == 0:
        raise DataError(f"the {split} split of {dict(data)} holds no images")
    reference = None
    if reference_cache is not None and "rfid" in cfg.metrics:
        from benchmark.fid import dataset_reference_stats, load_inception

        extractor = load_inception(**metric_options(cfg, device)["rfid"])  # the Inception rFID itself runs
        reference = dataset_reference_stats(
            data,
            split,
            extractor,
            cache_dir=reference_cache,
            num_images=cfg.num_images,
            batch_size=cfg.batch_size,
            num_workers=num_workers,
            world=world,
        )
    metrics, preview = reconstruction_metrics(
        model, dataset, cfg, device, num_workers, precision, world, reference, seed=seed
    )
    histograms = {
        name: counts.tolist() for m in metrics if hasattr(m, "histograms") for name, counts in m.histograms().items()
    }
    protocol = {
        "split": split,
        "num_images": len(dataset),
        "metrics": cfg.metrics,
        "data": dict(data),
        "seed": seed,
        "precision": {
            "tokenizer": InferencePrecision(device, precision).describe(),
            "metrics": "PSNR / SSIM float32 on the device (no autocast, no TF32), sums float64",
        },
        "metric_protocols": protocols(metrics),
        "checkpoint": str(folder),
        "world_size": world.size,
    }
    if skipped:
        protocol["skipped_images"] = {"count": len(skipped), "first": skipped[:10]}
    return TokenizerEvaluation(compute_all(metrics), protocol, preview, histograms)

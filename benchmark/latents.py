"""The latent cache: a frozen tokenizer's tokens for a whole training set, encoded once.

    runs/cache_latents/<hash>/tokens.npy   (N, T) int64 ids, or (N, T, C) float32 normalised latents
                              labels.npy   (N,) int64 class labels
                              latents.json token spec, count, classes, per-token mean / std, precision

Both arrays are memory-mapped (``numpy.load(mmap_mode="r")``), so every generator run on the same
tokenizer reads them without loading the set into memory. Only the ``TokenSpec.num_generated``
leading tokens are kept (SelfBootTok's encoder already returns only its global tokens). Continuous
latents are normalised per token position and channel: x' = (x - mean[t, c]) / std[t, c]. The
tokenizer encodes under the inference precision (bf16 autocast on CUDA, benchmark/precision.py), recorded
in ``latents.json``; latents are stored as float32 whatever the autocast dtype. Several processes
share the batches (batch b on rank b mod size) and write them into the same memory-mapped files (across
nodes, files of their own that rank 0 joins: benchmark/distributed.py ``SharedRows``); the statistics are
merged from every rank's float64 sums.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from benchmark import distributed
from benchmark.base import Tokenizer, TokenSpec
from benchmark.distributed import ONE_PROCESS, World
from benchmark.precision import InferencePrecision
from benchmark.store import write_json

EPS = 1e-6


@dataclass
class LatentStats:
    """Per-token normalisation of continuous latents, (T, C) each; identity for discrete ids."""

    mean: Tensor | None
    std: Tensor | None

    def normalize(self, x: Tensor) -> Tensor:
        return x if self.mean is None else (x - self.mean.to(x)) / self.std.to(x)

    def denormalize(self, x: Tensor) -> Tensor:
        return x if self.mean is None else x * self.std.to(x) + self.mean.to(x)


def flat_tokens(tokens: Tensor, spec: TokenSpec) -> Tensor:
    """Tokens in ``encode``'s layout -> the generated sequence: (B, T) ids or (B, T, C) vectors."""
    b = tokens.shape[0]
    flat = tokens.reshape(b, spec.num_tokens) if spec.kind == "discrete" else tokens.reshape(b, spec.num_tokens, -1)
    return flat[:, : spec.num_generated]


def unflat_tokens(seq: Tensor, spec: TokenSpec) -> Tensor:
    """Inverse of :func:`flat_tokens` for fully generated sequences (num_generated == num_tokens)."""
    if spec.num_generated != spec.num_tokens:
        raise ValueError(
            f"{spec.num_generated} generated of {spec.num_tokens} tokens: the tokenizer must "
            f"predict the rest itself, so its encode must return only the generated ones"
        )
    b = seq.shape[0]
    return seq.reshape(b, *spec.shape) if spec.kind == "discrete" else seq.reshape(b, *spec.shape, -1)


@torch.no_grad()
def write_cache(
    tokenizer: Tokenizer,
    dataset: Dataset,
    folder: Path,
    device: torch.device,
    batch_size: int = 64,
    num_workers: int = 0,
    data: dict | None = None,
    precision: str = "bf16",
    world: World = ONE_PROCESS,
    seed: int = 0,
) -> dict:
    """Encode ``dataset`` once into ``folder`` (memory-mapped arrays written in place, then renamed);
    ``data`` (its config) is recorded so that item i's image can be found again (REPA teachers).
    ``precision``: of the encoder (benchmark/precision.py). With several processes in ``world`` (every
    rank calls it) each encodes its share of the batches; rank 0 alone finishes the files. Batch b's random
    draws (a tokenizer that samples its tokens) are seeded with (``seed``, b), whichever rank encodes it.
    Returns what ``latents.json`` holds (on every rank)."""
    spec = tokenizer.token_spec
    n = len(dataset)  # type: ignore[arg-type]
    shape = (n, spec.num_generated) if spec.kind == "discrete" else (n, spec.num_generated, spec.dim)
    dtype = np.int64 if spec.kind == "discrete" else np.float32
    folder.mkdir(parents=True, exist_ok=True)
    tmp_tokens, tmp_labels = folder / "tokens.tmp.npy", folder / "labels.tmp.npy"
    token_rows = distributed.SharedRows(tmp_tokens, dtype, shape, batch_size, world)
    label_rows = distributed.SharedRows(tmp_labels, np.int64, (n,), batch_size, world)
    batches = distributed.rank_batches(n, batch_size, world)
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=num_workers, pin_memory=device.type == "cuda")
    inference = InferencePrecision(device, precision)
    sums = [0.0, 0.0]  # float64 sums of x and x^2 for the per-token statistics of continuous latents
    top_label = -1
    for rows, (images, y) in zip(batches, loader, strict=True):
        torch.manual_seed(distributed.derived_seed(seed, rows.start // batch_size))
        with inference():
            encoded = tokenizer.encode(images.to(device, non_blocking=True))
        seq = flat_tokens(encoded if spec.kind == "discrete" else encoded.float(), spec).cpu()
        token_rows.write(rows, seq.numpy().astype(dtype))
        label_rows.write(rows, y.numpy())
        top_label = max(top_label, int(y.max()))
        if spec.kind == "continuous":
            sums = [sums[0] + seq.double().sum(0), sums[1] + seq.double().pow(2).sum(0)]
    tokens, labels = token_rows.finish(), label_rows.finish()  # every rank's rows written
    per_rank = distributed.gather_objects((sums, top_label)) if world.size > 1 else [(sums, top_label)]
    total, total_sq = (sum(parts) for parts in zip(*(part for part, _ in per_rank)))
    meta = {
        "token_spec": dataclasses.asdict(spec),
        "num_items": n,
        "data": data,
        "num_classes": int(getattr(dataset, "num_classes", max(top for _, top in per_rank) + 1)),
        "precision": inference.describe(),
    }
    if spec.kind == "continuous":
        mean = total / n
        std = ((total_sq - n * mean.pow(2)) / max(n - 1, 1)).clamp_min(0).sqrt().clamp_min(EPS)
        meta["mean"], meta["std"] = mean.float().tolist(), std.float().tolist()
    if not world.main:
        return meta
    if spec.kind == "continuous":  # normalised in place, one chunk at a time: the set need not fit in memory
        stats = LatentStats(mean, std)
        for start in range(0, n, batch_size):
            chunk = torch.from_numpy(np.array(tokens[start : start + batch_size])).double()
            tokens[start : start + batch_size] = stats.normalize(chunk).float().numpy()
    tokens.flush()
    labels.flush()
    del tokens, labels
    tmp_tokens.replace(folder / "tokens.npy")
    tmp_labels.replace(folder / "labels.npy")
    write_json(folder / "latents.json", meta)
    return meta


def read_space(folder: Path) -> tuple[TokenSpec, int, LatentStats]:
    """(token spec, class count, normalisation) of the token space recorded in ``folder/latents.json``: a
    latent cache's, or that of a generator folder with no cache (a converted or installed release)."""
    meta = json.loads((folder / "latents.json").read_text())
    stats = (
        LatentStats(torch.tensor(meta["mean"]), torch.tensor(meta["std"]))
        if "mean" in meta
        else LatentStats(None, None)
    )
    return TokenSpec.from_dict(meta["token_spec"]), int(meta["num_classes"]), stats


class LatentDataset(Dataset):
    """(tokens, label) pairs read from a cache folder through memory maps; with ``images`` (the dataset
    the cache was encoded from) (tokens, label, image) triples."""

    def __init__(self, folder: Path, images: Dataset | None = None) -> None:
        self.meta = json.loads((folder / "latents.json").read_text())
        self.tokens = np.load(folder / "tokens.npy", mmap_mode="r")
        self.labels = np.load(folder / "labels.npy", mmap_mode="r")
        self.spec, self.num_classes, _ = read_space(folder)
        self.images = images
        if images is not None and len(images) != len(self.labels):  # type: ignore[arg-type]
            raise ValueError(f"{folder}: {len(self.labels)} cached items but {len(images)} images")  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, ...]:
        item = (torch.from_numpy(np.array(self.tokens[i])), torch.tensor(int(self.labels[i])))
        return item if self.images is None else (*item, self.images[i][0])

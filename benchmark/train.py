"""One training loop for every model (nanoGPT-style: everything visible in one function).

AdamW (fused on GPU, no weight decay on norms / biases / embeddings), linear warm-up then a
constant or cosine learning rate, gradient clipping, bf16 autocast on GPU, a deterministic batch
order that depends only on (seed, step), and periodic checkpoints from which a killed run resumes
to the same weights it would have reached uninterrupted.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from benchmark.config import TrainConfig
from benchmark.errors import ConfigError, StageError
from benchmark.store import atomic_write

LossFn = Callable[[tuple[Tensor, ...]], dict[str, Tensor]]


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class StepBatchSampler(Sampler[list[int]]):
    """Batches for steps ``start..total-1``; the batch of step s depends only on (seed, s).

    Epoch e is a permutation drawn from a generator seeded with (seed, e); the last incomplete
    batch of each epoch is dropped. Resuming at step s therefore replays exactly the same data.
    """

    def __init__(self, size: int, batch_size: int, seed: int, start: int, total: int) -> None:
        if batch_size > size:
            raise ConfigError(f"train.batch_size {batch_size} exceeds the training set's {size} images")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.start, self.total = start, total
        self.per_epoch = size // batch_size

    def __len__(self) -> int:
        return max(0, self.total - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        perm, perm_epoch = None, -1
        for step in range(self.start, self.total):
            epoch, j = divmod(step, self.per_epoch)
            if epoch != perm_epoch:
                gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                perm, perm_epoch = torch.randperm(self.size, generator=gen), epoch
            yield perm[j * self.batch_size : (j + 1) * self.batch_size].tolist()


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up from 0 over ``warmup_steps``, then constant or cosine down to ``min_lr_ratio``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device.type == "cuda")


def _trim_log(path: Path, step: int) -> None:
    """Drop loss-log rows written after the checkpoint we resume from."""
    if not path.is_file():
        return
    rows = list(csv.reader(path.open()))
    keep = rows[:1] + [r for r in rows[1:] if int(r[0]) <= step]
    atomic_write(path, lambda tmp: csv.writer(tmp.open("w", newline="")).writerows(keep))


def fit(model: nn.Module, loss_fn: LossFn, dataset: Dataset, cfg: TrainConfig, seed: int, run_dir: Path,
        device: torch.device, num_workers: int = 0, log: logging.Logger | None = None,
        compile: bool = False) -> dict[str, float]:
    """Train ``model`` for ``cfg.steps`` steps, resuming from ``run_dir/ckpt/last.pt`` if present.

    ``loss_fn(batch)`` returns named loss terms; their sum is minimised. Returns the last logged terms.
    """
    log = log or logging.getLogger(__name__)
    model.to(device).train()
    optimizer = make_optimizer(model, cfg, device)
    ckpt_path, log_path = run_dir / "ckpt" / "last.pt", run_dir / "losses.csv"
    step = 0
    if ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        step = int(state["step"])
        _trim_log(log_path, step)
        log.info("resumed from %s at step %d", ckpt_path, step)
    else:
        log_path.unlink(missing_ok=True)  # rows of an attempt that never reached a checkpoint
    step_fn = torch.compile(loss_fn) if compile else loss_fn
    sampler = StepBatchSampler(len(dataset), cfg.batch_size, seed, step, cfg.steps)  # type: ignore[arg-type]
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                        pin_memory=device.type == "cuda", persistent_workers=num_workers > 0)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16,
                              enabled=device.type == "cuda" and cfg.precision == "bf16")

    def save_checkpoint() -> None:
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "rng": torch.get_rng_state(), "step": step}
        atomic_write(ckpt_path, lambda tmp: torch.save(state, tmp))

    terms: dict[str, float] = {}
    new_log = not log_path.is_file()
    t0 = time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=step, desc="train", leave=False, dynamic_ncols=True)
    with log_path.open("a", newline="") as fh:
        writer = None
        for batch in loader:
            lr = learning_rate(cfg, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = tuple(t.to(device, non_blocking=True) for t in batch)
            with autocast:
                losses = step_fn(batch)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                values = {k: float(v) for k, v in losses.items()}
                raise StageError(f"non-finite loss at step {step}: {values}; last checkpoint: {ckpt_path}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            step += 1
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                terms = {"loss": loss.item(), **{k: v.item() for k, v in losses.items()}}
                if writer is None:
                    writer = csv.writer(fh)
                    if new_log:
                        writer.writerow(["step", "lr", *terms])
                writer.writerow([step, lr, *terms.values()])
                fh.flush()
                bar.set_postfix(loss=f"{terms['loss']:.4f}")
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                save_checkpoint()
    bar.close()
    if not terms and log_path.is_file():  # resumed at the last step: report the last logged row
        header, *rows = list(csv.reader(log_path.open()))
        terms = {k: float(v) for k, v in zip(header[2:], rows[-1][2:])} if rows else {}
    log.info("trained to step %d in %.1fs: %s", step, time.perf_counter() - t0, terms)
    return terms

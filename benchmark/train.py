"""One training loop for every model (nanoGPT-style: everything visible in one function).

AdamW (fused on GPU, no weight decay on norms / biases / embeddings), linear warm-up then a
constant or cosine learning rate, gradient clipping, bf16 autocast on GPU, EMA weights,
generator / discriminator alternation for adversarial tokenizers (from the discriminator's start
step), a deterministic batch order that depends only on (seed, step), loss terms logged to CSV (and
TensorBoard where installed), and periodic checkpoints from which a killed run resumes to the same
weights it would have reached uninterrupted.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from benchmark.config import TrainConfig
from benchmark.errors import ConfigError, StageError
from benchmark.store import atomic_write


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


def make_optimizer(
    params: list[tuple[str, nn.Parameter]], cfg: TrainConfig, device: torch.device, lr: float | None = None
) -> torch.optim.AdamW:
    """AdamW over the trainable ``(name, parameter)`` pairs; no weight decay on tensors below 2D."""
    decay = [p for _, p in params if p.requires_grad and p.ndim >= 2]
    no_decay = [p for _, p in params if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr or cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device.type == "cuda")


def generator_parameters(model: nn.Module, adversary: nn.Module | None) -> list[tuple[str, nn.Parameter]]:
    """The ``(name, parameter)`` pairs the main optimiser owns: all but the adversary's (its
    discriminator takes its own step)."""
    disc_ids = {id(p) for p in adversary.parameters()} if adversary is not None else set()
    return [(n, p) for n, p in model.named_parameters() if id(p) not in disc_ids]


class EMA:
    """Exponential moving average of the trainable weights (Polyak averaging, as timm's ModelEmaV3).

    Only the trained tensors are shadowed (not frozen loss networks); the decay warms up as
    min(decay, (1 + step) / (10 + step)) so that short runs are not dominated by the initial weights.
    """

    def __init__(self, params: list[tuple[str, nn.Parameter]], decay: float) -> None:
        self.decay = decay
        trained = [(n, p) for n, p in params if p.requires_grad]
        self.shadow = {n: p.detach().clone() for n, p in trained}
        self._pairs = ([self.shadow[n] for n, _ in trained], [p.detach() for _, p in trained])

    @torch.no_grad()
    def update(self, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(*self._pairs, 1 - decay)

    def state_dict(self) -> dict[str, Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for name, value in state.items():
            self.shadow[name].copy_(value)

    def averaged_state(self, model: nn.Module) -> dict[str, Tensor]:
        """``model.state_dict()`` with the averaged tensors in place of the trained ones."""
        return {k: self.shadow.get(k, v) for k, v in model.state_dict().items()}


def _trim_log(path: Path, step: int) -> None:
    """Drop loss-log rows written after the checkpoint we resume from."""
    if not path.is_file():
        return
    rows = list(csv.reader(path.open()))
    keep = rows[:1] + [r for r in rows[1:] if int(r[0]) <= step]
    atomic_write(path, lambda tmp: csv.writer(tmp.open("w", newline="")).writerows(keep))


def _tensorboard(run_dir: Path):  # type: ignore[no-untyped-def]
    """A TensorBoard writer under ``run_dir/tb`` when tensorboard is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tb"))


StepFn = Callable[[tuple[Tensor, ...], int], tuple[dict[str, Tensor], "tuple[Tensor, Tensor] | None"]]


def fit(
    model: nn.Module,
    step_fn: StepFn,
    dataset: Dataset,
    cfg: TrainConfig,
    seed: int,
    run_dir: Path,
    device: torch.device,
    num_workers: int = 0,
    log: logging.Logger | None = None,
    compile: bool = False,
    adversary: nn.Module | None = None,
    on_checkpoint: Callable[[int], None] | None = None,
) -> tuple[dict[str, float], dict[str, Tensor]]:
    """Train ``model`` for ``cfg.steps`` steps, resuming from ``run_dir/ckpt/last.pt`` if present.

    ``step_fn(batch, step)`` returns the named loss terms (their sum is minimised by AdamW over every
    trainable parameter outside ``adversary``) and, for adversarial training, the (real, fake) pair
    on which ``adversary.discriminator_loss`` then takes its own AdamW step (the discriminator
    alternates with the generator every step from ``adversary.start``; its gradients from the
    generator step are discarded). Returns the last logged terms and the weights to keep (the EMA
    weights when ``cfg.ema_decay`` > 0).
    """
    log = log or logging.getLogger(__name__)
    model.to(device).train()
    params = generator_parameters(model, adversary)
    optimizer = make_optimizer(params, cfg, device)
    disc_optimizer = (
        make_optimizer(list(adversary.named_parameters()), cfg, device, cfg.disc_lr) if adversary is not None else None
    )
    ema = EMA(params, cfg.ema_decay) if cfg.ema_decay > 0 else None
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path, log_path = run_dir / "ckpt" / "last.pt", run_dir / "losses.csv"
    step, rng = 0, None
    if ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if disc_optimizer is not None:
            disc_optimizer.load_state_dict(state["disc_optimizer"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        rng = state["rng"]
        step = int(state["step"])
        _trim_log(log_path, step)
        log.info("resumed from %s at step %d", ckpt_path, step)
    else:
        log_path.unlink(missing_ok=True)  # rows of an attempt that never reached a checkpoint
    run_step = torch.compile(step_fn) if compile else step_fn
    sampler = StepBatchSampler(len(dataset), cfg.batch_size, seed, step, cfg.steps)  # type: ignore[arg-type]
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=num_workers > 0,
    )
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda" and cfg.precision == "bf16")
    batches = iter(loader)  # draws the loader's base seed from the global RNG, as a fresh run does
    if rng is not None:
        torch.set_rng_state(rng)
    trained = [p for _, p in params if p.requires_grad]

    def save_checkpoint() -> None:
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": torch.get_rng_state(),
            "step": step,
        }
        if disc_optimizer is not None:
            state["disc_optimizer"] = disc_optimizer.state_dict()
        if ema is not None:
            state["ema"] = ema.state_dict()
        atomic_write(ckpt_path, lambda tmp: torch.save(state, tmp))

    terms: dict[str, float] = {}
    new_log = not log_path.is_file()
    board = _tensorboard(run_dir)
    t0 = time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=step, desc="train", leave=False, dynamic_ncols=True)
    with log_path.open("a", newline="") as fh:
        writer = None
        for batch in batches:
            lr = learning_rate(cfg, step)
            for opt, base in ((optimizer, cfg.lr), (disc_optimizer, cfg.disc_lr or cfg.lr)):
                for group in opt.param_groups if opt is not None else ():
                    group["lr"] = lr * base / cfg.lr
            batch = tuple(t.to(device, non_blocking=True) for t in batch)
            with autocast:
                losses, pair = run_step(batch, step)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                values = {k: float(v) for k, v in losses.items()}
                raise StageError(f"non-finite loss at step {step}: {values}; last checkpoint: {ckpt_path}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(trained, cfg.grad_clip)
            optimizer.step()
            if adversary is not None and disc_optimizer is not None and pair is not None:
                with autocast:
                    disc = adversary.discriminator_loss(pair[0], pair[1].detach(), step)
                losses.update({f"d_{k}": v for k, v in disc.items()})
                disc_optimizer.zero_grad(set_to_none=True)
                if adversary.active(step):
                    sum(disc.values()).backward()
                    if cfg.grad_clip > 0:
                        nn.utils.clip_grad_norm_(adversary.parameters(), cfg.grad_clip)
                    disc_optimizer.step()
            if ema is not None:
                ema.update(step)
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
                if board is not None:
                    for k, v in terms.items():
                        board.add_scalar(f"train/{k}", v, step)
                bar.set_postfix(loss=f"{terms['loss']:.4f}")
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                save_checkpoint()
                if on_checkpoint is not None:
                    on_checkpoint(step)
    bar.close()
    if board is not None:
        board.close()
    if not terms and log_path.is_file():  # resumed at the last step: report the last logged row
        header, *rows = list(csv.reader(log_path.open()))
        terms = {k: float(v) for k, v in zip(header[2:], rows[-1][2:])} if rows else {}
    log.info("trained to step %d in %.1fs: %s", step, time.perf_counter() - t0, terms)
    weights = ema.averaged_state(model) if ema is not None else model.state_dict()
    return terms, {k: v.detach().cpu().contiguous() for k, v in weights.items()}

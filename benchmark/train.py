"""One training loop for every model (nanoGPT-style: everything visible in :func:`fit` and one
optimisation step in :class:`TrainStep`, which ``benchmark.bench`` times as it is).

AdamW (fused kernel on GPU and CPU, no weight decay on tensors below 2D: norms, biases), linear warm-up then a
constant or cosine learning rate, gradient clipping, bf16 autocast on GPU, EMA weights,
generator / discriminator alternation for adversarial tokenizers (from the discriminator's start
step), a deterministic batch order that depends only on (seed, step), loss terms logged to CSV (and
TensorBoard where installed), and periodic checkpoints from which a killed run resumes to the same
weights it would have reached uninterrupted.

Data parallel (benchmark/distributed.py): with several processes, the model is wrapped in
``DistributedDataParallel`` and each rank takes its contiguous shard of the same global batch
(``train.batch_size`` stays the global batch), so the gradient is that of the global batch whatever
the world size. Rank 0 alone writes logs and checkpoints; a checkpoint holds every rank's RNG state.
Terms computed from batch statistics (entropy of the mean code posterior, BatchNorm in train mode
where no SyncBatchNorm applies) and random draws inside a loss (SiT's noise, MaskGIT's masks) are
per rank: the same distribution as one process, not the same numbers.

Host syncs happen only at log and checkpoint steps: a non-finite loss is caught at the next of them,
naming the step that produced it. A preemption request (SIGUSR2 from Slurm, see
:data:`STOP_REQUESTED`) is honoured at the next log step: a checkpoint is written and
:class:`Preempted` raised for the launcher to requeue the job.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import pickle
import shutil
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from benchmark import distributed
from benchmark.config import TrainConfig
from benchmark.errors import ConfigError, StageError
from benchmark.store import atomic_write

# Set (by a signal handler) when the job must stop: the loop checkpoints at its next log step.
STOP_REQUESTED = threading.Event()


class Preempted(Exception):
    """Training stopped on request after writing a checkpoint at ``step``; the launcher requeues it."""

    def __init__(self, step: int) -> None:
        super().__init__(f"preempted at step {step}: checkpoint written, to be resumed")
        self.step = step


def check_batch(key: str, batch_size: int, images: int | None, world: int) -> None:
    """A global batch (option ``key``) the batch sampler can draw: no larger than the training set (of
    ``images``; None: unknown) and in ``world`` equal shards, one per data-parallel process. Checked when
    a training stage starts and, before anything runs, by the dry run (benchmark/plan_checks.py)."""
    if images is not None and batch_size > images:
        raise ConfigError(
            f"{key} {batch_size} exceeds the training set's {images} images; use a smaller batch or more "
            "training images"
        )
    if batch_size % world:
        raise ConfigError(
            f"{key} {batch_size} (the global batch) does not split into {world} equal shards, one per "
            f"data-parallel process; use a multiple of {world}"
        )


class StepBatchSampler(Sampler[list[int]]):
    """Batches for steps ``start..total-1``; the batch of step s depends only on (seed, s).

    Epoch e is a permutation drawn from a generator seeded with (seed, e); the last incomplete
    batch of each epoch is dropped. Resuming at step s therefore replays exactly the same data.
    With ``world`` > 1, rank r takes the r-th of ``world`` contiguous equal shards of each batch.
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        seed: int,
        start: int,
        total: int,
        rank: int = 0,
        world: int = 1,
        key: str = "train.batch_size",
    ) -> None:
        check_batch(key, batch_size, size, world)
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.start, self.total = start, total
        self.per_epoch = size // batch_size
        self.shard = slice(rank * batch_size // world, (rank + 1) * batch_size // world)

    def __len__(self) -> int:
        return max(0, self.total - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        perm, perm_epoch = None, -1
        for step in range(self.start, self.total):
            epoch, j = divmod(step, self.per_epoch)
            if epoch != perm_epoch:
                gen = torch.Generator().manual_seed(distributed.derived_seed(self.seed, epoch))
                perm, perm_epoch = torch.randperm(self.size, generator=gen), epoch
            yield perm[j * self.batch_size : (j + 1) * self.batch_size][self.shard].tolist()


def restore_rng(
    rng: tuple[object, object],
    world: distributed.World,
    seed: int,
    step: int,
    device: torch.device,
    log: logging.Logger,
) -> None:
    """Give this rank the CPU (and CUDA) random state its rank saved in the checkpoint, so that a resumed run
    draws what the uninterrupted one would have. A checkpoint from another number of processes has no
    state for this rank (reusing one would give two ranks the same draws): each rank is reseeded from the
    seed, its rank and the step instead."""
    cpu, cuda = rng
    ranks = cpu if isinstance(cpu, list) else [cpu]
    if len(ranks) == world.size:
        torch.set_rng_state(ranks[world.rank])
        if cuda is not None and device.type == "cuda":  # SiT's noise, MaskGIT's masks draw from it
            torch.cuda.set_rng_state(cuda[world.rank], device)
        return
    log.warning(
        "checkpoint from %d process(es), resuming on %d: random draws will differ (each rank reseeded from the "
        "seed, its rank and the step)",
        len(ranks),
        world.size,
    )
    torch.manual_seed(distributed.derived_seed(distributed.derived_seed(seed, step), world.rank))


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up from 0 over ``warmup_steps``, then constant or cosine down to ``min_lr_ratio``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * min(1.0, progress)))


# Devices with a fused AdamW kernel. Elsewhere torch's default is foreach on accelerators and, on the CPU, a
# loop of ~10 ops per tensor whose temporaries make its time depend on the allocator's state: 88 to 1136 ms
# per step for TiTok-S (217 tensors, 51M parameters), one or two groups alike, vs 20 to 29 ms fused
# (scripts/adamw_cpu.py).
FUSED_ADAMW_DEVICES = ("cuda", "cpu")


def make_optimizer(
    params: list[tuple[str, nn.Parameter]], cfg: TrainConfig, device: torch.device, lr: float | None = None
) -> torch.optim.AdamW:
    """AdamW over the trainable ``(name, parameter)`` pairs; no weight decay on tensors below 2D; the fused
    kernel where the device has one."""
    decay = [p for _, p in params if p.requires_grad and p.ndim >= 2]
    no_decay = [p for _, p in params if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = device.type in FUSED_ADAMW_DEVICES
    return torch.optim.AdamW(groups, lr=lr or cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused)


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

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The averaged weights in the trained tensors for the duration (to look at a checkpoint as the
        stage would keep it), the trained ones restored exactly after."""
        shadows, trained = self._pairs
        live = [t.clone() for t in trained]
        with torch.no_grad():
            torch._foreach_copy_(trained, shadows)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(trained, live)

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


class _Forward(nn.Module):
    """The model's step function as a module, so that DistributedDataParallel sees its forward."""

    def __init__(self, model: nn.Module, step_fn: StepFn) -> None:
        super().__init__()
        self.model = model
        self.step_fn = step_fn

    def forward(self, batch: tuple[Tensor, ...], step: int) -> tuple[dict[str, Tensor], tuple[Tensor, Tensor] | None]:
        return self.step_fn(batch, step)


class _DiscriminatorLoss(nn.Module):
    """``adversary.discriminator_loss`` as a module's forward (for DistributedDataParallel)."""

    def __init__(self, adversary: nn.Module) -> None:
        super().__init__()
        self.adversary = adversary

    def forward(self, real: Tensor, fake: Tensor, step: int) -> dict[str, Tensor]:
        return self.adversary.discriminator_loss(real, fake, step)


class TrainStep:
    """One optimisation step as the training loop runs it (and ``benchmark.bench`` times it).

    ``step_fn(batch, step)`` returns the named loss terms (their sum is minimised by AdamW over every
    trainable parameter outside ``adversary``) and, for adversarial training, the (real, fake) pair
    on which ``adversary.discriminator_loss`` then takes its own AdamW step (the discriminator
    alternates with the generator every step from ``adversary.start``; its gradients from the
    generator step are discarded). Under several processes both are DistributedDataParallel.
    """

    def __init__(
        self,
        model: nn.Module,
        step_fn: StepFn,
        cfg: TrainConfig,
        device: torch.device,
        adversary: nn.Module | None = None,
        compile: bool = False,
        find_unused_parameters: bool = False,
    ) -> None:
        self.model, self.cfg, self.device, self.adversary = model, cfg, device, adversary
        world = distributed.world()
        if world.size > 1 and adversary is not None and device.type == "cuda":  # BatchNorm over the global batch
            adversary.discriminator = nn.SyncBatchNorm.convert_sync_batchnorm(adversary.discriminator)
        model.to(device).train()
        self.params = generator_parameters(model, adversary)
        self.trained = [p for _, p in self.params if p.requires_grad]
        self.optimizer = make_optimizer(self.params, cfg, device)
        self.disc_optimizer = (
            make_optimizer(list(adversary.named_parameters()), cfg, device, cfg.disc_lr)
            if adversary is not None
            else None
        )
        self.ema = EMA(self.params, cfg.ema_decay) if cfg.ema_decay > 0 else None
        forward: nn.Module = _Forward(model, step_fn)
        disc: nn.Module | None = _DiscriminatorLoss(adversary) if adversary is not None else None
        if world.size > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [device.index] if device.type == "cuda" else None
            disc_ids = {id(p) for p in adversary.parameters()} if adversary is not None else set()
            ignored = [f"model.{n}" for n, p in model.named_parameters() if id(p) in disc_ids]
            DDP._set_params_and_buffers_to_ignore_for_model(forward, ignored)
            forward = DDP(forward, device_ids=ids, find_unused_parameters=find_unused_parameters)
            if disc is not None:
                disc = DDP(disc, device_ids=ids, find_unused_parameters=find_unused_parameters)
        self.forward = torch.compile(forward) if compile else forward
        self.disc = disc
        self.autocast = torch.autocast(
            "cuda", dtype=torch.bfloat16, enabled=device.type == "cuda" and cfg.precision == "bf16"
        )
        # the first step whose loss was not finite (-1: none yet), kept on the device: no host sync
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)

    def set_lr(self, step: int) -> float:
        """The schedule's learning rate at ``step``, applied to both optimisers (the discriminator's
        scaled by disc_lr / lr); returns it."""
        lr = learning_rate(self.cfg, step)
        for opt, base in ((self.optimizer, self.cfg.lr), (self.disc_optimizer, self.cfg.disc_lr or self.cfg.lr)):
            for group in opt.param_groups if opt is not None else ():
                group["lr"] = lr * base / self.cfg.lr
        return lr

    def __call__(self, batch: tuple[Tensor, ...], step: int) -> tuple[Tensor, dict[str, Tensor]]:
        """Generator step, discriminator step, EMA; returns the loss and its terms (device tensors)."""
        self.set_lr(step)
        with self.autocast:
            losses, pair = self.forward(batch, step)
        loss = sum(losses.values())
        finite = torch.isfinite(loss.detach())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.trained, self.cfg.grad_clip)
        self.optimizer.step()
        adversary = self.adversary
        if adversary is not None and self.disc is not None and pair is not None:
            active = adversary.active(step)
            with self.autocast:
                disc = (self.disc if active else adversary.discriminator_loss)(pair[0], pair[1].detach(), step)
            losses.update({f"d_{k}": v for k, v in disc.items()})
            finite = finite & torch.isfinite(sum(disc.values()).detach())
            self.disc_optimizer.zero_grad(set_to_none=True)
            if active:
                sum(disc.values()).backward()
                if self.cfg.grad_clip > 0:
                    nn.utils.clip_grad_norm_(adversary.parameters(), self.cfg.grad_clip)
                self.disc_optimizer.step()
        self.first_bad = torch.where(~finite & (self.first_bad < 0), step, self.first_bad)
        if self.ema is not None:
            self.ema.update(step)
        return loss, losses

    def check_finite(self, losses: dict[str, Tensor], ckpt: Path) -> None:
        """Raise (one host sync; a collective) if any step so far had a non-finite loss (the generator's or
        the discriminator's) on any rank, naming the first such step on every rank alike."""
        never = torch.iinfo(torch.long).max
        first = int(distributed.min_over_ranks(torch.where(self.first_bad < 0, never, self.first_bad)).item())
        if first != never:
            values = {k: float(v.detach()) for k, v in losses.items()}
            where = f"last checkpoint: {ckpt}" if ckpt.is_file() else "no checkpoint was written before it"
            raise StageError(f"non-finite loss at step {first} (terms at the latest step: {values}); {where}")

    def state_dict(self, step: int) -> dict[str, object]:
        """Everything a resume needs; every rank's RNG states, the CPU's and its GPU's (a collective: all
        ranks call it)."""
        state: dict[str, object] = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": distributed.gather_objects(torch.get_rng_state()),
            "step": step,
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = distributed.gather_objects(torch.cuda.get_rng_state(self.device))
        if self.disc_optimizer is not None:
            state["disc_optimizer"] = self.disc_optimizer.state_dict()
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def load_state_dict(self, state: dict[str, object]) -> tuple[list[Tensor] | Tensor, list[Tensor] | None]:
        """Restore from :meth:`state_dict`; returns the saved RNG states, (CPU, GPU or None), for the caller
        to apply once the data loader has drawn its seed and the ranks have been seeded."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.disc_optimizer is not None:
            self.disc_optimizer.load_state_dict(state["disc_optimizer"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        return state["rng"], state.get("cuda_rng")


CHECKPOINT_ERRORS = (RuntimeError, OSError, EOFError, ValueError, KeyError, pickle.UnpicklingError, zipfile.BadZipFile)


def load_checkpoint(folder: Path, log: logging.Logger) -> dict[str, object] | None:
    """``folder/last.pt``, or ``folder/prev.pt`` when the last one is unreadable (each broken file is
    named in the log); None when there is none to resume from."""
    for name in ("last.pt", "prev.pt"):
        path = folder / name
        if not path.is_file():
            continue
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or "step" not in state:
                raise ValueError("not a training checkpoint")
            return {**state, "_path": str(path)}
        except CHECKPOINT_ERRORS as exc:
            log.warning(
                "checkpoint %s is unreadable (%s: %s); trying the previous one",
                path,
                type(exc).__name__,
                str(exc).splitlines()[0][:200] if str(exc) else "",
            )
    return None


def save_checkpoint(folder: Path, state: dict[str, object]) -> None:
    """``folder/last.pt`` (atomically), the one before it kept as ``folder/prev.pt``. The new state is
    written first and the old file is hard-linked as ``prev.pt`` before the swap, so once a checkpoint
    exists ``last.pt`` exists at every instant: a kill at any moment leaves both files readable."""
    last = folder / "last.pt"

    def write(tmp: Path) -> None:
        torch.save(state, tmp)
        if last.is_file():
            atomic_write(folder / "prev.pt", lambda prev: _link_or_copy(last, prev))

    atomic_write(last, write)


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` as ``dst``; copy it where the file system has no hard links."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


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
    find_unused_parameters: bool = False,
    batch_key: str = "train.batch_size",
) -> tuple[dict[str, float], dict[str, Tensor]]:
    """Train ``model`` for ``cfg.steps`` steps of :class:`TrainStep`, resuming from the last readable
    checkpoint in ``run_dir/ckpt/``. Returns the last logged terms (averaged over ranks) and the
    weights to keep (the EMA weights when ``cfg.ema_decay`` > 0). ``batch_key``: the option that sets
    ``cfg.batch_size``, named when it does not fit the data."""
    log = log or logging.getLogger(__name__)
    world = distributed.world()
    trainer = TrainStep(model, step_fn, cfg, device, adversary, compile, find_unused_parameters)
    ckpt_dir, log_path = run_dir / "ckpt", run_dir / "losses.csv"
    run_dir.mkdir(parents=True, exist_ok=True)
    step, rng = 0, None
    state = load_checkpoint(ckpt_dir, log)
    if state is not None:
        rng = trainer.load_state_dict(state)
        step = int(state["step"])
        if world.main:
            _trim_log(log_path, step)
        log.info("resumed from %s at step %d", state["_path"], step)
    elif world.main:
        log_path.unlink(missing_ok=True)  # rows of an attempt that never reached a checkpoint
    if world.size > 1:  # ranks draw their own noise (the same stream on every rank would correlate them)
        torch.manual_seed(distributed.derived_seed(seed, world.rank))
    sampler = StepBatchSampler(
        len(dataset),  # type: ignore[arg-type]
        cfg.batch_size,
        seed,
        step,
        cfg.steps,
        world.rank,
        world.size,
        batch_key,
    )
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=num_workers > 0,
    )
    batches = iter(loader)  # draws the loader's base seed from the global RNG, as a fresh run does
    if rng is not None:
        restore_rng(rng, world, seed, step, device, log)

    terms: dict[str, float] = {}
    new_log = not log_path.is_file()
    board = _tensorboard(run_dir) if world.main else None
    lock = run_dir / "lock.json"
    t0 = time.perf_counter()
    # Only other ranks pass ``disable``: an explicit value would override tqdm's own TQDM_DISABLE (set by
    # the parallel local executor).
    quiet = {} if world.main else {"disable": True}
    bar = tqdm(total=cfg.steps, initial=step, desc="train", leave=False, dynamic_ncols=True, **quiet)
    with open(log_path if world.main else os.devnull, "a", newline="") as fh:
        writer = None
        for batch in batches:
            batch = tuple(t.to(device, non_blocking=True) for t in batch)
            lr = learning_rate(cfg, step)
            loss, losses = trainer(batch, step)
            step += 1
            bar.update(1)
            last = step == cfg.steps
            if step % cfg.log_every == 0 or last:
                trainer.check_finite(losses, ckpt_dir / "last.pt")
                values = distributed.mean_over_ranks(
                    torch.stack([loss.detach(), *(v.detach() for v in losses.values())]).float()
                )
                terms = dict(zip(["loss", *losses], values.tolist()))
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
                if world.main and lock.is_file():
                    os.utime(lock)  # heartbeat of the stage's lock
            stop = (step % cfg.log_every == 0 or last) and distributed.any_rank(STOP_REQUESTED.is_set())
            if step % cfg.checkpoint_every == 0 or last or stop:
                trainer.check_finite(losses, ckpt_dir / "last.pt")
                state = trainer.state_dict(step)
                if world.main:
                    save_checkpoint(ckpt_dir, state)
                    if on_checkpoint is not None:  # sees the weights the stage keeps: the EMA's if any
                        with trainer.ema.swapped_in() if trainer.ema is not None else nullcontext():
                            on_checkpoint(step)
                distributed.barrier()
            if stop and not last:
                raise Preempted(step)
    bar.close()
    if board is not None:
        board.close()
    if not terms and log_path.is_file():  # resumed at the last step: report the last logged row
        header, *rows = list(csv.reader(log_path.open()))
        terms = {k: float(v) for k, v in zip(header[2:], rows[-1][2:])} if rows else {}
    log.info("trained to step %d in %.1fs: %s", step, time.perf_counter() - t0, terms)
    weights = trainer.ema.averaged_state(model) if trainer.ema is not None else model.state_dict()
    return terms, {k: v.detach().cpu().contiguous() for k, v in weights.items()}

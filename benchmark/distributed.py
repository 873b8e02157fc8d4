"""Data parallelism with torch.distributed: one process per GPU (or N gloo processes on the CPU).

On Slurm, submitit starts the processes (one task per GPU) and
``submitit.helpers.TorchDistributedEnvironment`` exports ``MASTER_ADDR`` / ``MASTER_PORT`` / ``RANK`` /
``WORLD_SIZE`` / ``LOCAL_RANK``; locally :func:`spawn` starts them with the same variables. Every
process then calls :func:`init`, which joins the process group (NCCL on GPUs, gloo on the CPU).
The rest of the harness asks :func:`world` who it is: rank 0 alone writes the run store.

Stages that stream over a set (caching, sampling, evaluation) cut it in order into batches and give
batch b to rank b mod world size (:func:`rank_batches`); what the ranks computed is then gathered and
combined in batch or rank order, so the result does not depend on the number of processes.
"""

from __future__ import annotations

import datetime
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from benchmark.errors import ConfigError


@dataclass(frozen=True)
class World:
    """This process's place among the data-parallel processes of a stage."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


ONE_PROCESS = World()  # the default of functions that can shard their work over ranks: no sharding, no collective


def world() -> World:
    """The current process group's rank and size (a single process when none is initialised)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return World()


def device(name: str = "auto") -> torch.device:
    """The device of this process: ``auto`` is this rank's GPU (``cuda:<local rank>``) when CUDA is
    available, else the CPU. An explicit ``cuda`` is this rank's GPU too; an explicit index (``cuda:1``) is
    taken as given, and refused when several processes share the node (they would all use that one GPU)."""
    local_rank, local_size = int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    if name == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    dev = torch.device("cuda" if name == "auto" else name)
    if dev.type != "cuda":
        return dev
    if dev.index is None:
        return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    if local_size > 1:
        raise ConfigError(
            f"runtime.device: {name} puts all {local_size} processes of a node on one GPU; "
            "use cuda (or auto): each process takes the GPU of its local rank"
        )
    return dev


# How long a collective waits for the other ranks. Rank 0 alone runs the checkpoint callbacks (a preview, the
# codebook probe, ``train.eval_every``'s metrics over ``eval_images``) while the others wait at a barrier:
# NCCL's default of 10 minutes would abort a job whose evaluation is longer.
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=2)


def init(device_name: str = "auto") -> World:
    """Join the process group described by the environment (``WORLD_SIZE`` > 1); a no-op otherwise."""
    size = int(os.environ.get("WORLD_SIZE", 1))
    if size > 1 and not dist.is_initialized():
        dev = device(device_name)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=COLLECTIVE_TIMEOUT)
    return world()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if world().size > 1:
        dist.barrier()


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is true on any rank (a collective: every rank must call it)."""
    if world().size == 1:
        return flag
    t = torch.tensor([int(flag)], device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def mean_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """The average of ``values`` over ranks (every rank gets it)."""
    if world().size == 1:
        return values
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values / world().size


def min_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """The element-wise minimum of ``values`` over ranks (every rank gets it)."""
    if world().size == 1:
        return values
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.MIN)
    return values


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (every rank gets the list)."""
    if world().size == 1:
        return [obj]
    out: list[Any] = [None] * world().size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if world().size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


T = TypeVar("T")


def rank_batches(n: int, batch_size: int, world: World) -> list[range]:
    """The batches of ``world``'s rank when ``n`` items are cut in order into batches of ``batch_size`` (the
    last may be shorter) and batch b goes to rank b mod ``world.size``: item ranges, in order."""
    return [range(start, min(start + batch_size, n)) for start in range(0, n, batch_size)[world.rank :: world.size]]


def derived_seed(seed: int, index: int) -> int:
    """The seed of the ``index``-th stream drawn from ``seed``: batch b's draws (a sampler's noise, a VAE
    posterior's sample) in a stage that cuts a set into batches, the same whichever rank gets the batch;
    rank r's in training."""
    return seed * 1_000_003 + index


def interleave(per_rank: list[list[T]]) -> list[T]:
    """Per-batch items gathered from every rank (rank order, each rank's batches of :func:`rank_batches` in
    order) back in batch order."""
    size = len(per_rank)
    return [per_rank[b % size][b // size] for b in range(sum(len(items) for items in per_rank))]


def one_node(world: World) -> bool:
    """Whether every rank of ``world`` runs on this node (``LOCAL_WORLD_SIZE``, set by submitit, torchrun and
    :func:`spawn`, is the world size)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", world.size)) >= world.size


class SharedRows:
    """An (N, ...) ``.npy`` array that the ranks fill batch by batch (the batches of :func:`rank_batches`),
    finished by rank 0 (:meth:`finish`).

    On one node every rank writes its rows into the same memory-mapped file: they share one page cache.
    Across nodes a shared file system need not keep a page written on two nodes coherent (NFS flushes whole
    pages, and a batch's rows rarely end on a page boundary), so each rank writes its rows into a file of its
    own, which rank 0 reads once every rank has closed it and copies into place."""

    def __init__(self, path: Path, dtype: np.dtype | type, shape: tuple[int, ...], batch_size: int, world: World):
        self.path, self.shape, self.batch_size, self.world = path, shape, batch_size, world
        self.sharded = world.size > 1 and not one_node(world)
        if self.sharded:  # this rank's rows, in the order of its batches
            self.offset, rows = {}, 0
            for batch in rank_batches(shape[0], batch_size, world):
                self.offset[batch.start], rows = rows, rows + len(batch)
            self.array = np.lib.format.open_memmap(
                self._shard(world.rank), mode="w+", dtype=dtype, shape=(rows, *shape[1:])
            )
            return
        if world.main:
            np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape).flush()
        barrier()
        self.array = np.lib.format.open_memmap(path, mode="r+")

    def _shard(self, rank: int) -> Path:
        return self.path.with_name(f"{self.path.stem}.rank{rank}.npy")

    def write(self, rows: range, values: np.ndarray) -> None:
        """The rows ``rows`` (one of this rank's batches)."""
        start = self.offset[rows.start] if self.sharded else rows.start
        self.array[start : start + len(rows)] = values

    def finish(self) -> np.memmap | None:
        """Once every rank wrote its rows (a collective): the whole array, writable, on rank 0; None on the
        others."""
        self.array.flush()
        if not self.sharded:
            barrier()
            return self.array if self.world.main else None
        dtype = self.array.dtype
        del self.array  # closed before the barrier: rank 0 then reads what this rank wrote
        barrier()
        if not self.world.main:
            return None
        out = np.lib.format.open_memmap(self.path, mode="w+", dtype=dtype, shape=self.shape)
        for rank in range(self.world.size):
            shard = np.load(self._shard(rank), mmap_mode="r")
            offset = 0
            for batch in rank_batches(self.shape[0], self.batch_size, World(rank, self.world.size)):
                out[batch.start : batch.stop] = shard[offset : offset + len(batch)]
                offset += len(batch)
            del shard
            self._shard(rank).unlink()
        return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(local_rank: int, fn: Callable[..., Any], args: tuple[Any, ...], nprocs: int, port: int) -> None:
    os.environ.update(
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(local_rank),
            "LOCAL_RANK": str(local_rank),
            "WORLD_SIZE": str(nprocs),
            "LOCAL_WORLD_SIZE": str(nprocs),
        }
    )
    fn(*args)


def spawn(fn: Callable[..., Any], args: tuple[Any, ...], nprocs: int) -> None:
    """Run ``fn(*args)`` in ``nprocs`` fresh processes on this machine, ranks 0..nprocs-1 (the local
    counterpart of submitit's tasks); an exception in any of them is raised here with its traceback."""
    import torch.multiprocessing as mp

    mp.start_processes(_worker, args=(fn, args, nprocs, free_port()), nprocs=nprocs, start_method="spawn")

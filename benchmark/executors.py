"""Executors: run a plan's stages in dependency order, here or as Slurm jobs through submitit.

Both end in :func:`run_stage`, which reads the stage's record from the run store, so a job needs
nothing but the store's path. What to do with each stage is decided from the store's state
(benchmark/store.py): done stages are never run again, a stage running elsewhere is waited for (here)
or not submitted twice (Slurm), and a failed stage is not retried unless asked (``retry``; a stage
interrupted or never run, ``NOT_A_FAILURE``, runs again); the stages
that need a failed one are skipped and every other cell goes on (``fail_fast`` stops at the first
failure).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from benchmark.config import stage_resources
from benchmark.errors import StageError
from benchmark.graph import STAGES, stage_order
from benchmark.registry import load_plugins
from benchmark.store import RunStore, StageStatus, read_json, slurm_job_id, write_json
from benchmark.study import Plan, Stage

WAIT_POLL_S = 2.0


@dataclass
class Outcome:
    """What happened to each stage of a plan in this invocation (stage hash -> detail)."""

    cached: list[str] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    submitted: dict[str, str] = field(default_factory=dict)
    in_flight: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.skipped


def stage_logger(store: RunStore, kind: str, hash: str) -> logging.Logger:
    log = logging.getLogger(f"tok1d.{kind}.{hash}")
    log.setLevel(logging.INFO)
    log.propagate = False
    path = store.dir(kind, hash) / "log.txt"
    if not any(getattr(h, "baseFilename", None) == str(path) for h in log.handlers):
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
    return log


def failure_kind(exc: BaseException) -> str:
    """The kind recorded with a failure: oom, interrupted (Ctrl-C) or failed."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return "oom"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    return "failed"


def run_stage(store_root: str, kind: str, hash: str, take_lock: bool = False) -> dict[str, Any]:
    """Run one recorded stage in this process and store its result (or its error, then re-raise).

    Under several processes (``WORLD_SIZE`` > 1) every rank calls it; it joins the process group and
    rank 0 alone writes the store. ``take_lock``: take the stage's lock here (a Slurm job); a local
    executor holds it already.
    """
    from benchmark import distributed
    from benchmark.stage_context import StageContext
    from benchmark.stages import BODIES
    from benchmark.train import Preempted

    store = RunStore(store_root)
    record = read_json(store.dir(kind, hash) / "stage.json")
    world = distributed.init(record["runtime"].get("device", "auto"))
    load_plugins(record.get("plugins", []))
    log = stage_logger(store, kind, hash) if world.main else logging.getLogger(f"tok1d.rank{world.rank}")
    ctx = StageContext(
        kind, hash, record["config"], record["inputs"], record["runtime"], store.dir(kind, hash), store, log, world
    )
    lock = store.lock(kind, hash) if take_lock and world.main else contextlib.nullcontext(True)
    with lock as held:
        if not distributed.broadcast_object(held):
            raise StageError(f"{kind} {hash} is already running elsewhere ({store.live_lock(kind, hash)})")
        done = store.result(kind, hash) if take_lock and world.main else None
        if distributed.broadcast_object(done is not None):  # another run finished it while this job queued
            log.info("already finished by another run; nothing to do")
            distributed.shutdown()
            return done
        if world.main:
            store.begin(kind, hash)
            log.info(
                "stage %s %s for cells %s (process %d of %d)",
                kind,
                hash,
                record.get("cells"),
                world.rank + 1,
                world.size,
            )
        try:
            result = BODIES[kind](ctx)
        except Preempted:
            log.info("preempted: checkpoint written")
            raise
        except BaseException as exc:
            if world.main:
                log.exception("stage failed")
                store.fail(kind, hash, exc, failure_kind(exc))
            raise
        if world.main:
            store.finish(kind, hash, result)
            log.info("finished")
    distributed.shutdown()
    return result


@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, Any]:
    """The git commit of the code that runs a stage (and whether the tree had local changes)."""
    from benchmark import REPO_ROOT

    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
        return out.stdout.strip() if out.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    return {"commit": commit or None, "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def stage_record(plan: Plan, stage: Stage) -> dict[str, Any]:
    """What stage.json records: the stage's config and inputs, how it runs, the study, the code version."""
    cell = next(c for c in plan.cells if c.stages.get(stage.kind) == stage.hash)
    return {
        "code": code_version(),
        "kind": stage.kind,
        "hash": stage.hash,
        "config": stage.config,
        "inputs": stage.inputs,
        "runtime": cell.config["runtime"],
        "launcher": cell.config["launcher"],
        "plugins": cell.config["plugins"],
        "study": str(plan.path),
        "profile": plan.profile,
        "cells": stage.cells,
    }


def processes(stage: Stage, launcher: dict[str, Any], slurm: bool) -> tuple[int, int]:
    """(nodes, processes per node) of a stage: every kind runs data-parallel (training, latent caching,
    sampling and evaluation share their batches over the processes)."""
    res = stage_resources(launcher, stage.kind)
    per_node = res["tasks_per_node"] or ((res["gpus_per_node"] or 1) if slurm else 1)
    return (res["nodes"] if slurm else 1), per_node


def retry_wanted(retry: str | None, plan: Plan, stage: Stage, status: StageStatus) -> bool:
    """Whether a failed stage runs again: when it did not fail by itself (``NOT_A_FAILURE``), and with
    ``--retry-failed [FILTER]``: every failed stage, or those of the cells FILTER matches."""
    from benchmark.study import matches

    if status.resumes:
        return True
    if retry is None:
        return False
    return retry == "" or any(matches(retry, c) for c in plan.cells if stage.hash in c.stages.values())


def upstream_failure(stage: Stage, broken: dict[str, str]) -> str | None:
    for h in stage.inputs.values():
        if h in broken:
            return broken[h]
    return None


def describe_failure(status: StageStatus) -> str:
    error = status.error or {}
    return f"{error.get('kind', 'failed')}: {(error.get('error') or '').splitlines()[0][:200] if error.get('error') else ''}"


def critical_paths(stages: list[Stage], costs: Mapping[str, float]) -> dict[str, float]:
    """Each stage's cost plus that of its costliest chain of dependents: how long the study still runs
    after the stage starts, at best. ``stages`` in dependency order; an unknown cost counts 0."""
    dependents: dict[str, list[str]] = {}
    for stage in stages:
        for h in stage.inputs.values():
            dependents.setdefault(h, []).append(stage.hash)
    longest: dict[str, float] = {}
    for stage in reversed(stages):
        after = max((longest[d] for d in dependents.get(stage.hash, ())), default=0.0)
        longest[stage.hash] = costs.get(stage.hash, 0.0) + after
    return longest


class LocalExecutor:
    """Runs stages on this machine (each in ``tasks_per_node`` processes): one after another, or with
    ``parallel`` > 1 up to that many independent stages at once, each in a fresh process of its own
    with ``cores / parallel`` CPU threads, a stage starting as soon as its inputs are done. Side by side,
    the stage with the longest critical path (``costs``: estimated PFLOPs per stage hash) starts first,
    so one long training does not start last and hold up the end of the study."""

    def __init__(
        self,
        fail_fast: bool = False,
        retry: str | None = None,
        parallel: int = 1,
        costs: Mapping[str, float] | None = None,
    ) -> None:
        self.fail_fast, self.retry, self.parallel, self.costs = fail_fast, retry, parallel, costs or {}

    def execute(self, plan: Plan, store: RunStore) -> Outcome:
        out = Outcome()
        broken: dict[str, str] = {}
        pending = plan.ordered_stages()  # in dependency order
        if self.parallel > 1:
            longest = critical_paths(pending, self.costs)
            pending.sort(key=lambda s: -longest[s.hash])  # stable: the study's order among equals
        bar = tqdm(total=len(pending), desc=f"{plan.study} [{plan.profile}]", unit="stage", dynamic_ncols=True)
        running: dict[str, Worker] = {}
        try:
            self._loop(plan, store, pending, running, out, broken, bar)
        except BaseException:  # Ctrl-C, a full disk: no stage keeps running unwatched, no lock is left behind
            for worker in running.values():
                worker.stop()
            raise
        finally:
            bar.close()
        return out

    def _loop(
        self,
        plan: Plan,
        store: RunStore,
        pending: list[Stage],
        running: dict[str, Worker],
        out: Outcome,
        broken: dict[str, str],
        bar: Any,
    ) -> None:
        """Start stages as their inputs settle, up to ``parallel`` at a time, until none is left."""
        told: set[str] = set()
        while pending or running:
            waiting = {s.hash for s in pending}
            for stage in list(pending):
                if len(running) >= self.parallel or (self.fail_fast and out.failed):
                    break
                if any(h in running or h in waiting for h in stage.inputs.values()):
                    continue  # an input still runs or waits: later
                bar.set_postfix_str(f"{stage.kind} ({', '.join(stage.cells)[:40]})")
                verdict = self._decide(plan, store, stage, broken, out, told)
                if verdict == "wait":
                    continue
                pending.remove(stage)
                waiting.discard(stage.hash)
                if verdict == "run":
                    worker = self._start(plan, store, stage)
                    if worker is None:  # another run took its lock after our look: wait for it as above
                        pending.append(stage)
                        waiting.add(stage.hash)
                    elif self.parallel == 1:
                        self._settle(store, stage, worker.wait(), out, broken)
                        bar.update()
                    else:
                        running[stage.hash] = worker
                else:
                    bar.update()
            if self.fail_fast and out.failed:
                pending.clear()
            for h, worker in list(running.items()):
                if worker.poll():
                    del running[h]
                    self._settle(store, worker.stage, worker.wait(), out, broken)
                    bar.update()
            if pending or running:
                time.sleep(0.2 if running else WAIT_POLL_S)
                if store.probe is not None and hasattr(store.probe, "refresh"):
                    store.probe.refresh()

    def _decide(
        self, plan: Plan, store: RunStore, stage: Stage, broken: dict[str, str], out: Outcome, told: set[str]
    ) -> str:
        """What to do with a stage whose inputs are settled: run, wait (another run has it), or nothing
        more (cached, failed earlier, or skipped because an input failed; recorded in ``out``)."""
        reason = upstream_failure(stage, broken)
        if reason is not None:
            out.skipped[stage.hash] = reason
            broken[stage.hash] = reason
            return "settled"
        status = store.status(stage.kind, stage.hash)
        if status.state in ("running", "queued"):
            if stage.hash not in told:
                where = status.lock or status.job or {}
                tqdm.write(
                    f"waiting for {stage.kind} {stage.hash}, {status.state} elsewhere "
                    f"({', '.join(f'{k} {v}' for k, v in where.items() if k in ('host', 'pid', 'job_id'))}; "
                    f"log: {store.dir(stage.kind, stage.hash) / 'log.txt'})"
                )
                told.add(stage.hash)
            return "wait"
        if status.state == "done":
            out.cached.append(stage.hash)
            return "settled"
        if status.state == "failed" and not retry_wanted(self.retry, plan, stage, status):
            out.failed[stage.hash] = describe_failure(status) + " (earlier run; --retry-failed to run it again)"
            broken[stage.hash] = f"needs {stage.kind} {stage.hash}, which failed"
            return "settled"
        return "run"

    def _start(self, plan: Plan, store: RunStore, stage: Stage) -> Worker | None:
        """Take the stage's lock, record it and start it: here (``parallel`` 1) or in a process of its own;
        None when another run holds the lock."""
        worker = Worker(stage, store)
        if not worker.take_lock():
            return None
        store.plan(stage.kind, stage.hash, stage_record(plan, stage))
        store.begin(stage.kind, stage.hash)  # a stale error must not stand for this attempt's
        _, nprocs = processes(stage, plan.cells[0].config["launcher"], slurm=False)
        if self.parallel == 1:
            worker.run_here(nprocs)
        else:
            worker.spawn(nprocs, max(1, (os.cpu_count() or 1) // self.parallel))
        return worker

    def _settle(self, store: RunStore, stage: Stage, error: str | None, out: Outcome, broken: dict[str, str]) -> None:
        if error is None:
            out.ran.append(stage.hash)
            return
        out.failed[stage.hash] = error
        broken[stage.hash] = f"needs {stage.kind} {stage.hash}, which failed"
        tqdm.write(
            f"FAILED {stage.kind} {stage.hash} (cells {', '.join(stage.cells)}): {error}\n"
            f"  log: {store.dir(stage.kind, stage.hash) / 'log.txt'}"
        )


def launch(store_root: str, kind: str, hash: str, nprocs: int) -> None:
    """Run a recorded stage in this process, or data-parallel in ``nprocs`` local processes."""
    if nprocs > 1:
        from benchmark import distributed

        distributed.spawn(run_stage, (store_root, kind, hash), nprocs)
    else:
        run_stage(store_root, kind, hash)


WORKER_MAIN = "import sys; from benchmark.executors import launch; launch(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))"


class Worker:
    """One stage run by the local executor: it holds the stage's lock from start to end; the stage runs
    in this process or in a child process (output in ``worker.txt`` beside the stage's ``log.txt``)."""

    def __init__(self, stage: Stage, store: RunStore) -> None:
        self.stage, self.store = stage, store
        self._locks = contextlib.ExitStack()
        self._proc: subprocess.Popen | None = None
        self._error: str | None = None

    def take_lock(self) -> bool:
        """Hold the stage's lock; False when another run holds it, or finished the stage between our
        look at its state and now (then the next look finds it cached)."""
        held = self._locks.enter_context(self.store.lock(self.stage.kind, self.stage.hash))
        if not held or self.store.result(self.stage.kind, self.stage.hash) is not None:
            self._locks.close()
            return False
        return True

    def run_here(self, nprocs: int) -> None:
        try:
            launch(str(self.store.root), self.stage.kind, self.stage.hash, nprocs)
        except Exception as exc:
            self._error = self._recorded_error(exc)

    def spawn(self, nprocs: int, threads: int) -> None:
        from benchmark import REPO_ROOT

        env = {
            **os.environ,
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
            "TQDM_DISABLE": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        }
        args = [str(self.store.root), self.stage.kind, self.stage.hash, str(nprocs)]
        with open(self.store.dir(self.stage.kind, self.stage.hash) / "worker.txt", "w") as out:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", WORKER_MAIN, *args], env=env, stdout=out, stderr=subprocess.STDOUT
            )
        # the lock names the process that runs the stage: should this one die, the stage's lock lives on
        # while the child runs, and no later run starts the stage a second time beside it
        self.store.hand_lock(self.stage.kind, self.stage.hash, self._proc.pid)

    def stop(self) -> None:
        """Stop a child process that runs the stage (the executor is being interrupted), record that and
        release the lock."""
        try:
            if self._proc is not None and self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
                if self.store.error(self.stage.kind, self.stage.hash) is None:
                    self.store.fail(
                        self.stage.kind,
                        self.stage.hash,
                        StageError("stopped: the run that started it was interrupted"),
                        "interrupted",
                    )
        finally:
            self._locks.close()

    def poll(self) -> bool:
        return self._proc is None or self._proc.poll() is not None

    def wait(self) -> str | None:
        """None once the stage finished, else the error's first line; releases the lock."""
        try:
            if self._proc is not None and self._proc.wait() != 0:
                log = self.store.dir(self.stage.kind, self.stage.hash) / "worker.txt"
                self._error = self._recorded_error(
                    StageError(f"worker process exited with {self._proc.returncode}; see {log}")
                )
            return self._error
        finally:
            self._locks.close()

    def _recorded_error(self, exc: BaseException) -> str:
        error = self.store.error(self.stage.kind, self.stage.hash)
        if error is None:  # the process died before writing its record
            error = self.store.fail(self.stage.kind, self.stage.hash, exc, failure_kind(exc))
        return (error.get("error") or str(exc)).splitlines()[0][:300]


# ---------------------------------------------------------------------------------------------
# Slurm


class StageJob:
    """The callable a Slurm job runs: :func:`run_stage` in each of its tasks, with the torch.distributed
    environment from submitit. On SIGUSR2 (sent before the time limit, or on preemption) training
    checkpoints at its next log step and the job requeues itself, up to ``max_num_timeout`` times."""

    def __init__(self, max_num_timeout: int, fail_fast: str | None = None) -> None:
        self.max_num_timeout = max_num_timeout
        self.fail_fast = fail_fast  # the file listing the study's jobs, which a failure cancels (--fail-fast)

    def __call__(self, store_root: str, kind: str, hash: str) -> dict[str, Any]:
        from benchmark.train import STOP_REQUESTED, Preempted

        if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
            import submitit

            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        signal.signal(signal.SIGUSR2, lambda *_: STOP_REQUESTED.set())  # instead of submitit's own handler
        try:
            return run_stage(store_root, kind, hash, take_lock=True)
        except Preempted as exc:
            self._requeue_or_fail(store_root, kind, hash, exc)
            raise
        except Exception:
            if self.fail_fast and int(os.environ.get("RANK", "0")) == 0:
                cancel_study(Path(self.fail_fast), RunStore(store_root).dir(kind, hash) / "log.txt")
            raise

    def _requeue_or_fail(self, store_root: str, kind: str, hash: str, exc: Any) -> None:
        """A stage stopped at the time-limit signal (the caller re-raises): requeue this job, which resumes
        from its checkpoint, or record the stage as timed out after ``max_num_timeout`` requeues or when
        Slurm refuses to requeue."""
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        store, main = RunStore(store_root), int(os.environ.get("RANK", "0")) == 0
        if restarts >= self.max_num_timeout:
            if main:
                store.fail(
                    kind,
                    hash,
                    StageError(
                        f"stopped at the time limit {restarts + 1} times (step "
                        f"{exc.step}); launcher.max_num_timeout is {self.max_num_timeout}"
                    ),
                    "timeout",
                )
            return
        if main:
            job = read_json(store.dir(kind, hash) / "slurm.json") or {}
            store.record_job(kind, hash, {**job, "requeues": restarts + 1})  # before Slurm stops this job
            requeue = subprocess.run(
                ["scontrol", "requeue", slurm_job_id() or ""], capture_output=True, text=True, check=False
            )
            if requeue.returncode != 0:  # e.g. JobRequeue=0 on this cluster: say so instead of vanishing
                store.record_job(kind, hash, job)
                store.fail(
                    kind,
                    hash,
                    StageError(
                        f"stopped at the time limit (step {exc.step}) and Slurm refused to requeue the job: "
                        f"{requeue.stderr.strip() or requeue.returncode}; resume with --retry-failed"
                    ),
                    "timeout",
                )
                return
        time.sleep(60)  # Slurm stops this job on requeue


def cancel_study(jobs_file: Path, log: Path) -> None:
    """``--fail-fast`` on Slurm: a stage failed in this job, so cancel the study's other jobs that
    ``jobs_file`` lists (what the submitting run queued or found in flight; their dependents are cancelled
    by Slurm, ``kill-on-invalid-dep``), and say so in the failed stage's log."""
    own = slurm_job_id()
    others = [j for j in (read_json(jobs_file) or {}).get("jobs", []) if j != own]
    if not others:
        return
    done = subprocess.run(["scancel", *others], capture_output=True, text=True, check=False)
    note = f"--fail-fast: this stage failed, so the study's other jobs were cancelled: {', '.join(others)}"
    if done.returncode != 0:
        note += f" (scancel: {done.stderr.strip() or done.returncode})"
    with open(log, "a") as fh:
        fh.write(note + "\n")


@contextlib.contextmanager
def submission_lock(root: Path) -> Iterator[None]:
    """One submitting ``run`` per run store at a time (two would both see a stage as missing)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".submit.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@dataclass
class Submission:
    """Stages to submit as one Slurm job or job array (same kind and resources)."""

    kind: str
    resources: dict[str, Any]
    stages: list[Stage]
    dependency: str = ""


class SlurmExecutor:
    """Submits the whole study at once and returns: one job per stage (stages of one kind and equal
    resources as job arrays, split at the cluster's MaxArraySize), chained with ``afterok``.

    Done stages are never submitted; a stage whose job is queued or running is not submitted again; a
    failed one only with ``retry`` (one never run: always). A stage waiting on a failed one is skipped,
    and Slurm cancels a job whose dependency failed (``kill-on-invalid-dep``). With ``fail_fast`` a job whose stage fails
    cancels the study's other jobs too (:func:`cancel_study`).
    """

    def __init__(
        self,
        launcher: dict[str, Any],
        retry: str | None = None,
        submit: Callable[[Submission, Path], list[str]] | None = None,
        fail_fast: bool = False,
    ) -> None:
        from benchmark import slurm

        if not slurm.available():
            from benchmark.errors import ConfigError

            raise ConfigError(
                "launcher.name=slurm: no 'sbatch' on PATH; run on a Slurm login node or use launcher.name=local"
            )
        self.launcher, self.retry, self.fail_fast = launcher, retry, fail_fast
        self.submit = submit or self._submit
        self.jobs_file: Path | None = None  # with fail_fast, the study's job ids, for the job that fails

    def parameters(self, sub: Submission) -> dict[str, Any]:
        """submitit parameters of a submission: resources, name, dependency, requeue signal."""
        res = sub.resources
        extra: dict[str, Any] = {k: res[k] for k in ("account", "qos") if res.get(k)}
        if sub.dependency:
            extra["dependency"] = sub.dependency
            extra["kill-on-invalid-dep"] = "yes"
        nodes, per_node = processes(sub.stages[0], self.launcher, slurm=True)
        gpus = res["gpus_per_node"] if STAGES[sub.kind].gpu else 0
        params: dict[str, Any] = {
            "name": f"tok1d-{sub.kind}",
            "timeout_min": res["timeout_min"],
            "nodes": nodes,
            "tasks_per_node": per_node,
            "cpus_per_task": res["cpus_per_task"],
            "mem_gb": res["mem_gb"],
            "gpus_per_node": gpus,
            "slurm_additional_parameters": extra,
            "slurm_array_parallelism": self.launcher.get("array_parallelism") or 64,
        }
        if res.get("partition"):
            params["slurm_partition"] = res["partition"]
        return params

    def _submit(self, sub: Submission, folder: Path) -> list[str]:
        """Submit one job (one stage) or one array (several); returns the job ids in stage order."""
        import submitit

        executor = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm")
        executor.update_parameters(**self.parameters(sub))
        job = StageJob(self.launcher.get("max_num_timeout", 3), str(self.jobs_file) if self.jobs_file else None)
        args = [(str(folder.parent), s.kind, s.hash) for s in sub.stages]
        from benchmark import slurm

        try:
            if len(args) == 1:
                jobs = [executor.submit(job, *args[0])]
            else:
                jobs = executor.map_array(job, *zip(*args))
        except Exception as exc:  # submitit re-raises sbatch's failure with its output
            raise slurm.rejection(exc, f"the {sub.kind} job ({len(args)} stage(s))") from None
        return [j.job_id for j in jobs]

    def groups(self, stages: list[Stage], jobs: dict[str, str]) -> list[Submission]:
        """Stages of one kind and resources in job arrays of at most MaxArraySize, except a stage that
        waits on an in-flight job: its own job with its own ``afterok`` (an array has one dependency
        for all its tasks, which would tie unrelated cells together)."""
        from benchmark import slurm

        limit = max(1, slurm.max_array_size())
        out: list[Submission] = []
        pending: dict[tuple[str, str], list[Stage]] = {}
        for stage in stages:
            res = stage_resources(self.launcher, stage.kind)
            waits = [jobs[h] for h in stage.inputs.values() if h in jobs]
            if waits:
                out.append(Submission(stage.kind, res, [stage], "afterok:" + ":".join(waits)))
            else:
                pending.setdefault((stage.kind, repr(sorted(res.items()))), []).append(stage)
        for (kind, _), members in pending.items():
            res = stage_resources(self.launcher, kind)
            out += [Submission(kind, res, members[i : i + limit]) for i in range(0, len(members), limit)]
        return out

    def execute(self, plan: Plan, store: RunStore) -> Outcome:
        from benchmark import slurm

        out = Outcome()
        folder = store.root / "slurm"
        if self.fail_fast:  # written once everything is queued; a job that fails earlier cancels nothing
            folder.mkdir(parents=True, exist_ok=True)
            self.jobs_file = folder / f"fail_fast-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.json"
        with submission_lock(store.root):
            broken: dict[str, str] = {}
            jobs: dict[str, str] = {}  # stage hash -> job id of the job that will produce it
            todo: list[Stage] = []
            for stage in plan.ordered_stages():
                reason = upstream_failure(stage, broken)
                status = store.status(stage.kind, stage.hash)
                if status.state == "done":
                    out.cached.append(stage.hash)
                elif reason is not None:
                    out.skipped[stage.hash] = reason
                    broken[stage.hash] = reason
                elif status.state in ("running", "queued"):
                    # the job that holds the lock runs it (an older job record may name an ended job)
                    holder = (status.lock if status.state == "running" else None) or status.job or {}
                    if holder.get("job_id"):
                        jobs[stage.hash] = out.in_flight[stage.hash] = str(holder["job_id"])
                    else:  # a local run has it: no Slurm job can wait on that, so its dependents wait here
                        broken[stage.hash] = (
                            f"needs {stage.kind} {stage.hash}, which a local run ({holder.get('host')}, pid "
                            f"{holder.get('pid')}) is running; run again once it has finished"
                        )
                elif status.state == "failed" and not retry_wanted(self.retry, plan, stage, status):
                    out.failed[stage.hash] = describe_failure(status) + " (--retry-failed to submit it again)"
                    broken[stage.hash] = f"needs {stage.kind} {stage.hash}, which failed"
                else:
                    todo.append(stage)
            checked: set[str] = set()
            for stage in todo:  # resources the cluster would refuse: one line, before anything is queued
                params = self.parameters(Submission(stage.kind, stage_resources(self.launcher, stage.kind), [stage]))
                key = repr(sorted((k, str(v)) for k, v in params.items() if k != "name"))
                if key not in checked:
                    slurm.check_resources(params, f"the {stage.kind} job")
                    checked.add(key)
            for kind in sorted({s.kind for s in todo}, key=stage_order):  # upstream kinds first
                wave = [s for s in todo if s.kind == kind]
                for sub in self.groups(wave, jobs):
                    for stage in sub.stages:
                        store.plan(stage.kind, stage.hash, stage_record(plan, stage))
                    ids = self.submit(sub, folder)
                    for stage, job_id in zip(sub.stages, ids):
                        log = folder / job_id / f"{job_id}_0_log"
                        store.record_job(
                            stage.kind,
                            stage.hash,
                            {
                                "job_id": job_id,
                                "submitted": time.time(),
                                "depends_on": sub.dependency,
                                "stdout": f"{log}.out",
                                "stderr": f"{log}.err",
                            },
                        )
                        jobs[stage.hash] = out.submitted[stage.hash] = job_id
        if self.jobs_file is not None:
            write_json(self.jobs_file, {"jobs": sorted({*out.submitted.values(), *out.in_flight.values()})})
        return out


def launcher_is_slurm(launcher: dict[str, Any]) -> bool:
    from benchmark import slurm

    return launcher["name"] == "slurm" or (launcher["name"] == "auto" and slurm.available())

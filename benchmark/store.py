"""The run store: one folder per stage, ``<root>/<kind>/<hash>/``, and the single source of truth for
a stage's state. Every file is written to a temporary name and renamed into place, so a killed job
leaves nothing half written.

    stage.json    the stage's config, inputs and runtime (written when it is planned to run)
    result.json   its outputs, with the sizes of the files it left (present only when it finished)
    error.json    its last failure: message, kind (failed, cancelled, timeout, oom, lost), log, stderr tail
    lock.json     who runs it now: host, pid, Slurm job id, start time (its mtime is a heartbeat)
    slurm.json    the Slurm job that runs (or ran) it: job id, log files, requeues
    log.txt       its log; losses.csv its training curve; ckpt/ its training checkpoints

A stage is *done* only if its ``result.json`` parses and every file it records still has its size; a
corrupt record is moved aside (named in one line on stderr) and the stage counts as not run. The
states :meth:`RunStore.status` reports are the ones ``run``, ``status``, ``report`` and the
executors act on; none of them decides on its own.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.errors import StoreError
from benchmark.graph import store_folder

RUNS_ENV = "TOK1D_RUNS"
# Files a stage keeps changing after it finished (logs, its own records): not part of its outputs.
MUTABLE = {"stage.json", "result.json", "error.json", "lock.json", "slurm.json", "log.txt", "worker.txt"}
MUTABLE_DIRS = ("ckpt", "tb", "slurm")
STALE_HEARTBEAT_S = 3600  # a lock from another host without a Slurm job is stale after an hour of silence
HALF_WRITTEN_LOCK_S = 60  # an unreadable lock younger than this is being written (see RunStore.lock)


def default_root(cli: str | None = None) -> Path:
    """``--runs`` if given, else ``$TOK1D_RUNS``, else ``runs/`` in the working directory."""
    return Path(cli or os.environ.get(RUNS_ENV) or "runs").resolve()


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` then rename ``tmp`` onto ``path`` (atomic on POSIX). Whatever fails, the
    previous ``path`` is left as it was; a full disk says so in one line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            kept = "its previous version is intact" if path.exists() else "nothing was written"
            raise StoreError(f"disk full while writing {path} ({os.strerror(exc.errno)}); {kept}") from exc
        raise
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str)))


def read_json(path: Path) -> Any:
    """The JSON in ``path``, or None when absent; a file that does not parse is a StoreError naming it."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError):  # also when removed between a look and the read
        return None
    except (ValueError, UnicodeDecodeError) as exc:
        raise StoreError(f"{path}: not valid JSON ({type(exc).__name__}: {exc})") from exc


def output_files(folder: Path) -> dict[str, int]:
    """Relative path -> size of every file a finished stage leaves (records, logs, checkpoints excluded)."""
    out: dict[str, int] = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if (
            path.is_file()
            and rel.name not in MUTABLE
            and not rel.name.startswith(".")
            and rel.parts[0] not in MUTABLE_DIRS
        ):
            out[str(rel)] = path.stat().st_size
    return out


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# Ends that were not the stage's fault and that nobody chose: a job Slurm never ran because an input
# failed, a local run stopped by Ctrl-C. The next run runs them again without --retry-failed (a job
# cancelled on purpose, by scancel or --fail-fast, is not resubmitted unless asked).
NOT_A_FAILURE = ("dependency", "interrupted")


@dataclass
class StageStatus:
    """What the store knows of one stage.

    ``state``: ``done`` (a valid result), ``running`` (a live lock), ``queued`` (a Slurm job that is
    pending or running but has not taken the lock yet), ``failed`` (an error record), or ``missing``.
    """

    kind: str
    hash: str
    state: str
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    lock: dict[str, Any] | None = None
    job: dict[str, Any] | None = None
    queue: dict[str, Any] | None = None  # what the scheduler says of ``job`` (state, reason, ...)
    notes: list[str] = field(default_factory=list)

    @property
    def resumes(self) -> bool:
        """An error record the next run retries by itself (``NOT_A_FAILURE``)."""
        return self.state == "failed" and (self.error or {}).get("kind") in NOT_A_FAILURE

    @property
    def failed_by_itself(self) -> bool:
        """A failure the next run leaves alone unless ``--retry-failed`` asks (not ``NOT_A_FAILURE``)."""
        return self.state == "failed" and not self.resumes


# A probe of the scheduler: job id -> {"state": PENDING | RUNNING | COMPLETED | FAILED | ..., "reason",
# "exit_code", "restarts", ...}, or None when the scheduler no longer knows the job.
JobProbe = Callable[[str], "dict[str, Any] | None"]
LIVE_JOB_STATES = {
    "UNKNOWN",  # the scheduler gave no answer (benchmark.slurm.SlurmQueue): assume the job still lives
    "PENDING",
    "RUNNING",
    "CONFIGURING",
    "COMPLETING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "RESIZING",
    "SUSPENDED",
    "STAGE_OUT",
    "SIGNALING",
}


class RunStore:
    """Finished, running, queued and failed stages under one root folder."""

    def __init__(self, root: str | Path, probe: JobProbe | None = None) -> None:
        self.root = Path(root)
        self.probe = probe

    def dir(self, kind: str, hash: str) -> Path:
        return self.root / store_folder(kind) / hash

    # -- records ------------------------------------------------------------------------------

    def _read(self, path: Path) -> Any:
        """A record, or None; a corrupt one is moved aside and named (the store heals itself)."""
        try:
            return read_json(path)
        except StoreError as exc:
            self._quarantine(path, str(exc))
            return None

    def _quarantine(self, path: Path, why: str) -> None:
        aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
        with contextlib.suppress(FileNotFoundError):
            os.replace(path, aside)
        print(f"run store: {why}; moved to {aside.name}; the stage counts as not run", file=sys.stderr)

    def result(self, kind: str, hash: str) -> dict[str, Any] | None:
        """The stage's result if it finished and its outputs are intact, else None."""
        d = self.dir(kind, hash)
        result = self._read(d / "result.json")
        if result is None:
            return None
        if not isinstance(result, dict):
            self._quarantine(d / "result.json", f"{d / 'result.json'}: not a result record")
            return None
        for name, size in (result.get("_files") or {}).items():
            path = d / name
            if not path.is_file() or path.stat().st_size != size:
                found = "missing" if not path.is_file() else f"{path.stat().st_size} bytes, recorded {size}"
                self._quarantine(d / "result.json", f"{d / 'result.json'}: output {name} is {found}")
                return None
        return result

    def error(self, kind: str, hash: str) -> dict[str, Any] | None:
        return self._read(self.dir(kind, hash) / "error.json")

    def job(self, kind: str, hash: str) -> dict[str, Any] | None:
        return self._read(self.dir(kind, hash) / "slurm.json")

    def is_done(self, kind: str, hash: str) -> bool:
        return self.result(kind, hash) is not None

    # -- state --------------------------------------------------------------------------------

    def status(self, kind: str, hash: str) -> StageStatus:
        """The stage's state, from its records, its lock and (with a probe) the scheduler."""
        result = self.result(kind, hash)
        if result is not None:
            return StageStatus(kind, hash, "done", result=result)
        lock = self.live_lock(kind, hash)
        job = self.job(kind, hash)
        queue = self.probe(job["job_id"]) if job and self.probe else None
        if lock is not None:
            return StageStatus(kind, hash, "running", lock=lock, job=job, queue=queue)
        error = self.error(kind, hash)
        if job and not job.get("ended") and self.probe is not None:
            if queue is not None and queue.get("state") in LIVE_JOB_STATES:
                return StageStatus(kind, hash, "queued", job=job, queue=queue, error=error)
            error = self._job_ended(kind, hash, job, queue, error)
        if error is not None:
            return StageStatus(kind, hash, "failed", error=error, job=job, queue=queue)
        return StageStatus(kind, hash, "missing", job=job)

    def _job_ended(
        self, kind: str, hash: str, job: dict[str, Any], queue: dict[str, Any] | None, error: dict[str, Any] | None
    ) -> dict[str, Any] | None:
        """A Slurm job of this stage ended without a result: keep (or write) its error record with the
        kind Slurm gives (timeout, cancelled, oom, failed) or ``lost`` when Slurm forgot the job."""
        if queue is None and hasattr(self.probe, "forgotten"):  # Slurm forgot it: sacct, or slurmstepd's lines
            queue = self.probe.forgotten(job["job_id"], stderr_tail(job, lines=200))
        state = (queue or {}).get("state")
        if state == "COMPLETED" and error is None:
            return None  # finished between our reads; the next look sees its result
        kinds = {
            "TIMEOUT": "timeout",
            "DEADLINE": "timeout",
            "CANCELLED": "cancelled",
            "OUT_OF_MEMORY": "oom",
            "PREEMPTED": "cancelled",
            "NODE_FAIL": "failed",
            "BOOT_FAIL": "failed",
            "FAILED": "failed",
        }
        if error is None or (error.get("job_id") != job["job_id"]):
            failure = kinds.get(state or "", "lost")
            if state == "CANCELLED" and "Dependency" in str((queue or {}).get("reason")):
                failure = "dependency"  # Slurm dropped it because a stage it needs failed: never ran
            message = (
                f"Slurm job {job['job_id']} ended {state or 'and is no longer known to Slurm (nor to sacct)'}"
                f"{' (' + queue['reason'] + ')' if queue and queue.get('reason') not in (None, 'None') else ''}"
                " without a result"
            )
            error = {
                "error": message,
                "kind": failure,
                "job_id": job["job_id"],
                "log": str(self.dir(kind, hash) / "log.txt"),
                "exit_code": (queue or {}).get("exit_code"),
                "stderr_tail": stderr_tail(job),
            }
            write_json(self.dir(kind, hash) / "error.json", error)
        current = self.job(kind, hash) or {}
        if current.get("job_id") == job["job_id"]:  # not a newer submission recorded meanwhile
            write_json(self.dir(kind, hash) / "slurm.json", {**current, "ended": True})
        return error

    # -- life cycle ---------------------------------------------------------------------------

    def plan(self, kind: str, hash: str, record: dict[str, Any]) -> Path:
        """Write the stage's record (before it runs here or is submitted)."""
        d = self.dir(kind, hash)
        d.mkdir(parents=True, exist_ok=True)
        write_json(d / "stage.json", record)
        return d

    def begin(self, kind: str, hash: str) -> None:
        """Clear the previous attempt's error before a new attempt starts."""
        (self.dir(kind, hash) / "error.json").unlink(missing_ok=True)

    def finish(self, kind: str, hash: str, result: dict[str, Any]) -> None:
        d = self.dir(kind, hash)
        write_json(d / "result.json", {**result, "_files": output_files(d), "_finished": time.time()})
        (d / "error.json").unlink(missing_ok=True)

    def fail(self, kind: str, hash: str, exc: BaseException, failure: str = "failed") -> dict[str, Any]:
        d = self.dir(kind, hash)
        record = {
            "error": f"{type(exc).__name__}: {exc}",
            "kind": failure,
            "traceback": "".join(traceback.format_exception(exc))[-4000:],
            "log": str(d / "log.txt"),
            "job_id": slurm_job_id(),
        }
        write_json(d / "error.json", record)
        return record

    def record_job(self, kind: str, hash: str, job: dict[str, Any]) -> None:
        """The Slurm job submitted for this stage (a new submission replaces an ended one)."""
        (self.dir(kind, hash) / "error.json").unlink(missing_ok=True)
        write_json(self.dir(kind, hash) / "slurm.json", job)

    # -- locks --------------------------------------------------------------------------------

    def hand_lock(self, kind: str, hash: str, pid: int) -> None:
        """Name ``pid`` (a child process on this host that runs the stage) as the lock's holder; the lock
        stays where it is (its file is replaced in one step), and whoever took it still releases it."""
        path = self.dir(kind, hash) / "lock.json"
        lock = read_json(path) or {}
        write_json(path, {**lock, "host": socket.gethostname(), "pid": pid, "taken_by": lock.get("pid")})

    def live_lock(self, kind: str, hash: str) -> dict[str, Any] | None:
        """The stage's lock if its holder is alive: same host and pid running, or its Slurm job still
        running, or (another host, no job) a heartbeat within the last hour. A stale lock is removed."""
        path = self.dir(kind, hash) / "lock.json"
        try:
            lock = read_json(path)
        except StoreError:  # only on a file system without hard links (see lock): being written, or left so
            with contextlib.suppress(FileNotFoundError):
                if time.time() - path.stat().st_mtime < HALF_WRITTEN_LOCK_S:
                    return {"lock": str(path), "state": "being written"}
            remove_stale_lock(path, None)
            return None
        if lock is None:
            return None
        with contextlib.suppress(FileNotFoundError):  # (its holder let go meanwhile)
            if lock_alive(lock, path, self.probe):
                return lock
        remove_stale_lock(path, lock)
        return None

    @contextlib.contextmanager
    def lock(self, kind: str, hash: str) -> Iterator[bool]:
        """Hold the stage's lock while the body runs; yields False (holding nothing) when a live holder
        has it. The lock file appears with its content in one step (a hard link to a written file, which
        fails if the lock exists, also on NFS), so no other process ever reads a half-written lock,
        takes it for corrupt and moves it aside: two processes never both hold it."""
        path = self.dir(kind, hash) / "lock.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        mine = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "job_id": slurm_job_id(),
            "restart": slurm_restart(),
            "started": time.time(),
        }
        draft = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}")
        draft.write_text(json.dumps(mine))
        try:
            held = False
            for _ in range(2):
                try:
                    _create_from(draft, path)
                except FileExistsError:
                    if self.live_lock(kind, hash) is not None:
                        break
                    continue  # the stale lock was removed: try again
                held = True
                break
        finally:
            draft.unlink(missing_ok=True)
        if not held:
            yield False
            return
        try:
            yield True
        finally:
            path.unlink(missing_ok=True)


def remove_stale_lock(path: Path, stale: dict[str, Any] | None) -> None:
    """Remove the lock at ``path`` only if it is still the one judged stale (``stale``: its content; None:
    unreadable). Two runs may judge the same dead holder's lock at once: the first removes it and takes
    the stage, so the second must not remove the first's fresh lock. The lock is moved aside in one step,
    then compared; another run's lock is put back."""
    aside = path.with_name(f".{path.name}.stale.{socket.gethostname()}.{os.getpid()}")
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return
    try:
        try:
            moved = read_json(aside)
        except StoreError:
            moved = None
        if moved != stale:
            with contextlib.suppress(FileExistsError):
                _create_from(aside, path)
    finally:
        aside.unlink(missing_ok=True)


def _create_from(draft: Path, path: Path) -> None:
    """Make ``path`` with ``draft``'s content in one step; FileExistsError if it exists. A file system
    without hard links gets an exclusive create followed by the write (readers then meet an empty file
    for an instant, which :meth:`RunStore.live_lock` treats as live)."""
    try:
        os.link(draft, path)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        with os.fdopen(fd, "w") as fh:
            fh.write(draft.read_text())


def lock_alive(lock: dict[str, Any], path: Path, probe: JobProbe | None) -> bool:
    """Whether a lock's holder still runs (see :meth:`RunStore.live_lock`). A lock of this very Slurm job
    from an earlier start (a requeued job: its restart count differs) is stale: that start was killed."""
    job_id = slurm_job_id()
    if job_id and lock.get("job_id") == job_id and lock.get("restart") != slurm_restart():
        return False
    if lock.get("job_id") and probe is not None:
        queue = probe(str(lock["job_id"]))
        return queue is not None and queue.get("state") in LIVE_JOB_STATES
    if lock.get("host") == socket.gethostname():  # the process running the stage or the one that took the lock
        return any(pid_alive(int(lock[key])) for key in ("pid", "taken_by") if lock.get(key))
    return time.time() - path.stat().st_mtime < STALE_HEARTBEAT_S


def slurm_restart() -> str:
    """How many times Slurm has requeued this job (0 outside Slurm)."""
    return os.environ.get("SLURM_RESTART_COUNT", "0")


def slurm_job_id() -> str | None:
    """This process's Slurm job id (``<array>_<task>`` for an array task), or None outside Slurm."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID")


def stderr_tail(job: dict[str, Any], lines: int = 20) -> str:
    """The last ``lines`` lines of a Slurm job's stderr file (recorded in slurm.json), if readable."""
    path = job.get("stderr")
    if not path or not Path(path).is_file():
        return ""
    with open(path, errors="replace") as fh:
        return "".join(fh.readlines()[-lines:])

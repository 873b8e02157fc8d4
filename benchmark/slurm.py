"""What tok1d asks of a Slurm cluster beyond submitit: the state of its jobs without ``sacct``, the
array size limit, and sbatch's rejections turned into one line naming the option to change.

Job states come from ``squeue -t all`` (finished jobs stay there for ``MinJobAge`` seconds, 300 by
default) and ``scontrol show job`` (exit code, restarts); a job that Slurm no longer knows is None, and how
it ended is then read from ``sacct`` where accounting runs, else from slurmstepd's lines in its stderr
(:func:`forgotten_job`).
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from typing import Any

from benchmark.errors import ConfigError

SQUEUE_FORMAT = "%i|%T|%r|%M|%l|%N"  # job id (array tasks as A_i), state, reason, elapsed, limit, nodes


def available() -> bool:
    """Whether this machine can submit to Slurm (``sbatch`` on PATH)."""
    return shutil.which("sbatch") is not None


def _run(args: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None


class SlurmQueue:
    """A snapshot of the queue, taken once (one ``squeue`` call) and asked per job: the store's probe."""

    def __init__(self) -> None:
        self._jobs: dict[str, dict[str, Any]] | None = None
        self._failed: str | None = None  # why the last squeue gave no answer

    def refresh(self) -> None:
        self._jobs = None

    def jobs(self) -> dict[str, dict[str, Any]]:
        if self._jobs is None:
            self._jobs = {}
            out = _run(["squeue", "-h", "-r", "-t", "all", "-o", SQUEUE_FORMAT])
            self._failed = None
            if out is None or out.returncode != 0:
                self._failed = "squeue did not answer" if out is None else (out.stderr.strip() or "squeue failed")
            for line in out.stdout.splitlines() if out and out.returncode == 0 else []:
                parts = line.strip().split("|")
                if len(parts) == 6:
                    job_id, state, reason, elapsed, limit, nodes = parts
                    self._jobs[job_id] = {
                        "state": state,
                        "reason": reason,
                        "elapsed": elapsed,
                        "limit": limit,
                        "nodes": nodes,
                    }
        return self._jobs

    def forgotten(self, job_id: str, stderr: str) -> dict[str, Any] | None:
        """How a job this snapshot does not list ended (:func:`forgotten_job`)."""
        return forgotten_job(job_id, stderr)

    def __call__(self, job_id: str) -> dict[str, Any] | None:
        """State, reason, elapsed time of a job (``A_i`` for an array task); exit code and restarts of
        a job that ended; None when Slurm no longer knows it. When squeue gives no answer (a busy or
        restarting slurmctld) every job is ``UNKNOWN``, which counts as alive: nothing is marked ended or
        lost, and no lock is taken for stale, on a failed look."""
        jobs = self.jobs()
        if self._failed is not None:
            return {"state": "UNKNOWN", "reason": f"squeue failed: {self._failed}"}
        info = jobs.get(str(job_id))
        if info is None:
            return None
        if "exit_code" not in info:
            info.update(job_details(str(job_id)))
        return info


# What slurmstepd writes into a job's stderr when it ends the job, in the order they are tried (the time
# limit, a preemption and a node failure are cancellations "DUE TO" a cause; a plain one is scancel's).
STEPD_ENDINGS = (
    (re.compile(r"\*\*\* (?:JOB|STEP) \S+ ON \S+ CANCELLED AT \S+ DUE TO TIME LIMIT"), "TIMEOUT"),
    (re.compile(r"\*\*\* (?:JOB|STEP) \S+ ON \S+ CANCELLED AT \S+ DUE TO PREEMPTION"), "PREEMPTED"),
    (re.compile(r"\*\*\* (?:JOB|STEP) \S+ ON \S+ CANCELLED AT \S+ DUE TO NODE FAIL"), "NODE_FAIL"),
    (re.compile(r"oom[-_ ]kill|Exceeded (?:job|step) memory limit|OUT_OF_MEMORY", re.IGNORECASE), "OUT_OF_MEMORY"),
    (re.compile(r"\*\*\* (?:JOB|STEP) \S+ ON \S+ CANCELLED AT"), "CANCELLED"),
)


def forgotten_job(job_id: str, stderr: str) -> dict[str, Any] | None:
    """How a job that ``squeue`` no longer lists ended (Slurm forgets an ended job after ``MinJobAge``):
    from ``sacct`` where the cluster keeps accounting, else from what slurmstepd wrote into the job's
    ``stderr`` (a time limit, a preemption, a node failure, the OOM killer, a cancellation), with the
    line that says so as the reason; None when neither tells."""
    out = _run(["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "State,ExitCode"])
    if out is not None and out.returncode == 0 and out.stdout.strip():
        state, _, exit_code = out.stdout.strip().splitlines()[0].partition("|")
        return {"state": state.split()[0], "reason": "sacct", "exit_code": exit_code or None}
    for line in reversed(stderr.splitlines()):
        for pattern, state in STEPD_ENDINGS:
            if pattern.search(line):
                return {"state": state, "reason": line.strip()[-200:], "exit_code": None}
    return None


def job_details(job_id: str) -> dict[str, Any]:
    """``ExitCode`` and ``Restarts`` of a job from ``scontrol show job -o`` (empty when unknown)."""
    out = _run(["scontrol", "show", "job", "-o", job_id])
    if out is None or out.returncode != 0:
        return {}
    fields = dict(re.findall(r"(\w+)=(\S*)", out.stdout.splitlines()[0] if out.stdout else ""))
    details: dict[str, Any] = {}
    if "ExitCode" in fields:
        details["exit_code"] = fields["ExitCode"]
    if fields.get("Restarts", "").isdigit():
        details["restarts"] = int(fields["Restarts"])
    return details


@functools.lru_cache(maxsize=1)
def max_array_size() -> int:
    """The cluster's ``MaxArraySize``: an array holds task ids 0 .. MaxArraySize - 1 (Slurm's default 1001)."""
    out = _run(["scontrol", "show", "config"])
    match = re.search(r"^MaxArraySize\s*=\s*(\d+)", out.stdout if out else "", re.MULTILINE)
    return int(match.group(1)) if match else 1001


# sbatch's rejection -> the launcher option that fixes it
REJECTIONS = (
    (
        r"generic resource|gres|gpu",
        "launcher.gpus_per_node",
        "this partition has no GPUs of that kind; set launcher.gpus_per_node=0 on a CPU cluster",
    ),
    (r"Memory specification|mem", "launcher.mem_gb", "lower launcher.mem_gb to what the nodes have"),
    # "Invalid account or account/partition combination": the account, before the partition is tried
    (r"account", "launcher.account", "set launcher.account to one you may charge"),
    (r"partition", "launcher.partition", "set launcher.partition to one that `sinfo` lists"),
    (r"time limit|TimeLimit", "launcher.timeout_min", "lower launcher.timeout_min to the partition's limit"),
    (r"qos|QOS", "launcher.qos", "set launcher.qos to one you may use"),
    (r"array", "launcher.array_parallelism", "the cluster refused the job array"),
    (
        r"node configuration is not available|CPU count|cpus",
        "launcher.mem_gb / launcher.cpus_per_task / launcher.tasks_per_node",
        "a node of this partition has less (see `sinfo -o '%P %c %m %G'`)",
    ),
)


def sbatch_args(params: dict[str, Any]) -> list[str]:
    """The sbatch options of submitit parameters (the resource part), for ``sbatch --test-only``."""
    args = [
        f"--nodes={params['nodes']}",
        f"--ntasks-per-node={params['tasks_per_node']}",
        f"--cpus-per-task={params['cpus_per_task']}",
        f"--mem={params['mem_gb']}G",
        f"--time={params['timeout_min']}",
    ]
    if params.get("gpus_per_node"):
        args.append(f"--gpus-per-node={params['gpus_per_node']}")
    if params.get("slurm_partition"):
        args.append(f"--partition={params['slurm_partition']}")
    extra = params.get("slurm_additional_parameters", {})
    return args + [f"--{k}={v}" for k, v in extra.items() if k in ("account", "qos")]


def check_resources(params: dict[str, Any], what: str) -> None:
    """Ask Slurm (``sbatch --test-only``: nothing is queued) whether it would accept these resources;
    a refusal is one :class:`ConfigError` line naming the option to change."""
    out = _run(["sbatch", "--test-only", *sbatch_args(params), "--wrap=true"])
    if out is not None and out.returncode != 0:
        raise rejection(subprocess.CalledProcessError(out.returncode, "sbatch", stderr=out.stderr), what)


def rejection(exc: BaseException, what: str) -> ConfigError:
    """One line for an sbatch rejection: sbatch's own message and the option to change."""
    text = " ".join(str(getattr(exc, attr, "") or "") for attr in ("stderr", "output", "stdout"))
    text = text if text.strip() else str(exc)
    lines = [ln.strip() for ln in text.splitlines() if "error" in ln.lower()] or [text.strip().splitlines()[-1]]
    message = "; ".join(dict.fromkeys(ln.replace("sbatch: error: ", "") for ln in lines))[:300]
    for pattern, option, advice in REJECTIONS:
        if re.search(pattern, message, re.IGNORECASE):
            return ConfigError(f"sbatch rejected {what}: {message}. Change {option}: {advice}")
    return ConfigError(f"sbatch rejected {what}: {message}")

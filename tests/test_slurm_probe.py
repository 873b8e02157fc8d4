"""The Slurm side of the run store without a cluster: what a failed ``squeue`` means (nothing is marked
ended or lost, no lock judged stale), a requeued job taking its own earlier start's lock, a newer
submission kept, and sbatch's rejections answered with the option that fixes them."""

from __future__ import annotations

import os
import socket
import subprocess

import pytest

from benchmark import slurm
from benchmark.slurm import SlurmQueue, rejection
from benchmark.store import RunStore, output_files, write_json

KIND, HASH = "train_tokenizer", "abc"


def answer(returncode: int, stdout: str = "", stderr: str = ""):
    return lambda *a, **k: subprocess.CompletedProcess(["squeue"], returncode, stdout, stderr)


def submitted(store: RunStore, job_id: str = "41") -> None:
    store.dir(KIND, HASH).mkdir(parents=True, exist_ok=True)
    store.record_job(KIND, HASH, {"job_id": job_id})


def test_a_failed_squeue_leaves_every_job_alive_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(slurm, "_run", answer(1, stderr="slurm_load_jobs error: Socket timed out"))
    store = RunStore(tmp_path, probe=SlurmQueue())
    submitted(store)
    status = store.status(KIND, HASH)
    assert status.state == "queued" and "Socket timed out" in status.queue["reason"]
    assert not (store.dir(KIND, HASH) / "error.json").exists() and not store.job(KIND, HASH).get("ended")
    lock = {"host": "elsewhere", "pid": 1, "job_id": "41", "restart": "0"}
    write_json(store.dir(KIND, HASH) / "lock.json", lock)
    assert store.live_lock(KIND, HASH) == lock  # not removed as stale


def test_a_job_slurm_forgot_is_lost_once_squeue_answers(tmp_path, monkeypatch):
    monkeypatch.setattr(slurm, "_run", answer(0, stdout=""))  # an empty queue: the job is gone
    store = RunStore(tmp_path, probe=SlurmQueue())
    submitted(store)
    status = store.status(KIND, HASH)
    assert status.state == "failed" and status.error["kind"] == "lost" and store.job(KIND, HASH)["ended"]


@pytest.mark.parametrize(
    "line, kind",
    [
        ("slurmstepd: error: *** JOB 41 ON node1 CANCELLED AT 2026-12-07T10:00:00 DUE TO TIME LIMIT ***", "timeout"),
        (
            "slurmstepd: error: Detected 1 oom_kill event in StepId=41.0. Some of the step tasks have been OOM Killed.",
            "oom",
        ),
        ("slurmstepd: error: *** JOB 41 ON node1 CANCELLED AT 2026-12-07T10:00:00 DUE TO PREEMPTION ***", "cancelled"),
        ("slurmstepd: error: *** JOB 41 ON node1 CANCELLED AT 2026-12-07T10:00:00 ***", "cancelled"),
        ("Traceback (most recent call last): ...", "lost"),
    ],
)
def test_how_a_forgotten_job_ended_is_read_from_slurmstepds_lines(tmp_path, monkeypatch, line, kind):
    """Slurm forgets an ended job after MinJobAge and sacct needs accounting: the error record then takes
    its kind (and the line as its reason) from what slurmstepd wrote into the job's stderr."""
    monkeypatch.setattr(slurm, "_run", answer(1, stderr="sacct: error: Slurm accounting storage is disabled"))
    monkeypatch.setattr(SlurmQueue, "jobs", lambda self: {})  # squeue answers: the job is gone
    store = RunStore(tmp_path, probe=SlurmQueue())
    submitted(store)
    stderr = tmp_path / "41_0_log.err"
    stderr.write_text(f"step 1200/5000\n{line}\n")
    store.record_job(KIND, HASH, {"job_id": "41", "stderr": str(stderr)})
    status = store.status(KIND, HASH)
    assert status.state == "failed" and status.error["kind"] == kind
    assert ("no longer known" in status.error["error"]) == (kind == "lost")


def test_sacct_answers_for_a_forgotten_job_where_accounting_runs(tmp_path, monkeypatch):
    def run(args, timeout=30):
        out = "TIMEOUT|0:0\n" if args[0] == "sacct" else ""
        return subprocess.CompletedProcess(args, 0, out, "")

    monkeypatch.setattr(slurm, "_run", run)
    store = RunStore(tmp_path, probe=SlurmQueue())
    submitted(store)
    status = store.status(KIND, HASH)
    assert status.error["kind"] == "timeout" and "ended TIMEOUT (sacct)" in status.error["error"]


def test_a_newer_submission_is_not_marked_ended_by_a_look_at_the_old_one(tmp_path, monkeypatch):
    monkeypatch.setattr(slurm, "_run", answer(0, stdout=""))
    store = RunStore(tmp_path, probe=SlurmQueue())
    submitted(store, "41")
    old = store.job(KIND, HASH)
    submitted(store, "42")  # a --retry-failed submitted while a status look was in flight
    store._job_ended(KIND, HASH, old, None, None)
    assert store.job(KIND, HASH) == {"job_id": "42"}


def test_a_requeued_job_takes_the_lock_its_killed_start_left(tmp_path, monkeypatch):
    store = RunStore(tmp_path)
    store.dir(KIND, HASH).mkdir(parents=True)
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    earlier = {"host": socket.gethostname(), "pid": os.getpid(), "job_id": "77", "restart": "0"}
    write_json(store.dir(KIND, HASH) / "lock.json", earlier)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    assert store.live_lock(KIND, HASH) is not None  # the same start: its own live lock
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # requeued after a preemption killed that start
    with store.lock(KIND, HASH) as held:
        assert held and store.live_lock(KIND, HASH)["restart"] == "1"


def test_a_worker_log_written_after_the_result_does_not_invalidate_it(tmp_path):
    (tmp_path / "worker.txt").write_text("late output")
    (tmp_path / "model.safetensors").write_bytes(b"x")
    assert output_files(tmp_path) == {"model.safetensors": 1}


@pytest.mark.parametrize(
    "stderr, option",
    [
        (
            "sbatch: error: Batch job submission failed: Invalid account or account/partition combination specified",
            "launcher.account",
        ),
        ("sbatch: error: Batch job submission failed: Invalid partition name specified", "launcher.partition"),
    ],
)
def test_sbatch_rejections_name_the_option_to_change(stderr, option):
    error = subprocess.CalledProcessError(1, ["sbatch"], output="", stderr=stderr)
    assert f"Change {option}:" in str(rejection(error, "study x"))

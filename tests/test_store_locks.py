"""A stage's lock: one holder at a time, also when processes race for it, a dead holder's lock taken over,
a lock being written never mistaken for a corrupt one, and a stage finished meanwhile never run again."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import time
from pathlib import Path

from benchmark.executors import Worker
from benchmark.store import HALF_WRITTEN_LOCK_S, RunStore
from benchmark.study import Stage

KIND, HASH = "train_tokenizer", "abc"


def test_a_held_lock_is_not_taken_again(tmp_path):
    store = RunStore(tmp_path)
    with store.lock(KIND, HASH) as held:
        assert held and store.live_lock(KIND, HASH)["pid"] == os.getpid()
        with store.lock(KIND, HASH) as again:
            assert not again
        assert store.live_lock(KIND, HASH) is not None  # the refused attempt left the holder's lock alone
    assert store.live_lock(KIND, HASH) is None
    assert [p.name for p in store.dir(KIND, HASH).iterdir()] == []  # no lock, no draft left behind


def test_a_dead_holders_lock_is_taken_over(tmp_path):
    store = RunStore(tmp_path)
    dead = subprocess.Popen(["true"])
    dead.wait()
    store.dir(KIND, HASH).mkdir(parents=True)
    (store.dir(KIND, HASH) / "lock.json").write_text(f'{{"host": "{os.uname().nodename}", "pid": {dead.pid}}}')
    with store.lock(KIND, HASH) as held:
        assert held and store.live_lock(KIND, HASH)["pid"] == os.getpid()


def test_a_lock_being_written_counts_as_live_not_as_corrupt(tmp_path, capsys):
    """Where a file system has no hard links the lock is created empty, then written: another process
    that reads it in between must wait, not move it aside as corrupt and take the stage too."""
    store = RunStore(tmp_path)
    store.dir(KIND, HASH).mkdir(parents=True)
    path = store.dir(KIND, HASH) / "lock.json"
    path.write_text("")
    with store.lock(KIND, HASH) as held:
        assert not held
    assert path.is_file() and store.status(KIND, HASH).state == "running"
    assert "corrupt" not in capsys.readouterr().err and not list(path.parent.glob("*corrupt*"))
    old = time.time() - HALF_WRITTEN_LOCK_S - 1  # left unreadable by a crash: stale
    os.utime(path, (old, old))
    with store.lock(KIND, HASH) as held:
        assert held


def _contend(root: str, log: str, rounds: int) -> None:
    store = RunStore(root)
    for _ in range(rounds):
        with store.lock(KIND, HASH) as held:
            if held:
                fd = os.open(log, os.O_WRONLY | os.O_APPEND)
                os.write(fd, f"+{os.getpid()}\n".encode())
                time.sleep(0.001)
                os.write(fd, f"-{os.getpid()}\n".encode())
                os.close(fd)


def test_racing_processes_never_hold_the_lock_together(tmp_path):
    log = tmp_path / "holds.txt"
    log.touch()
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_contend, args=(str(tmp_path / "runs"), str(log), 300)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    lines = log.read_text().split()
    assert len(lines) > 20  # the lock was taken many times
    for start, end in zip(lines[::2], lines[1::2], strict=True):  # each hold ends before the next begins
        assert start[0] == "+" and end == "-" + start[1:], lines
    assert not list((tmp_path / "runs").rglob("*corrupt*"))


def test_a_stage_finished_between_look_and_lock_is_not_run_again(tmp_path: Path):
    """Two runs see the stage missing; the first takes the lock, runs it and lets go; the second takes
    the lock only then: it must find the result and count the stage as cached, not train it twice."""
    store = RunStore(tmp_path)
    stage = Stage(KIND, HASH, {}, {})
    first = Worker(stage, store)
    assert first.take_lock()
    assert not Worker(stage, store).take_lock()  # held by the first
    store.finish(KIND, HASH, {"step": 1})
    first.wait()
    assert not Worker(stage, store).take_lock()  # finished meanwhile
    assert store.live_lock(KIND, HASH) is None  # and the refused worker let go of the lock


def test_a_slurm_job_whose_stage_another_run_finished_returns_the_stored_result(tmp_path: Path):
    """A job that waited in the queue while a local run finished its stage takes the lock, finds the
    result and leaves it as it is, instead of training again over it."""
    from benchmark.executors import run_stage
    from benchmark.store import write_json

    store = RunStore(tmp_path)
    write_json(store.dir(KIND, HASH) / "stage.json", {"runtime": {"device": "cpu"}, "config": {}, "inputs": {}})
    store.finish(KIND, HASH, {"step": 7})
    before = (store.dir(KIND, HASH) / "result.json").stat().st_mtime_ns
    assert run_stage(str(tmp_path), KIND, HASH, take_lock=True)["step"] == 7
    assert (store.dir(KIND, HASH) / "result.json").stat().st_mtime_ns == before
    assert "already finished by another run" in (store.dir(KIND, HASH) / "log.txt").read_text()


def test_a_stale_lock_judged_by_two_runs_does_not_cost_the_first_taker_its_lock(tmp_path):
    """Runs A and B both find a dead holder's lock. A removes it and takes the stage; B, removing what it
    judged stale only now, must leave A's fresh lock in place."""
    from benchmark.store import remove_stale_lock

    store = RunStore(tmp_path)
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = {"host": os.uname().nodename, "pid": dead.pid}
    path = store.dir(KIND, HASH) / "lock.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(stale))
    with store.lock(KIND, HASH) as held:  # A: removes the stale lock, takes its own
        assert held
        remove_stale_lock(path, stale)  # B, late
        assert store.live_lock(KIND, HASH)["pid"] == os.getpid()
        with store.lock(KIND, HASH) as again:
            assert not again
    assert not path.exists() and list(path.parent.iterdir()) == []


def test_a_lock_handed_to_the_child_running_the_stage_lives_while_either_process_does(tmp_path):
    """The local executor names its worker process in the lock: if the executor dies, the stage's lock
    stays alive while the worker runs (no later run starts it a second time); once both are gone it is stale."""
    store = RunStore(tmp_path)
    stage = Stage(KIND, HASH, {}, {})
    worker = Worker(stage, store)
    assert worker.take_lock()
    child = subprocess.Popen(["sleep", "30"])
    store.hand_lock(KIND, HASH, child.pid)
    lock = store.live_lock(KIND, HASH)
    assert lock["pid"] == child.pid and lock["taken_by"] == os.getpid()
    dead = subprocess.Popen(["true"])
    dead.wait()
    path = store.dir(KIND, HASH) / "lock.json"
    path.write_text(json.dumps({**lock, "taken_by": dead.pid}))  # the executor is gone, the child runs
    assert store.live_lock(KIND, HASH) is not None
    child.kill()
    child.wait()
    assert store.live_lock(KIND, HASH) is None  # both gone: stale, removed
    worker.wait()


def test_an_interrupted_executor_stops_its_workers_and_records_why(tmp_path):
    store = RunStore(tmp_path)
    store.dir(KIND, HASH).mkdir(parents=True)
    worker = Worker(Stage(KIND, HASH, {}, {}), store)
    assert worker.take_lock()
    worker._proc = subprocess.Popen(["sleep", "30"])
    worker.stop()
    assert worker._proc.poll() is not None  # terminated
    error = store.error(KIND, HASH)
    assert error["kind"] == "interrupted" and "interrupted" in error["error"]
    assert store.live_lock(KIND, HASH) is None

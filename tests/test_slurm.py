"""The Slurm path against a real one-node cluster (CI starts one with .ci/slurm-cluster; elsewhere these
tests skip unless ``sinfo`` answers): submission of a whole study with arrays and dependencies, the
same table as the local executor, status without sacct, loud failures, cancelled jobs, requeue on the
time-limit signal with an exact resume, and concurrent runs that submit each stage once."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import MINI_STUDY, REPO, TINY
from safetensors.torch import load_file

from benchmark.run import main
from benchmark.slurm import SlurmQueue
from benchmark.status import main as status_main
from benchmark.store import RunStore


def slurm_answers() -> bool:
    if shutil.which("sinfo") is None:
        return False
    return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=20).returncode == 0


pytestmark = [pytest.mark.slow, pytest.mark.skipif(not slurm_answers(), reason="no Slurm cluster answers here")]

SLURM = [
    "launcher.name=slurm",
    "launcher.gpus_per_node=0",
    "launcher.mem_gb=1",
    "launcher.cpus_per_task=1",
    "runtime.device=cpu",
]


def args(study: Path, tmp: Path, *extra: str) -> list[str]:
    return [str(study), "--profile", "smoke", "--runs", str(tmp / "runs"), "--results", str(tmp / "res"), *TINY, *extra]


def wait_for_jobs(study: Path, tmp: Path, *extra: str, timeout: float = 300) -> RunStore:
    """Poll the store (through the Slurm queue) until no stage of the study is queued or running."""
    from benchmark.study import build_plan

    plan = build_plan(study, "smoke", [*TINY, *extra])
    deadline = time.time() + timeout
    while True:
        store = RunStore(tmp / "runs", probe=SlurmQueue())
        states = [store.status(s.kind, s.hash).state for s in plan.ordered_stages(selected=False)]
        if not {"queued", "running"} & set(states):
            return store
        assert time.time() < deadline, f"jobs still pending after {timeout} s: {states}"
        time.sleep(2)


def test_study_on_slurm_gives_the_local_table_with_arrays_and_dependencies(tmp_path, write_study, capsys):
    study = write_study(MINI_STUDY)
    assert main(args(study, tmp_path, *SLURM)) == 0
    out = capsys.readouterr().out
    assert "4 submitted to Slurm" in out and "python -m benchmark.status" in out
    jobs = out.split("Slurm jobs: ")[1].splitlines()[0].split(", ")
    assert sum("_" in j for j in jobs) == 2, f"the two tokenizers go as one job array: {jobs}"
    store = RunStore(tmp_path / "runs")
    evals = list((tmp_path / "runs" / "evaluate_tokenizer").iterdir())
    assert all(store.job("evaluate_tokenizer", d.name)["depends_on"].startswith("afterok:") for d in evals)

    assert main(args(study, tmp_path, *SLURM)) == 0  # while queued or running: nothing is submitted twice
    assert "submitted" not in capsys.readouterr().out.split("stages:")[1].splitlines()[0]
    wait_for_jobs(study, tmp_path, *SLURM)
    assert main(args(study, tmp_path, *SLURM)) == 0
    assert "stages: 0 ran, 4 cached" in capsys.readouterr().out
    slurm_md = (tmp_path / "res" / "mini" / "_smoke" / "README.md").read_text()

    local = tmp_path / "local"
    assert main(args(study, local, "launcher.name=local", "runtime.device=cpu")) == 0
    local_md = (local / "res" / "mini" / "_smoke" / "README.md").read_text()
    table = lambda md: md.split("## Protocol")[0]  # noqa: E731 (the protocol names the run store paths)
    assert table(slurm_md) == table(local_md), "Slurm and the local executor disagree"
    assert "| ok " in table(slurm_md)


def test_failing_cell_is_loud_and_only_retried_when_asked(tmp_path, write_study, capsys):
    study = write_study(
        """
        config: {tokenizer: {name: titok, size: tiny, patch_size: 4}}
        axes: {grid: {tokenizer.recon_weight: [1.0, 1.0e+39]}}
        label: "w {tokenizer.recon_weight}"
        report: {tables: [{name: t, columns: {psnr: PSNR}}]}
        """
    )
    assert main(args(study, tmp_path, *SLURM)) == 0
    capsys.readouterr()
    wait_for_jobs(study, tmp_path, *SLURM)
    assert main(args(study, tmp_path, *SLURM)) == 1
    captured = capsys.readouterr()
    assert "0 ran" in captured.out and "submitted" not in captured.out.split("stages:")[1].splitlines()[0]
    assert "w 1e+39: train_tokenizer" in captured.err and "non-finite loss" in captured.err
    table = pd.read_csv(tmp_path / "res" / "mini" / "_smoke" / "t.csv")
    assert table["status"].iloc[0] == "ok" and table["status"].iloc[1].startswith("FAILED in train_tokenizer")
    report = (tmp_path / "res" / "mini" / "_smoke" / "README.md").read_text()
    assert "## Failures" in report and "non-finite loss at step 0" in report and "stderr" in report

    assert status_main([str(study), "--profile", "smoke", "--runs", str(tmp_path / "runs"), *TINY, *SLURM]) == 0
    shown = capsys.readouterr().out
    assert "FAILED" in shown and "skipped (a stage it needs failed)" in shown and "log: " in shown
    assert "benchmark.errors.StageError: non-finite loss" in shown and "srun: error" in shown  # the stderr tail

    assert main(args(study, tmp_path, *SLURM, "--retry-failed", "1e+39")) == 0
    retried = capsys.readouterr().out
    assert "2 submitted to Slurm" in retried  # the failed tokenizer and its evaluation, nothing of the other cell
    wait_for_jobs(study, tmp_path, *SLURM)


def test_fail_fast_on_slurm_cancels_the_studys_other_jobs(tmp_path, write_study, capsys):
    """With fail_fast (--fail-fast) the job whose stage fails (a non-finite loss at step 0) cancels the study's other
    jobs: the healthy cell's long training is cancelled, not left to run; the failed stage's log says so."""
    study = write_study(
        """
        config: {tokenizer: {name: titok, size: tiny, patch_size: 4}}
        axes: {grid: {tokenizer.recon_weight: [1.0, 1.0e+39]}}
        label: "w {tokenizer.recon_weight}"
        """
    )
    extra = [*SLURM, "train.steps=20000", "launcher.fail_fast=true"]
    assert main(args(study, tmp_path, *extra)) == 0
    capsys.readouterr()
    store = wait_for_jobs(study, tmp_path, *extra, timeout=180)
    states = {}
    for folder in (tmp_path / "runs" / "train_tokenizer").iterdir():
        status = store.status("train_tokenizer", folder.name)
        states[status.error["kind"]] = folder
    assert set(states) == {"failed", "cancelled"}, states
    assert (
        "--fail-fast: this stage failed, so the study's other jobs were cancelled"
        in (states["failed"] / "log.txt").read_text()
    )
    assert not (states["cancelled"] / "result.json").exists()


def test_cancelled_job_shows_cancelled_and_is_not_resubmitted(tmp_path, write_study, capsys):
    study = write_study("config: {tokenizer: {name: titok, size: tiny, patch_size: 4, num_latent_tokens: 4}}")
    extra = [*SLURM, "train.steps=5000"]
    assert main(args(study, tmp_path, *extra)) == 0
    job = capsys.readouterr().out.split("Slurm jobs: ")[1].split(",")[0].strip()
    subprocess.run(["scancel", job], check=True)
    store = wait_for_jobs(study, tmp_path, *extra, timeout=120)
    kind_dir = next((tmp_path / "runs" / "train_tokenizer").iterdir())
    status = store.status("train_tokenizer", kind_dir.name)
    assert status.state == "failed" and status.error["kind"] == "cancelled"
    assert main(args(study, tmp_path, *extra)) == 1
    out = capsys.readouterr()
    assert "submitted" not in out.out.split("stages:")[1].splitlines()[0] and "cancelled" in out.err


def test_time_limit_signal_requeues_and_resumes_exactly(tmp_path, write_study, capsys, monkeypatch):
    # One thread on both sides: MKL may use fewer threads on a busy machine, which changes summation orders.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    study = write_study("config: {tokenizer: {name: titok, size: tiny, patch_size: 4, num_latent_tokens: 4}}")
    extra = ["train.steps=400", "train.checkpoint_every=100", "train.log_every=5"]
    assert main(args(study, tmp_path, *SLURM, *extra)) == 0
    job = capsys.readouterr().out.split("Slurm jobs: ")[1].split(",")[0].strip()
    run_dir = next((tmp_path / "runs" / "train_tokenizer").iterdir())
    deadline = time.time() + 120
    while not (run_dir / "losses.csv").is_file() or len((run_dir / "losses.csv").read_text().splitlines()) < 5:
        assert time.time() < deadline, "training did not start"
        time.sleep(0.5)
    subprocess.run(["scancel", "--signal=USR2", job], check=True)  # what Slurm sends before the time limit
    store = wait_for_jobs(study, tmp_path, *SLURM, *extra, timeout=300)
    assert store.status("train_tokenizer", run_dir.name).state == "done"
    assert store.job("train_tokenizer", run_dir.name).get("requeues") == 1
    log = (run_dir / "log.txt").read_text()
    assert "preempted: checkpoint written" in log and "resumed from" in log

    local = tmp_path / "local"
    assert main(args(study, local, "launcher.name=local", "runtime.device=cpu", *extra)) == 0
    other = next((local / "runs" / "train_tokenizer").iterdir())
    assert other.name == run_dir.name
    torch.set_num_threads(threads)
    a, b = load_file(run_dir / "model.safetensors"), load_file(other / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a), "the requeued run did not resume to the same weights"


def test_concurrent_runs_submit_each_stage_once(tmp_path, write_study):
    study = write_study(MINI_STUDY)
    cmd = [sys.executable, "-m", "benchmark.run", *args(study, tmp_path, *SLURM)]
    procs = [
        subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    submitted = [
        int(o.split(" submitted to Slurm")[0].rsplit(", ", 1)[-1]) if " submitted to Slurm" in o else 0 for o in outs
    ]
    assert sum(submitted) == 4, outs
    wait_for_jobs(study, tmp_path, *SLURM)


def test_gpu_request_on_a_cpu_cluster_is_one_line(tmp_path, write_study, capsys):
    study = write_study(MINI_STUDY)
    assert main(args(study, tmp_path, "launcher.name=slurm", "launcher.mem_gb=1", "launcher.cpus_per_task=1")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sbatch rejected" in err and "launcher.gpus_per_node" in err


def test_a_stage_a_local_run_holds_is_not_made_a_slurm_dependency(tmp_path, write_study, capsys):
    """A stage that a local run is running has no job for Slurm to wait on: its dependents are held back
    with the reason (before, they were submitted with ``afterok:None``)."""
    from benchmark.study import build_plan

    study = write_study(MINI_STUDY)
    plan = build_plan(study, "smoke", [*TINY, *SLURM], only="4")
    train = next(c for c in plan.cells if c.selected).stages["train_tokenizer"]
    store = RunStore(tmp_path / "runs")
    with store.lock("train_tokenizer", train) as held:
        assert held
        assert main(args(study, tmp_path, *SLURM, "--only", "4")) == 1
    out = capsys.readouterr()
    assert "which a local run" in out.err and "is running; run again once it has finished" in out.err
    assert "Slurm jobs" not in out.out and not list((tmp_path / "runs" / "slurm").glob("*"))

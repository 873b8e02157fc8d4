"""End to end through ``python -m benchmark.run``: reports, cache hits, failures, kill and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import MINI_STUDY, REPO, TINY, run_cli
from safetensors.torch import load_file

pytestmark = pytest.mark.slow


def test_study_runs_reports_and_reruns_from_cache(tmp_path, write_study, capsys):
    study = write_study(MINI_STUDY)
    assert run_cli(study, tmp_path) == 0
    out = tmp_path / "results" / "mini" / "_smoke"
    assert "stages: 4 ran, 0 cached" in capsys.readouterr().out
    table = pd.read_csv(out / "main.csv")
    assert list(table["K"]) == [4, 8]
    assert table["status"].tolist() == ["ok", "ok"]
    assert table["PSNR"].between(5, 60).all()
    assert table["CB usage (paper)"].tolist()[0] == 11.0
    md = (out / "README.md").read_text()
    assert "smoke-scale numbers" in md and "CB usage (paper)" in md and "![curve](curve.png)" in md
    assert (out / "curve.png").stat().st_size > 1000

    weights = sorted((tmp_path / "runs" / "train_tokenizer").glob("*/model.safetensors"))
    assert len(weights) == 2
    stamps = [w.stat().st_mtime_ns for w in weights]
    assert run_cli(study, tmp_path) == 0
    assert "stages: 0 ran, 4 cached" in capsys.readouterr().out
    assert [w.stat().st_mtime_ns for w in weights] == stamps
    assert pd.read_csv(out / "main.csv").equals(table)


def test_failing_cell_is_reported_and_the_others_finish(tmp_path, write_study, capsys):
    study = write_study("""
        config: {tokenizer: {name: titok, size: tiny, patch_size: 4}}
        axes: {grid: {tokenizer.recon_weight: [1.0, 1.0e+39]}}
        label: "w {tokenizer.recon_weight}"
        report: {tables: [{name: t, columns: {psnr: PSNR}}]}
    """)
    assert run_cli(study, tmp_path) == 1
    captured = capsys.readouterr()
    assert "1 FAILED, 1 skipped (a stage they need failed)" in captured.out
    assert "failed cells:" in captured.err and "w 1e+39: train_tokenizer" in captured.err
    table = pd.read_csv(tmp_path / "results" / "mini" / "_smoke" / "t.csv")
    ok, bad = table.to_dict("records")
    assert ok["status"] == "ok" and ok["PSNR"] > 5
    assert bad["status"].startswith("FAILED in train_tokenizer: StageError: non-finite loss at step 0")
    assert "no checkpoint was written before it" in bad["status"] or "log.txt" in bad["status"]
    assert "log.txt" in bad["status"] and pd.isna(bad["PSNR"])
    log = Path(bad["status"].split("(log: ")[1].rstrip(")"))
    assert "Traceback" in log.read_text()

    # a re-run does not retry the failed stage; --retry-failed does (and it fails again)
    assert run_cli(study, tmp_path) == 1
    again = capsys.readouterr()
    assert "0 ran" in again.out and "earlier run; --retry-failed" in again.err
    assert run_cli(study, tmp_path, "--retry-failed", "1e+39") == 1
    assert "1 FAILED" in capsys.readouterr().out and "1 ran" not in again.out
    # a stage stopped by Ctrl-C runs again without being asked
    (record,) = (tmp_path / "runs" / "train_tokenizer").glob("*/error.json")
    record.write_text(json.dumps({**json.loads(record.read_text()), "kind": "interrupted"}))
    from benchmark.status import main as status_main

    assert status_main([str(study), "--profile", "smoke", "--runs", str(tmp_path / "runs"), *TINY]) == 0
    table = capsys.readouterr().out  # an interrupted stage is no failure: it resumes by itself
    assert "INTERRUPTED, resumes on the next run" in table and "failures:" not in table
    assert "1 interrupted" in table and "failed" not in table.split("stages: ")[1]
    assert run_cli(study, tmp_path, "--dry-run") == 0
    assert "retry-failed" not in capsys.readouterr().out
    assert run_cli(study, tmp_path) == 1
    again = capsys.readouterr()
    assert "1 FAILED" in again.out and "earlier run" not in again.err


def test_dry_run_plans_without_running(tmp_path, write_study, capsys):
    study = write_study(MINI_STUDY)
    assert run_cli(study, tmp_path, "--dry-run") == 0
    out = capsys.readouterr().out
    assert "2 cells, 4 stages" in out and out.count(" to run ") == 4
    assert out.count("GPU-h (") == 4 and "estimated cost of what is to run" in out  # every stage estimated
    assert not (tmp_path / "runs").exists()


def test_plan_checks_build_a_model_once_per_config_and_code(tmp_path, write_study, capsys, monkeypatch):
    """The models a dry run builds are recorded with their counts; the same models with the same code are
    not built again (the same plan is printed), also under an override that changes no model; a changed
    model or changed code is built again, and a failed check is not recorded."""
    from benchmark import estimate, model_counts

    cache = tmp_path / "cache" / "plan_cache.json"
    monkeypatch.setenv("TOK1D_PLAN_CACHE", str(cache))
    built: list[dict] = []
    real = estimate._count_tokenizer
    monkeypatch.setattr(estimate, "_count_tokenizer", lambda config: built.append(config) or real(config))
    study = write_study(MINI_STUDY)
    assert run_cli(study, tmp_path, "--dry-run") == 0
    first = capsys.readouterr().out
    assert len(built) == 2 and len(json.loads(cache.read_text())) == 2 and not (tmp_path / "runs").exists()
    assert run_cli(study, tmp_path, "--dry-run") == 0
    assert capsys.readouterr().out == first and len(built) == 2
    assert run_cli(study, tmp_path, "--dry-run", "train.steps=30") == 0  # no model changes: nothing built
    assert len(built) == 2 and capsys.readouterr().out != first  # the training stages' costs follow the steps
    assert (
        run_cli(study, tmp_path, "--dry-run", "--only", "tokenizer.num_latent_tokens=8", "tokenizer.codebook_size=32")
        == 0
    )
    assert [(c["tokenizer"]["num_latent_tokens"], c["tokenizer"]["codebook_size"]) for c in built[2:]] == [(8, 32)]
    assert len(json.loads(cache.read_text())) == 3
    monkeypatch.setattr(model_counts, "code_digest", lambda hashes=None: "changed-code")
    assert run_cli(study, tmp_path, "--dry-run") == 0
    assert len(built) == 5 and list(json.loads(cache.read_text())) == sorted(json.loads(cache.read_text()))
    assert all(k.startswith("changed-code:") for k in json.loads(cache.read_text()))  # stale entries dropped
    capsys.readouterr()
    bad = write_study(MINI_STUDY.replace("patch_size: 4", "patch_size: 5"), name="bad.yaml")
    assert run_cli(bad, tmp_path, "--dry-run") == 2 and "patch" in capsys.readouterr().err
    assert run_cli(bad, tmp_path, "--dry-run") == 2  # a failed check is not recorded: it fails again


def test_bad_input_exits_2_with_one_line(tmp_path, write_study, capsys):
    study = write_study("config: {tokenizer: {name: titock}}")
    assert run_cli(study, tmp_path) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Did you mean: titok" in err and "Traceback" not in err


def _cli(study: Path, runs: Path, *extra: str) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "benchmark.run",
        str(study),
        "--profile",
        "smoke",
        "--runs",
        str(runs),
        "--results",
        str(runs.parent / "results"),
        *TINY,
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # no thread-count-dependent sums
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_killed_training_resumes_to_the_same_weights(tmp_path, write_study):
    study = write_study("config: {tokenizer: {name: titok, size: tiny, num_latent_tokens: 4}}")
    steps = ["train.steps=300", "train.checkpoint_every=5"]
    killed = tmp_path / "killed" / "runs"
    proc = _cli(study, killed, *steps)
    deadline = time.time() + 120
    while not list(killed.glob("train_tokenizer/*/ckpt/last.pt")) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run_dir = next(killed.glob("train_tokenizer/*"))
    assert not (run_dir / "result.json").exists(), "the run finished before it could be killed"
    step = torch.load(run_dir / "ckpt" / "last.pt", weights_only=True)["step"]
    assert 0 < step < 300

    resumed = _cli(study, killed, *steps)
    assert resumed.wait() == 0, resumed.stdout.read()
    assert f"resumed from {run_dir / 'ckpt' / 'last.pt'} at step {step}" in (run_dir / "log.txt").read_text()
    straight = _cli(study, tmp_path / "straight" / "runs", *steps)
    assert straight.wait() == 0
    a = load_file(run_dir / "model.safetensors")
    b = load_file(next((tmp_path / "straight" / "runs").glob("train_tokenizer/*/model.safetensors")))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = pd.read_csv(run_dir / "losses.csv")
    assert rows["step"].is_unique and rows["step"].is_monotonic_increasing


def test_two_concurrent_runs_train_each_stage_once(tmp_path, write_study):
    study = write_study(MINI_STUDY)
    runs = tmp_path / "runs"
    procs = [_cli(study, runs, "train.steps=120") for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert any("waiting for train_tokenizer" in o for o in outs), outs  # the second one waited for the first
    for log in runs.glob("train_tokenizer/*/log.txt"):
        assert log.read_text().count("trained to step 120") == 1, log.read_text()
    assert sum(int(o.split(" ran")[0].rsplit("stages: ", 1)[-1]) for o in outs) == 4, outs


def stage_span(log: Path) -> tuple[float, float]:
    """When a stage began and finished, from its log.txt's timestamps."""
    from datetime import datetime

    stamps = [
        datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        for line in log.read_text().splitlines()
        if line[:4].isdigit() and (" INFO stage " in line or " stage failed" in line or line.endswith(" finished"))
    ]
    return stamps[0], stamps[-1]


def test_parallel_local_runs_independent_stages_side_by_side_and_keeps_failures_apart(tmp_path, write_study, capsys):
    study = write_study("""
        config: {tokenizer: {name: titok, size: tiny, patch_size: 4, codebook_size: 64, l2_norm: false}}
        axes: {grid: {tokenizer.num_latent_tokens: [4, 8], tokenizer.recon_weight: [1.0, 1.0e+39]}}
        label: "{tokenizer.num_latent_tokens} w {tokenizer.recon_weight}"
        report: {tables: [{name: t, columns: {psnr: PSNR}}]}
    """)
    assert run_cli(study, tmp_path, "launcher.parallel=2") == 1
    out = capsys.readouterr().out
    assert "stages: 4 ran, 0 cached, 2 FAILED, 2 skipped" in out, out
    table = pd.read_csv(tmp_path / "results" / "mini" / "_smoke" / "t.csv").set_index("cell")
    assert (table.loc[["4 w 1.0", "8 w 1.0"], "status"] == "ok").all() and table.loc["8 w 1.0", "PSNR"] > 5
    assert table.loc["4 w 1e+39", "status"].startswith("FAILED in train_tokenizer: StageError: non-finite loss")

    runs = tmp_path / "runs"
    spans = {}
    for kind in ("train_tokenizer", "evaluate_tokenizer"):
        for folder in (runs / kind).iterdir():
            record = json.loads((folder / "stage.json").read_text())
            spans[kind, record["cells"][0]] = stage_span(folder / "log.txt")
            worker = (folder / "worker.txt").read_text()  # each stage ran in a process of its own,
            assert "it/s" not in worker  # without a progress bar in its output file
    a, b = spans["train_tokenizer", "8 w 1.0"], spans["train_tokenizer", "8 w 1e+39"]
    assert a[0] < b[1] and b[0] < a[1]  # the first two trainings ran side by side: the costlier two
    assert max(a[0], b[0]) <= min(spans["train_tokenizer", c][0] for c in ("4 w 1.0", "4 w 1e+39"))  # (K = 8)
    for cell in ("4 w 1.0", "8 w 1.0"):  # each evaluation started once its training had finished
        assert spans["evaluate_tokenizer", cell][0] >= spans["train_tokenizer", cell][1]
    assert ("evaluate_tokenizer", "4 w 1e+39") not in spans  # skipped: its training failed


def test_parallel_must_be_at_least_one(tmp_path, write_study, capsys):
    assert run_cli(write_study(MINI_STUDY), tmp_path, "launcher.parallel=0") == 2
    assert "launcher.parallel must be >= 1, got 0" in capsys.readouterr().err


def test_critical_paths_add_the_costliest_chain_of_dependents():
    """Side by side, the local executor starts the stage with the most work still behind it first."""
    from benchmark.executors import critical_paths
    from benchmark.study import Stage

    def stage(name: str, **inputs: str) -> Stage:
        return Stage(kind="train_tokenizer", hash=name, config={}, inputs=inputs)

    stages = [stage("a"), stage("b"), stage("c", tokenizer="a"), stage("d", tokenizer="a"), stage("e", tokenizer="b")]
    longest = critical_paths(stages, {"a": 1.0, "b": 3.0, "c": 5.0, "d": 0.5, "e": 1.0})
    assert longest == {"a": 6.0, "b": 4.0, "c": 5.0, "d": 0.5, "e": 1.0}  # a: a then c, b: b then e

"""The Slurm executor against a real cluster, where one answers (``sinfo`` works); else skipped.

A one-node cluster for this test: see the README ("Running studies"); DEVELOPERS.md has the recipe.
"""

from __future__ import annotations

import shutil
import subprocess
import time

import pandas as pd
import pytest
from conftest import MINI_STUDY, TINY

from benchmark.run import main


def slurm_answers() -> bool:
    if shutil.which("sinfo") is None:
        return False
    return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=20).returncode == 0


pytestmark = [pytest.mark.slow, pytest.mark.skipif(not slurm_answers(), reason="no Slurm cluster answers here")]


def test_slurm_submits_chained_jobs_and_collects_later(tmp_path, write_study, capsys):
    study = write_study(MINI_STUDY)
    args = [
        str(study),
        "--profile",
        "smoke",
        "--runs",
        str(tmp_path / "runs"),
        "--results",
        str(tmp_path / "res"),
        *TINY,
        "launcher.name=slurm",
        "launcher.gpus_per_node=0",
        "launcher.mem_gb=1",
        "launcher.cpus_per_task=1",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "4 submitted to Slurm" in out
    table = pd.read_csv(tmp_path / "res" / "mini" / "_smoke" / "main.csv")
    assert all(s.startswith("submitted to Slurm (job ") for s in table["status"])

    assert main(args) == 0  # while queued or running: nothing is submitted twice
    again = capsys.readouterr().out
    stages_line = next(line for line in again.splitlines() if line.startswith("stages:"))
    assert "submitted" not in stages_line and "0 ran" in stages_line
    deadline = time.time() + 240
    while time.time() < deadline and "4 cached" not in again:
        time.sleep(5)
        main(args)
        again = capsys.readouterr().out
    assert "stages: 0 ran, 4 cached" in again
    table = pd.read_csv(tmp_path / "res" / "mini" / "_smoke" / "main.csv")
    assert table["status"].tolist() == ["ok", "ok"] and table["PSNR"].notna().all()

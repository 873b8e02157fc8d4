"""Start-up time of the commands that need no model, against ``python -c "import torch"``.

    python scripts/startup_time.py [--repeats 5] [--study studies/thesis_table2_token_count.yaml]

Each command runs ``--repeats`` times as a fresh process, the commands interleaved round-robin (so a
burst of load elsewhere on the machine hits them all alike); prints one JSON object with each
command's median and min wall seconds and its median as a ratio of ``import torch``'s (the target of
issue 13: at most 1.5). ``report`` renders the study's report from an empty run store (every cell
``not run``) into the same folder each time: what re-rendering a study's report does once its plots are
drawn (a plot is redrawn only when its data, spec or drawing code changed, benchmark/figures.py);
``report (first render)`` renders into a new folder each time, drawing every plot. ``run --dry-run``
plans with one plan cache (benchmark.model_counts.plan_cache: from the second repeat on, no model is built
again), ``run --dry-run (first)`` with a new one each time (a built-in study's models are counted in the
shipped studies/model_counts.json), ``run --dry-run (no counts kept)`` with neither (every cell's models
built on the meta device).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPORT = (
    "import sys; from pathlib import Path; from benchmark.study import build_plan; "
    "from benchmark.store import RunStore; from benchmark.report import write_report; "
    "plan = build_plan(sys.argv[1], 'smoke', [], None); "
    "write_report(plan, RunStore(Path(sys.argv[2])), Path(sys.argv[3]))"
)


def commands(study: str, runs: Path, results: Path) -> dict[str, list[str]]:
    """The measured commands, by name; ``import torch`` is the baseline."""
    py = sys.executable
    store = ["--profile", "smoke", "--runs", str(runs)]
    return {
        "import torch": [py, "-c", "import torch"],
        "list": [py, "-m", "benchmark.list"],
        "config error": [py, "-m", "benchmark.run", study, *store, "train.stepz=1"],
        "status": [py, "-m", "benchmark.status", study, *store],
        "report": [py, "-c", REPORT, study, str(runs), str(results)],
        "report (first render)": [py, "-c", REPORT, study, str(runs), str(results) + "-{repeat}"],
        "run --dry-run": [py, "-m", "benchmark.run", study, *store, "--dry-run"],
        "run --dry-run (first)": [py, "-m", "benchmark.run", study, *store, "--dry-run"],
        "run --dry-run (no counts kept)": [py, "-m", "benchmark.run", study, *store, "--dry-run"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--study", default="studies/thesis_table2_token_count.yaml")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        cmds = commands(args.study, Path(tmp) / "runs", Path(tmp) / "results")
        seconds: dict[str, list[float]] = {name: [] for name in cmds}
        codes: dict[str, int] = {}
        for repeat in range(args.repeats):
            for name, cmd in cmds.items():
                cmd = [part.replace("{repeat}", str(repeat)) for part in cmd]
                cache = Path(tmp) / (f"plan_cache-{repeat}.json" if name.endswith("(first)") else "plan_cache.json")
                kept = "" if name.endswith("(no counts kept)") else str(cache)
                env = {**os.environ, "PYTHONWARNINGS": "ignore", "TOK1D_PLAN_CACHE": kept}
                t0 = time.perf_counter()
                done = subprocess.run(cmd, capture_output=True, env=env)
                seconds[name].append(time.perf_counter() - t0)
                codes[name] = done.returncode
    base = statistics.median(seconds["import torch"])
    report = {
        "python": sys.version.split()[0],
        "load_average": os.getloadavg(),
        "repeats": args.repeats,
        "commands": {
            name: {
                "median_s": round(statistics.median(s), 3),
                "min_s": round(min(s), 3),
                "ratio_to_import_torch": round(statistics.median(s) / base, 2),
                "exit_code": codes[name],
            }
            for name, s in seconds.items()
        },
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m benchmark.run studies/<study>.yaml [--profile smoke|paper] [--dry-run] [--only F] [k=v ...]``

Expands the study, runs what the run store lacks (locally, or on Slurm with launcher.name=slurm),
and writes the study's tables and figures under ``results/<study>/``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from benchmark.errors import Tok1dError
from benchmark.executors import LocalExecutor, Outcome, SlurmExecutor
from benchmark.report import results_dir, write_report
from benchmark.store import RunStore, default_root
from benchmark.study import Plan, build_plan


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmark.run", description=__doc__.split("\n\n")[1])
    p.add_argument("study", help="a study YAML, e.g. studies/thesis_table2_token_count.yaml")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. tokenizer.size=S train.steps=100")
    p.add_argument("--profile", default="paper", help="studies/profiles/<name>.yaml (default: paper)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    p.add_argument("--only", help="only cells whose label matches (substring / glob) or key=value")
    p.add_argument("--runs", help="run store folder (default: $TOK1D_RUNS or ./runs)")
    p.add_argument("--results", default="results", help="results folder (default: ./results)")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first failing stage")
    return p.parse_intermixed_args(argv)


def print_plan(plan: Plan, store: RunStore) -> None:
    print(f"study {plan.study} [{plan.profile}]: {len(plan.cells)} cells, {len(plan.stages)} stages")
    for stage in plan.ordered_stages():
        if store.is_done(stage.kind, stage.hash):
            status = "cached"
        elif store.error(stage.kind, stage.hash):
            status = "failed before; will retry"
        else:
            status = "to run"
        print(f"  {stage.kind:<20} {stage.hash}  {status:<24} cells: {', '.join(stage.cells)}")


def summary(outcome: Outcome) -> str:
    parts = [f"{len(outcome.ran)} ran", f"{len(outcome.cached)} cached"]
    if outcome.submitted:
        parts.append(f"{len(outcome.submitted)} submitted to Slurm")
    if outcome.queued:
        parts.append(f"{len(outcome.queued)} still queued or running on Slurm")
    if outcome.failed:
        parts.append(f"{len(outcome.failed)} FAILED")
    if outcome.skipped:
        parts.append(f"{len(outcome.skipped)} skipped after a failure")
    return "stages: " + ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        plan = build_plan(args.study, args.profile, args.overrides, args.only)
        store = RunStore(default_root(args.runs))
        if args.dry_run:
            print_plan(plan, store)
            return 0
        launcher = plan.cells[0].config["launcher"]
        if launcher["name"] == "slurm" or (launcher["name"] == "auto" and shutil.which("sbatch")):
            outcome = SlurmExecutor(launcher).execute(plan, store)
        else:
            outcome = LocalExecutor(args.fail_fast or launcher["fail_fast"]).execute(plan, store)
        files = write_report(plan, store, results_dir(Path(args.results), plan))
    except Tok1dError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary(outcome))
    jobs = {**outcome.submitted, **outcome.queued}
    if jobs:
        print("Slurm jobs: " + ", ".join(jobs.values()) + "; re-run this command when they end")
    print(f"results: {files[0]}")
    return 0 if outcome.ok else 1


if __name__ == "__main__":
    sys.exit(main())

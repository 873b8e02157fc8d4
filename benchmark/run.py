"""``python -m benchmark.run studies/<study>.yaml [--profile P] [--dry-run] [--only F] [--seeds N] [--retry-failed [F]] [k=v ...]``

Expands the study, runs what the run store lacks (here, or on Slurm: the whole study is submitted at
once and the command returns), and writes the study's tables and figures under ``results/<study>/``.
Exit code 0 when every stage is done (or submitted), 1 when a stage failed or was skipped after a
failure, 2 for bad input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmark.errors import Tok1dError
from benchmark.store import RunStore, default_root
from benchmark.study import Plan, build_plan, check_study_path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmark.run", description=__doc__.split("\n\n")[1])
    p.add_argument("study", help="a study YAML, e.g. studies/thesis_table2_token_count.yaml")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. tokenizer.size=S train.steps=100")
    p.add_argument("--profile", default="paper", help="studies/profiles/<name>.yaml (default: paper)")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (state, resources, estimated cost of every stage) and exit",
    )
    p.add_argument(
        "--only", help="run only cells whose label matches (substring / glob) or key=value; the report keeps every row"
    )
    p.add_argument(
        "--retry-failed",
        nargs="?",
        const="",
        metavar="FILTER",
        help="run failed stages again (all, or those of the cells FILTER matches)",
    )
    p.add_argument(
        "--seeds", type=int, default=1, help="run each cell with N seeds (seed, seed + 1, ...); rows show mean ± std"
    )
    p.add_argument("--runs", help="run store folder (default: $TOK1D_RUNS or ./runs)")
    p.add_argument("--results", default="results", help="results folder (default: ./results)")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first failing stage")
    return p.parse_intermixed_args(argv)


def summary(outcome: object) -> str:
    parts = [f"{len(outcome.ran)} ran", f"{len(outcome.cached)} cached"]  # type: ignore[attr-defined]
    for attr, text in (
        ("submitted", "submitted to Slurm"),
        ("in_flight", "queued or running already"),
        ("failed", "FAILED"),
        ("skipped", "skipped (a stage they need failed)"),
    ):
        if getattr(outcome, attr):
            parts.append(f"{len(getattr(outcome, attr))} {text}")
    return "stages: " + ", ".join(parts)


def failed_cells(plan: Plan, outcome: object) -> list[str]:
    """One line per cell with a failed or skipped stage: the stage, the reason, the log."""
    lines = []
    for cell in plan.cells:
        for kind, h in cell.stages.items():
            reason = outcome.failed.get(h) or outcome.skipped.get(h)  # type: ignore[attr-defined]
            if reason:
                lines.append(f"  {cell.label}: {kind} {h}: {reason}")
                break
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        check_study_path(args.study)
        plan = build_plan(args.study, args.profile, args.overrides, args.only, seeds=args.seeds)
        launcher = plan.cells[0].config["launcher"]
        from benchmark.executors import launcher_is_slurm

        slurm = launcher_is_slurm(launcher)
        store = RunStore(default_root(args.runs), probe=_probe() if slurm else None)
        from benchmark.model_counts import ModelCounts
        from benchmark.plan_checks import check_plan

        # data, training batches and models, before anything runs or is queued
        costs = check_plan(plan, ModelCounts.default(), slurm)
        if args.dry_run:
            from benchmark.status import print_plan

            print_plan(plan, store, slurm, costs)
            return 0
        from benchmark.executors import LocalExecutor, SlurmExecutor

        if slurm:
            fail_fast = args.fail_fast or launcher["fail_fast"]
            outcome = SlurmExecutor(launcher, args.retry_failed, fail_fast=fail_fast).execute(plan, store)
        else:
            executor = LocalExecutor(
                args.fail_fast or launcher["fail_fast"],
                args.retry_failed,
                launcher["parallel"],
                {h: cost.pflops for h, cost in costs.items()},
            )
            outcome = executor.execute(plan, store)
        from benchmark.report import results_dir, write_report

        files = write_report(plan, store, results_dir(Path(args.results), plan))
    except Tok1dError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "interrupted: the stages this run started were stopped and recorded as interrupted; finished stages "
            "are kept and the same command resumes from their last checkpoints",
            file=sys.stderr,
        )
        return 130
    print(summary(outcome))
    if outcome.submitted or outcome.in_flight:
        jobs = sorted({*outcome.submitted.values(), *outcome.in_flight.values()})
        print(f"Slurm jobs: {', '.join(jobs)}")
        print(f"logs: {store.root / 'slurm'}/<job id>/")
        profile = "" if plan.profile == "paper" else f" --profile {plan.profile}"
        runs = f" --runs {args.runs}" if args.runs else ""
        print(
            f"follow them: python -m benchmark.status {args.study}{profile}{runs} [--watch]; "
            "re-run this command when they end to collect the report"
        )
    print(f"results: {files[0]}")
    if not outcome.ok:
        print("failed cells:\n" + "\n".join(failed_cells(plan, outcome)), file=sys.stderr)
        return 1
    return 0


def _probe():  # type: ignore[no-untyped-def]
    from benchmark.slurm import SlurmQueue

    return SlurmQueue()


if __name__ == "__main__":
    sys.exit(main())

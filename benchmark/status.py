"""``python -m benchmark.status studies/<study>.yaml [--profile P] [--runs DIR] [--seeds N] [--watch [S]]``

Where every stage of a study stands, cells x stages, from the run store and the Slurm queue (no
``sacct`` needed): done, not run, pending with Slurm's reason, running (training step k of n and the
time it has run), requeued, and failed / timeout / cancelled / interrupted / oom / lost with the exit
code, the last lines of its stderr and its log. Local runs in progress in another terminal show as
running too.
``--watch`` refreshes the view until every stage has ended. Also ``benchmark.run --dry-run``'s plan.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from typing import Any

from benchmark.errors import Tok1dError
from benchmark.graph import LATENT_2D, PRETRAINED_PATH, STAGES
from benchmark.store import RunStore, StageStatus, default_root
from benchmark.study import Plan, build_plan, check_study_path, load_study

TRAINING = {
    **dict.fromkeys(PRETRAINED_PATH, "teacher"),
    "pretrain_encoder": "tokenizer.encoder",
    "train_latent_2d": LATENT_2D,
    "train_tokenizer": "train",
    "finetune_tokenizer": "finetune",
    "train_generator": "generator_train",
}


def training_steps(status: StageStatus, store: RunStore) -> str:
    """``step k/n`` of a training stage from its loss log (k: the last logged step)."""
    folder = store.dir(status.kind, status.hash)
    record = store._read(folder / "stage.json") or {}
    section = TRAINING.get(status.kind)
    if section is None:
        return ""
    cfg = record.get("config", {}).get(section, {})
    nested = "pretrain" if status.kind in PRETRAINED_PATH else {"finetune": "train", LATENT_2D: "train"}.get(section)
    total = (cfg.get(nested) or {}).get("steps") if nested else cfg.get("steps")
    done = 0
    log = folder / "losses.csv"
    if log.is_file():
        with open(log) as fh:
            rows = list(csv.reader(fh))
        if len(rows) > 1 and rows[-1] and rows[-1][0].isdigit():
            done = int(rows[-1][0])
    return f"step {done}/{total if total is not None else '?'}"


def elapsed(seconds: float) -> str:
    minutes, s = divmod(int(seconds), 60)
    h, m = divmod(minutes, 60)
    return f"{h}:{m:02d}:{s:02d}"


def describe(status: StageStatus, store: RunStore) -> str:
    """One short cell of the status table."""
    requeues = (status.job or {}).get("requeues") or (status.queue or {}).get("restarts") or 0
    again = f", requeued {requeues}x" if requeues else ""
    if status.state == "done":
        return "done"
    if status.state == "missing":
        return "not run"
    if status.state == "queued":
        queue = status.queue or {}
        if queue.get("state") == "PENDING":
            return f"pending ({queue.get('reason', '?')}){again}"
        return f"{queue.get('state', 'queued').lower()} (job {status.job['job_id']}){again}"
    if status.state == "running":
        lock = status.lock or {}
        where = f"job {lock['job_id']}" if lock.get("job_id") else f"pid {lock.get('pid')} on {lock.get('host')}"
        progress = training_steps(status, store)
        since = elapsed(time.time() - float(lock.get("started", time.time())))
        return f"running ({', '.join(x for x in (progress, since, where) if x)}){again}"
    error = status.error or {}
    if error.get("kind") == "dependency":
        return "skipped (a stage it needs failed)"
    code = f", exit {error['exit_code']}" if error.get("exit_code") not in (None, "") else ""
    resumes = ", resumes on the next run" if status.resumes else ""
    return f"{error.get('kind', 'failed').upper()}{code}{again}{resumes}"


def failure_details(status: StageStatus) -> list[str]:
    """The error line, the log path and the last lines of stderr of a failed stage."""
    error = status.error or {}
    lines = [
        f"{status.kind} {status.hash}: {error.get('kind', 'failed')}: {(error.get('error') or '').strip()}",
        f"  log: {error.get('log')}",
    ]
    if status.job and status.job.get("stderr"):
        lines.append(f"  stderr: {status.job['stderr']}")
    tail = error.get("stderr_tail")
    if not tail and status.job:
        from benchmark.store import stderr_tail

        tail = stderr_tail(status.job)
    tail = tail or error.get("traceback")  # a local run: the traceback it recorded
    if tail:
        lines += ["  " + line for line in tail.rstrip().splitlines()[-20:]]
    return lines


def render(plan: Plan, store: RunStore) -> tuple[str, bool]:
    """The status table and details of the cells ``--only`` selected (all by default); whether every
    stage of theirs has ended (done, failed or not started)."""
    kinds = [k for k in STAGES if any(k in c.stages for c in plan.cells)]
    statuses: dict[str, StageStatus] = {}
    for stage in plan.ordered_stages():
        statuses[stage.hash] = store.status(stage.kind, stage.hash)
    rows = [["cell", *kinds]]
    for cell in (c for c in plan.cells if c.selected):
        rows.append(
            [cell.label, *(describe(statuses[cell.stages[k]], store) if k in cell.stages else "-" for k in kinds)]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"study {plan.study} [{plan.profile}], run store {store.root}", ""]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    failed = [s for s in statuses.values() if s.failed_by_itself]
    if failed:
        lines += ["", "failures:"]
        for status in failed:
            lines += failure_details(status)
    counts: dict[str, int] = {}
    for s in statuses.values():
        state = (s.error or {})["kind"] if s.resumes else s.state  # interrupted / dependency: not failed
        counts[state] = counts.get(state, 0) + 1
    lines += ["", "stages: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))]
    return "\n".join(lines), not any(s.state in ("running", "queued") for s in statuses.values())


def print_plan(plan: Plan, store: RunStore, slurm: bool, costs: dict[str, Any]) -> None:
    """``run --dry-run``: every stage with its state, its resources and its estimated cost (``costs``:
    stage hash -> benchmark.estimate.StageCost)."""
    from benchmark.config import stage_resources
    from benchmark.executors import processes

    launcher = plan.cells[0].config["launcher"]
    selected = [c for c in plan.cells if c.selected]
    print(
        f"study {plan.study} [{plan.profile}]: {len(selected)} cells, {len(plan.ordered_stages())} stages, "
        f"{'Slurm' if slurm else 'this machine'}"
    )
    total = 0.0
    for stage in plan.ordered_stages():
        status = store.status(stage.kind, stage.hash)
        state = {"done": "cached", "missing": "to run"}.get(status.state, describe(status, store))
        if status.failed_by_itself:
            state += " (not retried without --retry-failed)"
        res = stage_resources(launcher, stage.kind)
        nodes, per_node = processes(stage, launcher, slurm)
        where = (
            (
                f"{nodes}x{per_node} tasks, {res['gpus_per_node']} GPU/node, {res['cpus_per_task']} CPU, "
                f"{res['mem_gb']} GB, {res['timeout_min']} min"
            )
            if slurm
            else f"{per_node} process(es)"
        )
        cost = costs.get(stage.hash)
        if cost is not None and status.state != "done":
            total += cost.gpu_hours
        text = cost.describe() if cost is not None else "cost: -"
        print(f"  {stage.kind:<21} {stage.hash}  {state:<16} {where}; {text}; cells: {', '.join(stage.cells)}")
    print(f"estimated cost of what is to run: {total:.3g} GPU-hours ({estimate_note()})")


def estimate_note() -> str:
    from benchmark.estimate import ASSUMED_PEAK_TFLOPS, ASSUMED_UTILISATION

    return (
        f"model FLOPs from torch.utils.flop_counter x steps x batch, at {ASSUMED_UTILISATION:.0%} of "
        f"{ASSUMED_PEAK_TFLOPS:g} TFLOP/s (an H100's dense bf16 peak)"
    )


def detect_seeds(path: str, profile: str, overrides: list[str], store: RunStore) -> int:
    """How many seeds the run store holds for a study: N while some stage of seed index N - 1 exists (1 for a
    study that lists its seeds on a ``seed`` axis: those are its cells)."""
    axes = load_study(path).get("axes") or {}
    if any("seed" in (axes.get(kind) or {}) for kind in ("grid", "zip")):
        return 1
    n = 1
    while True:
        plan = build_plan(path, profile, overrides, seeds=n + 1, check=False)
        base = {c.row: c.config["seed"] for c in reversed(plan.cells)}
        newest = [c for c in plan.cells if c.config["seed"] == base[c.row] + n]
        if not any(store.dir(k, h).is_dir() for c in newest for k, h in c.stages.items()):
            return n
        n += 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmark.status", description=__doc__.split("\n\n")[1])
    p.add_argument("study")
    p.add_argument("overrides", nargs="*", help="the same config overrides as the run")
    p.add_argument("--profile", default="paper")
    p.add_argument("--only", help="only these cells (as benchmark.run --only)")
    p.add_argument("--runs", help="run store folder (default: $TOK1D_RUNS or ./runs)")
    p.add_argument("--seeds", type=int, help="seeds per cell, as the run (default: as many as the run store holds)")
    p.add_argument(
        "--watch",
        nargs="?",
        const=10.0,
        type=float,
        metavar="SECONDS",
        help="refresh every SECONDS (default 10) until every stage has ended",
    )
    return p.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        from benchmark.slurm import SlurmQueue, available

        check_study_path(args.study)
        probe = SlurmQueue() if available() else None
        store = RunStore(default_root(args.runs), probe=probe)
        seeds = args.seeds or detect_seeds(args.study, args.profile, args.overrides, store)
        plan = build_plan(args.study, args.profile, args.overrides, args.only, seeds=seeds)
        while True:
            text, ended = render(plan, store)
            if args.watch:
                print("\033[2J\033[H" + time.strftime("%H:%M:%S ") + text, flush=True)
            else:
                print(text)
            if not args.watch or ended:
                return 0
            time.sleep(args.watch)
            if probe is not None:
                probe.refresh()
    except Tok1dError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

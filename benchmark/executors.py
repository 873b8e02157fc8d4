"""Executors: run a plan's stages in dependency order, locally or as Slurm jobs through submitit.

Both call :func:`run_stage`, which reads the stage's record from the run store, so a Slurm job
needs nothing but the store's path. A failing stage records its error and log path; the stages
that need it are skipped and every other cell goes on (``fail_fast`` stops at the first failure).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from benchmark.graph import STAGES
from benchmark.registry import load_plugins
from benchmark.store import RunStore, read_json, write_json
from benchmark.study import Plan, Stage


@dataclass
class Outcome:
    """What happened to each stage of a plan in this invocation."""

    cached: list[str] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    submitted: dict[str, str] = field(default_factory=dict)
    queued: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.skipped


def stage_logger(store: RunStore, kind: str, hash: str) -> logging.Logger:
    log = logging.getLogger(f"tok1d.{kind}.{hash}")
    log.setLevel(logging.INFO)
    log.propagate = False
    path = store.dir(kind, hash) / "log.txt"
    if not any(getattr(h, "baseFilename", None) == str(path) for h in log.handlers):
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
    return log


def run_stage(store_root: str, kind: str, hash: str) -> dict[str, Any]:
    """Run one recorded stage and store its result (or its error, then re-raise)."""
    store = RunStore(store_root)
    from benchmark.stages import BODIES, StageContext

    record = read_json(store.dir(kind, hash) / "stage.json")
    load_plugins(record.get("plugins", []))
    log = stage_logger(store, kind, hash)
    ctx = StageContext(
        kind, hash, record["config"], record["inputs"], record["runtime"], store.dir(kind, hash), store, log
    )
    log.info("stage %s %s for cells %s", kind, hash, record.get("cells"))
    try:
        result = BODIES[kind](ctx)
    except BaseException as exc:
        log.exception("stage failed")
        store.fail(kind, hash, exc)
        raise
    store.finish(kind, hash, result)
    log.info("finished")
    return result


def stage_record(plan: Plan, stage: Stage) -> dict[str, Any]:
    cell = next(c for c in plan.cells if c.stages.get(stage.kind) == stage.hash)
    return {
        "kind": stage.kind,
        "hash": stage.hash,
        "config": stage.config,
        "inputs": stage.inputs,
        "runtime": cell.config["runtime"],
        "plugins": cell.config["plugins"],
        "study": str(plan.path),
        "profile": plan.profile,
        "cells": stage.cells,
    }


class LocalExecutor:
    """Runs stages one after another in this process."""

    def __init__(self, fail_fast: bool = False) -> None:
        self.fail_fast = fail_fast

    def execute(self, plan: Plan, store: RunStore) -> Outcome:
        out = Outcome()
        broken: set[str] = set()
        stages = plan.ordered_stages()
        bar = tqdm(stages, desc=f"{plan.study} [{plan.profile}]", unit="stage", dynamic_ncols=True)
        for stage in bar:
            name = f"{stage.kind} {stage.hash}"
            bar.set_postfix_str(f"{stage.kind} ({', '.join(stage.cells)[:40]})")
            if store.is_done(stage.kind, stage.hash):
                out.cached.append(stage.hash)
                continue
            if broken & set(stage.inputs.values()):
                out.skipped.append(stage.hash)
                broken.add(stage.hash)
                continue
            store.begin(stage.kind, stage.hash, stage_record(plan, stage))
            try:
                run_stage(str(store.root), stage.kind, stage.hash)
                out.ran.append(stage.hash)
            except Exception as exc:
                out.failed[stage.hash] = f"{type(exc).__name__}: {exc}"
                broken.add(stage.hash)
                tqdm.write(
                    f"FAILED {name} (cells {', '.join(stage.cells)}): {exc}\n"
                    f"  log: {store.dir(stage.kind, stage.hash) / 'log.txt'}"
                )
                if self.fail_fast:
                    break
        return out


def slurm_job_alive(job_id: str) -> bool:
    """Whether Slurm still has the job pending or running (``squeue``; works without ``sacct``)."""
    result = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True)
    return result.returncode == 0 and result.stdout.strip() in {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING"}


class SlurmExecutor:
    """Submits each stage as a Slurm job (submitit), chained with ``afterok`` dependencies, and exits.

    Finished stages are never submitted; a stage whose job is still queued or running is not
    submitted again. Re-run the same command once the jobs end to collect the report.
    """

    def __init__(self, launcher: dict[str, Any]) -> None:
        if shutil.which("sbatch") is None:
            from benchmark.errors import ConfigError

            raise ConfigError(
                "launcher.name=slurm: no 'sbatch' on PATH; run on a Slurm login node or use launcher.name=local"
            )
        self.launcher = launcher

    def parameters(self, stage: Stage, deps: list[str]) -> dict[str, Any]:
        p = self.launcher
        extra = {k: p[k] for k in ("account", "qos") if p.get(k)}
        if deps:
            extra["dependency"] = "afterok:" + ":".join(deps)
            extra["kill-on-invalid-dep"] = "yes"
        params: dict[str, Any] = {
            "name": f"tok1d-{stage.kind}-{stage.hash[:8]}",
            "timeout_min": p["timeout_min"],
            "cpus_per_task": p["cpus_per_task"],
            "mem_gb": p["mem_gb"],
            "gpus_per_node": p["gpus_per_node"] if STAGES[stage.kind].gpu else 0,
            "slurm_additional_parameters": extra,
        }
        if p.get("partition"):
            params["slurm_partition"] = p["partition"]
        return params

    def execute(self, plan: Plan, store: RunStore) -> Outcome:
        import submitit

        out = Outcome()
        jobs: dict[str, str] = {}
        for stage in plan.ordered_stages():
            d = store.dir(stage.kind, stage.hash)
            if store.is_done(stage.kind, stage.hash):
                out.cached.append(stage.hash)
                continue
            previous = read_json(d / "slurm.json")
            if previous and slurm_job_alive(previous["job_id"]):
                jobs[stage.hash] = out.queued[stage.hash] = previous["job_id"]
                continue
            deps = [jobs[h] for h in stage.inputs.values() if h in jobs]
            executor = submitit.AutoExecutor(folder=store.root / "slurm" / "%j", cluster="slurm")
            executor.update_parameters(**self.parameters(stage, deps))
            store.begin(stage.kind, stage.hash, stage_record(plan, stage))
            job = executor.submit(run_stage, str(store.root), stage.kind, stage.hash)
            write_json(d / "slurm.json", {"job_id": job.job_id, "depends_on": deps})
            jobs[stage.hash] = out.submitted[stage.hash] = job.job_id
        return out

"""Reports: tables (markdown + CSV), figures (benchmark/figures.py) and the source's claims
(benchmark/claims.py), built from the run store alone, at any time (while stages still run too).

    python -m benchmark.report studies/<study>.yaml [--profile P] [--runs DIR] [--results DIR] [--seeds N] [k=v ...]
    python -m benchmark.report --index [--results DIR]        # results/README.md: every study's results

A study's ``report`` section declares its tables (which result keys, under which headers, and the source's
own numbers beside ours, in its own digits; ``literature`` rows of the source's table as labelled
reference rows), ``compute: true`` (training compute as run vs. one per cell) and its figures. A row run
with several seeds shows mean ± std. Cells that failed or have not run appear with their status; they
are never dropped. Every report ends with the claims of the source, judged on our numbers.
"""

from __future__ import annotations

import argparse
import datetime
import math
import subprocess
import sys
from collections.abc import Container
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmark import REPO_ROOT
from benchmark.claims import MISSING, RowRef, Stat, Value, Verdict, fmt, fmt_stat, judge_all
from benchmark.errors import Tok1dError
from benchmark.graph import (
    LATENT_2D,
    PREREQUISITE_KINDS,
    PRETRAINED,
    TRAINING_KINDS,
    encoder_at,
    uses_ot_target,
    weighted_out,
)
from benchmark.store import RunStore, atomic_write, default_root, read_json, write_json
from benchmark.study import STUDY_DIR, Cell, Plan, build_plan, check_study_path, flat_config, sibling_plan, study_files

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class CellResults:
    """One cell's results flattened into one mapping (metrics included), and its status."""

    cell: Cell
    values: dict[str, Any]
    status: str


def cell_status(store: RunStore, cell: Cell) -> tuple[str, list[tuple[str, dict[str, Any]]]]:
    """A cell's status line (from the store's state of each of its stages) and its stages' results."""
    status, results = "ok", []
    for kind, h in cell.stages.items():
        state = store.status(kind, h)
        if state.result is not None:
            results.append((kind, state.result))
            continue
        if status != "ok":
            continue
        if state.state == "failed":
            error = state.error or {}
            first = (error.get("error") or "").splitlines()[0][:160] if error.get("error") else ""
            status = f"{error.get('kind', 'failed').upper()} in {kind}: {first} (log: {error.get('log')})"
        elif state.state == "running":
            status = f"running {kind}"
        elif state.state == "queued":
            status = f"queued on Slurm: {kind} (job {state.job['job_id']})"
        else:
            status = "not run"
    return status, results


def cell_results(store: RunStore, cell: Cell) -> CellResults:
    """Read a cell's stage results (once per report) and say whether it finished, failed or waits."""
    values: dict[str, Any] = {}
    status, results = cell_status(store, cell)
    for kind, result in results:
        values.update({k: v for k, v in result.items() if not isinstance(v, dict) and not k.startswith("_")})
        values.update(result.get("metrics", {}))
        values.update({f"{kind}.{k}": v for k, v in flat_config(result.get("cost", {})).items()})
        values.update({f"{kind}.final_loss_{k}": v for k, v in result.get("final_losses", {}).items()})
        if "protocol" in result:
            values.setdefault("_protocols", {})[kind] = result["protocol"]
    done = dict(results)  # kind -> result of the cell's finished stages
    init = encoder_init(store, cell, done)
    if init:
        values["_init"] = init
    teachers = teacher_sources(store, cell, done)
    if teachers:
        values["_teachers"] = teachers
    values.update({f"config.{k}": v for k, v in flat_config(cell.config).items()})
    return CellResults(cell, values, status)


def encoder_init(store: RunStore, cell: Cell, done: dict[str, dict[str, Any]]) -> str | None:
    """Where a cell's tokenizer encoder started (its training's ``init_report.json``): the source, with
    run-store paths relative to the store, and how many parameters were copied, adapted or new; ``done``:
    the cell's finished stages' results, by kind."""
    if "train_tokenizer" not in cell.stages:
        return None
    report = read_json(store.dir("train_tokenizer", cell.stages["train_tokenizer"]) / "init_report.json")
    if not report:
        return None
    counts = ", ".join(f"{n} {k}" for k, n in report.get("counts", {}).items() if n)
    probe = pretraining_probe(done.get("pretrain_encoder", {}))
    return f"{report['source'].replace(str(store.root), '<run store>')} ({counts}){probe}"


def pretraining_probe(result: dict[str, Any]) -> str:
    """What an offline pretraining (its stage's ``result``) measured on the training images (its ``probe``:
    an image-text objective's zero-shot accuracy, the depth objective's AbsRel and delta1), as a clause."""
    probe = result.get("probe")
    if not probe:
        return ""
    return "; on its training images: " + ", ".join(f"{k} {fmt(v)}" for k, v in probe.items())


def teacher_sources(store: RunStore, cell: Cell, done: dict[str, dict[str, Any]]) -> str | None:
    """What a cell's alignment teachers are: published weights, a random-weight stand-in, or a stand-in
    pretrained offline (its objective and its pretraining's folder, relative to the store)."""
    parts = []
    for path, kind in PRETRAINED.items():
        spec = encoder_at(cell.config, path)
        if path == "tokenizer.encoder" or spec is None:
            continue
        if weighted_out(cell.config, path):
            source = "not used: its term is weighted 0"
        elif kind in cell.stages:
            folder = store.dir(kind, cell.stages[kind])
            result = done.get(kind, {})
            objective = result.get("objective", "not run yet")
            source = f"stand-in pretrained ({objective}) in <run store>/{folder.relative_to(store.root)}"
            source += pretraining_probe(result)
        elif spec.get("stand_in") is not None:
            source = "random-weight stand-in"
        else:
            source = f"published weights (size {spec.get('size', 'default')})"
        parts.append(f"{path}: {spec.get('init')} {source}")
    if uses_ot_target(cell.config):
        ot_target = encoder_at(cell.config, LATENT_2D)
        if "train_latent_2d" in cell.stages:
            folder = store.dir("train_latent_2d", cell.stages["train_latent_2d"]).relative_to(store.root)
            source = f"trained on the study's data in <run store>/{folder}"
        else:
            source = "its checkpoint" if ot_target.get("checkpoint") else "random weights"
        parts.append(f"{LATENT_2D} (OT target): {ot_target['tokenizer']} {source}")
    return "; ".join(parts) or None


def grouped_lines(results: Results, key: str) -> list[str]:
    """One line per distinct value of a cell's ``key`` (its encoder initialisation, its teachers), naming
    the cells that have it."""
    alike: dict[str, list[str]] = {}
    for row in results.rows().values():
        for c in row.cells:
            if key in c.values:
                alike.setdefault(c.values[key], []).append(c.cell.label)
    return [f"- {', '.join(labels)}: {value}" for value, labels in alike.items()]


def number(value: Any) -> float | None:
    """A finite number, or None (missing, text, NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


@dataclass
class Row:
    """One row of a study: its cells (one per seed), and the source's numbers for it."""

    study: str
    label: str
    cells: list[CellResults]
    reference: dict[str, float] = field(default_factory=dict)

    def stat(self, key: str) -> Stat | None:
        """``key`` over the row's seeds that have it."""
        return Stat.of([v for c in self.cells if (v := number(c.values.get(key))) is not None])

    def first(self, key: str) -> Any:
        """The value of the first cell that has ``key`` (config values, text)."""
        return next((c.values[key] for c in self.cells if c.values.get(key) is not None), None)

    @property
    def status(self) -> str:
        if not self.cells:
            return "not in this plan"
        if len({c.status for c in self.cells}) == 1:  # one seed, or every seed alike
            return self.cells[0].status
        bad = [c for c in self.cells if c.status != "ok"]
        ok = len(self.cells) - len(bad)
        return f"{ok}/{len(self.cells)} seeds ok; " + "; ".join(
            f"seed {c.cell.config['seed']}: {c.status}" for c in bad
        )


def reference_rows(spec: dict[str, Any]) -> tuple[str, dict[str, dict[str, float]]]:
    """The label of a study's source ("thesis", "paper") and its numbers per row, over all tables."""
    label, rows = "paper", {}
    for table in (spec.get("report") or {}).get("tables") or []:
        ref = table.get("reference") or {}
        label = ref.get("label", label)
        for row, values in (ref.get("rows") or {}).items():
            rows.setdefault(str(row), {}).update(values)
    return label, rows


class Results:
    """The rows of a study from the run store and, on demand, those of the sibling studies its figures
    and claims draw on (under the same profile, overrides and seeds); each study is read once."""

    def __init__(self, plan: Plan, store: RunStore) -> None:
        self.plan, self.store = plan, store
        self._rows: dict[str, dict[str, Row]] = {}
        self._plans: dict[str, Plan] = {plan.study: plan}
        self._compute: pd.DataFrame | None = None

    def plan_of(self, study: str | None) -> Plan:
        study = study or self.plan.study
        if study not in self._plans:
            self._plans[study] = sibling_plan(self.plan, study)
        return self._plans[study]

    def rows(self, study: str | None = None) -> dict[str, Row]:
        """Row label -> row, in the study's order."""
        plan = self.plan_of(study)
        if plan.study not in self._rows:
            _, refs = reference_rows(plan.spec)
            rows: dict[str, Row] = {}
            for cell in plan.cells:
                row = rows.setdefault(cell.row, Row(plan.study, cell.row, [], refs.get(cell.row, {})))
                if all(c.cell.stages != cell.stages for c in row.cells):  # cells that are one run count once
                    row.cells.append(cell_results(self.store, cell))
            self._rows[plan.study] = rows
        return self._rows[plan.study]

    def row(self, ref: RowRef) -> Row:
        """A row; one the plan lacks (command-line overrides renamed it) is an empty row."""
        rows = self.rows(ref.study)
        return rows.get(ref.label) or Row(ref.study or self.plan.study, ref.label, [])

    def source_label(self, study: str | None = None) -> str:
        return reference_rows(self.plan_of(study).spec)[0]

    def compute(self) -> pd.DataFrame:
        if self._compute is None:
            self._compute = compute_table(self.plan, self.store)
        return self._compute

    def value(self, ref: RowRef | None, metric: str) -> Value:
        """A claim's value (benchmark.claims.Measure): a row's, or (``ref`` None) the study's compute."""
        if ref is not None:
            row = self.row(ref)
            return Value(row.stat(metric), number(row.reference.get(metric)))
        df = self.compute()
        if df.empty or df.iloc[-1]["stage"] != "total":  # no tokenizer or generator trained yet
            return Value(None)
        total = df.iloc[-1]
        column = {
            "compute.as_run": AS_RUN,
            "compute.per_cell": PER_CELL,
            "compute.saving": "saving (%)",
            "compute.generator_saving": "saving, generator once (%)",
        }
        return Value(Stat(float(total[column[metric]])))


# ---------------------------------------------------------------------------------------------
# Tables


def decimals(values: list[Any]) -> int:
    """The decimals a column of the source's numbers is printed with (the most any of them has, so
    that 40.40 next to 42.35 keeps its last zero)."""
    texts = [getattr(v, "text", repr(v)) for v in values if isinstance(v, float)]
    return max((len(t.split(".")[1]) for t in texts if "." in t and "e" not in t.lower()), default=0)


def build_table(results: Results, table: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One declared table, as numbers (for the CSV: means, and stds when rows have several seeds) and as
    text (for the markdown: mean ± std, the source's numbers in their own digits). Each column of ours
    that the source reports too is followed by the source's: ``rFID (ours) | rFID (thesis)``."""
    import pandas as pd

    columns: dict[str, str] = table.get("columns") or {}
    ref = table.get("reference") or {}
    ref_label = ref.get("label", "paper")
    ref_cols: dict[str, str] = ref.get("columns") or {}
    seeds = results.plan.seeds_per_row > 1
    shown = [str(r) for r in table.get("rows") or []]  # a table of some rows only (thesis Table 3's Fig. 9 rows)
    rows = [row for row in results.rows().values() if not shown or row.label in shown]
    literature = ref.get("literature") or []
    ref_values = {k: [r.reference.get(k) for r in rows] + [lit.get(k) for lit in literature] for k in ref_cols}
    digits = {k: decimals(v) for k, v in ref_values.items()}

    def source_text(key: str, value: Any) -> str:
        return f"{value:.{digits[key]}f}" if number(value) is not None else ("-" if value is None else str(value))

    order = [(key, "ours") for key in columns]
    for key in ref_cols:
        at = next((i for i, (k, _) in enumerate(order) if k == key), None)
        order.insert(len(order) if at is None else at + 1, (key, "source"))

    def header(key: str, who: str) -> str:
        if who == "source":
            return f"{ref_cols[key]} ({ref_label})"
        return f"{columns[key]} (ours)" if key in ref_cols else columns[key]

    label_col = table.get("row_label", "cell")
    numbers, texts = [], []
    for row in rows:
        num: dict[str, Any] = {label_col: row.label}
        text: dict[str, Any] = {label_col: row.label}
        ok = sum(c.status == "ok" for c in row.cells)
        for key, who in order:
            name = header(key, who)
            if who == "source":
                num[name], text[name] = row.reference.get(key), source_text(key, row.reference.get(key))
                continue
            stat = row.stat(key)
            if stat is None:
                num[name] = row.first(key)
                text[name] = "-" if num[name] is None else str(num[name])
            else:
                num[name], text[name] = stat.mean, fmt_stat(stat)
                if seeds and stat.n < ok:  # a seed without the value (not computed, or not a number)
                    text[name] += f" (n={stat.n})"
            if seeds:
                num[f"{name} std"] = stat.std if stat and stat.n > 1 else None
                num[f"{name} n"] = stat.n if stat else 0
        if seeds:
            num["seeds"] = ok
            text["seeds"] = str(ok)
        num["status"] = text["status"] = row.status
        numbers.append(num)
        texts.append(text)
    for lit in literature:
        num = {label_col: lit["label"]}
        text = {label_col: f"{lit['label']} ({ref_label})"}
        for key, who in order:
            value = lit.get(key) if who == "source" else None
            num[header(key, who)] = value
            text[header(key, who)] = source_text(key, value) if who == "source" else ""
        num["status"] = text["status"] = f"reference: {ref.get('literature_source', ref_label)}"
        numbers.append(num)
        texts.append(text)
    numbers_df = pd.DataFrame(numbers)
    if seeds:
        numbers_df["seeds"] = numbers_df["seeds"].astype("Int64")
    return numbers_df, pd.DataFrame(texts).fillna("")


def empty_column_notes(results: Results, table: dict[str, Any]) -> list[str]:
    """Why a column of ours is empty in every finished row: the metrics the cells' evaluations ran (a
    profile may leave one out) and each evaluation's own reason for a metric it could not compute."""
    done = [c for row in results.rows().values() for c in row.cells if c.status == "ok"]
    if not done:
        return []
    evaluation = done[0].cell.config.get("eval", {})
    ran = "; ".join(
        f"eval.{part}: {', '.join(evaluation.get(part) or []) or 'none'}" for part in ("metrics", "generation_metrics")
    )
    reasons = {
        (m["metric"], m["unavailable"])
        for c in done
        for protocol in c.values.get("_protocols", {}).values()
        for m in protocol.get("metric_protocols", [])
        if m.get("unavailable")
    }
    notes = []
    for key, name in (table.get("columns") or {}).items():
        if any(c.values.get(key) is not None for c in done):
            continue
        notes.append(f"{name}: empty in every finished row (the evaluations ran {ran})")
        notes += [f"{name}: {why}" for metric, why in sorted(reasons) if key in METRIC_COLUMNS.get(metric, (metric,))]
    return notes


# The result columns of a metric whose columns are not named after it (the others: the metric's name).
METRIC_COLUMNS = {"inception_score": ("is_mean", "is_std")}


# The training stages downstream of the tokens: what a study that trains its generator once for several
# tokenizers (SelfBootTok's Fig. 4 / Sec. 4.2) would otherwise train again for each.
GENERATOR_KINDS = ("train_generator",)
AS_RUN, PER_CELL, GENERATOR_PER_CELL = "PFLOPs as run", "PFLOPs, one per cell", "PFLOPs, a generator per cell"


def compute_table(plan: Plan, store: RunStore) -> pd.DataFrame:
    """Training compute per stage kind: as run (each shared stage once: cells that share a tokenizer,
    a latent cache or a generator share its training) against every cell training its own, and against
    the tokenizers as run with a generator trained for each cell (what training the generator once saves,
    SelfBootTok Sec. 4.2: the tokenizers' training is the same either way). The total (the last row,
    which claims read) covers the tokenizers and generators: the prerequisites that stand in for published
    weights (graph.PREREQUISITE_KINDS) are listed first, marked, and left out of it."""
    import pandas as pd

    rows, prerequisites = [], []
    for kind in TRAINING_KINDS:
        shared, per_cell = 0.0, 0.0
        for stage in (s for s in plan.stages.values() if s.kind == kind):
            result = store.result(kind, stage.hash) or {}
            pflops = (result.get("cost") or {}).get("train_pflops")
            if pflops is None:
                continue
            shared += pflops
            per_cell += pflops * len(stage.cells)
        if not per_cell:
            continue
        row = {"stage": kind, AS_RUN: shared, PER_CELL: per_cell}
        if kind in PREREQUISITE_KINDS:
            prerequisites.append({**row, "stage": f"{kind} (not in total)", GENERATOR_PER_CELL: shared})
        else:
            rows.append({**row, GENERATOR_PER_CELL: per_cell if kind in GENERATOR_KINDS else shared})
    if rows:
        rows.append({"stage": "total", **{c: sum(r[c] for r in rows) for c in (AS_RUN, PER_CELL, GENERATOR_PER_CELL)}})
    df = pd.DataFrame(prerequisites + rows)
    if not df.empty:
        df["saving (%)"] = 100 * (1 - df[AS_RUN] / df[PER_CELL])
        df["saving, generator once (%)"] = 100 * (1 - df[AS_RUN] / df[GENERATOR_PER_CELL])
    return df


def markdown(df: pd.DataFrame) -> str:
    """A table as markdown, its cells printed as they are (numbers already formatted)."""
    return df.astype(str).to_markdown(index=False, disable_numparse=True)


def failure_lines(plan: Plan, store: RunStore) -> list[str]:
    """Each failed stage of the study: its error, kind, log and the last lines of its stderr."""
    from benchmark.status import failure_details

    lines: list[str] = []
    for stage in plan.ordered_stages(selected=False):
        status = store.status(stage.kind, stage.hash)
        if status.failed_by_itself:
            lines += [f"cells {', '.join(stage.cells)}:", *failure_details(status), ""]
    return lines


LABEL = "\x00"  # where protocol_lines puts the labels of the cells that share a protocol


def protocol_lines(results: Results) -> list[str]:
    """What was measured, on what, and how: one line per evaluation, each followed by its metrics'
    protocols (FID's in full). Cells measured alike share their lines (``- SoftVQ, G: ...``); a metric
    protocol every cell shares is listed once, at the end."""
    cells = [
        (c.cell.label, c.values["_protocols"])
        for row in results.rows().values()
        for c in row.cells
        if "_protocols" in c.values
    ]
    per_cell = [[m for p in protocols.values() for m in metric_lines(p)] for _, protocols in cells]
    shared = set.intersection(*map(set, per_cell)) if len(cells) > 1 else set()
    alike: dict[tuple[str, ...], list[str]] = {}
    for label, protocols in cells:
        alike.setdefault(tuple(cell_protocol_lines(LABEL, protocols, shared)), []).append(label)
    lines = [line.replace(LABEL, ", ".join(labels)) for body, labels in alike.items() for line in body]
    if shared:
        lines += ["- every cell above:", *(m for m in dict.fromkeys(per_cell[0]) if m in shared)]
    return lines


def cell_protocol_lines(label: str, protocols: dict[str, Any], omit: Container[str] = ()) -> list[str]:
    """The protocol lines of one cell (or one ``benchmark.evaluate`` call): stage kind -> its protocol;
    metric protocol lines in ``omit`` are left out (listed once for every cell)."""
    lines: list[str] = []
    for kind, protocol in protocols.items():
        if kind == "evaluate_tokenizer":
            data = ", ".join(f"{k}={v}" for k, v in protocol.get("data", {}).items())
            lines.append(
                f"- {label}: {protocol['num_images']} images of the {protocol['split']} split ({data}); "
                f"metrics: {', '.join(protocol['metrics'])}"
            )
        elif kind == "evaluate_generator":
            s = protocol.get("sampling", {})
            lines.append(
                f"- {label}: {s.get('num_images')} generated images, labels {s.get('labels')}, seed "
                f"{s.get('seed')}, cfg {s.get('cfg_scale')}, steps {s.get('steps')}, sampler {s.get('sampler')}"
            )
        lines += [m for m in metric_lines(protocol) if m not in omit]
    return lines


def metric_lines(protocol: dict[str, Any]) -> list[str]:
    """One indented line per metric protocol record of an evaluation (FID / IS: weights, resize, ...)."""
    return [
        "  - " + "; ".join(f"{k}: {v}" for k, v in metric.items() if v not in (None, ""))
        for metric in protocol.get("metric_protocols", [])
    ]


# ---------------------------------------------------------------------------------------------
# Claims


def claim_lines(plan: Plan, verdicts: list[Verdict]) -> list[str]:
    """The report's last section: each claim of the source, the values behind it, and its verdict."""
    import pandas as pd

    lines = ["## Claims of the source", ""]
    if not verdicts:
        return lines + ["The study declares no claims.", ""]
    counts = claim_counts(verdicts)
    lines += [
        f"{counts['holds']} of {len(verdicts)} claims hold on our numbers; {counts['within noise']} within "
        f"noise, {counts['does not hold']} do not hold, {counts['not measured']} not measured.",
        "",
    ]
    if plan.seeds_per_row == 1:
        lines += [
            "One seed per row: the spread is not measured, so every difference counts (`--seeds N` runs "
            "each cell with N seeds; a difference within the seeds' spread then reads *within noise*).",
            "",
        ]
    short = [v.text for v in verdicts if v.seeds is not None and v.seeds < plan.seeds_per_row]
    if short and plan.seeds_per_row > 1:
        lines += [
            f"Not every seed has finished: these claims read a value of fewer than {plan.seeds_per_row} seeds (one "
            f"seed has no spread, so its differences all count): {'; '.join(short)}.",
            "",
        ]
    label = reference_rows(plan.spec)[0]
    table = pd.DataFrame(
        [
            {
                "claim": v.text,
                "where": v.claim.get("source", ""),
                "ours": v.ours,
                label: v.source,
                "verdict (ours)": f"**{v.verdict}**",
                f"on the {label}'s numbers": "not reported" if v.source_verdict == MISSING else v.source_verdict,
            }
            for v in verdicts
        ]
    )
    lines += [markdown(table), ""]
    quotes = [
        f'- {v.text}: "{v.claim["says"]}" ({v.claim.get("source", label)})' for v in verdicts if v.claim.get("says")
    ]
    return lines + (["In the source's words:", "", *quotes, ""] if quotes else [])


def claim_counts(verdicts: list[Verdict]) -> dict[str, int]:
    out = {"total": len(verdicts)}
    for verdict in ("holds", "within noise", "does not hold", "not measured"):
        out[verdict] = sum(v.verdict == verdict for v in verdicts)
    return out


# ---------------------------------------------------------------------------------------------
# The report


def git_commit() -> str:
    """The repository's commit (short hash, ``+dirty`` with uncommitted changes outside ``results/``, which
    rendering reports changes), or ``unknown``."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def results_date(plan: Plan, store: RunStore) -> str | None:
    """When the newest finished stage of the study finished (the time its result record holds, kept when a
    run store is copied; else the record's file time), ISO date."""
    times = [
        (read_json(path) or {}).get("_finished") or path.stat().st_mtime
        for stage in plan.stages.values()
        if (path := store.dir(stage.kind, stage.hash) / "result.json").is_file()
    ]
    return datetime.datetime.fromtimestamp(max(times)).isoformat(timespec="seconds") if times else None


def write_report(plan: Plan, store: RunStore, out_dir: Path) -> list[Path]:
    """Render every table, figure and claim of the study into ``out_dir``; returns the files written
    (the markdown report first)."""
    from benchmark.figures import render_figure

    out_dir.mkdir(parents=True, exist_ok=True)
    spec = plan.spec.get("report") or {}
    tables = spec.get("tables") or [{"name": "results", "columns": {}}]
    results = Results(plan, store)
    written: list[Path] = []
    md = [f"# {plan.spec.get('title', plan.study)}", ""]
    if plan.spec.get("source"):
        md += [f"Reproduces: {plan.spec['source']}", ""]
    if plan.profile != "paper":
        md += [
            f"**Profile `{plan.profile}`: these are {plan.profile}-scale numbers (small models, "
            "built-in data), not comparable with the source's; their directions are what the claims check.**",
            "",
        ]
    if plan.seeds_per_row > 1:
        md += [f"Each row ran with {plan.seeds_per_row} seeds: mean ± sample standard deviation over the seeds.", ""]
    for table in tables:
        numbers, texts = build_table(results, table)
        csv_path = out_dir / f"{table['name']}.csv"
        atomic_write(csv_path, lambda tmp, df=numbers: df.to_csv(tmp, index=False))
        written.append(csv_path)
        md += [f"## {table.get('title', table['name'])}", "", markdown(texts), ""]
        notes = empty_column_notes(results, table)
        md += [*(f"- {note}" for note in notes), ""] if notes else []
    if spec.get("compute"):
        df = results.compute()
        csv_path = out_dir / "compute.csv"
        atomic_write(csv_path, lambda tmp: df.to_csv(tmp, index=False))
        written.append(csv_path)
        shown = df.copy()
        for column in shown.columns[1:]:
            shown[column] = shown[column].map(fmt)
        md += [
            "## Training compute",
            "",
            "GFLOPs per training image (torch.utils.flop_counter) x images "
            "seen, summed over the study's stages: as run, where cells share stages by hash; if "
            "every cell trained its own; and with the tokenizers as run but a generator trained for each cell "
            "(the saving of training the generator once).",
            "",
            markdown(shown) if not df.empty else "(no training stage has finished)",
            "",
        ]
    failures = failure_lines(plan, store)
    if failures:
        md += ["## Failures", "", "```", *failures, "```", ""]
    protocol = protocol_lines(results)
    if protocol:
        md += ["## Protocol", "", *protocol, ""]
    inits = grouped_lines(results, "_init")
    if inits:
        md += ["## Encoder initialisation", "", *inits, ""]
    teachers = grouped_lines(results, "_teachers")
    if teachers:
        md += ["## Alignment teachers", "", *teachers, ""]
    figures = spec.get("figures") or []
    if figures:
        md += ["## Figures", ""]
    for fig in figures:
        files, notes = render_figure(results, fig, out_dir)
        written += files
        md += [f"### {fig.get('title', fig['name'])}", ""]
        md += [f"![{fig.get('title', fig['name'])}]({f.name})" for f in files if f.suffix == ".png"]
        md += ["", *(f"- {note}" for note in notes), "", f"Data: [{fig['name']}.csv]({fig['name']}.csv)", ""]
    verdicts = judge_all(plan, results.value, {k: v for t in tables for k, v in (t.get("columns") or {}).items()})
    md += claim_lines(plan, verdicts)
    md_path = out_dir / "README.md"
    atomic_write(md_path, lambda tmp: tmp.write_text("\n".join(md)))
    states = [c.status for row in results.rows().values() for c in row.cells]
    record = {
        "study": plan.study,
        "title": plan.spec.get("title", plan.study),
        "source": plan.spec.get("source", ""),
        "profile": plan.profile,
        "seeds": plan.seeds_per_row,
        "overrides": plan.overrides,
        "rendered": datetime.datetime.now().isoformat(timespec="seconds"),
        "commit": git_commit(),
        "results_date": results_date(plan, store),
        "cells": {"total": len(states), "ok": states.count("ok"), "not run": states.count("not run")},
        "claims": claim_counts(verdicts),
        "files": [p.name for p in written],
        "plan_seeds": plan.seeds,  # --seeds (``seeds`` counts a seed axis's too)
        "stages": sorted(s.hash for s in plan.ordered_stages()),  # the index checks they are still current
    }
    write_json(out_dir / "report.json", record)
    return [md_path, *written, out_dir / "report.json"]


def results_dir(root: Path, plan: Plan) -> Path:
    """``results/<study>/`` at paper scale; other profiles under ``results/<study>/_<profile>/``."""
    base = root / plan.study
    return base if plan.profile == "paper" else base / f"_{plan.profile}"


# ---------------------------------------------------------------------------------------------
# The index of every study's results


def index_rows(studies: Path, results: Path) -> list[dict[str, str]]:
    """One row per study and profile with results (its ``report.json``), one per study without any
    (studies that are links to another are listed under the study they link to)."""
    from benchmark.config import load_yaml

    rows = []
    for path in study_files(studies, aliases=False):
        spec, folder = load_yaml(path), results / path.stem
        report = spec.get("report") or {}
        shows = "; ".join(
            f"{kind}: " + ", ".join(f"`{item['name']}`" for item in report[kind])
            for kind in ("tables", "figures")
            if report.get(kind)
        )
        base = {"study": f"`{path.stem}`", "renders": f"{spec.get('title', path.stem)} ({shows})"}
        records = [read_json(p) for p in sorted(folder.glob("report.json")) + sorted(folder.glob("_*/report.json"))]
        if not records:
            empty = {"profile": "-", "status": "no results", "results dated": "-", "commit": "-"}
            rows.append({**base, **empty, "claims hold": f"-/{len(spec.get('claims') or [])}"})
        for rec in records:
            cells, claims = rec["cells"], rec["claims"]
            other = cells["total"] - cells["ok"] - cells["not run"]
            status = f"{cells['ok']}/{cells['total']} cells done" + "".join(
                f", {n} {what}" for n, what in ((cells["not run"], "not run"), (other, "failed or running")) if n
            )
            status += stale_note(path, rec)
            where = f"{path.stem}/" + ("" if rec["profile"] == "paper" else f"_{rec['profile']}/") + "README.md"
            seeds = f" ({rec['seeds']} seeds)" if rec["seeds"] > 1 else ""
            noise = f" ({claims['within noise']} within noise)" if claims["within noise"] else ""
            rows.append(
                {
                    **base,
                    "profile": f"[{rec['profile']}]({where}){seeds}",
                    "status": status,
                    "results dated": (rec["results_date"] or "-").replace("T", " "),
                    "commit": rec["commit"],
                    "claims hold": f"{claims['holds']}/{claims['total']}{noise}",
                }
            )
    return rows


def stale_note(path: Path, record: dict[str, Any]) -> str:
    """``; stale: ...`` when stages a committed report was rendered from are no longer the study's (a method
    version was bumped since, or the study changed): those results predate the code, and a rerun
    recomputes them; ``; ... added since`` when the study has gained stages (a row's generation) that the
    results lack. Empty when they are current, or the record predates this check."""
    if "stages" not in record:
        return ""
    plan = build_plan(path, record["profile"], record["overrides"], seeds=record.get("plan_seeds", record["seeds"]))
    current = {s.hash for s in plan.ordered_stages()}
    gone = [h for h in record["stages"] if h not in current]
    new = current - set(record["stages"])
    note = f"; stale: {len(gone)} of {len(record['stages'])} stages changed since (rerun)" if gone else ""
    if len(new) > len(gone):  # stages the study gained (e.g. a figure's), beyond the changed ones
        note += f"; {len(new) - len(gone)} stages added since, not in these results (rerun)"
    return note


def write_index(studies: Path, results: Path) -> Path:
    """``results/README.md``: every study, the table or figure it renders, and where its results stand."""
    import pandas as pd

    rows = index_rows(studies, results)
    md = [
        "# Results",
        "",
        "Generated by `python -m benchmark.report --index` from each study's `report.json` (written with "
        "its report); do not edit by hand. A study's results are in `<study>/` (paper profile) or "
        "`<study>/_<profile>/`; *results dated* is when the newest of its stages finished, *commit* the "
        "code the report was rendered with; *stale* counts the stages of the report that the study no longer "
        "has (a method's version was bumped since: benchmark/method_versions.py), which a rerun recomputes; "
        "*added* the stages the study has gained since (a figure's), which a rerun adds.",
        "",
        markdown(pd.DataFrame(rows)),
        "",
    ]
    path = results / "README.md"
    atomic_write(path, lambda tmp: tmp.write_text("\n".join(md)))
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmark.report", description=__doc__.split("\n\n")[0])
    p.add_argument("study", nargs="?", help="a study YAML, e.g. studies/thesis_table2_token_count.yaml")
    p.add_argument("overrides", nargs="*", help="the config overrides the study ran with, e.g. train.steps=100")
    p.add_argument("--profile", default="paper", help="studies/profiles/<name>.yaml (default: paper)")
    p.add_argument("--runs", help="run store folder (default: $TOK1D_RUNS or ./runs)")
    p.add_argument("--results", default="results", help="results folder (default: ./results)")
    p.add_argument("--seeds", type=int, help="seeds per cell (default: as many as the run store holds)")
    p.add_argument("--index", action="store_true", help="write <results>/README.md, the index of every study")
    args = p.parse_intermixed_args(argv)
    try:
        if args.study:
            check_study_path(args.study)
            from benchmark.slurm import SlurmQueue, available
            from benchmark.status import detect_seeds

            store = RunStore(default_root(args.runs), probe=SlurmQueue() if available() else None)
            seeds = args.seeds or detect_seeds(args.study, args.profile, args.overrides, store)
            plan = build_plan(args.study, args.profile, args.overrides, seeds=seeds)
            print(f"results: {write_report(plan, store, results_dir(Path(args.results), plan))[0]}")
        if args.index:
            study_dir = Path(args.study).parent if args.study else STUDY_DIR
            print(f"index: {write_index(study_dir, Path(args.results))}")
        if not (args.study or args.index):
            p.error("give a study, --index, or both")
    except Tok1dError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

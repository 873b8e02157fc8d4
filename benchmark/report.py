"""Reports: pandas tables (markdown + CSV) and matplotlib figures, built from the run store alone.

A study's ``report`` section declares its tables (which result keys, under which headers, and the
seed paper's own numbers to show beside ours) and figures (a config key on x, result keys on y).
Cells whose stages failed or have not run appear with their status; they are never dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from benchmark.store import RunStore, atomic_write
from benchmark.study import Cell, Plan, flat_config


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
    values.update({f"config.{k}": v for k, v in flat_config(cell.config).items()})
    return CellResults(cell, values, status)


def build_table(results: list[CellResults], table: dict[str, Any]) -> pd.DataFrame:
    """One declared table as a DataFrame: label, our columns, the paper's columns, status."""
    columns: dict[str, str] = table.get("columns") or {}
    ref = table.get("reference") or {}
    ref_label = ref.get("label", "paper")
    ref_cols: dict[str, str] = ref.get("columns") or {}
    rows = []
    for r in results:
        row: dict[str, Any] = {table.get("row_label", "cell"): r.cell.label}
        for key, header in columns.items():
            row[f"{header} (ours)" if key in ref_cols else header] = r.values.get(key)
        paper = (ref.get("rows") or {}).get(r.cell.label, {})
        for key, header in ref_cols.items():
            row[f"{header} ({ref_label})"] = paper.get(key)
        row["status"] = r.status
        rows.append(row)
    return pd.DataFrame(rows)


def compute_table(plan: Plan, store: RunStore) -> pd.DataFrame:
    """Training compute per stage kind: as run (each shared stage once: cells that share a tokenizer,
    a latent cache or a generator share its training) against every cell training its own."""
    rows = []
    for kind in ("train_tokenizer", "finetune_tokenizer", "train_generator"):
        shared, per_cell = 0.0, 0.0
        for stage in (s for s in plan.stages.values() if s.kind == kind):
            result = store.result(kind, stage.hash) or {}
            pflops = (result.get("cost") or {}).get("train_pflops")
            if pflops is None:
                continue
            shared += pflops
            per_cell += pflops * len(stage.cells)
        if per_cell:
            rows.append({"stage": kind, "PFLOPs as run": shared, "PFLOPs, one per cell": per_cell})
    if rows:
        total = {
            "stage": "total",
            "PFLOPs as run": sum(r["PFLOPs as run"] for r in rows),
            "PFLOPs, one per cell": sum(r["PFLOPs, one per cell"] for r in rows),
        }
        rows.append(total)
    df = pd.DataFrame(rows)
    if rows:
        df["saving (%)"] = 100 * (1 - df["PFLOPs as run"] / df["PFLOPs, one per cell"])
    return df


def failure_lines(plan: Plan, store: RunStore) -> list[str]:
    """Each failed stage of the study: its error, kind, log and the last lines of its stderr."""
    from benchmark.status import failure_details

    lines: list[str] = []
    for stage in plan.ordered_stages(selected=False):
        status = store.status(stage.kind, stage.hash)
        if status.state == "failed" and (status.error or {}).get("kind") != "dependency":
            lines += [f"cells {', '.join(stage.cells)}:", *failure_details(status), ""]
    return lines


def protocol_lines(results: list[CellResults]) -> list[str]:
    """One line per cell and evaluation: what was measured, on what, and how (FID protocols in full)."""
    seen: list[str] = []
    for r in results:
        for kind, protocol in r.values.get("_protocols", {}).items():
            if kind == "evaluate_tokenizer":
                data = ", ".join(f"{k}={v}" for k, v in protocol.get("data", {}).items())
                seen.append(
                    f"- {r.cell.label}: {protocol['num_images']} images of the {protocol['split']} split "
                    f"({data}); metrics: {', '.join(protocol['metrics'])}"
                )
            elif kind == "evaluate_generator":
                s = protocol.get("sampling", {})
                seen.append(
                    f"- {r.cell.label}: {s.get('num_images')} generated images, labels "
                    f"{s.get('labels')}, seed {s.get('seed')}, cfg {s.get('cfg_scale')}, steps "
                    f"{s.get('steps')}, sampler {s.get('sampler')}"
                )
            for metric in protocol.get("metric_protocols", []):
                seen.append("  - " + "; ".join(f"{k}: {v}" for k, v in metric.items() if v not in (None, "")))
    return seen


def draw_figure(plan: Plan, results: list[CellResults], fig: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ys = fig["y"] if isinstance(fig["y"], list) else [fig["y"]]
    points = []
    for r in results:
        if (fig["x"] in r.cell.overrides and not r.cell.explicit) or fig.get("all_cells"):
            # ``x_value``: plot against a measured value (e.g. a parameter count) instead of the axis
            x = r.values.get(fig["x_value"]) if fig.get("x_value") else flat_config(r.cell.config).get(fig["x"])
            if x is not None:
                points.append((x, r.values))
    figure, axes = plt.subplots(1, len(ys), figsize=(4.2 * len(ys), 3.4), squeeze=False)
    for ax, y in zip(axes[0], ys):
        pts = sorted((x, v[y]) for x, v in points if v.get(y) is not None)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"tok1d ({plan.profile})")
        ax.set_xlabel(fig.get("xlabel", fig["x"]))
        ax.set_ylabel(fig.get("labels", {}).get(y, y))
        if fig.get("logx"):
            ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
        ax.legend()
    figure.suptitle(fig.get("title", plan.study))
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, dpi=120, format="png"))
    plt.close(figure)


def write_report(plan: Plan, store: RunStore, out_dir: Path) -> list[Path]:
    """Render every table and figure of the study into ``out_dir``; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = plan.spec.get("report") or {}
    tables = spec.get("tables") or [{"name": "results", "columns": {}}]
    results = [cell_results(store, cell) for cell in plan.cells]
    written: list[Path] = []
    md = [f"# {plan.spec.get('title', plan.study)}", ""]
    if plan.spec.get("source"):
        md += [f"Reproduces: {plan.spec['source']}", ""]
    if plan.profile != "paper":
        md += [
            f"**Profile `{plan.profile}`: these are {plan.profile}-scale numbers (tiny models, "
            "built-in data), not comparable with the paper's; they prove the pipeline.**",
            "",
        ]
    for table in tables:
        df = build_table(results, table)
        csv_path = out_dir / f"{table['name']}.csv"
        atomic_write(csv_path, lambda tmp, df=df: df.to_csv(tmp, index=False))
        written.append(csv_path)
        md += [f"## {table.get('title', table['name'])}", "", df.to_markdown(index=False, floatfmt=".4g"), ""]
    if spec.get("compute"):
        df = compute_table(plan, store)
        csv_path = out_dir / "compute.csv"
        atomic_write(csv_path, lambda tmp: df.to_csv(tmp, index=False))
        written.append(csv_path)
        md += [
            "## Training compute",
            "",
            "GFLOPs per training image (torch.utils.flop_counter) x images "
            "seen, summed over the study's stages: as run, where cells share stages by hash, and if "
            "every cell trained its own.",
            "",
            df.to_markdown(index=False, floatfmt=".4g"),
            "",
        ]
    failures = failure_lines(plan, store)
    if failures:
        md += ["## Failures", "", "```", *failures, "```", ""]
    protocol = protocol_lines(results)
    if protocol:
        md += ["## Protocol", "", *protocol, ""]
    for fig in spec.get("figures") or []:
        path = out_dir / f"{fig['name']}.png"
        draw_figure(plan, results, fig, path)
        written.append(path)
        md += [f"![{fig.get('title', fig['name'])}]({path.name})", ""]
    md_path = out_dir / "README.md"
    atomic_write(md_path, lambda tmp: tmp.write_text("\n".join(md)))
    return [md_path, *written]


def results_dir(root: Path, plan: Plan) -> Path:
    """``results/<study>/`` at paper scale; other profiles under ``results/<study>/_<profile>/``."""
    base = root / plan.study
    return base if plan.profile == "paper" else base / f"_{plan.profile}"

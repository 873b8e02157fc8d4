"""The figures of a study's report, drawn with matplotlib from what the stages stored (nothing is
retrained to redraw one). Each figure writes ``<name>.png`` and ``<name>.csv``, the data it shows.

A figure is one entry of the study's ``report.figures``; ``kind`` picks what it draws (``line`` when
absent), ``rows`` which rows (default: every row of the study; a row is a label, or ``{study: <another
study>, row: <label>}`` for a row of a sibling study under the same profile), ``title`` its title::

    {name: token_count, x: tokenizer.num_latent_tokens, y: [rfid, psnr], logx: true}       # line
    {name: fig4, kind: bars, rows: [TiTok-64, MAE], y: [rfid, gfid]}                        # bars per row
    {name: fig2, kind: bars, y: rfid, categories: ["16", "64"],                              # bars per series
     series: [{label: no init, study: thesis_table2_token_count, rows: ["16", "64"]}, {label: MAE, rows: ["16", "64"]}]}
    {name: fig12, kind: reconstructions, rows: [TiTok-64, MAE], images: 6}   # originals above reconstructions
    {name: fig15, kind: samples, rows: [MAE], images: 8}                     # generated images, by class
    {name: fig11, kind: losses, terms: [recon, perceptual]}                  # losses.csv over training
    {name: fig10a, kind: codebook_heatmap, rows: ["64"]}                     # codes x checkpoints
    {name: fig10b, kind: tsne, rows: ["64"], steps: 4}                       # latents + codes, 4 checkpoints
    {name: fig14, kind: tsne, steps: last}                                   # every row at its last checkpoint
    {name: fig5, kind: training_curves, y: [rfid, psnr, ssim]}               # train.eval_every series

The source's own numbers (the tables' reference rows) are drawn beside ours in line and bar charts;
rows run with several seeds show mean ± std (error bars, or bands over training); axes name the real
values (16 ... 128 on a log axis, not 2^4 ... 2^7). Training series of a cell with a finetune stage
continue after its first stage's last step. Image grids, heatmaps and t-SNE show a row's first seed.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmark.claims import RowRef, Stat, check_row_refs, row_list
from benchmark.errors import ConfigError, StoreError
from benchmark.graph import TRAINING_KINDS
from benchmark.store import atomic_write, read_json

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from benchmark.report import Results, Row
    from benchmark.study import Cell, Plan


@dataclass
class FigureData:
    """What a figure shows: a tidy table (written as CSV), images for the grids, and notes for the report."""

    table: pd.DataFrame
    images: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


COMMON = {"name", "kind", "title", "rows"}
KINDS: dict[str, tuple[set[str], set[str]]] = {  # kind -> (required keys, optional keys)
    "line": ({"x", "y"}, {"x_value", "xlabel", "logx", "labels", "all_cells"}),
    "bars": ({"y"}, {"categories", "series", "labels", "logy"}),
    "reconstructions": (set(), {"images"}),
    "samples": (set(), {"images"}),
    "losses": ({"terms"}, {"stage", "logy"}),
    "codebook_heatmap": (set(), {"codebook"}),
    "tsne": (set(), {"steps", "quantizer", "perplexity"}),
    "training_curves": ({"y"}, {"labels"}),
}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def figure_rows(fig: dict[str, Any]) -> list[RowRef]:
    """The rows a figure names (none: every row of the study)."""
    rows = fig.get("rows")
    return [] if rows in (None, "all") else row_list(rows)


def check_figures(plan: Plan, other_rows: Callable[[str], list[str]] | None) -> None:
    """Every figure of ``plan``'s study has a known kind, its keys and (unless ``other_rows`` is None) rows
    that exist; errors name the study file and the figure."""
    rows = set(plan.rows)
    for i, fig in enumerate((plan.spec.get("report") or {}).get("figures") or []):
        where = f"{plan.path}: report.figures[{i}]"
        if not isinstance(fig, dict) or "name" not in fig:
            raise ConfigError(f"{where} must be a mapping with a name")
        kind = fig.get("kind", "line")
        if kind not in KINDS:
            raise ConfigError(f"{where} ({fig['name']}): unknown kind {kind!r}; kinds: {', '.join(KINDS)}")
        required, optional = KINDS[kind]
        missing, unknown = required - set(fig), set(fig) - required - optional - COMMON
        if missing or unknown:
            raise ConfigError(
                f"{where} ({fig['name']}): {kind} needs {sorted(required)} and takes {sorted(optional | COMMON)}; "
                f"missing {sorted(missing)}, unknown {sorted(unknown)}"
            )
        steps = fig.get("steps", "last")
        if not (steps == "last" or isinstance(steps, int) or (isinstance(steps, list) and steps)):
            raise ConfigError(f"{where} ({fig['name']}): steps must be last, a number of steps or a list of steps")
        if fig.get("stage", "train_tokenizer") not in TRAINING_KINDS:
            raise ConfigError(f"{where} ({fig['name']}): stage must be one of {', '.join(TRAINING_KINDS)}")
        if fig.get("series") and isinstance(fig["y"], list):
            raise ConfigError(f"{where} ({fig['name']}): bars with series show one metric: y: <metric>")
        refs = figure_rows(fig) + [
            RowRef(r.label, r.study or s.get("study")) for s in fig.get("series") or [] for r in row_list(s["rows"])
        ]
        check_row_refs(refs, rows, other_rows, plan.study, f"{where} ({fig['name']})")


def selected_rows(results: Results, fig: dict[str, Any]) -> list[Row]:
    """The figure's rows that the plan has (command-line overrides may rename some)."""
    refs = figure_rows(fig)
    rows = [results.row(r) for r in refs] if refs else list(results.rows().values())
    return [row for row in rows if row.cells]


def display(row: Row, results: Results) -> str:
    """A row's name in a figure: its label, prefixed by its study when that is not the report's."""
    return row.label if row.study == results.plan.study else f"{row.study}: {row.label}"


def stage_dir(results: Results, cell: Cell, kind: str) -> Path | None:
    h = cell.stages.get(kind)
    return results.store.dir(kind, h) if h else None


def training_dirs(results: Results, cell: Cell) -> list[tuple[Path, int]]:
    """A cell's training stage folders and the step each one's steps start after (a finetune stage
    continues after the first stage's last step)."""
    dirs = [(d, 0) for d in [stage_dir(results, cell, "train_tokenizer")] if d]
    second = stage_dir(results, cell, "finetune_tokenizer")
    if second is not None:
        dirs.append((second, int(cell.config["train"]["steps"])))
    return dirs


def step_files(folder: Path, sub: str, suffix: str) -> dict[int, Path]:
    """``folder/sub/step_<s><suffix>`` by step."""
    return {int(p.stem.split("_")[1]): p for p in sorted((folder / sub).glob(f"step_*{suffix}"))}


# ---------------------------------------------------------------------------------------------
# What each kind of figure shows


def collect_line(results: Results, fig: dict[str, Any]) -> FigureData:
    """Each y metric against the axis ``x`` (or the measured value ``x_value``), ours and the source's."""
    import pandas as pd

    records = []
    source = results.source_label()
    for row in selected_rows(results, fig):
        cell = row.cells[0].cell
        if not fig.get("all_cells") and (cell.explicit or fig["x"] not in cell.overrides):
            continue
        x = row.stat(fig["x_value"]) if fig.get("x_value") else row.first(f"config.{fig['x']}")
        x = x.mean if isinstance(x, Stat) else x
        if x is None:
            continue
        for y in as_list(fig["y"]):
            stat = row.stat(y)
            if stat is not None:
                records.append(
                    dict(row=row.label, x=x, metric=y, series=f"ours ({results.plan.profile})", **vars(stat))
                )
            if row.reference.get(y) is not None:
                records.append(dict(row=row.label, x=x, metric=y, series=source, mean=row.reference[y], std=0.0, n=1))
    return FigureData(pd.DataFrame(records, columns=["row", "x", "metric", "series", "mean", "std", "n"]))


def bar_series(results: Results, fig: dict[str, Any]) -> tuple[list[str], list[tuple[str, str, list[Row]]]]:
    """(categories, [(series label, metric, its row in each category)]) of a bar chart."""
    if fig.get("series"):
        series = [
            (
                s["label"],
                fig["y"],
                [results.row(RowRef(r.label, r.study or s.get("study"))) for r in row_list(s["rows"])],
            )
            for s in fig["series"]
        ]
        return [str(c) for c in fig.get("categories") or [r.label for r in series[0][2]]], series
    rows = selected_rows(results, fig)
    return [display(r, results) for r in rows], [("ours", y, rows) for y in as_list(fig["y"])]


def collect_bars(results: Results, fig: dict[str, Any]) -> FigureData:
    """Bars of each metric per category and series: ours (mean ± std) and, beside them, the source's."""
    import pandas as pd

    categories, series = bar_series(results, fig)
    records = []
    for label, metric, rows in series:
        for category, row in zip(categories, rows):
            stat = row.stat(metric)
            base = dict(metric=metric, category=category, series=label)
            if stat is not None:
                records.append(dict(base, who="ours", **vars(stat)))
            if row.reference.get(metric) is not None:
                who = results.source_label(row.study)
                records.append(dict(base, who=who, mean=row.reference[metric], std=0.0, n=1))
    return FigureData(pd.DataFrame(records, columns=["metric", "category", "series", "who", "mean", "std", "n"]))


def split_grid(grid: np.ndarray, rows: int) -> list[np.ndarray]:
    """The square tiles of an image grid written by benchmark.image_grid (padding 1), row by row."""
    tile = (grid.shape[0] - 1) // rows - 1
    cols = (grid.shape[1] - 1) // (tile + 1)
    return [
        grid[1 + r * (tile + 1) : 1 + r * (tile + 1) + tile, 1 + c * (tile + 1) : 1 + c * (tile + 1) + tile]
        for r in range(rows)
        for c in range(cols)
    ]


def read_png(path: Path) -> np.ndarray:
    """A PNG as uint8 (H, W, 3)."""
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def collect_reconstructions(results: Results, fig: dict[str, Any]) -> FigureData:
    """The first ``images`` evaluation images of each row and their reconstructions (from the stored
    ``reconstructions.png``); consecutive rows reconstructing the same images share one originals row."""
    import numpy as np
    import pandas as pd

    data = FigureData(pd.DataFrame())
    panels: list[tuple[str, str, list[np.ndarray]]] = []  # (label, row, tiles)
    for row in selected_rows(results, fig):
        name = display(row, results)
        folder = stage_dir(results, row.cells[0].cell, "evaluate_tokenizer")
        if folder is None or not (folder / "reconstructions.png").is_file():
            data.notes.append(f"{name}: no stored reconstructions ({row.status})")
            continue
        tiles = split_grid(read_png(folder / "reconstructions.png"), 2)
        half = len(tiles) // 2
        k = min(int(fig.get("images", 8)), half)
        originals = tiles[:k]
        shown = next((t for label, _, t in reversed(panels) if label == "original"), None)
        if shown is None or len(shown) != k or any(not np.array_equal(a, b) for a, b in zip(shown, originals)):
            panels.append(("original", name, originals))
        panels.append((name, name, tiles[half : half + k]))
    records = []
    for panel, (label, row, tiles) in enumerate(panels):
        for column, tile in enumerate(tiles):
            data.images[(str(panel), column)] = tile
            records.append(dict(panel=panel, label=label, row=row, column=column, mean_pixel=float(tile.mean())))
    data.table = pd.DataFrame(records, columns=["panel", "label", "row", "column", "mean_pixel"])
    return data


def collect_samples(results: Results, fig: dict[str, Any]) -> FigureData:
    """The first ``images`` generated images of each row (the sample stage's ``images.npy``), by class."""
    import numpy as np
    import pandas as pd

    data = FigureData(pd.DataFrame())
    records = []
    for panel, row in enumerate(selected_rows(results, fig)):
        folder = stage_dir(results, row.cells[0].cell, "sample")
        if folder is None or not (folder / "images.npy").is_file():
            data.notes.append(f"{display(row, results)}: no stored samples ({row.status})")
            continue
        images = np.load(folder / "images.npy", mmap_mode="r")
        labels = np.load(folder / "labels.npy")
        for i in range(min(int(fig.get("images", 8)), len(images))):
            data.images[(str(panel), i)] = np.array(images[i])
            records.append(
                dict(
                    panel=panel,
                    label=display(row, results),
                    column=i,
                    cls=int(labels[i]),
                    mean_pixel=float(images[i].mean()),
                )
            )
    data.table = pd.DataFrame(records, columns=["panel", "label", "column", "cls", "mean_pixel"])
    return data


def collect_losses(results: Results, fig: dict[str, Any]) -> FigureData:
    """``terms`` of each row's ``losses.csv`` (every seed) over training steps; read while training runs too."""
    import pandas as pd

    kind = fig.get("stage", "train_tokenizer")
    frames, notes = [], []
    for row in selected_rows(results, fig):
        name, found = display(row, results), False
        for c in row.cells:
            dirs = (
                training_dirs(results, c.cell) if kind == "train_tokenizer" else [(stage_dir(results, c.cell, kind), 0)]
            )
            for folder, offset in dirs:
                if folder is None or not (folder / "losses.csv").is_file():
                    continue
                log = pd.read_csv(folder / "losses.csv")
                for term in as_list(fig["terms"]):
                    if term not in log:
                        notes.append(f"{name}: no '{term}' in losses.csv (its terms: {', '.join(log.columns[2:])})")
                        continue
                    found = True
                    frames.append(
                        pd.DataFrame(
                            {
                                "row": name,
                                "seed": c.cell.config["seed"],
                                "term": term,
                                "step": log["step"] + offset,
                                "value": log[term],
                            }
                        )
                    )
        if not found:
            notes.append(f"{name}: no loss log yet ({row.status})")
    table = (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=["row", "seed", "term", "step", "value"])
    )
    return FigureData(table, notes=list(dict.fromkeys(notes)))


def probes(results: Results, row: Row) -> dict[int, Path]:
    """The stored codebook probes of a row's first seed, by (global) step."""
    out: dict[int, Path] = {}
    for folder, offset in training_dirs(results, row.cells[0].cell):
        out.update({step + offset: path for step, path in step_files(folder, "probe", ".npz").items()})
    return dict(sorted(out.items()))


def collect_codebook_heatmap(results: Results, fig: dict[str, Any]) -> FigureData:
    """Per-code usage counts on the probe batch at every checkpoint (codes x checkpoints) of each row."""
    import numpy as np
    import pandas as pd

    data = FigureData(pd.DataFrame())
    frames = []
    for row in selected_rows(results, fig):
        stored = probes(results, row)
        if not stored:
            data.notes.append(f"{display(row, results)}: no codebook probes stored ({row.status})")
            continue
        for step, path in stored.items():
            with np.load(path) as npz:
                names = sorted(k.split(".", 1)[1] for k in npz.files if k.startswith("counts."))
                name = fig.get("codebook", names[0] if names else None)
                if f"counts.{name}" not in npz.files:
                    data.notes.append(f"{display(row, results)}: step {step} has no codebook '{name}' (has: {names})")
                    continue
                counts = npz[f"counts.{name}"]
            frames.append(
                pd.DataFrame(
                    {
                        "row": display(row, results),
                        "codebook": name,
                        "step": step,
                        "code": np.arange(len(counts)),
                        "count": counts,
                    }
                )
            )
    data.table = (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=["row", "codebook", "step", "code", "count"])
    )
    return data


def tsne_steps(stored: list[int], steps: Any) -> list[int]:
    """Which stored steps a t-SNE figure shows: ``last``, a number of evenly spaced ones, or a list."""
    if not stored:
        return []
    if steps in (None, "last"):
        return [stored[-1]]
    if isinstance(steps, int):
        n = min(steps, len(stored))
        return list(dict.fromkeys(stored[round(i * (len(stored) - 1) / max(1, n - 1))] for i in range(n)))
    return [s for s in as_list(steps) if s in stored]


def tsne_input(path: Path, quantizer: str | None) -> tuple[str, np.ndarray, np.ndarray] | None:
    """(quantiser, latent vectors, codebook vectors) of a probe: one row per latent, one per code."""
    import numpy as np

    with np.load(path) as npz:
        names = [k.split(".", 1)[1] for k in npz.files if k.startswith("codebook.")]
        name = quantizer or (names[0] if names else None)
        if name not in names:
            return None
        return name, npz[f"latents.{name}"], npz[f"codebook.{name}"]


TSNE_CACHE = "_report_cache/tsne"  # under the run store: t-SNE maps by their input's digest
TSNE_OPTIONS = {"n_components": 2, "init": "pca", "random_state": 0, "max_iter": 500}


def tsne_map(points: np.ndarray, perplexity: float, cache: Path) -> np.ndarray:
    """The 2D t-SNE (scikit-learn; PCA start, seed 0, 500 iterations, one thread) of ``points`` (n, d), kept
    in ``cache`` under the SHA-256 of the points, the options and scikit-learn's version: a fit costs
    ~1.3 s per checkpoint on the CPU (thesis Table 4's report: 6 fits, 8 s), so a report re-rendered
    from an unchanged store neither refits nor imports scikit-learn."""
    import numpy as np

    digest = hashlib.sha256(np.ascontiguousarray(points, dtype=np.float64).tobytes())
    digest.update(repr((points.shape, perplexity, sorted(TSNE_OPTIONS.items()), sklearn_version())).encode())
    path = cache / f"{digest.hexdigest()[:32]}.npy"
    try:
        xy = np.load(path)
        if xy.shape == (len(points), 2):
            return xy
    except (OSError, ValueError):
        pass  # not cached yet, or unreadable: fit again
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # one thread: several contend badly on a shared CPU (measured 5x)
        xy = TSNE(perplexity=perplexity, **TSNE_OPTIONS).fit_transform(points)

    def save(tmp: Path) -> None:
        with tmp.open("wb") as fh:
            np.save(fh, xy)

    with contextlib.suppress(OSError, StoreError):  # a read-only run store: the map is drawn, not kept
        atomic_write(path, save)
    return xy


@functools.cache
def sklearn_version() -> str:
    """scikit-learn's version from its metadata, read once per process (importing it costs 1.5 s)."""
    from importlib.metadata import version

    return version("scikit-learn")


def collect_tsne(results: Results, fig: dict[str, Any]) -> FigureData:
    """A 2D t-SNE (:func:`tsne_map`) of the latent vectors and the codebook vectors, fitted jointly, for
    each row at each chosen checkpoint."""
    import numpy as np
    import pandas as pd

    data = FigureData(pd.DataFrame())
    frames = []
    for row in selected_rows(results, fig):
        stored = probes(results, row)
        chosen = tsne_steps(list(stored), fig.get("steps"))
        if not chosen:
            data.notes.append(f"{display(row, results)}: no codebook probes stored ({row.status})")
        for step in chosen:
            found = tsne_input(stored[step], fig.get("quantizer"))
            if found is None:
                data.notes.append(f"{display(row, results)}: step {step} stores no quantiser {fig.get('quantizer')!r}")
                continue
            name, latents, codes = found
            points = np.concatenate([latents, codes]).astype(np.float64)
            perplexity = float(fig.get("perplexity", min(30.0, (len(points) - 1) / 3)))
            xy = tsne_map(points, perplexity, results.store.root / TSNE_CACHE)
            frames.append(
                pd.DataFrame(
                    {
                        "row": display(row, results),
                        "step": step,
                        "quantizer": name,
                        "what": ["latent"] * len(latents) + ["code"] * len(codes),
                        "index": [*range(len(latents)), *range(len(codes))],
                        "x": xy[:, 0],
                        "y": xy[:, 1],
                    }
                )
            )
    data.table = (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=["row", "step", "quantizer", "what", "index", "x", "y"])
    )
    return data


def collect_training_curves(results: Results, fig: dict[str, Any]) -> FigureData:
    """Metrics of each row's checkpoints over training (``train.eval_every``), every seed."""
    import pandas as pd

    records, notes = [], []
    for row in selected_rows(results, fig):
        before = len(records)
        for c in row.cells:
            for folder, offset in training_dirs(results, c.cell):
                for step, path in step_files(folder, "train_eval", ".json").items():
                    metrics = (read_json(path) or {}).get("metrics", {})
                    records += [
                        dict(
                            row=display(row, results),
                            seed=c.cell.config["seed"],
                            metric=y,
                            step=step + offset,
                            value=metrics[y],
                        )
                        for y in as_list(fig["y"])
                        if y in metrics
                    ]
        if len(records) == before:
            notes.append(
                f"{display(row, results)}: no evaluations during training stored (train.eval_every is "
                f"{row.cells[0].cell.config['train'].get('eval_every', 0)}; {row.status})"
            )
    return FigureData(pd.DataFrame(records, columns=["row", "seed", "metric", "step", "value"]), notes=notes)


# ---------------------------------------------------------------------------------------------
# Drawing


def subplots(nrows: int, ncols: int, *, figsize: tuple[float, float], **kwargs: Any) -> tuple[Any, Any]:
    """A figure and its 2D array of axes, through matplotlib's object API (``Figure``, drawn by Agg when
    saved): no pyplot, no backend selection, no global figure registry to close. Constrained layout
    leaves room for the suptitle, legends and colourbars."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize, layout="constrained")
    return figure, figure.subplots(nrows, ncols, squeeze=False, **kwargs)


def real_ticks(ax: Any, positions: list[float], labels: list[str], log: bool) -> None:
    """Ticks at the points themselves, labelled with their values (16, 32, ... not 2^4, 2^5, ...)."""
    from matplotlib.ticker import FixedFormatter, FixedLocator, NullLocator

    if log:
        ax.set_xscale("log", base=2)
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_locator(FixedLocator(positions))
    ax.xaxis.set_major_formatter(FixedFormatter(labels))
    slant_long(ax, labels)


def slant_long(ax: Any, labels: list[str]) -> None:
    """Slant the x tick labels when one is long (long labels of near ticks would run into each other)."""
    if max(map(len, labels), default=0) > 4:
        ax.tick_params(axis="x", labelrotation=30)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")


def compact(value: float) -> str:
    """A tick label that stays short: 16, 0.5, 9999, 27.3k, 1M, 1.59M (three significant digits from 10^4)."""
    if abs(value) < 1e4:
        return f"{value:g}"
    rounded = float(f"{value:.3g}")
    scale, suffix = next((s, x) for s, x in ((1e9, "B"), (1e6, "M"), (1e3, "k")) if abs(rounded) >= s)
    return f"{rounded / scale:g}{suffix}"


def label_of(fig: dict[str, Any], metric: str) -> str:
    return (fig.get("labels") or {}).get(metric, metric)


def draw_line(data: FigureData, fig: dict[str, Any]) -> Any:
    ys = as_list(fig["y"])
    figure, axes = subplots(1, len(ys), figsize=(4.2 * len(ys), 3.4))
    xs = list(dict.fromkeys(data.table["x"]))
    numeric = all(isinstance(v, (int, float)) for v in xs)
    xs = sorted(xs) if numeric else xs
    position = {v: (v if numeric else i) for i, v in enumerate(xs)}  # text values (10M, ...): in study order
    for ax, y in zip(axes[0], ys):
        part = data.table[data.table["metric"] == y]
        for series, points in part.groupby("series", sort=False):
            points = points.assign(pos=points["x"].map(position)).sort_values("pos")
            style = {"marker": "o"} if series.startswith("ours") else {"linestyle": "--", "marker": "s", "alpha": 0.8}
            ax.errorbar(
                points["pos"],
                points["mean"],
                yerr=points["std"].where(points["n"] > 1),
                capsize=3,
                label=series,
                **style,
            )
        real_ticks(
            ax,
            [position[v] for v in xs],
            [compact(v) if numeric else str(v) for v in xs],
            bool(fig.get("logx")) and numeric,
        )
        ax.set_xlabel(fig.get("xlabel", fig["x"]))
        ax.set_ylabel(label_of(fig, y))
        ax.grid(alpha=0.3)
        if len(part):
            ax.legend(fontsize=8)
    return figure


def draw_bars(data: FigureData, fig: dict[str, Any]) -> Any:
    ys = list(dict.fromkeys(data.table["metric"])) or as_list(fig["y"])
    figure, axes = subplots(1, len(ys), figsize=(max(4.5, 1.1 * data.table["category"].nunique() + 2) * len(ys), 3.8))
    for ax, metric in zip(axes[0], ys):
        part = data.table[data.table["metric"] == metric]
        categories = list(dict.fromkeys(part["category"]))
        groups = list(dict.fromkeys(zip(part["series"], part["who"])))
        width = 0.8 / max(1, len(groups))
        for j, (series, who) in enumerate(groups):
            bars = part[(part["series"] == series) & (part["who"] == who)]
            xs = [categories.index(c) - 0.4 + width * (j + 0.5) for c in bars["category"]]
            name = who if series == "ours" else f"{series} ({who})"
            ax.bar(
                xs,
                bars["mean"],
                width,
                yerr=bars["std"].where(bars["n"] > 1),
                capsize=3,
                label=name,
                hatch=None if who == "ours" else "//",
                alpha=1.0 if who == "ours" else 0.6,
            )
        ax.set_xticks(range(len(categories)), categories)
        slant_long(ax, categories)
        ax.set_ylabel(label_of(fig, metric))
        if fig.get("logy"):
            ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
        if groups:  # above the bars, in two columns: headroom of one legend row per two series
            rows = math.ceil(len(groups) / 2)
            bottom, top = ax.get_ylim()
            if fig.get("logy"):
                ax.set_ylim(bottom, top * (top / bottom) ** (0.12 * rows))
            else:
                ax.set_ylim(bottom, top + (top - bottom) * 0.12 * rows)
            ax.legend(fontsize=8, ncol=2, loc="upper center")
    return figure


def draw_images(data: FigureData, fig: dict[str, Any]) -> Any:
    panels = list(dict.fromkeys(zip(data.table["panel"], data.table["label"])))
    cols = max((i for _, i in data.images), default=-1) + 1
    figure, axes = subplots(
        max(1, len(panels)), max(1, cols), figsize=(1.3 * max(1, cols) + 1.2, 1.3 * max(1, len(panels)))
    )
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for side in ax.spines.values():
            side.set_visible(False)
    classes = (
        dict(zip(zip(data.table["panel"], data.table["column"]), data.table["cls"])) if "cls" in data.table else {}
    )
    for r, (panel, label) in enumerate(panels):
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
        for c in range(cols):
            image = data.images.get((str(panel), c))
            if image is not None:
                axes[r][c].imshow(image)
            if (panel, c) in classes:
                axes[r][c].set_title(f"class {classes[(panel, c)]}", fontsize=7)
    return figure


def draw_series(data: FigureData, fig: dict[str, Any], panel: str, x: str = "step") -> Any:
    """Curves over training, one subplot per ``panel`` value, one line per row (mean, ± std band over seeds)."""
    df = data.table
    names = list(dict.fromkeys(df[panel])) or as_list(fig.get("terms") or fig.get("y"))
    figure, axes = subplots(1, len(names), figsize=(4.4 * len(names), 3.4))
    for ax, name in zip(axes[0], names):
        for row, part in df[df[panel] == name].groupby("row", sort=False):
            stats = part.groupby(x)["value"].agg(["mean", "std", "count"]).reset_index()
            ax.plot(stats[x], stats["mean"], label=row)
            spread = stats["std"].where(stats["count"] > 1)
            if spread.notna().any():
                ax.fill_between(stats[x], stats["mean"] - spread, stats["mean"] + spread, alpha=0.2)
        ax.set_xlabel("training step")
        ax.set_ylabel(label_of(fig, name))
        if fig.get("logy"):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if len(df[df[panel] == name]):
            ax.legend(fontsize=8)
    return figure


def draw_heatmap(data: FigureData, fig: dict[str, Any]) -> Any:
    rows = list(dict.fromkeys(data.table["row"]))
    figure, axes = subplots(1, max(1, len(rows)), figsize=(4.0 * max(1, len(rows)), 4.0))
    for ax, row in zip(axes[0], rows):
        part = data.table[data.table["row"] == row]
        matrix = part.pivot(index="code", columns="step", values="count")
        image = ax.imshow(matrix.to_numpy(), aspect="auto", interpolation="nearest", cmap="magma")
        ticks = list(range(len(matrix.columns)))
        ax.set_xticks(ticks, [str(s) for s in matrix.columns], rotation=45, fontsize=7)
        ax.set_xlabel("training step")
        name = part["codebook"].iloc[0]
        ax.set_ylabel("code" if name == "codes" else f"code of the {name} codebook")
        ax.set_title(row, fontsize=9)
        figure.colorbar(image, ax=ax, label="uses on the probe batch")
    return figure


def draw_tsne(data: FigureData, fig: dict[str, Any], max_columns: int = 3) -> Any:
    """One panel per (row, checkpoint): a row's checkpoints side by side (thesis Fig. 10), or, with one
    checkpoint per row, the rows in a grid of at most ``max_columns`` (thesis Fig. 14)."""
    panels = list(dict.fromkeys(zip(data.table["row"], data.table["step"])))
    rows = list(dict.fromkeys(r for r, _ in panels))
    steps_per_row = max(sum(1 for r, _ in panels if r == row) for row in rows)
    if steps_per_row == 1:
        ncols = min(max_columns, len(panels))
        places = [divmod(k, ncols) for k in range(len(panels))]
    else:
        ncols = steps_per_row
        places = [(rows.index(r), [s for q, s in panels if q == r].index(s)) for r, s in panels]
    nrows = max(i for i, _ in places) + 1
    figure, axes = subplots(nrows, ncols, figsize=(3.2 * ncols, 3.2 * nrows + 0.4))
    for ax in axes.flat:
        ax.set_axis_off()
    for (row, step), (i, j) in zip(panels, places):
        ax = axes[i][j]
        ax.set_axis_on()
        part = data.table[(data.table["row"] == row) & (data.table["step"] == step)]
        for what, style in (
            ("code", {"s": 4, "alpha": 0.4, "c": "tab:gray"}),
            ("latent", {"s": 6, "c": "tab:red"}),
        ):
            points = part[part["what"] == what]
            ax.scatter(points["x"], points["y"], label=f"{what}s ({len(points)})", **style)
        ax.set_title(f"{row}, step {step}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=6, loc="best")
    return figure


COLLECT: dict[str, Callable[[Results, dict[str, Any]], FigureData]] = {
    "line": collect_line,
    "bars": collect_bars,
    "reconstructions": collect_reconstructions,
    "samples": collect_samples,
    "losses": collect_losses,
    "codebook_heatmap": collect_codebook_heatmap,
    "tsne": collect_tsne,
    "training_curves": collect_training_curves,
}
DRAW: dict[str, Callable[[FigureData, dict[str, Any]], Any]] = {
    "line": draw_line,
    "bars": draw_bars,
    "reconstructions": draw_images,
    "samples": draw_images,
    "losses": lambda data, fig: draw_series(data, fig, "term"),
    "codebook_heatmap": draw_heatmap,
    "tsne": draw_tsne,
    "training_curves": lambda data, fig: draw_series(data, fig, "metric"),
}


def render_figure(results: Results, fig: dict[str, Any], out_dir: Path) -> tuple[list[Path], list[str]]:
    """Collect a figure's data, write it as ``<name>.csv`` and draw ``<name>.png``; returns the files and the
    notes for the report. A plot already drawn for the same data, spec and code is kept (re-rendering a
    finished study's report loads no matplotlib); while nothing is stored yet there is no plot (a stale
    one is removed) and a note says so."""
    kind = fig.get("kind", "line")
    data = COLLECT[kind](results, fig)
    csv_path, png_path = out_dir / f"{fig['name']}.csv", out_dir / f"{fig['name']}.png"
    csv = data.table.to_csv(index=False)
    atomic_write(csv_path, lambda tmp: tmp.write_text(csv))
    if data.table.empty:
        png_path.unlink(missing_ok=True)
        return [csv_path], [*data.notes, "nothing stored yet: no plot"]
    key = figure_key(data, fig, csv.encode())
    if drawn_key(png_path) == key:  # the same data, spec and drawing code: the plot is already there
        return [png_path, csv_path], data.notes
    figure = DRAW[kind](data, fig)
    title = fig.get("title", fig["name"])
    figure.suptitle(textwrap.fill(title, max(40, int(11 * figure.get_figwidth()))), fontsize=10)
    atomic_write(png_path, lambda tmp: figure.savefig(tmp, dpi=120, format="png", metadata={KEY_CHUNK: key}))
    return [png_path, csv_path], data.notes


KEY_CHUNK = "tok1d-figure"  # the PNG text chunk holding the key a plot was drawn for


def figure_key(data: FigureData, fig: dict[str, Any], csv: bytes) -> str:
    """SHA-256 of what a plot shows: this module's drawing code, the figure's spec, its data (the CSV)
    and its images."""
    import numpy as np

    digest = hashlib.sha256(drawing_code())
    digest.update(json.dumps(fig, sort_keys=True, default=str).encode())
    digest.update(csv)
    for key in sorted(data.images):
        digest.update(repr(key).encode())
        digest.update(np.ascontiguousarray(data.images[key]).tobytes())
    return digest.hexdigest()


@functools.cache
def drawing_code() -> bytes:
    """This module's source, read once per process."""
    return Path(__file__).read_bytes()


def drawn_key(png: Path) -> str | None:
    """The key a stored plot was drawn for (None: no plot, or one drawn without a key)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(png) as image:
            return image.text.get(KEY_CHUNK)  # type: ignore[attr-defined]
    except (OSError, UnidentifiedImageError):
        return None

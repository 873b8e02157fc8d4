"""The figures of a study's report: their specs checked at plan time, and drawn with matplotlib from the
data benchmark/figure_data.py reads from the run store (nothing is retrained to redraw one). Each figure
writes ``<name>.png`` and ``<name>.csv``, the data it shows.

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

import functools
import hashlib
import json
import math
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmark.claims import RowRef, axis_values, check_row_refs, row_list, table_metrics
from benchmark.errors import ConfigError
from benchmark.figure_data import COLLECT, FigureData, as_list, figure_rows
from benchmark.graph import TRAINING_KINDS
from benchmark.store import atomic_write

if TYPE_CHECKING:
    from benchmark.report import Results
    from benchmark.study import Plan


COMMON = {"name", "kind", "title", "rows"}
KINDS: dict[str, tuple[set[str], set[str]]] = {  # kind -> (required keys, optional keys)
    "line": ({"x", "y"}, {"x_value", "xlabel", "logx", "logy", "labels", "all_cells"}),
    "bars": ({"y"}, {"categories", "series", "labels", "logy"}),
    "reconstructions": (set(), {"images"}),
    "samples": (set(), {"images"}),
    "losses": ({"terms"}, {"stage", "logy"}),
    "codebook_heatmap": (set(), {"codebook"}),
    "tsne": (set(), {"steps", "quantizer", "perplexity"}),
    "training_curves": ({"y"}, {"labels"}),
}


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
        logy = fig.get("logy", False)
        if not (isinstance(logy, bool) or (isinstance(logy, list) and all(isinstance(m, str) for m in logy))):
            raise ConfigError(f"{where} ({fig['name']}): logy must be true / false or a list of metrics")
        if fig.get("series") and isinstance(fig["y"], list):
            raise ConfigError(f"{where} ({fig['name']}): bars with series show one metric: y: <metric>")
        if any(not isinstance(s, dict) or "rows" not in s for s in fig.get("series") or []):
            raise ConfigError(f"{where} ({fig['name']}): each of series must be a mapping with rows (and a label)")
        if kind == "line":
            if axis_values(plan.spec, fig["x"]) is None:
                raise ConfigError(
                    f"{where} ({fig['name']}): x: {fig['x']} is not an axis of the study (axes.grid / axes.zip)"
                )
            columns = table_metrics(plan.spec)
            unknown_metrics = [m for m in as_list(fig["y"]) if m not in columns]
            if unknown_metrics:
                raise ConfigError(
                    f"{where} ({fig['name']}): y: {', '.join(unknown_metrics)} not among the study's table columns: "
                    f"{', '.join(sorted(columns))}"
                )
        refs = figure_rows(fig) + [
            RowRef(r.label, r.study or s.get("study")) for s in fig.get("series") or [] for r in row_list(s["rows"])
        ]
        check_row_refs(refs, rows, other_rows, plan.study, f"{where} ({fig['name']})")
        if kind == "samples" and other_rows is not None:
            named = figure_rows(fig)
            own = [r.label for r in named if r.study is None] if named else plan.rows
            bare = [r for r in own if not any("sample" in c.stages for c in plan.cells if c.row == r)]
            if bare:
                raise ConfigError(
                    f"{where} ({fig['name']}): rows {', '.join(bare)} generate no samples; add evaluate_generator "
                    "(or sample) to the study's stages, or to theirs in row_stages"
                )


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


def log_y(fig: dict[str, Any], metric: str) -> bool:
    """``logy: true`` (every panel) or ``logy: [metrics]``: a log scale where the source's values and ours
    lie orders of magnitude apart (FID: 0.66 beside 300)."""
    logy = fig.get("logy", False)
    return logy is True or (isinstance(logy, list) and metric in logy)


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
        if log_y(fig, y):
            ax.set_yscale("log")
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
        if log_y(fig, metric):
            ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
        if groups:  # above the bars, in two columns: headroom of one legend row per two series
            rows = math.ceil(len(groups) / 2)
            bottom, top = ax.get_ylim()
            if log_y(fig, metric):
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
    titles = dict(zip(zip(data.table["panel"], data.table["column"]), data.table["title"]))
    for r, (panel, label) in enumerate(panels):
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
        for c in range(cols):
            image = data.images.get((str(panel), c))
            if image is not None:
                axes[r][c].imshow(image)
            if titles.get((panel, c)):  # column labels: a sample's class, an original's place in the eval split
                axes[r][c].set_title(titles[(panel, c)], fontsize=7)
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
        if log_y(fig, name):
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

"""What each figure of a report shows, read from what the stages stored in the run store (nothing is
retrained to redraw one): a tidy table per figure (written as its CSV), the images of the grids, and
notes for the report. :data:`COLLECT` maps a figure's ``kind`` to its collector; benchmark/figures.py
checks the figures' specs and draws them.

Rows run with several seeds keep one record per seed (the drawing shows mean ± std); image grids,
codebook heatmaps and t-SNE maps read a row's first seed. t-SNE maps (scikit-learn) are kept in the
run store (:data:`TSNE_CACHE`), so a re-rendered report fits a map only for data it has not mapped.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmark.claims import RowRef, Stat, row_list
from benchmark.errors import StoreError
from benchmark.store import atomic_write, read_json

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from benchmark.report import Results, Row
    from benchmark.study import Cell


@dataclass
class FigureData:
    """What a figure shows: a tidy table (written as CSV), images for the grids, and notes for the report."""

    table: pd.DataFrame
    images: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def figure_rows(fig: dict[str, Any]) -> list[RowRef]:
    """The rows a figure names (none: every row of the study)."""
    rows = fig.get("rows")
    return [] if rows in (None, "all") else row_list(rows)


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
            title = f"eval image {column}" if label == "original" else ""  # the preview: the split's first images
            records.append(
                dict(panel=panel, label=label, row=row, column=column, title=title, mean_pixel=float(tile.mean()))
            )
    data.table = pd.DataFrame(records, columns=["panel", "label", "row", "column", "title", "mean_pixel"])
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
                    title=f"class {int(labels[i])}",
                    mean_pixel=float(images[i].mean()),
                )
            )
    data.table = pd.DataFrame(records, columns=["panel", "label", "column", "cls", "title", "mean_pixel"])
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

    records, notes, evaluated = [], [], set()
    for row in selected_rows(results, fig):
        before = len(records)
        for c in row.cells:
            for folder, offset in training_dirs(results, c.cell):
                for step, path in step_files(folder, "train_eval", ".json").items():
                    metrics = (read_json(path) or {}).get("metrics", {})
                    evaluated |= set(metrics)
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
    found = {r["metric"] for r in records}
    for y in as_list(fig["y"]):
        if evaluated and y not in found:  # asked for, but no checkpoint evaluation computed it
            notes.append(
                f"{y}: not among the metrics evaluated during training ({', '.join(sorted(evaluated))}; "
                "train.eval_metrics)"
            )
    return FigureData(pd.DataFrame(records, columns=["row", "seed", "metric", "step", "value"]), notes=notes)


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

"""The claims of a study's source, as data: declared under ``claims:``, checked when the study is planned,
and judged against the measured numbers at the end of every report (holds / does not hold / within noise).

One claim is one mapping; ``metric`` is a column key of one of the study's report tables (or, with
``report.compute``, one of ``compute.as_run``, ``compute.per_cell``, ``compute.saving``,
``compute.generator_saving``), and exactly one
of the kinds below says what the source claims::

    {metric: rfid, decreases_with: tokenizer.num_latent_tokens}   # along an axis of the study, in its order
    {metric: codebook_usage, increases_with: tokenizer.num_latent_tokens}
    {metric: rfid, order: [G + L1 + L2, G + L1, SoftVQ]}          # rows from best to worst
    {metric: rfid, row: Big dataset, better_than: "64"}          # row(s) better than a row, a list, or all
    {metric: train_generator.train_pflops, ratio: [A, B], about: 0.6, tolerance: 0.1}   # A / B
    {metric: compute.generator_saving, about: 40, tolerance: 10}  # a value of the study (or of ``row``)

A row is a row label of this study or ``{study: <another study>, row: <label>}``. ``source`` says where
the source makes the claim ("thesis, Table 2"), ``says`` in its words; ``better: lower | higher`` gives the
direction of a metric this module does not know; ``tolerance`` of ``about`` defaults to a quarter of it, and
``source_value`` is the source's own measurement of an ``about`` value (or ratio) that no table holds. An
``about`` claim holds when our value lies within the tolerance of it, is within noise when it lies within
the tolerance plus our value's spread over seeds, and does not hold otherwise.

Judging. Each claim is a list of comparisons of two values, the one expected lower and the one expected
higher (an axis claim compares neighbours along the axis, separately for each value of the other axes).
A comparison agrees when the difference has the claimed sign and exceeds the spread of the two values
(sqrt(std_a^2 + std_b^2) over seeds), disagrees when it has the other sign and exceeds the spread, and is
within noise otherwise. A claim holds when every comparison agrees, does not hold when one disagrees, is
within noise otherwise, and is not measured while a value is missing. A single seed has no spread: every
difference counts, and the report says so. The same judgement runs on the source's own numbers (the
tables' reference rows) where it reports them, which checks that each claim says what the source says.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from benchmark.errors import ConfigError

if TYPE_CHECKING:
    from benchmark.study import Plan

KINDS = ("decreases_with", "increases_with", "order", "better_than", "about")
KEYS = {"metric", "source", "says", "better", "row", "ratio", "tolerance", "source_value", *KINDS}
# Direction of the metrics the studies compare; ``better:`` gives it for any other.
LOWER_IS_BETTER = {"rfid", "gfid", "lpips", "loss"}
HIGHER_IS_BETTER = {"psnr", "ssim", "is_mean"}
STUDY_VALUES = ("compute.as_run", "compute.per_cell", "compute.saving", "compute.generator_saving")
HOLDS, FAILS, NOISE, MISSING = "holds", "does not hold", "within noise", "not measured"


@dataclass(frozen=True)
class Stat:
    """A value over seeds: mean, sample standard deviation (0 for one seed) and number of seeds."""

    mean: float
    std: float = 0.0
    n: int = 1

    @staticmethod
    def of(values: list[float]) -> Stat | None:
        if not values:
            return None
        # statistics computes in exact fractions: a value equal on every seed (a model's FLOPs) keeps its
        # digits and a spread of exactly 0, not a float residue
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return Stat(float(statistics.mean(values)), float(spread), len(values))


@dataclass(frozen=True)
class RowRef:
    """A row of a study: ``study`` None for the study the claim belongs to."""

    label: str
    study: str | None = None

    def __str__(self) -> str:
        return self.label if self.study is None else f"{self.study}: {self.label}"


@dataclass(frozen=True)
class Value:
    """One value a claim reads: ours (over seeds) and the source's, where it reports it."""

    ours: Stat | None
    source: float | None = None


# (row or None for a study-level value, metric) -> the value; supplied by the report
Measure = Callable[[RowRef | None, str], Value]


@dataclass
class Verdict:
    """A claim judged: its text, the values behind it, the verdict on ours and on the source's numbers, and
    the fewest seeds behind one of our values (None while one is missing)."""

    claim: dict[str, Any]
    text: str
    ours: str
    source: str
    verdict: str
    source_verdict: str
    seeds: int | None = None


def fewest_seeds(stats: list[Stat | None]) -> int | None:
    return None if not stats or any(s is None for s in stats) else min(s.n for s in stats if s is not None)


def row_ref(value: Any) -> RowRef:
    if isinstance(value, Mapping):
        return RowRef(str(value.get("row")), str(value["study"]) if value.get("study") else None)
    return RowRef(str(value))


def row_list(value: Any) -> list[RowRef]:
    return [row_ref(v) for v in (value if isinstance(value, list) else [value])]


def direction(claim: Mapping[str, Any]) -> str:
    """``lower`` or ``higher``: which values of the claim's metric are better."""
    if claim.get("better"):
        return str(claim["better"])
    base = str(claim["metric"]).rsplit(".", 1)[-1]
    if base in LOWER_IS_BETTER or base.startswith(("final_loss", "train_pflops", "train_step_gflops")):
        return "lower"
    if base in HIGHER_IS_BETTER:
        return "higher"
    raise KeyError(base)


# ---------------------------------------------------------------------------------------------
# Plan-time checks


def axis_values(spec: Mapping[str, Any], axis: str) -> list[Any] | None:
    """The values of a study's grid or zip axis, in the order the study lists them."""
    axes = spec.get("axes") or {}
    for kind in ("grid", "zip"):
        if axis in (axes.get(kind) or {}):
            return list(axes[kind][axis])
    return None


def table_metrics(spec: Mapping[str, Any]) -> set[str]:
    """Every key a study's tables show (ours and the source's)."""
    keys: set[str] = set()
    for table in (spec.get("report") or {}).get("tables") or []:
        keys |= set(table.get("columns") or {}) | set((table.get("reference") or {}).get("columns") or {})
    if (spec.get("report") or {}).get("compute"):
        keys |= set(STUDY_VALUES)
    return keys


def check_claims(plan: Plan, other_rows: Callable[[str], list[str]] | None) -> None:
    """Every claim of ``plan``'s study names a known kind, metric, axis and rows (``other_rows(study)``: the
    row labels of another study; None: rows are not checked); the first error is one line naming the
    study file and the claim."""
    claims = plan.spec.get("claims") or []
    if not isinstance(claims, list):
        raise ConfigError(f"{plan.path}: claims must be a list of mappings")
    rows = set(plan.rows)
    metrics = table_metrics(plan.spec)
    for i, claim in enumerate(claims):
        where = f"{plan.path}: claims[{i}]"
        if not isinstance(claim, Mapping):
            raise ConfigError(f"{where} must be a mapping, got {claim!r}")
        unknown = set(claim) - KEYS
        if unknown:
            raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; allowed: {', '.join(sorted(KEYS))}")
        kinds = [k for k in KINDS if k in claim]
        if len(kinds) != 1:
            raise ConfigError(f"{where}: give exactly one of {', '.join(KINDS)} (got {kinds or 'none'})")
        metric = claim.get("metric")
        if metric not in metrics:
            raise ConfigError(
                f"{where}: unknown metric {metric!r}; the study's tables show: {', '.join(sorted(metrics))}"
            )
        kind = kinds[0]
        if kind in ("decreases_with", "increases_with"):
            if axis_values(plan.spec, claim[kind]) is None:
                axes = plan.spec.get("axes") or {}
                known = [k for part in ("grid", "zip") for k in (axes.get(part) or {})]
                raise ConfigError(f"{where}: unknown axis {claim[kind]!r}; the study's axes: {known or 'none'}")
        if kind in ("order", "better_than"):
            if claim.get("better") not in (None, "lower", "higher"):
                raise ConfigError(f"{where}: better must be lower or higher, got {claim['better']!r}")
            try:
                direction(claim)
            except KeyError:
                raise ConfigError(f"{where}: say whether lower or higher {metric} is better (better: lower)") from None
        if kind == "better_than" and "row" not in claim:
            raise ConfigError(f"{where}: better_than needs the row (or rows) it compares: row: <label>")
        if "ratio" in claim and (not isinstance(claim["ratio"], list) or len(claim["ratio"]) != 2):
            raise ConfigError(f"{where}: ratio must name two rows, [numerator, denominator]")
        refs = claim_rows(claim, kind)
        if kind == "order" and len(refs) < 2:
            raise ConfigError(f"{where}: order needs at least two rows")
        if kind == "about" and not refs and metric not in STUDY_VALUES:
            raise ConfigError(f"{where}: about needs a row (or ratio: [row, row]) for metric {metric}")
        check_row_refs(refs, rows, other_rows, plan.study, where)
        for key in ("about", "tolerance", "source_value"):
            if key in claim and (isinstance(claim[key], bool) or not isinstance(claim[key], (int, float))):
                raise ConfigError(f"{where}: {key} must be a number, got {claim[key]!r}")
        if kind != "about" and ({"tolerance", "source_value"} & set(claim)):
            raise ConfigError(f"{where}: tolerance and source_value belong to an about claim")


def check_row_refs(
    refs: list[RowRef],
    rows: set[str],
    other_rows: Callable[[str], list[str]] | None,
    study: str,
    where: str,
) -> None:
    """Every row a claim (or figure) names exists: in this study (``rows``) or in the sibling study it
    names (``other_rows``; a study that cannot be planned is an error of ``where``). Skipped without
    ``other_rows``."""
    if other_rows is None:
        return
    for ref in refs:
        if ref.study is None:
            known = rows
        else:
            try:
                known = set(other_rows(ref.study))
            except ConfigError as exc:
                raise ConfigError(f"{where}: {exc}") from None
        if ref.label not in known:
            raise ConfigError(
                f"{where}: unknown row {ref.label!r} of study {ref.study or study}; rows: {', '.join(sorted(known))}"
            )


def claim_rows(claim: Mapping[str, Any], kind: str) -> list[RowRef]:
    """The rows a claim names (``better_than: all`` names none: it means every other row)."""
    if kind == "order":
        return row_list(claim["order"])
    if kind == "about":
        return row_list(claim["ratio"]) if "ratio" in claim else row_list(claim["row"]) if "row" in claim else []
    if kind == "better_than":
        others = [] if claim["better_than"] == "all" else row_list(claim["better_than"])
        return row_list(claim.get("row")) + others
    return []


# ---------------------------------------------------------------------------------------------
# Judging


def axis_series(plan: Plan, axis: str) -> list[list[str]]:
    """The rows along ``axis`` (in the axis's order), one series per combination of the other axes."""
    order = axis_values(plan.spec, axis) or []
    zipped = (plan.spec.get("axes") or {}).get("zip") or {}
    along = set(zipped) if axis in zipped else {axis}  # a zip axis's keys advance together: one axis
    series: dict[tuple[Any, ...], dict[int, str]] = {}
    for cell in plan.cells:
        if cell.explicit or axis not in cell.overrides:
            continue
        others = tuple(sorted((k, str(v)) for k, v in cell.overrides.items() if k not in along and k != "seed"))
        series.setdefault(others, {})[order.index(cell.overrides[axis])] = cell.row
    return [[rows[i] for i in sorted(rows)] for rows in series.values()]


def comparisons(
    claim: Mapping[str, Any], plan: Plan, measure: Measure
) -> tuple[dict[str, Value], list[tuple[str, str]]]:
    """The values a claim reads (by row name, in the claim's order) and the pairs it compares, each as
    (the row expected lower, the row expected higher)."""
    kind = next(k for k in KINDS if k in claim)
    if kind in ("decreases_with", "increases_with"):
        series = [[RowRef(r) for r in rows] for rows in axis_series(plan, claim[kind])]
        steps = [(a, b) for refs in series for a, b in zip(refs, refs[1:])]
        refs = [r for rows in series for r in rows]
        lower_first = kind == "increases_with"
    else:
        if kind == "order":
            refs = row_list(claim["order"])
            steps = list(zip(refs, refs[1:]))
        else:
            subjects = row_list(claim["row"])
            if claim["better_than"] == "all":
                named = {r.label for r in subjects}
                others = list(dict.fromkeys(RowRef(c.row) for c in plan.cells if c.row not in named))
            else:
                others = row_list(claim["better_than"])
            steps, refs = [(a, b) for a in subjects for b in others], subjects + others
        lower_first = direction(claim) == "lower"
    values = {str(r): measure(r, claim["metric"]) for r in refs}
    return values, [(str(a), str(b)) if lower_first else (str(b), str(a)) for a, b in steps]


def judge_pair(lower: Stat | None, higher: Stat | None) -> str:
    if lower is None or higher is None:
        return MISSING
    difference = higher.mean - lower.mean
    if abs(difference) <= math.hypot(lower.std, higher.std):
        return NOISE
    return HOLDS if difference > 0 else FAILS


def combine(verdicts: list[str]) -> str:
    """A claim's verdict from its comparisons' (see the module docstring)."""
    if not verdicts or MISSING in verdicts:
        return MISSING
    if FAILS in verdicts:
        return FAILS
    return NOISE if NOISE in verdicts else HOLDS


def about_value(claim: Mapping[str, Any], measure: Measure) -> tuple[Value, str]:
    """The value an ``about`` claim reads (a row's, a ratio of two rows', or the study's) and how to name it."""
    metric = claim["metric"]
    if "ratio" in claim:
        a, b = (measure(ref, metric) for ref in row_list(claim["ratio"]))
        ours = None
        if a.ours and b.ours and b.ours.mean:
            ratio = a.ours.mean / b.ours.mean
            rel = math.hypot(a.ours.std / a.ours.mean if a.ours.mean else 0.0, b.ours.std / b.ours.mean)
            ours = Stat(ratio, abs(ratio) * rel, min(a.ours.n, b.ours.n))
        source = a.source / b.source if a.source is not None and b.source else None
        names = row_list(claim["ratio"])
        return Value(ours, claim.get("source_value", source)), f"{names[0]} / {names[1]}"
    ref = row_ref(claim["row"]) if "row" in claim else None
    value = measure(ref, metric)
    return Value(value.ours, claim.get("source_value", value.source)), str(ref) if ref else metric


def judge_about(value: Stat | None, target: float, tolerance: float) -> str:
    if value is None:
        return MISSING
    off = abs(value.mean - target)
    if off <= tolerance:
        return HOLDS
    return NOISE if off <= tolerance + value.std else FAILS


def fmt(x: float | None) -> str:
    """A number with four significant digits and no exponent for ordinary magnitudes; a whole number (a
    parameter count) with all its digits."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if float(x).is_integer() and abs(x) < 1e15:
        return f"{x:.0f}"
    if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
        return f"{x:.3e}"
    return f"{x:.4g}" if abs(x) < 1e4 else f"{x:.0f}"


def fmt_source(x: float | None) -> str:
    """A number of the source as it prints it: as its study file gives it (config.SourceFloat), else to six
    significant digits."""
    return "-" if x is None else getattr(x, "text", None) or f"{x:.6g}"


def fmt_stat(s: Stat | None) -> str:
    """``mean`` (one seed), or ``mean ± std`` with the std to two significant digits and the mean to as many
    decimals."""
    if s is None:
        return "-"
    if s.n == 1:
        return fmt(s.mean)
    if not math.isfinite(s.std) or s.std <= 1e-9 * abs(s.mean):  # no spread beyond float rounding
        return f"{fmt(s.mean)} ± 0"
    places = max(0, 1 - math.floor(math.log10(s.std)))
    return f"{s.mean:.{places}f} ± {s.std:.{places}f}"


def claim_text(claim: Mapping[str, Any], names: Mapping[str, str]) -> str:
    """The claim in words, naming the metric by its column header."""
    metric = names.get(claim["metric"], claim["metric"])
    kind = next(k for k in KINDS if k in claim)
    if kind == "decreases_with":
        return f"{metric} falls as {claim[kind]} grows"
    if kind == "increases_with":
        return f"{metric} rises as {claim[kind]} grows"
    better = f"{direction(claim)} is better" if kind in ("order", "better_than") else ""
    if kind == "order":
        return f"{metric}: " + " better than ".join(str(r) for r in row_list(claim["order"])) + f" ({better})"
    if kind == "better_than":
        others = "every other row" if claim["better_than"] == "all" else ", ".join(map(str, row_list(claim[kind])))
        subjects = ", ".join(str(r) for r in row_list(claim["row"]))
        return f"{metric}: {subjects} better than {others} ({better})"
    if "ratio" in claim:
        what = f"{metric} of " + " / ".join(map(str, row_list(claim["ratio"])))
    else:
        what = f"{metric} of {row_ref(claim['row'])}" if "row" in claim else metric
    return f"{what} is about {fmt(claim['about'])} (± {fmt(tolerance(claim))})"


def tolerance(claim: Mapping[str, Any]) -> float:
    return float(claim.get("tolerance", abs(claim["about"]) / 4))


def judge(claim: Mapping[str, Any], plan: Plan, measure: Measure, names: Mapping[str, str]) -> Verdict:
    """One claim against our values and the source's."""
    text = claim_text(claim, names)
    if "about" in claim:
        value, name = about_value(claim, measure)
        target, tol = float(claim["about"]), tolerance(claim)
        source = judge_about(Stat(value.source) if value.source is not None else None, target, tol)
        return Verdict(
            claim,
            text,
            f"{name}: {fmt_stat(value.ours)}",
            f"{name}: {fmt_source(value.source)}",
            judge_about(value.ours, target, tol),
            source,
            None if claim["metric"] in STUDY_VALUES else fewest_seeds([value.ours]),  # the study's: no seeds
        )
    values, pairs = comparisons(claim, plan, measure)

    def source(name: str) -> Stat | None:
        return Stat(values[name].source) if values[name].source is not None else None

    return Verdict(
        claim,
        text,
        "; ".join(f"{k}: {fmt_stat(v.ours)}" for k, v in values.items()),
        "; ".join(f"{k}: {fmt_source(v.source)}" for k, v in values.items()),
        combine([judge_pair(values[a].ours, values[b].ours) for a, b in pairs]),
        combine([judge_pair(source(a), source(b)) for a, b in pairs]),
        fewest_seeds([v.ours for v in values.values()]),
    )


def judge_all(plan: Plan, measure: Measure, names: Mapping[str, str]) -> list[Verdict]:
    return [judge(claim, plan, measure, names) for claim in plan.spec.get("claims") or []]

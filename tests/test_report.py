"""Reports from the run store: tables (the source's digits beside ours, seeds as mean ± std, literature
rows, rows not run), the claims of the source, the data behind every kind of figure, the report command
and the results index. Stage records are written straight into a temporary run store (no training),
except in the end-to-end test at the bottom."""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY, run_cli
from safetensors.torch import load_file

from benchmark.claims import Stat, axis_series, fmt_stat, judge_all
from benchmark.errors import ConfigError
from benchmark.figure_data import (
    TSNE_CACHE,
    FigureData,
    collect_bars,
    collect_codebook_heatmap,
    collect_line,
    collect_losses,
    collect_reconstructions,
    collect_samples,
    collect_training_curves,
    collect_tsne,
    read_png,
    split_grid,
)
from benchmark.figures import compact, draw_line, draw_tsne
from benchmark.image_grid import save_image_grid
from benchmark.registry import TOKENIZERS
from benchmark.report import Results, build_table, empty_column_notes, main, protocol_lines, write_index, write_report
from benchmark.store import RunStore, write_json
from benchmark.study import build_plan, study_files
from benchmark.tokenizer_stages import codebook_probe

STUDIES = study_files(aliases=False)

STUDY = """
title: Report study
source: tests
config:
  tokenizer: {name: titok, size: tiny, patch_size: 4, codebook_size: 16, l2_norm: false}
axes:
  grid:
    tokenizer.num_latent_tokens: [16, 32, 64, 128]
cells:
  - {label: Big dataset, set: {tokenizer.num_latent_tokens: 64, data.train_size: 128}}
label: "{tokenizer.num_latent_tokens}"
stages: [evaluate_tokenizer]
report:
  tables:
    - name: t
      row_label: K
      columns: {psnr: PSNR, rfid: rFID, codebook_usage: CB usage (%)}
      reference:
        label: thesis
        columns: {rfid: rFID, codebook_usage: CB usage (%)}
        rows:
          "16": {rfid: 156.98, codebook_usage: 42.35}
          "32": {rfid: 149.67, codebook_usage: 52.03}
          "64": {rfid: 111.89, codebook_usage: 40.40}
          "128": {rfid: 81.41, codebook_usage: 75.95}
        literature: [{label: VQGAN, rfid: 27.09}]
  figures:
    - {name: k, x: tokenizer.num_latent_tokens, y: [rfid, psnr], logx: true}
claims:
  - {metric: rfid, decreases_with: tokenizer.num_latent_tokens, source: "thesis, Table 2"}
  - {metric: psnr, row: Big dataset, better_than: "64"}
  - {metric: psnr, order: ["128", "16"]}
  - {metric: rfid, ratio: ["128", "16"], about: 0.5, tolerance: 0.1}
"""


def finish(store: RunStore, plan, values: dict[str, dict[str, float]]) -> None:
    """Record every stage of the cells named in ``values`` (cell label -> metrics) as finished."""
    for cell in plan.cells:
        if cell.label not in values:
            continue
        for kind, h in cell.stages.items():
            store.dir(kind, h).mkdir(parents=True, exist_ok=True)
            store.finish(kind, h, {"metrics": values[cell.label]} if kind == "evaluate_tokenizer" else {})


@pytest.fixture
def study(write_study) -> Path:
    return write_study(STUDY, name="report_study.yaml")


def table_of(results: Results) -> tuple[pd.DataFrame, pd.DataFrame]:
    return build_table(results, results.plan.spec["report"]["tables"][0])


def test_table_keeps_the_sources_digits_beside_ours_and_rows_not_run(study, tmp_path):
    plan = build_plan(study, "smoke")
    store = RunStore(tmp_path / "runs")
    finish(store, plan, {"16": {"psnr": 12.345678, "rfid": 300.0, "codebook_usage": 25.0}})
    numbers, texts = table_of(Results(plan, store))
    assert list(texts.columns) == [
        "K",
        "PSNR",
        "rFID (ours)",
        "rFID (thesis)",
        "CB usage (%) (ours)",
        "CB usage (%) (thesis)",
        "status",
    ]
    first = texts.iloc[0]
    assert (first["PSNR"], first["rFID (thesis)"], first["CB usage (%) (thesis)"]) == ("12.35", "156.98", "42.35")
    assert texts.iloc[2]["CB usage (%) (thesis)"] == "40.40"  # the column's two decimals, not 40.4
    assert texts["status"].tolist() == ["ok", "not run", "not run", "not run", "not run", "reference: thesis"]
    assert texts.iloc[-1]["K"] == "VQGAN (thesis)" and texts.iloc[-1]["rFID (thesis)"] == "27.09"
    assert numbers.iloc[0]["rFID (thesis)"] == 156.98 and pd.isna(numbers.iloc[1]["PSNR"])


def test_protocol_lists_a_metric_protocol_every_cell_shares_once(study, tmp_path):
    plan = build_plan(study, "smoke")
    store = RunStore(tmp_path / "runs")
    fid = {"metric": "rfid", "num_samples": 256, "weights_file": "inception.pth", "resize": None}
    for cell in plan.cells[:3]:
        stage = cell.stages["evaluate_tokenizer"]
        store.dir("evaluate_tokenizer", stage).mkdir(parents=True, exist_ok=True)
        extra = [{"metric": "lpips", "net": "alex"}] if cell.label == "32" else []
        protocol = {
            "num_images": 8,
            "split": "eval",
            "data": {},
            "metrics": ["rfid"],
            "metric_protocols": [fid, *extra],
        }
        store.finish("evaluate_tokenizer", stage, {"metrics": {"rfid": 1.0}, "protocol": protocol})
    lines = protocol_lines(Results(plan, store))
    shared = "  - metric: rfid; num_samples: 256; weights_file: inception.pth"
    assert lines == [
        "- 16, 64: 8 images of the eval split (); metrics: rfid",  # measured alike: one line
        "- 32: 8 images of the eval split (); metrics: rfid",
        "  - metric: lpips; net: alex",
        "- every cell above:",
        shared,
    ]
    one = build_plan(study, "smoke", only="16")
    assert protocol_lines(Results(one, store))[-1] == shared  # one cell: its own lines, nothing shared


def test_a_column_empty_in_every_finished_row_says_what_the_evaluations_ran(study, tmp_path):
    plan = build_plan(study, "smoke")
    store = RunStore(tmp_path / "runs")
    results = Results(plan, store)
    assert empty_column_notes(results, plan.spec["report"]["tables"][0]) == []  # nothing finished: no note
    finish(store, plan, {"16": {"psnr": 12.0, "rfid": 300.0}, "32": {"psnr": 13.0}})
    ran = ", ".join(plan.cells[0].config["eval"]["metrics"])
    notes = empty_column_notes(Results(plan, store), plan.spec["report"]["tables"][0])
    assert notes == [
        f"CB usage (%): empty in every finished row (the evaluations ran eval.metrics: {ran}; "
        f"eval.generation_metrics: {', '.join(plan.cells[0].config['eval']['generation_metrics']) or 'none'})"
    ]
    # a metric's reason for having no value goes under its own columns only
    store = RunStore(tmp_path / "runs2")
    for cell in plan.cells[:1]:
        for kind, h in cell.stages.items():
            store.dir(kind, h).mkdir(parents=True, exist_ok=True)
            no_is = {"metric": "inception_score", "unavailable": "the weights have no classifier"}
            result = {"metrics": {"psnr": 12.0, "rfid": 300.0}, "protocol": {"metric_protocols": [no_is]}}
            store.finish(kind, h, result if kind == "evaluate_tokenizer" else {})
    table = {"columns": {"codebook_usage": "CB usage (%)", "is_mean": "IS"}}
    notes = empty_column_notes(Results(plan, store), table)
    assert [n.split(":")[0] for n in notes] == ["CB usage (%)", "IS", "IS"]
    assert notes[-1] == "IS: the weights have no classifier"


def test_seeds_give_mean_and_std_and_distinct_stages(study, tmp_path):
    plan = build_plan(study, "smoke", seeds=3)
    assert len(plan.cells) == 15 and plan.rows == ["16", "32", "64", "128", "Big dataset"]
    assert [c.label for c in plan.cells[:3]] == ["16 [seed 0]", "16 [seed 1]", "16 [seed 2]"]
    trains = {c.stages["train_tokenizer"] for c in plan.cells if c.row == "16"}
    assert len(trains) == 3  # one training per seed
    store = RunStore(tmp_path / "runs")
    finish(store, plan, {f"16 [seed {s}]": {"psnr": 10.0 + s, "rfid": 1.0, "codebook_usage": 1.0} for s in range(3)})
    finish(store, plan, {"32 [seed 0]": {"psnr": 20.0, "rfid": 1.0, "codebook_usage": 1.0}})
    numbers, texts = table_of(Results(plan, store))
    assert numbers.iloc[0]["PSNR"] == pytest.approx(11.0) and numbers.iloc[0]["PSNR std"] == pytest.approx(1.0)
    assert texts.iloc[0]["PSNR"] == "11.0 ± 1.0" and numbers["seeds"].tolist()[:2] == [3, 1]
    assert texts.iloc[1]["status"].startswith("1/3 seeds ok; seed 1: not run")
    assert numbers.iloc[1]["PSNR std"] is None or pd.isna(numbers.iloc[1]["PSNR std"])  # one seed: no spread
    # a seed whose metric is missing (or not a number) is counted out of the mean, and the cell says so
    finish(store, plan, {"32 [seed 1]": {"psnr": float("nan"), "rfid": 1.0, "codebook_usage": 1.0}})
    numbers, texts = table_of(Results(plan, store))
    assert texts.iloc[1]["PSNR"] == "20 (n=1)" and numbers.iloc[1]["PSNR n"] == 1 and numbers["seeds"][1] == 2
    # the report command finds the seeds the store holds
    assert main([str(study), "--profile", "smoke", "--runs", str(tmp_path / "runs"), "--results", str(tmp_path)]) == 0
    assert "Each row ran with 3 seeds" in (tmp_path / "report_study" / "_smoke" / "README.md").read_text()
    # every row measured, 32 on one seed only: the claims that read it say so
    finish(store, plan, {f"{k} [seed {s}]": {"psnr": 1.0, "rfid": 1.0} for k in (64, 128) for s in range(3)})
    assert main([str(study), "--profile", "smoke", "--runs", str(tmp_path / "runs"), "--results", str(tmp_path)]) == 0
    readme = (tmp_path / "report_study" / "_smoke" / "README.md").read_text()
    partial = next(line for line in readme.splitlines() if line.startswith("Not every seed has finished"))
    assert "fewer than 3 seeds" in partial and "rFID falls as tokenizer.num_latent_tokens grows" in partial
    assert "psnr: 128 better than 16" not in partial  # both rows on 3 seeds


def test_seed_axis_groups_cells_into_rows(write_study):
    plan = build_plan(
        write_study("config: {tokenizer: {name: titok}}\naxes: {grid: {seed: [3, 5], tokenizer.codebook_size: [8]}}"),
        "smoke",
    )
    assert plan.rows == ["tokenizer.codebook_size=8"]
    assert [c.label for c in plan.cells] == ["tokenizer.codebook_size=8 [seed 3]", "tokenizer.codebook_size=8 [seed 5]"]


def test_a_seed_axis_is_the_rows_seeds_in_the_report(write_study, tmp_path):
    study = write_study(
        STUDY.replace(
            "grid:\n    tokenizer.num_latent_tokens", "grid:\n    seed: [3, 4]\n    tokenizer.num_latent_tokens"
        ),
        name="seeded.yaml",
    )
    plan = build_plan(study, "smoke")
    assert plan.seeds == 1 and plan.seeds_per_row == 2 and len(plan.cells) == 9  # Big dataset: one seed
    store = RunStore(tmp_path / "runs")
    finish(
        store, plan, {f"{k} [seed {s}]": {"rfid": 100.0 + s, "psnr": 1.0} for k in (16, 32, 64, 128) for s in (3, 4)}
    )
    numbers, texts = table_of(Results(plan, store))
    assert numbers.iloc[0]["rFID (ours) std"] == pytest.approx(0.7071, abs=1e-4) and numbers["seeds"].tolist()[0] == 2
    assert main([str(study), "--profile", "smoke", "--runs", str(tmp_path / "runs"), "--results", str(tmp_path)]) == 0
    report = (tmp_path / "seeded" / "_smoke" / "README.md").read_text()
    assert (
        "Each row ran with 2 seeds" in report
        and "not run" not in report.split("## Claims")[0].split("| 16")[1].split("\n")[0]
    )


def test_a_claim_along_a_zip_axis_compares_the_cells_along_it(write_study):
    study = write_study(
        STUDY.replace(
            "grid:\n    tokenizer.num_latent_tokens: [16, 32, 64, 128]",
            "zip:\n    tokenizer.num_latent_tokens: [16, 32, 64, 128]\n    train.steps: [5, 6, 7, 8]",
        ),
        name="zipped.yaml",
    )
    plan = build_plan(study, "smoke")
    assert axis_series(plan, "tokenizer.num_latent_tokens") == [["16", "32", "64", "128"]]


@pytest.mark.parametrize(
    "old, new, error",
    [
        ("claims:", "profiles: {reproo: {}}\nclaims:", r"profiles: no profile named reproo; profiles: .*repro"),
        (
            "claims:",
            "profiles: {smoke: {cells: {Big datset: {}}}}\nclaims:",
            r"profiles.smoke.cells: 'Big datset' is not a row of the study \(did you mean 'Big dataset'\?\)",
        ),
        ('"128": {rfid: 81.41', '"256": {rfid: 81.41', r"report.tables\[0\].reference.rows: '256' is not a row"),
        ("claims:", 'row_stages: {"265": [sample]}\nclaims:', r"row_stages: '265' is not a row of the study"),
        ("claims:", 'row_stages: {"16": [sampel]}\nclaims:', r"row_stages.16: unknown stage 'sampel'"),
        (
            "  figures:",
            '    - {name: u, rows: ["25"], columns: {psnr: PSNR}}\n  figures:',
            r"report.tables\[1\].rows: '25' is not",
        ),
        (
            "  figures:",
            "  figures:\n    - {name: s, kind: samples, rows: [Big dataset]}",
            r"report.figures\[0\] \(s\): rows Big dataset generate no samples; add evaluate_generator",
        ),
        (
            'label: "{tokenizer.num_latent_tokens}"',
            'label: "{tokenizer.num_tokens}"',
            r"cell \{'tokenizer.num_latent_tokens': 16\}: label '\{tokenizer.num_tokens\}' names",
        ),
    ],
)
def test_misspelt_profiles_rows_and_labels_are_one_error_naming_the_study_file(write_study, old, new, error):
    assert old in STUDY
    with pytest.raises(ConfigError, match=r"typo\.yaml: " + error):
        build_plan(write_study(STUDY.replace(old, new), name="typo.yaml"), "smoke")


def test_row_stages_give_some_rows_generation_and_a_table_may_show_those_rows_only(write_study, tmp_path):
    """Thesis Fig. 9: two rows of a reconstruction study also generate; a table of theirs shows them alone."""
    extra = "row_stages: {64: [evaluate_generator]}\nclaims:"  # an unquoted 64 names the row "64"
    table = '    - {name: gen, row_label: K, rows: ["64"], columns: {gfid: gFID}}\n  figures:'
    figure = '    - {name: s, kind: samples, rows: ["64"]}\nclaims:'
    text = STUDY.replace("claims:", figure, 1).replace("claims:", extra, 1).replace("  figures:", table, 1)
    plan = build_plan(write_study(text, name="rows.yaml"), "smoke")
    generates = {c.label for c in plan.cells if "sample" in c.stages}
    assert generates == {"64"} and {"train_generator", "evaluate_generator"} <= set(plan.cells[2].stages)
    assert plan.cells[4].stages["train_tokenizer"] != plan.cells[2].stages["train_tokenizer"]  # Big dataset
    results = Results(plan, RunStore(tmp_path / "runs"))
    _, texts = build_table(results, plan.spec["report"]["tables"][1])
    assert texts["K"].tolist() == ["64"]


def judged(plan, store) -> dict[str, tuple[str, str]]:
    results = Results(plan, store)
    return {v.text: (v.verdict, v.source_verdict) for v in judge_all(plan, results.value, {})}


def test_claims_hold_fail_or_read_within_noise(study, tmp_path):
    store = RunStore(tmp_path / "runs")
    plan = build_plan(study, "smoke")
    falling = {"16": 300.0, "32": 250.0, "64": 260.0, "128": 140.0}  # one step up: does not hold
    finish(store, plan, {k: {"rfid": v, "psnr": 20.0, "codebook_usage": 1.0} for k, v in falling.items()})
    finish(store, plan, {"Big dataset": {"rfid": 1.0, "psnr": 21.0, "codebook_usage": 1.0}})
    verdicts = judged(plan, store)
    assert verdicts["rfid falls as tokenizer.num_latent_tokens grows"] == ("does not hold", "holds")
    assert verdicts["psnr: Big dataset better than 64 (higher is better)"] == ("holds", "not measured")
    assert verdicts["psnr: 128 better than 16 (higher is better)"][0] == "within noise"  # a tie
    assert verdicts["rfid of 128 / 16 is about 0.5 (± 0.1)"] == ("holds", "holds")  # 140 / 300; 81.41 / 156.98

    # Three seeds: 250 -> 260 now lies within the spread of the seeds.
    store = RunStore(tmp_path / "runs3")
    plan = build_plan(study, "smoke", seeds=3)
    values = {}
    for k, v in falling.items():
        for s, noise in enumerate((-15.0, 0.0, 15.0)):
            values[f"{k} [seed {s}]"] = {"rfid": v + noise, "psnr": 20.0 + s, "codebook_usage": 1.0}
    finish(store, plan, values)
    verdicts = judged(plan, store)
    assert verdicts["rfid falls as tokenizer.num_latent_tokens grows"][0] == "within noise"
    assert verdicts["psnr: Big dataset better than 64 (higher is better)"][0] == "not measured"


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.stem)
def test_every_claim_holds_on_the_sources_own_numbers(path, tmp_path):
    """The claims say what the sources say: judged on the tables' reference numbers, each one holds (or
    the source gives no number for it)."""
    plan = build_plan(path, "smoke")
    verdicts = judged(plan, RunStore(tmp_path / "empty"))
    assert all(ours == "not measured" for ours, _ in verdicts.values())
    assert {source for _, source in verdicts.values()} <= {"holds", "not measured"}
    assert not plan.spec.get("claims") or "holds" in {source for _, source in verdicts.values()}


@pytest.mark.parametrize(
    "claim, error",
    [
        ("{metric: fid, decreases_with: tokenizer.num_latent_tokens}", r"claims\[0\]: unknown metric 'fid'"),
        ("{metric: rfid, decreases_with: tokenizer.size}", r"unknown axis 'tokenizer.size'.*num_latent_tokens"),
        ("{metric: psnr, row: Huge, better_than: '64'}", r"unknown row 'Huge' of study report_study"),
        ("{metric: psnr, order: ['16', '32'], row: '16', better_than: '32'}", "exactly one of"),
        ("{metric: rfid, row: '16', better_than: {study: report_study, row: '7'}}", r"unknown row '7'"),
        ("{metric: rfid, row: '16', better_than: {study: nowhere, row: '7'}}", r"no study 'nowhere'"),
        ("{metric: codebook_usage, order: ['16', '32']}", "say whether lower or higher codebook_usage is better"),
        ("{metric: psnr, order: ['16']}", "at least two rows"),
        ("{metric: psnr, better_than: '16', row: '32', typo: 1}", r"unknown keys \['typo'\]"),
        ("{metric: rfid, ratio: ['128', '16'], about: 0.5, source_value: '0.5'}", "source_value must be a number"),
        ("{metric: psnr, order: ['16', '32'], tolerance: 1}", "tolerance and source_value belong to an about claim"),
    ],
)
def test_bad_claims_are_one_error_naming_the_study_file(study, claim, error):
    text = study.read_text().split("claims:")[0] + f"claims:\n  - {claim}\n"
    study.write_text(text)
    with pytest.raises(ConfigError, match=r"report_study\.yaml: claims\[0\]") as info:
        build_plan(study, "smoke")
    assert info.match(error)


@pytest.mark.parametrize(
    "figure, error",
    [
        ("{name: f, kind: pie}", "unknown kind 'pie'"),
        ("{name: f, kind: losses}", r"missing \['terms'\]"),
        ("{name: f, kind: tsne, rows: [Huge]}", "unknown row 'Huge'"),
        ("{name: f, kind: tsne, steps: first}", "steps must be last, a number of steps or a list"),
        (
            "{name: f, kind: losses, terms: [ce], stage: sample}",
            "stage must be one of pretrain_encoder, pretrain_align, pretrain_align_global",
        ),
        ("{name: f, kind: bars, y: rfid, series: [{label: a, study: report_study, rows: ['9']}]}", "unknown row '9'"),
        ("{name: f, kind: bars, y: rfid, series: [{label: a}]}", "each of series must be a mapping with rows"),
        ("{name: f, x: tokenizer.size, y: rfid}", "x: tokenizer.size is not an axis of the study"),
        ("{name: f, x: tokenizer.num_latent_tokens, y: [rfid, fid]}", "y: fid not among the study's table columns"),
        ("{name: f, kind: bars, y: rfid, logy: 10}", "logy must be true / false or a list of metrics"),
    ],
)
def test_bad_figures_are_one_error_naming_the_study_file(study, figure, error):
    text = study.read_text().replace("    - {name: k, x:", f"    - {figure}\n    - {{name: k, x:")
    study.write_text(text)
    with pytest.raises(ConfigError, match=r"report_study\.yaml: report\.figures\[0\] \(f\)") as info:
        build_plan(study, "smoke")
    assert info.match(error)


# ---------------------------------------------------------------------------------------------
# The data behind each kind of figure


def test_line_figure_draws_the_sources_numbers_on_real_value_ticks(study, tmp_path):
    plan = build_plan(study, "smoke", seeds=2)
    store = RunStore(tmp_path / "runs")
    finish(store, plan, {f"{k} [seed {s}]": {"rfid": k + s, "psnr": 1.0} for k in (16, 32, 64, 128) for s in (0, 1)})
    fig = plan.spec["report"]["figures"][0]
    data = collect_line(Results(plan, store), fig)
    ours = data.table[(data.table["metric"] == "rfid") & (data.table["series"] == "ours (smoke)")]
    assert ours["x"].tolist() == [16, 32, 64, 128] and ours["mean"].tolist() == [16.5, 32.5, 64.5, 128.5]
    assert ours["std"].round(4).tolist() == [0.7071] * 4 and (ours["n"] == 2).all()
    thesis = data.table[data.table["series"] == "thesis"]
    assert thesis["mean"].tolist() == [156.98, 149.67, 111.89, 81.41]  # no Big dataset: not on the axis
    figure = draw_line(data, fig)
    axis = figure.axes[0].xaxis
    assert [t.get_text() for t in axis.get_ticklabels()] == ["16", "32", "64", "128"]
    assert axis.get_scale() == "log" and list(axis.get_ticklocs()) == [16, 32, 64, 128]
    assert figure.axes[0].get_yscale() == "linear"
    assert draw_line(data, {**fig, "logy": True}).axes[0].get_yscale() == "log"  # ours and the source's far apart
    assert [ax.get_yscale() for ax in draw_line(data, {**fig, "logy": ["psnr"]}).axes] == ["linear", "log"]


def test_tick_labels_stay_short_and_tsne_panels_wrap_into_a_grid():
    assert [compact(v) for v in (16, 0.5, 9999, 27336, 999543, 1586000, 2.95e9)] == [
        "16",
        "0.5",
        "9999",
        "27.3k",
        "1M",
        "1.59M",
        "2.95B",
    ]
    points = [(row, step, what) for row in "ABCDE" for step in (100,) for what in ("code", "latent")]
    table = pd.DataFrame([{"row": r, "step": s, "what": w, "x": 0.0, "y": 1.0} for r, s, w in points])
    one_step = draw_tsne(FigureData(table), {"name": "t"})  # five rows, one checkpoint each: 2 x 3, one blank
    shown = [ax.get_title() for ax in one_step.axes if ax.axison]
    assert len(one_step.axes) == 6 and shown == [f"{r}, step 100" for r in "ABCDE"]
    steps = pd.concat([table.assign(step=s) for s in (10, 20, 30)]).query("row in ['A', 'B']")
    over_training = draw_tsne(FigureData(steps), {"name": "t"})  # a row per initialisation, a column per step
    assert [ax.get_title() for ax in over_training.axes] == [f"{r}, step {s}" for r in "AB" for s in (10, 20, 30)]


def test_bar_figure_combines_studies_and_puts_the_source_beside_ours(write_study, tmp_path):
    scratch = build_plan(write_study(STUDY, name="report_study.yaml"), "smoke")
    bars = """
        figures:
          - name: b
            kind: bars
            y: rfid
            categories: ["16", "64"]
            series:
              - {label: scratch, study: report_study, rows: ["16", "64"]}
              - {label: init, rows: ["16", "64"]}
    """
    init = STUDY.replace("codebook_size: 16", "codebook_size: 32").split("  figures:")[0]  # other stages
    init += textwrap.indent(textwrap.dedent(bars), "  ")
    plan = build_plan(write_study(init, name="init_study.yaml"), "smoke")
    store = RunStore(tmp_path / "runs")
    finish(store, plan, {"16": {"rfid": 5.0}, "64": {"rfid": 3.0}})
    finish(store, scratch, {"16": {"rfid": 9.0}})
    data = collect_bars(Results(plan, store), plan.spec["report"]["figures"][0])
    rows = data.table.set_index(["series", "category", "who"])["mean"].to_dict()
    assert rows[("init", "16", "ours")] == 5.0 and rows[("init", "64", "ours")] == 3.0
    assert rows[("scratch", "16", "ours")] == 9.0 and ("scratch", "64", "ours") not in rows  # not run
    assert rows[("scratch", "16", "thesis")] == 156.98 and rows[("init", "64", "thesis")] == 111.89


def eval_dirs(plan, store, label):
    cell = next(c for c in plan.cells if c.label == label)
    return {kind: store.dir(kind, h) for kind, h in cell.stages.items()}


def test_reconstruction_grid_shows_originals_once_above_each_rows_reconstructions(study, tmp_path):
    plan = build_plan(study, "smoke")
    store = RunStore(tmp_path / "runs")
    gen = torch.Generator().manual_seed(0)
    originals = torch.rand(4, 3, 8, 8, generator=gen)
    for label in ("16", "32"):
        recons = torch.rand(4, 3, 8, 8, generator=gen)
        folder = eval_dirs(plan, store, label)["evaluate_tokenizer"]
        save_image_grid(torch.cat([originals, recons]), folder / "reconstructions.png", nrow=4)
        tiles = split_grid(read_png(folder / "reconstructions.png"), 2)
        expected = (torch.cat([originals, recons]).permute(0, 2, 3, 1) * 255).add(0.5).clamp(0, 255).byte().numpy()
        assert len(tiles) == 8 and all(np.array_equal(t, e) for t, e in zip(tiles, expected))
    data = collect_reconstructions(Results(plan, store), {"name": "r", "kind": "reconstructions", "images": 3})
    assert data.table.drop_duplicates("panel")["label"].tolist() == ["original", "16", "32"]
    assert data.table.groupby("panel").size().tolist() == [3, 3, 3]
    titles = data.table.groupby("panel")["title"].apply(list).tolist()  # the originals' columns are labelled
    assert titles == [["eval image 0", "eval image 1", "eval image 2"], [""] * 3, [""] * 3]
    assert len(data.notes) == 3 and "64: no stored reconstructions (not run)" in data.notes


def test_sample_grid_reads_the_stored_images_with_their_classes(tmp_path, write_study):
    plan = build_plan(
        write_study("config: {tokenizer: {name: titok}, generator: {name: maskgit}}\nstages: [evaluate_generator]"),
        "smoke",
    )
    store = RunStore(tmp_path / "runs")
    folder = eval_dirs(plan, store, "base")["sample"]
    folder.mkdir(parents=True)
    images = np.arange(5 * 4 * 4 * 3, dtype=np.uint8).reshape(5, 4, 4, 3)
    np.save(folder / "images.npy", images)
    np.save(folder / "labels.npy", np.array([0, 1, 2, 0, 1]))
    data = collect_samples(Results(plan, store), {"name": "s", "kind": "samples", "images": 4})
    assert data.table["cls"].tolist() == [0, 1, 2, 0] and np.array_equal(data.images[("0", 3)], images[3])
    assert data.table["title"].tolist() == ["class 0", "class 1", "class 2", "class 0"]


def write_training(folder: Path, steps: list[int], seed: int, codes: int = 16, tokens: int = 6) -> None:
    """A training stage's diagnostics as the stage writes them: losses, probes, checkpoint evaluations."""
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"step": steps, "lr": 0.1, "loss": 1.0, "recon": [1.0 / s + seed for s in steps]}).to_csv(
        folder / "losses.csv", index=False
    )
    rng = np.random.default_rng(seed)
    for s in steps:
        ids = rng.integers(0, codes, size=(2, tokens))
        arrays = {
            "counts.codes": np.bincount(ids.ravel(), minlength=codes),
            "latents.quantizer": rng.normal(size=(2 * tokens, 4)).astype(np.float32),
            "codebook.quantizer": rng.normal(size=(codes, 4)).astype(np.float32),
        }
        (folder / "probe").mkdir(exist_ok=True)
        np.savez(folder / "probe" / f"step_{s:07d}.npz", **arrays)
        write_json(folder / "train_eval" / f"step_{s:07d}.json", {"step": s, "metrics": {"psnr": s / 10 + seed}})


def test_training_figures_read_losses_probes_and_evaluations_over_seeds(study, tmp_path):
    plan = build_plan(study, "smoke", seeds=2)
    store = RunStore(tmp_path / "runs")
    for seed in (0, 1):
        write_training(eval_dirs(plan, store, f"16 [seed {seed}]")["train_tokenizer"], [10, 20, 30], seed)
    results = Results(plan, store)
    losses = collect_losses(results, {"name": "l", "terms": ["recon", "perceptual"], "rows": ["16", "32"]})
    assert len(losses.table) == 6 and set(losses.table["seed"]) == {0, 1}
    assert "16: no 'perceptual' in losses.csv (its terms: loss, recon)" in losses.notes
    assert "32: no loss log yet (not run)" in losses.notes

    heat = collect_codebook_heatmap(results, {"name": "h", "rows": ["16"]})
    assert heat.table.groupby("step")["count"].sum().tolist() == [12, 12, 12]  # 2 probe images x 6 tokens
    assert heat.table.groupby("step").size().tolist() == [16] * 3  # every code, used or not

    tsne = collect_tsne(results, {"name": "t", "rows": ["16"], "steps": 2})
    assert sorted(set(tsne.table["step"])) == [10, 30]
    per_step = tsne.table[tsne.table["step"] == 10]["what"].value_counts().to_dict()
    assert per_step == {"code": 16, "latent": 12}  # one row per code, one per latent vector
    assert np.isfinite(tsne.table[["x", "y"]].to_numpy()).all()

    curves = collect_training_curves(results, {"name": "c", "y": ["psnr"], "rows": ["16", "32"]})
    assert curves.table.groupby("step")["value"].mean().tolist() == [1.5, 2.5, 3.5]
    assert any(note.startswith("32: no evaluations during training stored") for note in curves.notes)


def test_tsne_maps_are_kept_in_the_run_store_and_not_refitted(study, tmp_path, monkeypatch):
    import sklearn.manifold

    plan = build_plan(study, "smoke")
    store = RunStore(tmp_path / "runs")
    write_training(eval_dirs(plan, store, "16")["train_tokenizer"], [10, 20, 30], 0)
    fig = {"name": "t", "rows": ["16"], "steps": 2}
    first = collect_tsne(Results(plan, store), fig)
    assert len(list((store.root / TSNE_CACHE).glob("*.npy"))) == 2  # one map per checkpoint shown

    def refit(*args, **kwargs):
        raise AssertionError("a cached t-SNE map was fitted again")

    monkeypatch.setattr(sklearn.manifold, "TSNE", refit)
    again = collect_tsne(Results(plan, store), fig)
    pd.testing.assert_frame_equal(first.table, again.table)
    write_training(eval_dirs(plan, store, "16")["train_tokenizer"], [10], 1)  # new data at step 10: refit
    with pytest.raises(AssertionError, match="fitted again"):
        collect_tsne(Results(plan, store), fig)


def test_finetuned_cells_continue_their_training_series(write_study, tmp_path):
    plan = build_plan(
        write_study("""
            config:
              tokenizer: {name: selfboottok, size: tiny, patch_size: 4, num_latent_tokens: 4, token_size: 4,
                          local2d_size: tiny, encoder: null, align_global: null, align_local: null}
              finetune: {tokenizer: {stage: 2}, train: {steps: 5}}
        """),
        "smoke",
    )
    store = RunStore(tmp_path / "runs")
    dirs = eval_dirs(plan, store, "base")
    write_training(dirs["train_tokenizer"], [10, 30], 0)
    write_training(dirs["finetune_tokenizer"], [5], 0)
    data = collect_training_curves(Results(plan, store), {"name": "c", "y": ["psnr", "rfid"]})
    first = plan.cells[0].config["train"]["steps"]  # the second stage starts after the first
    assert data.table["step"].tolist() == [10, 30, first + 5]
    # a metric the figure asks for that no checkpoint evaluation computed is named, not silently left out
    assert any(n.startswith("rfid: not among the metrics evaluated during training") for n in data.notes)


@pytest.mark.parametrize("name", TOKENIZERS.names())
def test_codebook_probe_of_every_tokenizer(name):
    """The probe a training stage stores at each checkpoint, for every registered tokenizer (its ``tiny``
    options): per-code counts summing to the probe batch's tokens of that codebook, one codebook row per
    code and one latent row per quantised vector, the random state untouched."""
    cls = TOKENIZERS.get(name).obj
    torch.manual_seed(0)
    model = cls(**cls.tiny).eval()
    images = torch.rand(3, 3, cls.tiny["image_size"], cls.tiny["image_size"])
    state = torch.get_rng_state()
    with torch.random.fork_rng(devices=[]):
        arrays = codebook_probe(model, images)
    assert torch.equal(state, torch.get_rng_state())
    _, codes = model.encode_with_codes(images)
    if not codes and model.token_spec.kind == "discrete":
        codes = {"codes": model.encode(images)}
    for key, ids in codes.items():
        counts = arrays[f"counts.{key}"]
        assert counts.sum() == ids.numel() and np.array_equal(
            counts, np.bincount(ids.reshape(-1), minlength=len(counts))
        )
    modules = {k.split(".", 1)[1] for k in arrays if k.startswith("codebook.")}
    assert modules == {k.split(".", 1)[1] for k in arrays if k.startswith("latents.")}
    for module in modules:
        quantizer = model.get_submodule(module)
        size = quantizer.codebook_size * getattr(quantizer, "num_codebooks", 1)
        assert arrays[f"codebook.{module}"].shape[0] == size
        assert arrays[f"latents.{module}"].shape[1] == arrays[f"codebook.{module}"].shape[1]


# ---------------------------------------------------------------------------------------------
# The report command and the index


def test_report_command_rerenders_from_the_store_and_the_index_lists_every_study(study, tmp_path):
    plan = build_plan(study, "smoke")
    store = RunStore(tmp_path / "runs")
    done = ("16", "32", "64", "128")
    finish(store, plan, {k: {"rfid": 400.0 - int(k), "psnr": 10.0, "codebook_usage": 5.0} for k in done})
    files = write_report(plan, store, tmp_path / "results" / "report_study" / "_smoke")
    md = files[0].read_text()
    assert md.splitlines()[0] == "# Report study" and "## Claims of the source" in md
    assert md.index("## Claims of the source") > md.index("## Figures")  # the report ends with the claims
    assert any(
        "rFID falls as tokenizer.num_latent_tokens grows" in x and "thesis, Table 2" in x for x in md.splitlines()
    )
    record = json.loads((files[0].parent / "report.json").read_text())
    assert record["cells"] == {"total": 5, "ok": 4, "not run": 1}
    counts = {k: record["claims"][k] for k in ("holds", "within noise", "does not hold", "not measured")}
    assert counts == {"holds": 1, "within noise": 1, "does not hold": 1, "not measured": 1}  # ratio 272 / 384

    index = write_index(study.parent, tmp_path / "results").read_text()
    line = next(x for x in index.splitlines() if "report_study" in x)
    assert "[smoke](report_study/_smoke/README.md)" in line and "4/5 cells done, 1 not run" in line
    assert "1/4 (1 within noise)" in line
    assert "(tables: `t`; figures: `k`)" in line  # what the study renders, by name


@pytest.mark.slow
def test_study_records_training_diagnostics_and_reports_them(tmp_path, write_study, capsys):
    """End to end on the tiny smoke scale: probes at every checkpoint whose counts sum to the probe batch's
    tokens, evaluations during training, two seeds, and the report drawn from them."""
    study = write_study(
        STUDY.split("report:")[0]
        .replace("[16, 32, 64, 128]", "[4, 8]")
        .replace("cells:\n  - {label: Big dataset, set: {tokenizer.num_latent_tokens: 64, data.train_size: 128}}\n", "")
        + """report:
  tables: [{name: t, row_label: K, columns: {psnr: PSNR, codebook_usage: CB usage}}]
  figures:
    - {name: heat, kind: codebook_heatmap}
    - {name: tsne, kind: tsne, rows: ["8"], steps: 2}
    - {name: curves, kind: training_curves, y: [psnr]}
    - {name: recon, kind: reconstructions, images: 4}
claims:
  - {metric: psnr, increases_with: tokenizer.num_latent_tokens}
""",
        name="e2e.yaml",
    )
    extra = ["train.eval_every=8", "train.probe_images=3", "eval.metrics=[psnr,ssim,codebook_usage]", "--seeds", "2"]
    assert run_cli(study, tmp_path, *extra) == 0
    out = tmp_path / "results" / "e2e" / "_smoke"
    heat = pd.read_csv(out / "heat.csv", dtype={"row": str})
    assert sorted(set(heat["step"])) == [8, 16, 24]
    sums = heat.groupby(["row", "step"])["count"].sum()
    assert (sums.xs("4") == 3 * 4).all() and (sums.xs("8") == 3 * 8).all()  # probe images x tokens
    tsne = pd.read_csv(out / "tsne.csv")
    assert tsne[tsne["step"] == 8]["what"].value_counts().to_dict() == {"code": 16, "latent": 3 * 8}
    curves = pd.read_csv(out / "curves.csv")
    assert sorted(set(curves["step"])) == [8, 16, 24] and sorted(set(curves["seed"])) == [0, 1]
    md = (out / "README.md").read_text()
    assert "Each row ran with 2 seeds" in md and "PSNR rises as tokenizer.num_latent_tokens grows" in md
    assert (out / "recon.png").stat().st_size > 1000
    from benchmark.status import main as status_main

    capsys.readouterr()
    assert status_main([str(study), "--profile", "smoke", "--runs", str(tmp_path / "runs"), *TINY, *extra[:3]]) == 0
    table = capsys.readouterr().out  # both seeds, found in the run store as the report finds them
    assert "4 [seed 1]" in table and "8 [seed 1]" in table and "missing" not in table

    # The probes and evaluations leave training alone: without them, the same seed reaches the same weights.
    assert run_cli(study, tmp_path, "train.probe_images=0", "--only", "4") == 0
    with_probes = build_plan(study, "smoke", [*TINY, *extra[:3]], seeds=2).cells[0]
    without = build_plan(study, "smoke", [*TINY, "train.probe_images=0"]).cells[0]
    folders = [tmp_path / "runs" / "train_tokenizer" / c.stages["train_tokenizer"] for c in (with_probes, without)]
    assert (folders[0] / "probe").is_dir() and not (folders[1] / "probe").exists()
    a, b = (load_file(f / "model.safetensors") for f in folders)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("profile", ["smoke", "repro"])
@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.stem)
def test_every_study_passes_its_plan_checks(path, profile):
    """What ``--dry-run`` checks (data, and every model built on the meta device with its options)
    passes for every shipped study at the CPU scales, so none of them fails after it starts."""
    from benchmark.plan_checks import check_plan

    plan = build_plan(path, profile)
    costs = check_plan(plan)
    assert set(costs) == set(plan.stages)


def test_the_commit_of_a_report_is_dirty_with_code_changes_not_with_rendered_results(tmp_path, monkeypatch):
    """Rendering one study's report changes tracked files under results/: the next study's report still
    names a clean commit; a change to the code does not."""
    import benchmark.report as report

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "README.md").write_text("old\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    monkeypatch.setattr(report, "REPO_ROOT", tmp_path)
    clean = report.git_commit()
    assert clean != "unknown" and not clean.endswith("+dirty")
    (tmp_path / "results" / "README.md").write_text("new\n")
    assert report.git_commit() == clean
    (tmp_path / "code.py").write_text("x = 2\n")
    assert report.git_commit() == clean + "+dirty"


def test_a_value_equal_on_every_seed_shows_no_spread():
    flops = 0.011091712  # a model's GFLOPs per image, the same on every seed
    assert Stat.of([flops] * 3) == Stat(flops, 0.0, 3)
    assert fmt_stat(Stat.of([flops] * 3)) == "0.01109 ± 0"
    assert fmt_stat(Stat(flops, 2e-18, 3)) == "0.01109 ± 0"  # float rounding is not a spread
    assert fmt_stat(Stat.of([296.4, 288.3, 304.5])) == "296.4 ± 8.1"


def test_whole_numbers_keep_their_digits():
    """A parameter count (equal on every seed) prints in full, not as 2.538e+05; other magnitudes as before."""
    from benchmark.claims import Stat, fmt, fmt_stat

    assert fmt(253768.0) == "253768" and fmt_stat(Stat(253768.0, 0.0, 3)) == "253768 ± 0"
    assert fmt(2.5e-4) == "2.500e-04" and fmt(123456.7) == "1.235e+05" and fmt(17.861) == "17.86"


def test_the_sources_trailing_zeros_survive_the_yaml(tmp_path):
    """The thesis prints MaskGIT's gFID as 100.70 and the paper G + L1's as 1.70: a study file's report and
    claims keep the digits it writes (a column whose every value ends in 0 too), its config plain floats."""
    import pickle

    from benchmark.claims import fmt_source
    from benchmark.config import SourceFloat
    from benchmark.report import decimals
    from benchmark.study import load_study

    path = tmp_path / "s.yaml"
    path.write_text(
        "config: {train: {lr: 1.0e-4}}\n"
        "report: {tables: [{name: t, reference: {rows: {a: {gfid: 100.70}}}}]}\n"
        "claims: [{metric: gfid, about: 1.70, source_value: 1.70}]\n"
    )
    spec = load_study(path)
    gfid = spec["report"]["tables"][0]["reference"]["rows"]["a"]["gfid"]
    assert isinstance(gfid, SourceFloat) and gfid == 100.7 and decimals([gfid]) == 2
    assert fmt_source(spec["claims"][0]["source_value"]) == "1.70" and fmt_source(2.5) == "2.5"
    assert type(spec["config"]["train"]["lr"]) is float  # configs (hashed, built into models) stay plain
    assert pickle.loads(pickle.dumps(gfid)).text == "100.70"

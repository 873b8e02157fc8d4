"""The shipped model counts (studies/model_counts.json: benchmark/model_counts.py, benchmark/shipped_counts.py): they cover every model of
the built-in studies under the current code, they are what counting gives, and a dry run of a built-in study
builds no model."""

from __future__ import annotations

from benchmark import REPO_ROOT, estimate, model_counts
from benchmark.model_counts import (
    SHIPPED_COUNTS,
    ModelCounts,
    imported_harness_modules,
    library_versions,
    model_code_files,
    read_shipped,
)
from benchmark.shipped_counts import REFRESH_COMMAND, count_builtin_studies

SHIPPED = read_shipped()


def test_shipped_counts_cover_every_builtin_study_under_the_current_code() -> None:
    stale = model_counts.stale_files(SHIPPED)
    assert not stale, f"code that builds models changed ({', '.join(stale)}): run {REFRESH_COMMAND}"
    missing = count_builtin_studies(ModelCounts(None, SHIPPED_COUNTS, strict=True))
    assert not missing, f"models without a count: run {REFRESH_COMMAND}\n" + "\n".join(missing)
    assert SHIPPED["counts"] and not set(SHIPPED["needs_weights"]) & set(SHIPPED["counts"])


def test_a_shipped_count_is_what_counting_gives() -> None:
    """Thesis Table 1 at the smoke profile, counted again under the installed libraries (which may be newer
    than those the counts were made with): the VQGAN and its MaskGIT, number for number."""
    from benchmark.estimate import estimate_plan
    from benchmark.study import build_plan

    plan = build_plan(REPO_ROOT / "studies" / "thesis_table1_baseline.yaml", "smoke")
    fresh, shipped = ModelCounts(None), ModelCounts(None, SHIPPED_COUNTS, strict=True)
    assert estimate_plan(plan, fresh) == estimate_plan(plan, shipped)
    new = fresh.new_counts()
    changed = {key for key, count in new.items() if SHIPPED["counts"][key] != count}
    assert len(new) >= 2 and not changed, (
        f"counts changed under {library_versions()} (counted with {SHIPPED['libraries']}): run {REFRESH_COMMAND}"
    )


def test_a_dry_run_of_a_builtin_study_builds_no_model(tmp_path, monkeypatch, capsys) -> None:
    from benchmark import encoder_pretraining
    from benchmark.run import main

    def refuse(*args: object) -> None:
        raise AssertionError("a model was built")

    for module, name in (
        (estimate, "_count_tokenizer"),
        (estimate, "_count_generator"),
        (encoder_pretraining, "pretrain_cost"),
    ):
        monkeypatch.setattr(module, name, refuse)
    monkeypatch.setenv("TOK1D_PLAN_CACHE", str(tmp_path / "plan_cache.json"))
    study = REPO_ROOT / "studies" / "thesis_table4_initialization.yaml"
    assert main([str(study), "--profile", "repro", "--runs", str(tmp_path / "runs"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("GPU-h (") == out.count(" to run ") > 0  # every stage has its estimate
    assert not (tmp_path / "plan_cache.json").exists()  # nothing counted, nothing written


def test_counts_depend_on_the_code_that_builds_models(tmp_path, monkeypatch) -> None:
    """The counts depend on the plugins and the harness modules they import (lazily too), and no other module;
    shipped counts hold while those files do."""
    files = {path.relative_to(REPO_ROOT).as_posix() for path in model_code_files()}
    assert {"tokenizers/selfboottok.py", "generators/sit.py", "benchmark/vit.py", "benchmark/estimate.py"} <= files
    assert {"benchmark/encoders.py", "benchmark/pretraining_objectives.py", "benchmark/ot.py"} <= files
    assert not {"benchmark/report.py", "benchmark/run.py", "benchmark/study.py", "benchmark/model_counts.py"} & files

    text = (
        "import torch\nfrom benchmark.vit import Block as B\nfrom benchmark import data, metrics  # a comment\n"
        "def f():\n    from benchmark.cost import (\n        gflops,\n        counted,\n    )\n    import benchmark.ot\n"
    )
    assert {"benchmark.vit", "benchmark.data", "benchmark.metrics", "benchmark.cost", "benchmark.ot"} <= (
        imported_harness_modules(text)
    )
    source = tmp_path / "model.py"
    source.write_text("x = 1\n")
    before = model_counts.file_hashes([source])
    assert model_counts.file_hashes([source]) == before
    source.write_text("x = 2\n")
    assert model_counts.file_hashes([source]) != before

    monkeypatch.setattr(model_counts, "REPO_ROOT", tmp_path)
    known = {"files": model_counts.file_hashes([source]), "libraries": {"torch": "0.1"}}
    assert model_counts.stale_files(known) == []  # other library versions: recorded, not required
    source.write_text("x = 3\n")
    assert model_counts.stale_files(known) == ["model.py"]
    source.unlink()
    assert model_counts.stale_files(known) == ["model.py"]

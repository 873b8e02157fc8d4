"""Config layering, validation errors, and study expansion into cells and shared stages."""

from __future__ import annotations

import pytest

from benchmark.errors import ConfigError
from benchmark.options import Bounds
from benchmark.study import build_plan, expand_axes, hashed_config

REPO_STUDY = "studies/thesis_table2_token_count.yaml"


def test_table2_study_expands_into_five_cells_with_their_own_training():
    plan = build_plan(REPO_STUDY, "smoke")
    assert [c.label for c in plan.cells] == ["16", "32", "64", "128", "Big dataset"]
    assert len(plan.stages) == 10
    assert [c.explicit for c in plan.cells] == [False] * 4 + [True]
    big = plan.cells[-1].config
    assert big["tokenizer"]["num_latent_tokens"] == 64 and big["data"]["subset"] == "all"
    # The smoke profile replaced the paper's BDD100K data section instead of merging into it.
    assert big["data"]["name"] == "procedural" and "root" not in big["data"]
    assert big["tokenizer"]["size"] == "tiny" and big["tokenizer"]["token_size"] == 16


def test_paper_profile_keeps_the_studys_settings(monkeypatch):
    monkeypatch.setenv("BDD100K_ROOT", "/data/somewhere")
    cfg = build_plan(REPO_STUDY, "paper").cells[0].config
    assert cfg["data"] == {"name": "bdd100k", "root": "/data/somewhere", "resolution": 256, "subset": "day"}
    assert cfg["tokenizer"]["size"] == "B" and cfg["train"]["steps"] == 9700


def test_cells_that_share_a_tokenizer_share_its_training(write_study):
    study = write_study("""
        config: {tokenizer: {name: titok}}
        axes: {grid: {eval.batch_size: [8, 16]}}
    """)
    plan = build_plan(study, "smoke")
    trains = {c.stages["train_tokenizer"] for c in plan.cells}
    evals = {c.stages["evaluate_tokenizer"] for c in plan.cells}
    assert len(trains) == 1 and len(evals) == 2
    assert plan.stages[trains.pop()].cells == ["eval.batch_size=8", "eval.batch_size=16"]


def test_runtime_and_launcher_do_not_change_hashes():
    a = build_plan(REPO_STUDY, "smoke")
    b = build_plan(REPO_STUDY, "smoke", ["runtime.num_workers=4", "launcher.mem_gb=8"])
    assert set(a.stages) == set(b.stages)
    c = build_plan(REPO_STUDY, "smoke", ["train.lr=0.01"])
    assert not set(a.stages) & set(c.stages)


def test_grid_and_zip_axes():
    cells = expand_axes({"grid": {"a": [1, 2], "b": ["x", "y", "z"]}, "zip": {"c": [1, 2], "d": [3, 4]}}, "s")
    assert len(cells) == 2 * 3 * 2
    assert {(c["c"], c["d"]) for c in cells} == {(1, 3), (2, 4)}
    with pytest.raises(ConfigError, match="one length"):
        expand_axes({"zip": {"c": [1, 2], "d": [3]}}, "s")


def test_command_line_overrides_win_and_name_switch_resets_section():
    plan = build_plan(
        REPO_STUDY,
        "smoke",
        ["tokenizer.num_latent_tokens=8", "data.name=imagefolder", "data.root=/x", "data.resolution=32"],
    )
    cfg = plan.cells[0].config
    assert all(c.config["tokenizer"]["num_latent_tokens"] == 8 for c in plan.cells)
    assert cfg["data"] == {"name": "imagefolder", "root": "/x", "resolution": 32}


def selected(plan):
    return [c.label for c in plan.cells if c.selected]


def test_only_selects_cells_and_keeps_every_row():
    plan = build_plan(REPO_STUDY, "smoke", only="big")
    assert selected(plan) == ["Big dataset"] and len(plan.cells) == 5
    assert {s.hash for s in plan.ordered_stages()} == set(plan.cells[-1].stages.values())
    assert len(plan.ordered_stages(selected=False)) > len(plan.ordered_stages())
    assert selected(build_plan(REPO_STUDY, "smoke", only="tokenizer.num_latent_tokens=32")) == ["32"]
    with pytest.raises(ConfigError, match="matches no cell"):
        build_plan(REPO_STUDY, "smoke", only="nothing-like-this")


@pytest.mark.parametrize(
    "text, pattern",
    [
        (
            "config: {tokenizer: {name: titok, num_latent_tokns: 8}}",
            r"mini\.yaml: config: unknown key 'tokenizer\.num_latent_tokns'\. Did you mean: num_latent_tokens",
        ),
        ("config: {train: {steps: many}}", r"mini\.yaml: config: train\.steps must be int, got 'many'"),
        (
            "config: {tokenizer: {name: titoc}}",
            r"mini\.yaml: config: tokenizer\.name: unknown tokenizer 'titoc'.*titok",
        ),
        ("config: {data: {name: procedural, resolutoin: 8}}", r"unknown key 'data\.resolutoin'.*resolution"),
        ("config: {trian: {steps: 3}}", r"mini\.yaml: config: unknown key 'trian'.*train"),
        ("config: {train: {schedule: linear}}", r"train\.schedule must be one of constant, cosine"),
        ("config: [1, 2]\n", r"mini\.yaml"),
        ("config: {a: 1\n", r"mini\.yaml: malformed YAML"),
        ("axis: {}", r"mini\.yaml: unknown top-level keys \['axis'\]"),
        ("stages: [train_generatr]", r"unknown stage 'train_generatr'"),
        (
            "axes: {grid: {tokenizer.num_latent_tokens: 8}}",
            r"axes\.grid\.tokenizer\.num_latent_tokens must be a non-empty list",
        ),
        ("cells: [{label: x, sett: {}}]", r"cells\[0\] must be a mapping with 'label' and 'set'"),
    ],
)
def test_bad_study_gives_one_clear_error(write_study, text, pattern):
    with pytest.raises(ConfigError, match=pattern):
        build_plan(write_study(text), "smoke")


def test_bad_cell_value_names_the_cell(write_study):
    study = write_study("axes: {grid: {tokenizer.codebook_size: [16, sixteen]}}")
    with pytest.raises(
        ConfigError, match=r"cell \{'tokenizer.codebook_size': 'sixteen'\}: tokenizer\.codebook_size must be int"
    ):
        build_plan(study, "smoke")


@pytest.mark.parametrize(
    "override, pattern",
    [
        ("train.steps", r"command line: override 'train\.steps' is not of the form key=value"),
        ("train.stepz=3", r"command line: unknown key 'train\.stepz'"),
        ("tokenizer.size=3.5", r"command line: tokenizer\.size must be str"),
    ],
)
def test_bad_override_names_the_command_line(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        build_plan(REPO_STUDY, "smoke", [override])


@pytest.mark.parametrize(
    "override, pattern",
    [
        ("train.lr=-1", r"command line: train\.lr must be > 0, got -1$"),
        ("train.batch_size=0", r"command line: train\.batch_size must be >= 1, got 0$"),
        ("generator_train.steps=-5", r"command line: generator_train\.steps must be >= 1, got -5$"),
        ("train.ema_decay=1", r"command line: train\.ema_decay must be >= 0 and < 1, got 1$"),
        ("train.disc_lr=0", r"command line: train\.disc_lr must be > 0, got 0$"),
        ("eval.num_images=0", r"command line: eval\.num_images must be >= 1, got 0$"),
        ("sample.steps=0", r"command line: sample\.steps must be >= 1, got 0$"),
        ("launcher.parallel=0", r"command line: launcher\.parallel must be >= 1, got 0$"),
        ("tokenizer.codebook_size=0", r"command line: tokenizer\.codebook_size must be >= 1, got 0$"),
        ("data.train_size=0", r"command line: data\.train_size must be >= 1, got 0$"),
        ("generator.label_dropout=1.5", r"command line: generator\.label_dropout must be >= 0 and <= 1, got 1\.5$"),
    ],
)
def test_an_option_out_of_its_range_fails_the_plan(override, pattern):
    """A value of the right type outside its option's range (a count below 1, a learning rate <= 0, a decay
    of 1) is caught when the study is planned, before anything runs, naming the key and the range."""
    with pytest.raises(ConfigError, match=pattern):
        build_plan(REPO_STUDY, "smoke", [override])


def test_ranges_hold_in_study_files_and_nested_training_options(write_study):
    """The range of an option is checked wherever it is set: in a study file (the error names it) and in the
    nested training mappings (an encoder's offline pretraining; SelfBootTok's OT target trained by the
    train_latent_2d stage)."""
    with pytest.raises(ConfigError, match=r"mini\.yaml: config: train\.warmup_steps must be >= 0, got -10"):
        build_plan(write_study("config: {train: {warmup_steps: -10}}"), "smoke")
    with pytest.raises(ConfigError, match=r"tokenizer\.encoder\.pretrain\.lr must be > 0, got 0"):
        build_plan("studies/thesis_table3_mae_init.yaml", "smoke", ["tokenizer.encoder.pretrain.lr=0"])
    with pytest.raises(ConfigError, match=r"tokenizer\.latent_2d\.train\.batch_size must be >= 1, got 0"):
        build_plan("studies/paper_table2_local_aligner.yaml", "repro", ["tokenizer.latent_2d.train.batch_size=0"])
    assert build_plan(REPO_STUDY, "smoke", ["train.warmup_steps=0", "train.grad_clip=0", "eval.num_images=null"])


def test_bounds_read_as_they_check():
    assert Bounds(minimum=1).holds(1) and not Bounds(minimum=1).holds(0)
    assert Bounds(exclusive_minimum=0).holds(1e-9) and not Bounds(exclusive_minimum=0).holds(0)
    assert not Bounds(minimum=0, exclusive_maximum=1).holds(1)
    assert str(Bounds(minimum=0, exclusive_maximum=1)) == ">= 0 and < 1"


def test_profile_errors(tmp_path):
    with pytest.raises(ConfigError, match="known profiles: paper, repro, smoke"):
        build_plan(REPO_STUDY, "smok")
    with pytest.raises(ConfigError, match="no such file"):
        build_plan(tmp_path / "missing.yaml", "smoke")


def test_repro_inherits_the_studys_smoke_blocks():
    """repro.yaml ``inherits: smoke``: a study's smoke shrinking (block and cells) applies under repro,
    then its repro block; the profile file's own settings (the longer training) win over smoke.yaml's."""
    smoke = build_plan(REPO_STUDY, "smoke").cells[0].config
    repro = build_plan(REPO_STUDY, "repro").cells[0].config
    assert repro["tokenizer"]["patch_size"] == smoke["tokenizer"]["patch_size"] == 4  # the study's smoke block
    assert repro["train"]["steps"] == 10 * smoke["train"]["steps"]  # repro.yaml
    assert repro["tokenizer"]["adversarial"] == {**smoke["tokenizer"]["adversarial"], "start": 2500}  # repro block
    aligner = build_plan("studies/paper_table2_local_aligner.yaml", "repro", only="I-JEPA").cells[0].config
    assert aligner["tokenizer"]["align_local"]["init"] == "ijepa"  # the smoke cell's stand-in, inherited
    assert "hidden_size" in aligner["tokenizer"]["align_local"]["stand_in"]


def test_diagnostic_options_at_their_defaults_leave_stage_hashes_alone():
    """Probes and evaluations during training do not change the trained weights: at their defaults they
    are left out of the hash (runs stored before they existed stay valid); set, they are part of it."""
    plan = build_plan(REPO_STUDY, "smoke")
    train = plan.stages[plan.cells[0].stages["train_tokenizer"]]
    assert train.config["train"]["probe_images"] == 8 and "probe_images" not in hashed_config(train.config)["train"]
    assert set(build_plan(REPO_STUDY, "smoke", ["train.probe_images=8", "train.eval_every=0"]).stages) == set(
        plan.stages
    )
    changed = build_plan(REPO_STUDY, "smoke", ["train.eval_every=200"])
    assert {k for k, s in changed.stages.items() if k not in plan.stages and s.kind == "train_tokenizer"}
    with pytest.raises(ConfigError, match=r"command line: train: eval_every \(150\) must be 0 \(off\) or a multiple"):
        build_plan(REPO_STUDY, "smoke", ["train.eval_every=150"])


def test_a_null_that_is_the_default_is_the_same_training():
    """``tokenizer.encoder: null`` (thesis Table 4's "TiTok-64" row) is TiTok's default: that row reuses
    thesis Table 2's K = 64 training instead of training it again under another hash."""
    plan = build_plan(REPO_STUDY, "smoke")
    assert set(build_plan(REPO_STUDY, "smoke", ["tokenizer.encoder=null"]).stages) == set(plan.stages)
    titok64 = build_plan("studies/thesis_table4_initialization.yaml", "smoke", only="TiTok-64").cells[0]
    k64 = next(c for c in plan.cells if c.row == "64")
    assert titok64.config["tokenizer"]["encoder"] is None and "encoder" not in k64.config["tokenizer"]
    assert titok64.stages["train_tokenizer"] == k64.stages["train_tokenizer"]


def test_seeds_replicate_every_row_with_its_own_stages():
    plan = build_plan(REPO_STUDY, "smoke", seeds=2, only="Big")
    assert plan.rows == ["16", "32", "64", "128", "Big dataset"] and len(plan.cells) == 10
    big = [c for c in plan.cells if c.row == "Big dataset"]
    assert [c.label for c in big] == ["Big dataset [seed 0]", "Big dataset [seed 1]"] and all(c.selected for c in big)
    assert len({c.stages["train_tokenizer"] for c in big}) == 2
    single = build_plan(REPO_STUDY, "smoke")  # seed 0 of two seeds is the one-seed run: nothing runs twice
    assert big[0].stages == single.cells[-1].stages
    with pytest.raises(ConfigError, match="at least one seed"):
        build_plan(REPO_STUDY, "smoke", seeds=0)

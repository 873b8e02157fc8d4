"""SelfBootTok's OT target (``tokenizer.latent_2d``) trained on the study's data by a ``train_latent_2d``
stage: the graph, the plan-time checks, the refusal to align to an untrained target, and a run whose
tokenizer aligns to the weights that stage saved."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from conftest import run_cli
from safetensors.torch import load_file

from benchmark.checkpoints import build_tokenizer, load_tokenizer
from benchmark.errors import ConfigError
from benchmark.study import build_plan

TARGET = "{tokenizer: vqgan, size: tiny, bottleneck: kl, embed_dim: 4, train: {steps: 4, batch_size: 4, checkpoint_every: 4}}"
STUDY = f"""
title: OT target trained first
source: tests
config:
  tokenizer: {{name: selfboottok, size: tiny, patch_size: 4, num_latent_tokens: 4, token_size: 4, codebook_size: 32,
              local2d_size: tiny, latent_2d: {TARGET}}}
  train: {{steps: 4, batch_size: 4, checkpoint_every: 4, probe_images: 0}}
  finetune: {{tokenizer: {{stage: 2}}, train: {{steps: 2}}}}
cells:
  - {{label: G, set: {{tokenizer.branches: G}}}}
  - {{label: G + L1 + L2}}
  - {{label: G + L1 + L2 (no C), set: {{tokenizer.local2d_form: queries, tokenizer.causal: false}}}}
stages: [evaluate_tokenizer]
report: {{compute: true}}
"""


def test_the_ot_target_is_one_stage_read_by_the_stages_that_align_to_it(write_study):
    plan = build_plan(write_study(STUDY), "smoke")
    targets = [s for s in plan.stages.values() if s.kind == "train_latent_2d"]
    assert len(targets) == 1 and targets[0].cells == ["G + L1 + L2", "G + L1 + L2 (no C)"]  # not G: no L2 branch
    for stage in plan.stages.values():
        reads = "train_latent_2d" in stage.inputs
        assert reads == (stage.kind in ("train_tokenizer", "finetune_tokenizer") and stage.cells != ["G"]), stage
    untrained = build_plan(write_study(STUDY.replace(", train: {steps: 4, batch_size: 4, checkpoint_every: 4}", "")))
    assert not any(s.kind == "train_latent_2d" for s in untrained.stages.values())


def test_an_ot_term_weighted_0_trains_and_builds_no_target(write_study):
    study = STUDY.replace(
        "  - {label: G, set: {tokenizer.branches: G}}\n", "  - {label: no OT, set: {tokenizer.ot_weight: 0}}\n"
    )
    plan = build_plan(write_study(study), "smoke")
    (target,) = [s for s in plan.stages.values() if s.kind == "train_latent_2d"]
    assert "no OT" not in target.cells
    models = {cell.label: build_tokenizer(cell.config) for cell in plan.cells}
    for label, model in models.items():
        aligns = label != "no OT"
        assert (model.latent_2d is not None) == aligns and model.ot_target_pending == aligns
    assert "ot" not in models["no OT"](torch.rand(2, 3, 32, 32)).losses


def test_the_ot_target_training_is_checked_at_plan_time(write_study):
    def plan(target: str, finetune: str = "{stage: 2}") -> None:
        build_plan(
            write_study(STUDY.replace(TARGET, target).replace("{tokenizer: {stage: 2}", f"{{tokenizer: {finetune}"))
        )

    with pytest.raises(ConfigError, match=r"tokenizer\.latent_2d: set checkpoint .* or train .*, not both"):
        plan("{tokenizer: vqgan, size: tiny, checkpoint: /x.safetensors, train: {steps: 4}}")
    with pytest.raises(ConfigError, match=r"tokenizer\.latent_2d\.train\.stepz: not an option"):
        plan("{tokenizer: vqgan, size: tiny, train: {stepz: 4}}")
    with pytest.raises(ConfigError, match=r"finetune\.tokenizer\.latent_2d\.train: stage 2 trains with stage 1's"):
        plan(TARGET, "{stage: 2, latent_2d: " + TARGET + "}")


def test_an_untrained_ot_target_is_refused_except_for_shapes():
    config = {
        "data": {"resolution": 32},
        "tokenizer": {
            "name": "selfboottok",
            "size": "tiny",
            "latent_2d": {
                "tokenizer": "vqgan",
                "size": "tiny",
                "bottleneck": "kl",
                "embed_dim": 4,
                "train": {"steps": 4},
            },
        },
    }
    model = build_tokenizer(config)
    with pytest.raises(ConfigError, match=r"tokenizer\.latent_2d\.train: the OT target's training .* has not"):
        model(torch.rand(2, 3, 32, 32))
    with torch.device("meta"):
        meta = build_tokenizer(config).to("meta")
        assert "ot" in meta(torch.rand(1, 3, 32, 32)).losses  # plan-time costs: the architecture suffices


@pytest.mark.slow
def test_a_tokenizer_aligns_to_the_ot_target_its_stage_trained(tmp_path, write_study):
    study = write_study(STUDY)
    assert run_cli(study, tmp_path, "--only", "G + L1 + L2 (no C)") == 0
    runs = tmp_path / "runs"
    (target,) = (runs / "train_latent_2d").iterdir()
    weights = load_file(target / "model.safetensors")
    assert not any(k.startswith("adversary.") for k in weights)  # a frozen target: trained without a discriminator
    for kind in ("train_tokenizer", "finetune_tokenizer"):
        (folder,) = (runs / kind).iterdir()
        assert f"the 2D tokenizer trained by train_latent_2d {target.name}" in (folder / "log.txt").read_text()
        assert str(runs) not in (folder / "stage.json").read_text()  # the record holds no run-store path
    # training ran, so the target had its checkpoint (an untrained one is refused); a trained model rebuilt
    # for evaluation, which never aligns, builds without it
    (first,) = (runs / "train_tokenizer").iterdir()
    assert load_tokenizer(first).ot_target_pending
    # the compute table lists the target's training but leaves it out of the tokenizers' total
    compute = pd.read_csv(tmp_path / "results" / "mini" / "_smoke" / "compute.csv").set_index("stage")
    assert compute.loc["train_latent_2d (not in total)", "PFLOPs as run"] > 0
    trained = compute.loc[["train_tokenizer", "finetune_tokenizer"], "PFLOPs as run"].sum()
    assert compute.index[-1] == "total" and compute.loc["total", "PFLOPs as run"] == pytest.approx(trained)
    report = (tmp_path / "results" / "mini" / "_smoke" / "README.md").read_text()
    assert (
        f"tokenizer.latent_2d (OT target): vqgan trained on the study's data in <run store>/train_latent_2d/{target.name}"
        in report
    )

"""The plan-time estimate (benchmark/estimate.py): what each stage is priced with, and that a model shared
by cells is built and counted once."""

from __future__ import annotations

import torch

from benchmark import estimate
from benchmark.checkpoints import build_tokenizer
from benchmark.cost import tokenizer_cost
from benchmark.study import build_plan

ALIGNER_SCALING = """
title: Mini local-aligner scaling
source: tests
config:
  tokenizer: {name: selfboottok, size: tiny, patch_size: 4, num_latent_tokens: 4, token_size: 4,
              codebook_size: 32, local2d_size: tiny}
  finetune: {tokenizer: {stage: 2}, train: {steps: 8}}
axes:
  grid:
    finetune.tokenizer.local2d_size: [tiny, tiny-100M]
label: "{finetune.tokenizer.local2d_size}"
stages: [evaluate_tokenizer]
"""


def _meta_cost(config: dict) -> dict:
    with torch.device("meta"):
        model = build_tokenizer(config).to("meta")
        return tokenizer_cost(model, config["data"]["resolution"], torch.device("meta"))


def test_a_fine_tuned_tokenizer_prices_its_evaluation_and_the_shared_stage_one_is_counted_once(
    write_study, monkeypatch
):
    plan = build_plan(write_study(ALIGNER_SCALING), "smoke")
    built: list[dict] = []
    real = estimate._count_tokenizer
    monkeypatch.setattr(estimate, "_count_tokenizer", lambda config: built.append(config) or real(config))
    costs = estimate.estimate_plan(plan)
    # stage 1 is one model for both cells; each cell's stage 2 is its own
    assert [c["tokenizer"].get("stage") for c in built] == [None, 2, 2]
    assert [c["tokenizer"]["local2d_size"] for c in built] == ["tiny", "tiny", "tiny-100M"]
    evaluated = []
    for cell in plan.cells:
        tuned = {**cell.config, "tokenizer": {**cell.config["tokenizer"], **cell.config["finetune"]["tokenizer"]}}
        count = _meta_cost(tuned)  # the final (stage-2) tokenizer is what evaluation encodes and decodes
        per_image = count["encode_gflops"] + count["decode_gflops"]
        assert costs[cell.stages["evaluate_tokenizer"]].pflops == per_image * cell.config["eval"]["num_images"] / 1e6
        ft = cell.config["finetune"]["train"]["steps"] * cell.config["train"]["batch_size"]
        assert costs[cell.stages["finetune_tokenizer"]].pflops == count["train_step_gflops"] * ft / 1e6
        evaluated.append(per_image)
    assert evaluated[1] > evaluated[0]  # the larger aligner decodes at a larger cost
    assert len({cell.stages["train_tokenizer"] for cell in plan.cells}) == 1

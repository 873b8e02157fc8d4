"""Method versions in stage hashes (benchmark/method_versions.py): bumping a method's version changes the
hashes of the stages that name it and of everything downstream, nothing else; the results index marks a
committed report whose stages changed since."""

from __future__ import annotations

from conftest import MINI_STUDY

from benchmark.pretraining_objectives import OBJECTIVES
from benchmark.registry import ENCODERS, TOKENIZERS
from benchmark.report import stale_note
from benchmark.study import build_plan

TWO_TOKENIZERS = """
config:
  tokenizer: {name: titok, size: tiny, patch_size: 4}
  generator: {name: maskgit, size: tiny}
cells:
  - {label: titok}
  - {label: vqgan, set: {tokenizer: {name: vqgan, size: tiny}}}
  - label: dino init
    set: {tokenizer.encoder: {init: dino, stand_in: {img_size: 32, patch_size: 4, embed_dim: 32, depth: 2, num_heads: 2}, pretrain: {steps: 4}}}
stages: [evaluate_generator]
"""


def bump(monkeypatch, method: type) -> None:
    """The next version of ``method`` (a class), for this test."""
    monkeypatch.setattr(method, "version", getattr(method, "version", 1) + 1, raising=False)


def hashes(plan) -> dict[tuple[str, str], str]:
    return {(c.label, kind): h for c in plan.cells for kind, h in c.stages.items()}


def test_a_bumped_method_changes_its_stages_and_their_downstream_only(write_study, monkeypatch):
    study = write_study(TWO_TOKENIZERS)
    before = hashes(build_plan(study, "smoke"))
    bump(monkeypatch, TOKENIZERS.get("vqgan").obj)
    after = hashes(build_plan(study, "smoke"))
    changed = {key for key in before if before[key] != after[key]}
    assert changed == {
        ("vqgan", k) for k in ("train_tokenizer", "cache_latents", "train_generator", "sample", "evaluate_generator")
    }


def test_an_encoder_entry_or_its_pretraining_objective_bumped(write_study, monkeypatch):
    study = write_study(TWO_TOKENIZERS)
    before = hashes(build_plan(study, "smoke"))
    bump(monkeypatch, OBJECTIVES["dino"])
    after = hashes(build_plan(study, "smoke"))
    assert before[("dino init", "pretrain_encoder")] != after[("dino init", "pretrain_encoder")]
    assert before[("titok", "train_tokenizer")] == after[("titok", "train_tokenizer")]
    monkeypatch.undo()
    bump(monkeypatch, ENCODERS.get("dino").obj)
    third = hashes(build_plan(study, "smoke"))
    assert third[("dino init", "train_tokenizer")] not in (
        before[("dino init", "train_tokenizer")],
        after[("dino init", "train_tokenizer")],
    )


def test_the_index_marks_a_report_whose_stages_changed(write_study, monkeypatch):
    study = write_study(MINI_STUDY)
    plan = build_plan(study, "smoke")
    record = {"profile": "smoke", "overrides": [], "seeds": 1, "plan_seeds": 1}
    record["stages"] = sorted(s.hash for s in plan.ordered_stages())
    assert (
        stale_note(study, record) == "" and stale_note(study, {k: v for k, v in record.items() if k != "stages"}) == ""
    )
    bump(monkeypatch, TOKENIZERS.get("titok").obj)
    assert stale_note(study, record) == f"; stale: 4 of {len(record['stages'])} stages changed since (rerun)"
    monkeypatch.undo()
    gained = write_study(MINI_STUDY.replace("stages: [evaluate_tokenizer]", 'row_stages: {"8": [sample]}'))
    assert stale_note(gained, record) == "; 3 stages added since, not in these results (rerun)"  # cache, train, sample

"""A study whose TiTok encoder starts from a (random-weight, locally saved) MAE checkpoint."""

from __future__ import annotations

import pytest
import timm
import torch
from conftest import TINY
from torch import nn

from benchmark.checkpoints import load_tokenizer
from benchmark.errors import ConfigError
from benchmark.run import main
from benchmark.store import read_json
from benchmark.study import build_plan

pytestmark = pytest.mark.slow


@pytest.fixture
def mae_dir(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("vit_base_patch16_224", pretrained=False, img_size=32, embed_dim=64, depth=2, num_heads=4)
    timm.models.save_for_hf(model, tmp_path / "mae", safe_serialization=True)
    return tmp_path / "mae", model


def test_study_initialises_from_mae_and_records_the_load_report(tmp_path, write_study, mae_dir, capsys):
    folder, source = mae_dir
    study = write_study(f"""
        config:
          tokenizer: {{name: titok, size: tiny, patch_size: 4, num_latent_tokens: 4, encoder: {{init: mae, weights: "{folder}"}}}}
    """)
    runs = tmp_path / "runs"
    args = [str(study), "--profile", "smoke", "--runs", str(runs), "--results", str(tmp_path / "res"), *TINY]
    assert main(args) == 0
    train_dir = next((runs / "train_tokenizer").glob("*"))
    report = read_json(train_dir / "init_report.json")
    assert report["counts"]["copied"] > 0 and report["norm_eps"] == pytest.approx(1e-6)
    adapted = {r["target"] for r in report["rows"] if r["status"] == "adapted"}
    assert {"patch_embed.weight", "positional_embedding"} <= adapted  # patch 16 -> 4, grid 2 -> 4
    assert "encoder initialisation" in (train_dir / "log.txt").read_text()

    model = load_tokenizer(train_dir)
    eps = {m.eps for m in model.encoder.modules() if isinstance(m, nn.LayerNorm)}
    assert eps == {1e-6}  # the source's LayerNorm eps survives the reload


def test_an_attempt_that_failed_before_its_first_checkpoint_is_retried_from_the_pretrained_encoder(
    tmp_path, write_study, mae_dir
):
    """A failed attempt leaves its stage folder with init_report.json but no checkpoint: the retry must copy
    the pretrained weights again, not train a random encoder under a report that says "copied"."""
    folder, _ = mae_dir
    study = write_study(f"""
        config:
          tokenizer: {{name: titok, size: tiny, patch_size: 4, num_latent_tokens: 4, encoder: {{init: mae, weights: "{folder}"}}}}
    """)
    runs = tmp_path / "runs"
    train = build_plan(study, "smoke", list(TINY)).cells[0].stages["train_tokenizer"]
    stale = runs / "train_tokenizer" / train
    stale.mkdir(parents=True)
    (stale / "init_report.json").write_text("{}")  # what the failed attempt wrote before it failed
    assert main([str(study), "--profile", "smoke", "--runs", str(runs), "--results", str(tmp_path / "res"), *TINY]) == 0
    assert "encoder initialisation" in (stale / "log.txt").read_text()
    assert read_json(stale / "init_report.json")["counts"]["copied"] > 0


def test_encoder_spec_is_validated_before_anything_runs(write_study):
    study = write_study("config: {tokenizer: {name: titok, encoder: {init: dinov3}}}")
    with pytest.raises(ConfigError, match=r"tokenizer\.encoder\.init: unknown encoder 'dinov3'.*dinov2"):
        build_plan(study, "smoke")
    study = write_study("config: {tokenizer: {name: titok, encoder: {init: mae, sise: B}}}")
    with pytest.raises(ConfigError, match=r"tokenizer\.encoder\.sise: not an option of encoder 'mae'"):
        build_plan(study, "smoke")

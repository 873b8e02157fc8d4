"""Generation end to end: latent cache, generator training (exact resume), sampling, gFID / IS."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import random_inception_state, run_cli

from benchmark.base import Tokenizer, TokenizerOutput, TokenSpec
from benchmark.config import TrainConfig
from benchmark.latents import LatentDataset, flat_tokens, read_space, unflat_tokens, write_cache
from benchmark.registry import GENERATORS
from benchmark.train import fit

GEN_STUDY = """
title: Mini generation study
source: tests
config:
  tokenizer: {name: titok, size: tiny, codebook_size: 64, num_latent_tokens: 8}
  generator: {name: maskgit, size: tiny}
  generator_train: {steps: 12, batch_size: 16, lr: 1.0e-3, checkpoint_every: 4, log_every: 4, precision: fp32}
  sample: {num_images: 16, batch_size: 8, steps: 4}
profiles:
  smoke:
    eval: {generation_metrics: [gfid, inception_score], inception_weights: INCEPTION}
axes:
  grid:
    sample.cfg_scale: [1.0, 2.0]
label: "cfg {sample.cfg_scale}"
stages: [evaluate_generator]
report:
  tables:
    - name: gen
      row_label: CFG
      columns: {gfid: gFID, is_mean: IS, train_generator.train_step_gflops: GFLOPs per step,
                sample.sample_gflops: GFLOPs per sample}
"""


@pytest.mark.slow
def test_generation_study_shares_cache_and_generator_and_reports_gfid(tmp_path, write_study):
    weights = tmp_path / "inception.pth"
    torch.save(random_inception_state(), weights)
    study = write_study(GEN_STUDY.replace("INCEPTION", str(weights)), name="gen.yaml")
    assert run_cli(study, tmp_path, "sample.num_images=16") == 0
    runs = tmp_path / "runs"
    # One tokenizer, one cache, one generator; one sampling and evaluation per CFG scale.
    counts = {
        kind: len(list((runs / kind).glob("*/result.json")))
        for kind in ("train_tokenizer", "cache_latents", "train_generator", "sample", "evaluate_generator")
    }
    assert counts == {
        "train_tokenizer": 1,
        "cache_latents": 1,
        "train_generator": 1,
        "sample": 2,
        "evaluate_generator": 2,
    }
    sample_dir = next((runs / "sample").glob("*/"))
    images, labels = np.load(sample_dir / "images.npy"), np.load(sample_dir / "labels.npy")
    assert images.shape == (16, 16, 16, 3) and images.dtype == np.uint8 and images.std() > 0
    assert np.bincount(labels).tolist() == [2] * 8  # balanced over the 8 procedural classes
    table = pd.read_csv(tmp_path / "results" / "gen" / "_smoke" / "gen.csv")
    assert table["status"].tolist() == ["ok", "ok"]
    assert (table["gFID"] > 0).all() and (table["IS"] >= 1 - 1e-9).all()
    assert (table["GFLOPs per step"] > 0).all()
    assert table["GFLOPs per sample"].iloc[1] > table["GFLOPs per sample"].iloc[0]  # CFG doubles the batch
    readme = (tmp_path / "results" / "gen" / "_smoke" / "README.md").read_text()
    assert "generated images, labels balanced" in readme and "weights_sha256" in readme
    losses = pd.read_csv(next((runs / "train_generator").glob("*/losses.csv")))
    assert losses["ce"].iloc[-1] < losses["ce"].iloc[0]


class GaussianTokenizer(Tokenizer):
    """Continuous tokens with a known per-token mean and scale, to check the cache's normalisation."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor([[1.0, 5.0], [0.5, 2.0], [3.0, 0.1]]))
        self.token_spec = TokenSpec("continuous", (3,), dim=2)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        x = images.mean((2, 3))[:, :2]  # (B, 2)
        return x[:, None, :] * self.scale[None] * 10 + torch.arange(3.0)[None, :, None]

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens.mean((1, 2))[:, None, None, None].expand(-1, 3, 4, 4)

    def forward(self, images: torch.Tensor) -> TokenizerOutput:
        raise AssertionError("not trained here")


def test_latent_cache_normalises_continuous_tokens_per_position_and_round_trips(tmp_path):
    from benchmark.data import build_dataset

    dataset = build_dataset({"name": "procedural", "resolution": 16, "train_size": 64}, "train")
    model = GaussianTokenizer()
    meta = write_cache(model, dataset, tmp_path, torch.device("cpu"), batch_size=10)
    assert meta["num_items"] == 64 and meta["num_classes"] == 8
    data = LatentDataset(tmp_path)
    tokens = torch.from_numpy(np.array(data.tokens))
    assert tokens.shape == (64, 3, 2)
    torch.testing.assert_close(tokens.mean(0), torch.zeros(3, 2), atol=1e-5, rtol=0)
    torch.testing.assert_close(tokens.std(0), torch.ones(3, 2), atol=1e-4, rtol=0)
    images = torch.stack([dataset[i][0] for i in range(5)])
    with torch.no_grad():
        direct = model.encode(images)
    stats = read_space(tmp_path)[2]  # what sampling denormalises with
    torch.testing.assert_close(stats.denormalize(tokens[:5]), direct, atol=1e-4, rtol=1e-5)
    assert [int(data[i][1]) for i in range(3)] == [dataset[i][1] for i in range(3)]


def test_token_layouts_flatten_and_back():
    grid = TokenSpec("discrete", (2, 3), vocab_size=10)
    ids = torch.arange(12).view(2, 2, 3)
    assert flat_tokens(ids, grid).shape == (2, 6)
    assert torch.equal(unflat_tokens(flat_tokens(ids, grid), grid), ids)
    partial = TokenSpec("continuous", (8,), dim=4, generated=2)
    assert flat_tokens(torch.zeros(1, 8, 4), partial).shape == (1, 2, 4)
    with pytest.raises(ValueError, match="predict the rest"):
        unflat_tokens(torch.zeros(1, 2, 4), partial)


@pytest.mark.parametrize(
    "name, spec",
    [
        ("maskgit", TokenSpec("discrete", (6,), vocab_size=16)),
        ("sit", TokenSpec("continuous", (6,), dim=4)),
    ],
)
def test_generator_training_resumes_to_identical_weights(tmp_path, name, spec):
    torch.manual_seed(0)
    n = 48
    tokens = torch.randint(0, 16, (n, 6)) if spec.kind == "discrete" else torch.randn(n, 6, 4)
    labels = torch.arange(n) % 3
    dataset = torch.utils.data.TensorDataset(tokens, labels)
    cfg = TrainConfig(steps=10, batch_size=8, lr=1e-3, checkpoint_every=4, log_every=2, precision="fp32", ema_decay=0.9)

    def run(folder: Path, stop_at: int | None = None) -> dict[str, torch.Tensor]:
        torch.manual_seed(1)
        model = GENERATORS.build(name, token_spec=spec, num_classes=3, size="tiny")

        def step(batch, i):
            if stop_at is not None and i == stop_at:
                raise KeyboardInterrupt  # killed mid-run, after the checkpoint of step 8
            return model.loss(batch[0], batch[1]), None

        return fit(model, step, dataset, cfg, seed=3, run_dir=folder, device=torch.device("cpu"))[1]

    straight = run(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", stop_at=9)
    resumed = run(tmp_path / "b")
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    rows = pd.read_csv(tmp_path / "b" / "losses.csv")
    assert rows["step"].tolist() == [2, 4, 6, 8, 10]


SCALING_STUDY = """
title: Mini local-aligner scaling
source: tests
config:
  tokenizer: {name: selfboottok, size: tiny, patch_size: 4, num_latent_tokens: 4, token_size: 4,
              codebook_size: 32, local2d_size: tiny}
  generator: {name: sit, size: tiny}
  generator_train: {steps: 60, batch_size: 16, lr: 2.0e-3, checkpoint_every: 60, log_every: 5, precision: fp32}
  finetune: {tokenizer: {stage: 2}, train: {steps: 8}}
  sample: {num_images: 8, batch_size: 8, steps: 2, options: {sampler: ode, method: euler}}
  eval: {generation_metrics: []}
axes:
  grid:
    finetune.tokenizer.local2d_form: [autoregressive, queries]
label: "{finetune.tokenizer.local2d_form}"
stages: [evaluate_tokenizer, evaluate_generator]
report: {compute: true}
"""


@pytest.mark.slow
def test_stage_two_reuses_stage_one_tokens_and_generator(tmp_path, write_study):
    study = write_study(SCALING_STUDY, name="scaling.yaml")
    assert run_cli(study, tmp_path, "sample.num_images=8") == 0
    runs = tmp_path / "runs"
    counts = {
        kind: len(list((runs / kind).glob("*/result.json")))
        for kind in ("train_tokenizer", "finetune_tokenizer", "cache_latents", "train_generator", "sample")
    }
    assert counts == {
        "train_tokenizer": 1,
        "finetune_tokenizer": 2,
        "cache_latents": 1,
        "train_generator": 1,
        "sample": 2,
    }
    from safetensors.torch import load_file

    first = load_file(next((runs / "train_tokenizer").glob("*/model.safetensors")))
    for folder in (runs / "finetune_tokenizer").glob("*/"):
        second = load_file(folder / "model.safetensors")
        frozen = [k for k in first if not k.startswith(("local2d.", "adversary."))]
        assert frozen and all(torch.equal(first[k], second[k]) for k in frozen)
        assert any(
            not torch.equal(first[k], second[k])
            for k in second
            if k.startswith("local2d.") and k in first and first[k].shape == second[k].shape
        )
    flow = pd.read_csv(next((runs / "train_generator").glob("*/losses.csv")))["flow"]
    assert flow.iloc[-3:].mean() < 0.8 * flow.iloc[:3].mean()  # SiT learns the cached global tokens
    assert np.load(next((runs / "sample").glob("*/images.npy"))).std() > 0  # its samples decode to images
    compute = pd.read_csv(tmp_path / "results" / "scaling" / "_smoke" / "compute.csv").set_index("stage")
    # Two cells share one stage-1 tokenizer and one generator: half their compute is saved.
    assert compute.loc["train_generator", "saving (%)"] == pytest.approx(50.0)
    assert compute.loc["train_tokenizer", "saving (%)"] == pytest.approx(50.0)
    assert compute.loc["finetune_tokenizer", "saving (%)"] == pytest.approx(0.0)
    assert compute.loc["total", "PFLOPs as run"] > 0
    # Training the generator once saves one generator's training (the tokenizers train the same either
    # way): the total with a generator per cell is the tokenizers as run plus two generators.
    as_run = compute["PFLOPs as run"]
    generator = as_run["train_generator"]
    assert compute.loc["total", "PFLOPs, a generator per cell"] == pytest.approx(as_run["total"] + generator)
    assert compute.loc["total", "saving, generator once (%)"] == pytest.approx(
        100 * generator / (as_run["total"] + generator)
    )
    assert compute.loc["train_tokenizer", "saving, generator once (%)"] == pytest.approx(0.0)


def test_adversarial_tokenizer_training_resumes_to_identical_weights(tmp_path):
    """Generator and discriminator optimisers, EMA and LeCAM state all come back from the checkpoint."""
    from benchmark.data import build_dataset
    from benchmark.registry import TOKENIZERS
    from benchmark.tokenizer_stages import tokenizer_step

    dataset = build_dataset({"name": "procedural", "resolution": 16, "train_size": 32}, "train")
    cfg = TrainConfig(steps=6, batch_size=8, lr=1e-3, checkpoint_every=2, log_every=2, precision="fp32", ema_decay=0.9)

    def run(folder: Path, stop_at: int | None = None) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = TOKENIZERS.build(
            "titok",
            image_size=16,
            size="tiny",
            patch_size=4,
            num_latent_tokens=4,
            codebook_size=32,
            l2_norm=False,
            entropy_weight=0.01,
            adversarial={
                "kind": "stylegan",
                "weight": 0.1,
                "start": 1,
                "lecam_weight": 0.01,
                "consistency_weight": 1.0,
                "width": 8,
            },
        )
        step_fn = tokenizer_step(model)

        def step(batch, i):
            if stop_at is not None and i == stop_at:
                raise KeyboardInterrupt
            return step_fn(batch, i)

        return fit(
            model, step, dataset, cfg, seed=1, run_dir=folder, device=torch.device("cpu"), adversary=model.adversary
        )[1]

    straight = run(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", stop_at=5)
    resumed = run(tmp_path / "b")
    assert any(k.startswith("adversary.") for k in straight)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    rows = pd.read_csv(tmp_path / "a" / "losses.csv")
    assert {"adversarial", "d_disc", "d_lecam", "d_consistency"} <= set(rows.columns)
    assert rows["d_disc"].iloc[-1] > 0


REPA_STUDY = """
title: SiT with REPA on cached SoftVQ tokens
source: tests
config:
  tokenizer: {name: softvq, size: tiny, patch_size: 4, num_latent_tokens: 4, token_size: 4, codebook_size: 32}
  generator:
    name: sit
    size: tiny
    repa_depth: 1
    repa_dim: 48
    repa_projector_dim: 32
    repa_teacher: {init: dinov2, stand_in: {img_size: 16, patch_size: 4, embed_dim: 48, depth: 1, num_heads: 2}}
  generator_train: {steps: 20, batch_size: 16, lr: 2.0e-3, checkpoint_every: 20, log_every: 5, precision: fp32}
label: REPA
stages: [train_generator]
"""


@pytest.mark.slow
def test_sit_aligns_to_teacher_features_of_the_cached_images(tmp_path, write_study):
    study = write_study(REPA_STUDY, name="repa.yaml")
    assert run_cli(study, tmp_path) == 0
    losses = pd.read_csv(next((tmp_path / "runs" / "train_generator").glob("*/losses.csv")))
    assert {"flow", "repa"} <= set(losses.columns)
    assert losses["repa"].between(-1, 0.5).all() and losses["repa"].iloc[-1] < losses["repa"].iloc[0]

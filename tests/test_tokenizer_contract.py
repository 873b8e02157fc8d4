"""The tokenizer contract, for every registered tokenizer (built from its ``tiny`` options): tokens
shaped as its token_spec says, a bad option named by its key, every loss finite and reaching
parameters, a short training that lowers the reconstruction loss, and an exact resume.
A new plugin file gets these tests by registering a class with ``tiny`` set."""

from __future__ import annotations

import dataclasses
import logging
import re

import pytest
import torch
from conftest import outside_ranges, plain_type
from torch.utils.data import TensorDataset

from benchmark.config import TrainConfig, validate
from benchmark.data import ProceduralShapes
from benchmark.errors import ConfigError
from benchmark.registry import TOKENIZERS
from benchmark.tokenizer_stages import tokenizer_step
from benchmark.train import TrainStep, fit

NAMES = TOKENIZERS.names()
QUIET = logging.getLogger("contract")


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(name: str):
    cls = TOKENIZERS.get(name).obj
    assert cls.tiny, f"tokenizer '{name}' sets no `tiny` options: the contract tests need a tiny instance"
    torch.manual_seed(0)
    return cls(**cls.tiny)


def images(model, n: int = 4, seed: int = 0) -> torch.Tensor:
    """``n`` built-in procedural images (shapes and textures: structure a tokenizer can learn)."""
    data = ProceduralShapes("train", resolution=type(model).tiny["image_size"], seed=seed)
    return torch.stack([data[i][0] for i in range(n)])


@pytest.mark.parametrize("name", NAMES)
def test_tokens_follow_the_token_spec(name):
    model = build(name).eval()
    spec, x = model.token_spec, images(model)
    with torch.no_grad():
        tokens, codes = model.encode_with_codes(x)
        assert torch.equal(tokens, model.encode(x))
        if spec.kind == "discrete":
            assert tokens.shape == (4, *spec.shape) and tokens.dtype == torch.long
            assert 0 <= int(tokens.min()) and int(tokens.max()) < spec.vocab_size
        else:
            assert tokens.shape == (4, *spec.shape, spec.dim) and tokens.is_floating_point()
        sizes = model.codebook_sizes()
        assert set(codes) == set(sizes) and all(int(ids.max()) < sizes[k] for k, ids in codes.items())
        recon = model.decode(tokens)
    assert recon.shape == x.shape and float(recon.min()) >= 0 and float(recon.max()) <= 1
    assert 0 < spec.num_generated <= spec.num_tokens


@pytest.mark.parametrize("name", NAMES)
def test_a_bad_option_is_named_by_its_key(name):
    tiny = {k: v for k, v in TOKENIZERS.get(name).obj.tiny.items() if k != "image_size"}
    where = {"tokenizer.name": "test"}
    validate({"tokenizer": {"name": name, **tiny}}, where)  # the tiny options are valid config
    with pytest.raises(ConfigError, match=r"unknown key 'tokenizer\.no_such_option'"):
        validate({"tokenizer": {"name": name, **tiny, "no_such_option": 1}}, where)
    params = TOKENIZERS.params(name)
    typed = next(k for k, hint in params.items() if plain_type(hint) is int)
    with pytest.raises(ConfigError, match=rf"tokenizer\.{typed} must be int"):
        validate({"tokenizer": {"name": name, typed: "many"}}, where)
    for key, value, bounds in outside_ranges(params):  # a codebook of 0 codes, a negative loss weight
        with pytest.raises(ConfigError, match=rf"tokenizer\.{key} must be {re.escape(str(bounds))}, got"):
            validate({"tokenizer": {"name": name, **tiny, key: value}}, where)


@pytest.mark.parametrize("name", NAMES)
def test_every_loss_is_finite_and_reaches_parameters(name):
    model = build(name).train()
    step = tokenizer_step(model)
    losses, pair = step((images(model),), 0)
    assert losses, "no loss terms"
    for term, loss in losses.items():
        assert loss.ndim == 0 and torch.isfinite(loss), f"{term} is {loss}"
        model.zero_grad()
        loss.backward(retain_graph=True)
        reached = [n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
        assert reached, f"loss term '{term}' reaches no parameter"
    if getattr(model, "adversary", None) is not None:
        assert pair is not None and "adversarial" in losses
        disc = model.adversary.discriminator_loss(pair[0], pair[1].detach(), 0)
        assert all(torch.isfinite(v) for v in disc.values()) and float(disc["disc"].detach()) > 0


def recon_loss(model, x) -> float:
    model.eval()
    with torch.no_grad():
        value = float(model(x).losses["recon"])
    model.train()
    return value


@pytest.mark.parametrize("name", NAMES)
def test_a_short_training_lowers_the_reconstruction_loss(name):
    model = build(name)
    x = images(model, n=8)
    cfg = TrainConfig(steps=40, batch_size=8, lr=3e-3, precision="fp32", grad_clip=1.0)
    trainer = TrainStep(model, tokenizer_step(model), cfg, torch.device("cpu"), getattr(model, "adversary", None))
    before = recon_loss(model, x)
    for i in range(cfg.steps):
        trainer((x,), i)
    after = recon_loss(model, x)
    assert after < 0.8 * before, f"recon {before:.4f} -> {after:.4f}"


@pytest.mark.parametrize("name", NAMES)
def test_training_resumes_exactly(name, tmp_path):
    data = TensorDataset(images(build(name), n=16, seed=1), torch.zeros(16, dtype=torch.long))
    cfg = TrainConfig(steps=6, batch_size=4, lr=1e-3, precision="fp32", checkpoint_every=2, log_every=2, ema_decay=0.9)

    def train(folder, steps):
        model = build(name)
        run = dataclasses.replace(cfg, steps=steps)
        return fit(
            model,
            tokenizer_step(model),
            data,
            run,
            0,
            folder,
            torch.device("cpu"),
            log=QUIET,
            adversary=getattr(model, "adversary", None),
        )[1]

    whole = train(tmp_path / "whole", 6)
    train(tmp_path / "cut", 4)  # stops after the checkpoint of step 4, as a killed job would
    resumed = train(tmp_path / "cut", 6)
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole), "resumed weights differ"

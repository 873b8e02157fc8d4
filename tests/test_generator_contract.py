"""The generator contract, for every registered generator (built from its ``tiny`` options for its
``tiny_token_spec``): samples laid out as the token spec says, a bad option named by its key, every
loss finite and reaching parameters, a short training that lowers the loss, an exact resume.
A new plugin file gets these tests by registering a class with ``tiny`` and ``tiny_token_spec`` set."""

from __future__ import annotations

import dataclasses
import logging
import re

import pytest
import torch
from conftest import outside_ranges, plain_type
from torch.utils.data import TensorDataset

from benchmark.config import TrainConfig, validate
from benchmark.errors import ConfigError
from benchmark.registry import GENERATORS
from benchmark.train import TrainStep, fit

NAMES = GENERATORS.names()
CLASSES = 3
QUIET = logging.getLogger("contract")


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(name: str):
    cls = GENERATORS.get(name).obj
    assert cls.tiny and cls.tiny_token_spec is not None, f"generator '{name}' sets no `tiny` / `tiny_token_spec`"
    torch.manual_seed(0)
    return cls(token_spec=cls.tiny_token_spec, num_classes=CLASSES, **cls.tiny)


def tokens(spec, n: int = 6, seed: int = 0) -> torch.Tensor:
    """``n`` token sequences of the generated part, as the latent cache stores them (B, N[, dim]),
    with a class-dependent structure a generator can learn."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % CLASSES
    if spec.kind == "discrete":
        return (labels[:, None] * 3 + torch.arange(spec.num_generated)) % spec.vocab_size
    base = torch.randn(CLASSES, spec.num_generated, spec.dim, generator=g)
    return base[labels] + 0.05 * torch.randn(n, spec.num_generated, spec.dim, generator=g)


def step_fn(model):
    def step(batch, i):
        return model.loss(batch[0], batch[1]), None

    return step


@pytest.mark.parametrize("name", NAMES)
def test_samples_follow_the_token_spec(name):
    model = build(name).eval()
    spec = model.token_spec
    labels = torch.tensor([0, 1, 2])
    with torch.no_grad():
        out = model.sample(labels, generator=torch.Generator().manual_seed(0))
        again = model.sample(labels, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again), "the same generator seed gives the same samples"
    if spec.kind == "discrete":
        assert out.shape == (3, spec.num_generated) and out.dtype == torch.long
        assert 0 <= int(out.min()) and int(out.max()) < spec.vocab_size
    else:
        assert out.shape == (3, spec.num_generated, spec.dim) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_a_bad_option_is_named_by_its_key(name):
    where = {"generator.name": "test"}
    validate({"generator": {"name": name, **GENERATORS.get(name).obj.tiny}}, where)
    with pytest.raises(ConfigError, match=r"unknown key 'generator\.no_such_option'"):
        validate({"generator": {"name": name, "no_such_option": 1}}, where)
    params = GENERATORS.params(name)
    typed, hint = next((k, plain_type(h)) for k, h in params.items() if plain_type(h) in (float, int))
    with pytest.raises(ConfigError, match=rf"generator\.{typed} must be {hint.__name__}"):
        validate({"generator": {"name": name, typed: "much"}}, where)
    for key, value, bounds in outside_ranges(params):  # a dropout above 1, a negative loss weight
        with pytest.raises(ConfigError, match=rf"generator\.{key} must be {re.escape(str(bounds))}, got"):
            validate({"generator": {"name": name, **GENERATORS.get(name).obj.tiny, key: value}}, where)


@pytest.mark.parametrize("name", NAMES)
def test_every_loss_is_finite_and_reaches_parameters(name):
    model = build(name).train()
    losses = model.loss(tokens(model.token_spec), torch.arange(6) % CLASSES)
    assert losses
    for term, loss in losses.items():
        assert loss.ndim == 0 and torch.isfinite(loss), f"{term} is {loss}"
        model.zero_grad()
        loss.backward(retain_graph=True)
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters()), term


def loss_at(model, x, labels) -> float:
    torch.manual_seed(123)  # the same noise / masks before and after training
    model.eval()
    with torch.no_grad():
        value = float(sum(model.loss(x, labels).values()))
    model.train()
    return value


@pytest.mark.parametrize("name", NAMES)
def test_a_short_training_lowers_the_loss(name):
    model = build(name)
    x, labels = tokens(model.token_spec, n=12), torch.arange(12) % CLASSES
    cfg = TrainConfig(steps=40, batch_size=12, lr=3e-3, precision="fp32", weight_decay=0.0)
    trainer = TrainStep(model, step_fn(model), cfg, torch.device("cpu"))
    before = loss_at(model, x, labels)
    for i in range(cfg.steps):
        trainer((x, labels), i)
    after = loss_at(model, x, labels)
    assert after < 0.8 * before, f"loss {before:.4f} -> {after:.4f}"


@pytest.mark.parametrize("name", NAMES)
def test_training_resumes_exactly(name, tmp_path):
    spec = GENERATORS.get(name).obj.tiny_token_spec
    data = TensorDataset(tokens(spec, n=16, seed=1), torch.arange(16) % CLASSES)
    cfg = TrainConfig(steps=6, batch_size=4, lr=1e-3, precision="fp32", checkpoint_every=2, log_every=2, ema_decay=0.9)

    def train(folder, steps):
        torch.manual_seed(0)
        model = build(name)
        return fit(
            model,
            step_fn(model),
            data,
            dataclasses.replace(cfg, steps=steps),
            0,
            folder,
            torch.device("cpu"),
            log=QUIET,
        )[1]

    whole = train(tmp_path / "whole", 6)
    train(tmp_path / "cut", 4)
    resumed = train(tmp_path / "cut", 6)
    assert all(torch.equal(whole[k], resumed[k]) for k in whole), "resumed weights differ"

"""The training loop's deterministic batch order and learning-rate schedule."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from benchmark.config import TrainConfig
from benchmark.errors import ConfigError, StageError
from benchmark.train import StepBatchSampler, fit, learning_rate


def test_batches_depend_only_on_seed_and_step():
    full = list(StepBatchSampler(10, 3, seed=1, start=0, total=12))
    resumed = list(StepBatchSampler(10, 3, seed=1, start=5, total=12))
    assert resumed == full[5:]
    assert full != list(StepBatchSampler(10, 3, seed=2, start=0, total=12))
    # Each epoch (3 batches of 3 from 10 images) draws distinct images; epochs are reshuffled.
    for epoch in range(4):
        seen = sum(full[3 * epoch : 3 * epoch + 3], [])
        assert len(set(seen)) == 9 and all(0 <= i < 10 for i in seen)
    assert full[:3] != full[3:6]


def test_batch_larger_than_dataset_is_refused():
    with pytest.raises(ConfigError, match="batch_size 64 exceeds the training set's 10 images"):
        StepBatchSampler(10, 64, 0, 0, 5)


def test_warmup_then_constant_or_cosine():
    const = TrainConfig(lr=1.0, warmup_steps=4, steps=20, schedule="constant")
    assert [learning_rate(const, s) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert learning_rate(const, 19) == 1.0
    cos = TrainConfig(lr=1.0, warmup_steps=4, steps=20, schedule="cosine", min_lr_ratio=0.1)
    assert learning_rate(cos, 4) == pytest.approx(1.0)
    assert learning_rate(cos, 12) == pytest.approx(0.55)
    assert learning_rate(cos, 20) == pytest.approx(0.1)
    values = [learning_rate(cos, s) for s in range(4, 21)]
    assert all(a >= b for a, b in zip(values, values[1:]))


class Line(torch.nn.Module):
    """y = w x + b fitted to y = 2 x: a model small enough to follow every step."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1, 1))
        self.b = torch.nn.Parameter(torch.zeros(1))

    def step(self, batch: tuple[torch.Tensor, ...], i: int):
        x = batch[0]
        fake = x @ self.w + self.b
        return {"mse": (fake - 2 * x).pow(2).mean()}, (2 * x, fake)


class Critic(torch.nn.Module):
    """A discriminator whose loss turns NaN at step ``bad`` (its generator-side term is 0)."""

    def __init__(self, bad: int) -> None:
        super().__init__()
        self.scale, self.bad = torch.nn.Parameter(torch.ones(())), bad

    def active(self, step: int) -> bool:
        return True

    def discriminator_loss(self, real, fake, step: int):
        loss = (self.scale * (real - fake)).pow(2).mean()
        return {"loss": loss * float("nan") if step == self.bad else loss}


def data(n: int = 8) -> TensorDataset:
    return TensorDataset(torch.linspace(-1, 1, n)[:, None])


def test_a_non_finite_discriminator_loss_fails_the_run_naming_its_step(tmp_path):
    model, critic = Line(), Critic(bad=2)
    cfg = TrainConfig(steps=6, batch_size=4, lr=0.01, warmup_steps=0, log_every=5, checkpoint_every=5)
    with pytest.raises(StageError, match="non-finite loss at step 2 "):
        fit(model, model.step, data(), cfg, 0, tmp_path, torch.device("cpu"), adversary=critic)
    assert not (tmp_path / "ckpt" / "last.pt").exists()  # caught at step 5, before its checkpoint


def test_checkpoint_callbacks_see_the_ema_weights_and_training_goes_on_with_its_own(tmp_path):
    seen: list[tuple[float, float]] = []
    model = Line()
    cfg = TrainConfig(steps=4, batch_size=4, lr=0.1, warmup_steps=0, ema_decay=0.5, checkpoint_every=2, log_every=2)

    def record(step: int) -> None:
        seen.append((step, float(model.w.detach())))

    _, kept = fit(model, model.step, data(), cfg, 0, tmp_path, torch.device("cpu"), on_checkpoint=record)
    plain = Line()
    fit(
        plain,
        plain.step,
        data(),
        TrainConfig(**{**cfg.__dict__, "ema_decay": 0.0}),
        0,
        tmp_path / "plain",
        torch.device("cpu"),
    )
    assert torch.equal(model.w, plain.w)  # the live weights trained as without the swap
    assert seen[-1] == (4, float(kept["w"])) and seen[-1][1] != float(model.w.detach())  # the EMA's, as the stage keeps


def test_the_batch_size_error_names_the_stages_option():
    with pytest.raises(ConfigError, match="generator_train.batch_size 64 exceeds"):
        StepBatchSampler(10, 64, 0, 0, 5, key="generator_train.batch_size")


def test_a_resume_on_another_number_of_processes_gives_every_rank_its_own_draws(caplog):
    """A checkpoint's per-rank random states are restored rank by rank when the world size is the same;
    from a one-process checkpoint, two ranks are reseeded apart (reusing its one state would give both the
    same noise for the rest of training), and the log says so."""
    import logging

    from benchmark.distributed import World
    from benchmark.train import restore_rng

    log, cpu = logging.getLogger("test"), torch.device("cpu")
    saved = [torch.manual_seed(1).get_state(), torch.manual_seed(2).get_state()]

    def seeded(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return torch.rand(4)

    def draws(rng: tuple, world: World) -> torch.Tensor:
        torch.manual_seed(99)
        restore_rng(rng, world, seed=0, step=4, device=cpu, log=log)
        return torch.rand(4)

    assert torch.equal(draws((saved, None), World(1, 2)), seeded(2))
    one = (saved[0], None)  # a single-process checkpoint's state
    with caplog.at_level(logging.WARNING):
        rank0, rank1 = draws(one, World(0, 2)), draws(one, World(1, 2))
    assert not torch.equal(rank0, rank1) and "resuming on 2" in caplog.text
    assert torch.equal(draws(one, World(0, 1)), seeded(1))

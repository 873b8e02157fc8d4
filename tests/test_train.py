"""The training loop's deterministic batch order and learning-rate schedule."""

from __future__ import annotations

import pytest

from benchmark.config import TrainConfig
from benchmark.errors import ConfigError
from benchmark.train import StepBatchSampler, learning_rate


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

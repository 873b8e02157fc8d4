"""Data-parallel training and sampling with torch.distributed, tested on the CPU with two gloo
processes (the code path of NCCL on GPUs): the same weights as one process on the same global batch,
an exact resume of a killed two-process run, and the same samples from two processes as from one."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli
from safetensors.torch import load_file, save_file
from torch.utils.data import TensorDataset

from benchmark import distributed
from benchmark.config import TrainConfig
from benchmark.data import ProceduralShapes

pytestmark = pytest.mark.slow

# A tokenizer whose loss has no batch statistics and no random draws: one process on the global batch
# and two processes on its halves compute the same mean gradient.
OPTIONS = {
    "image_size": 16,
    "size": "tiny",
    "patch_size": 4,
    "num_latent_tokens": 4,
    "codebook_size": 16,
    "token_size": 4,
}


def train(folder: str, steps: int) -> None:
    """Train the deterministic tiny TiTok for ``steps`` (of 8) steps; rank 0 saves its weights."""
    from benchmark.registry import TOKENIZERS, load_plugins
    from benchmark.tokenizer_stages import tokenizer_step
    from benchmark.train import fit

    world = distributed.init("cpu")
    torch.set_num_threads(1)
    load_plugins()
    data = ProceduralShapes("train", resolution=16, train_size=32)
    images = torch.stack([data[i][0] for i in range(32)])
    torch.manual_seed(0)
    model = TOKENIZERS.build("titok", **OPTIONS)
    cfg = TrainConfig(
        steps=steps, batch_size=8, lr=1e-3, precision="fp32", checkpoint_every=4, log_every=2, schedule="constant"
    )
    _, weights = fit(
        model,
        tokenizer_step(model),
        TensorDataset(images, torch.zeros(32, dtype=torch.long)),
        cfg,
        0,
        Path(folder),
        torch.device("cpu"),
        log=logging.getLogger("ddp"),
    )
    if world.main:
        save_file(weights, str(Path(folder) / f"weights_{steps}.safetensors"))
    distributed.shutdown()


def test_two_processes_train_like_one_on_the_same_global_batch(tmp_path):
    train(str(tmp_path / "one"), 8)
    distributed.spawn(train, (str(tmp_path / "two"), 8), nprocs=2)
    one, two = (load_file(tmp_path / d / "weights_8.safetensors") for d in ("one", "two"))
    assert one.keys() == two.keys()
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-4, atol=1e-5, msg=k)


def test_a_killed_two_process_run_resumes_exactly(tmp_path):
    distributed.spawn(train, (str(tmp_path / "whole"), 8), nprocs=2)
    distributed.spawn(train, (str(tmp_path / "cut"), 4), nprocs=2)  # ends at its checkpoint, as a killed job
    distributed.spawn(train, (str(tmp_path / "cut"), 8), nprocs=2)
    whole, resumed = (load_file(tmp_path / d / "weights_8.safetensors") for d in ("whole", "cut"))
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    log = (tmp_path / "cut" / "losses.csv").read_text().splitlines()
    assert [int(r.split(",")[0]) for r in log[1:]] == [2, 4, 6, 8], "one loss row per logged step, no duplicate"


GENERATION = """
title: generation with two processes
config:
  tokenizer: {name: titok, size: tiny, patch_size: 4, num_latent_tokens: 4, codebook_size: 16}
  generator: {name: maskgit, size: tiny}
stages: [sample]
"""


def test_two_processes_sample_the_same_images_as_one(tmp_path, write_study):
    study = write_study(GENERATION)
    extra = [
        "generator_train.steps=8",
        "generator_train.batch_size=8",
        "runtime.device=cpu",
        "sample.num_images=12",
        "sample.batch_size=4",
        "sample.steps=4",
    ]
    assert run_cli(study, tmp_path / "one", *extra) == 0
    shutil.copytree(tmp_path / "one" / "runs", tmp_path / "two" / "runs")
    sample_dir = next((tmp_path / "two" / "runs" / "sample").iterdir())
    shutil.rmtree(sample_dir)
    assert run_cli(study, tmp_path / "two", *extra, "launcher.stages={sample: {tasks_per_node: 2}}") == 0
    log = (sample_dir / "log.txt").read_text()
    assert "process 1 of 2" in log
    one = np.load(next((tmp_path / "one" / "runs" / "sample").iterdir()) / "images.npy")
    two = np.load(sample_dir / "images.npy")
    assert one.shape == (12, 16, 16, 3) and np.array_equal(one, two)


def test_the_global_batch_must_split_into_equal_shards():
    from benchmark.errors import ConfigError
    from benchmark.train import StepBatchSampler

    shards = [list(StepBatchSampler(32, 8, 0, 0, 3, rank=r, world=2)) for r in range(2)]
    whole = list(StepBatchSampler(32, 8, 0, 0, 3))
    assert [a + b for a, b in zip(*shards)] == whole
    with pytest.raises(ConfigError, match="does not split into 3 equal shards"):
        StepBatchSampler(32, 8, 0, 0, 3, rank=0, world=3)

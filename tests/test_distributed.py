"""Data-parallel stages with torch.distributed, tested on the CPU with two gloo processes (the code path
of NCCL on GPUs): the same weights as one process on the same global batch, an exact resume of a killed
two-process run, and the same latent cache, samples and metrics from two processes as from one."""

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
from benchmark.store import read_json

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


@pytest.fixture
def single_threaded(one_thread: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """This process and those it spawns compute on one thread each: a batch gives the same numbers in
    every process, and no two threads wait on each other on a busy 2-core machine (conftest.one_thread)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def one_then_two(study: Path, tmp_path: Path, kinds: list[str], *extra: str) -> list[tuple[Path, Path]]:
    """Run ``study`` in one process (``tmp_path/one``), then in a copy of its run store (``tmp_path/two``)
    run the stages of ``kinds`` again, in two processes each, after removing them and the cached FID
    reference statistics; the (one, two) folders of those stages."""
    assert run_cli(study, tmp_path / "one", *extra) == 0
    shutil.copytree(tmp_path / "one" / "runs", tmp_path / "two" / "runs")
    shutil.rmtree(tmp_path / "two" / "runs" / "fid_stats", ignore_errors=True)
    pairs = [
        (folder, tmp_path / "two" / "runs" / kind / folder.name)
        for kind in kinds
        for folder in sorted((tmp_path / "one" / "runs" / kind).iterdir())
    ]
    for _, folder in pairs:
        shutil.rmtree(folder)
    two = ", ".join(f"{kind}: {{tasks_per_node: 2}}" for kind in kinds)
    assert run_cli(study, tmp_path / "two", *extra, f"launcher.stages={{{two}}}") == 0
    assert all("process 1 of 2" in (folder / "log.txt").read_text() for _, folder in pairs)
    return pairs


def assert_same_metrics(one: Path, two: Path) -> dict[str, float]:
    """The metrics of two evaluation stage folders agree to 1e-6 (relative); those of ``one``."""
    metrics = read_json(one / "result.json")["metrics"]
    assert read_json(two / "result.json")["metrics"] == pytest.approx(metrics, rel=1e-6)
    return metrics


GENERATION = """
title: generation with two processes
config:
  tokenizer: {name: titok, size: tiny, patch_size: 4, num_latent_tokens: 4, codebook_size: 16}
  generator: {name: maskgit, size: tiny}
stages: [evaluate_generator]
"""


def test_two_processes_sample_and_evaluate_generator_like_one(tmp_path, write_study, weights, single_threaded):
    """The same samples (batch b's noise seeded by b) and gFID: 12 samples and 10 reference images in
    batches of 4, so rank 0 has two batches of each and rank 1 one."""
    extra = [
        "generator_train.steps=8",
        "generator_train.batch_size=8",
        "runtime.device=cpu",
        "sample.num_images=12",
        "sample.batch_size=4",
        "sample.steps=4",
        f"eval.inception_weights={weights}",
        "eval.generation_metrics=[gfid]",
        "eval.num_images=10",
        "eval.batch_size=4",
    ]
    (sample_one, sample_two), (eval_one, eval_two) = one_then_two(
        write_study(GENERATION), tmp_path, ["sample", "evaluate_generator"], *extra
    )
    one, two = np.load(sample_one / "images.npy"), np.load(sample_two / "images.npy")
    assert one.shape == (12, 16, 16, 3) and np.array_equal(one, two)
    assert assert_same_metrics(eval_one, eval_two)["gfid"] > 0
    assert len(list((tmp_path / "two" / "runs" / "fid_stats").iterdir())) == 1  # written once, by rank 0
    protocol = read_json(eval_two / "result.json")["protocol"]
    assert protocol["world_size"] == 2 and protocol["metric_protocols"][0]["num_samples"] == 12


TOKENIZER = """
title: tokenizer evaluation with two processes
config:
  tokenizer: {name: titok, size: tiny, patch_size: 4, num_latent_tokens: 4, codebook_size: 16}
stages: [evaluate_tokenizer]
"""


def test_two_processes_evaluate_a_tokenizer_like_one(tmp_path, write_study, weights, single_threaded):
    """18 eval images in batches of 4: rank 0 evaluates batches 0, 2, 4 (the last of 2 images), rank 1
    batches 1 and 3; PSNR, SSIM, codebook usage and rFID (random-weight Inception) as from one process."""
    extra = [
        "runtime.device=cpu",
        "eval.metrics=[psnr, ssim, codebook_usage, rfid]",
        f"eval.inception_weights={weights}",
        "eval.num_images=18",
        "eval.batch_size=4",
    ]
    [(one, two)] = one_then_two(write_study(TOKENIZER), tmp_path, ["evaluate_tokenizer"], *extra)
    metrics = assert_same_metrics(one, two)
    assert {"psnr", "ssim", "codebook_usage", "rfid"} <= set(metrics)
    assert read_json(two / "codebook_counts.json") == read_json(one / "codebook_counts.json")
    assert (two / "reconstructions.png").read_bytes() == (one / "reconstructions.png").read_bytes()
    protocol = read_json(two / "result.json")["protocol"]
    assert protocol["num_images"] == 18 and protocol["world_size"] == 2


CACHE = """
title: latent caches with two processes
config:
  tokenizer: {name: titok, size: tiny, patch_size: 4, num_latent_tokens: 4, codebook_size: 16, token_size: 4,
              sample_posterior: true}
axes:
  grid:
    tokenizer.bottleneck: [vq, kl]
label: "{tokenizer.bottleneck}"
stages: [cache_latents]
"""


def test_two_processes_cache_the_same_latents_as_one(tmp_path, write_study, single_threaded):
    """Discrete ids (vq) and normalised continuous latents (kl, drawn from the posterior: batch b's draws
    seeded by b) of 150 training images, encoded in batches of 64 (rank 0: batches 0 and 2, rank 1:
    batch 1), with the same per-token statistics."""
    pairs = one_then_two(write_study(CACHE), tmp_path, ["cache_latents"], "runtime.device=cpu", "data.train_size=150")
    kinds = set()
    for one, two in pairs:
        meta, meta_two = read_json(one / "latents.json"), read_json(two / "latents.json")
        kinds.add(meta["token_spec"]["kind"])
        assert np.array_equal(np.load(one / "labels.npy"), np.load(two / "labels.npy"))
        tokens, tokens_two = np.load(one / "tokens.npy"), np.load(two / "tokens.npy")
        assert len(tokens) == meta["num_items"] == meta_two["num_items"] == 150
        if meta["token_spec"]["kind"] == "discrete":
            assert np.array_equal(tokens, tokens_two)
            continue
        np.testing.assert_allclose(tokens_two, tokens, rtol=1e-6, atol=1e-6)
        for key in ("mean", "std"):
            np.testing.assert_allclose(meta_two[key], meta[key], rtol=1e-6, atol=1e-7)
    assert kinds == {"discrete", "continuous"}


def gan_statistics(folder: str) -> None:
    """Each of two ranks holds half of a batch of logits and of a reconstruction; rank r saves its LeCAM
    averages and its adaptive weight."""
    from benchmark.gan import LeCAM, adaptive_weight

    world = distributed.init("cpu")
    real, fake, recon, target, layer = gan_batch()
    half = slice(4 * world.rank, 4 * world.rank + 4)
    lecam = LeCAM()
    lecam.update(real[half], fake[half])
    lecam.update(real[half] + 1, fake[half] - 1)
    nll, g_loss = gan_losses(recon[half], target[half], layer)
    weight = adaptive_weight(nll, g_loss, layer)
    save_file({"ema": torch.stack([lecam.ema_real, lecam.ema_fake]), "weight": weight}, f"{folder}/{world.rank}.st")
    distributed.shutdown()


def gan_batch() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(8, 5, generator=g) + 1, torch.randn(8, 5, generator=g) - 1
    recon, target = torch.randn(8, 3, generator=g), torch.randn(8, 6, generator=g)
    return real, fake, recon, target, torch.randn(6, 3, generator=g).requires_grad_(True)


def gan_losses(recon: torch.Tensor, target: torch.Tensor, layer: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out = recon @ layer.t()
    return (out - target).pow(2).mean(), -out.tanh().mean()


def test_two_processes_keep_the_global_batchs_lecam_averages_and_adaptive_weight(tmp_path):
    """LeCAM's averages and the adaptive GAN weight of two ranks, each on half the batch, are those of one
    process on the whole batch, on both ranks (each rank's own halves would differ, and the generator's
    DDP would then overwrite the averages with rank 0's)."""
    from benchmark.gan import LeCAM, adaptive_weight

    distributed.spawn(gan_statistics, (str(tmp_path),), nprocs=2)
    real, fake, recon, target, layer = gan_batch()
    lecam = LeCAM()
    lecam.update(real, fake)
    lecam.update(real + 1, fake - 1)
    weight = adaptive_weight(*gan_losses(recon, target, layer), layer)
    for rank in (0, 1):
        saved = load_file(str(tmp_path / f"{rank}.st"))
        torch.testing.assert_close(saved["ema"], torch.stack([lecam.ema_real, lecam.ema_fake]))
        torch.testing.assert_close(saved["weight"], weight)


def fill_rows(folder: str, local_world_size: str) -> None:
    """Each rank writes row i = [i, i] of its batches (10 rows in batches of 3) into one SharedRows, as on
    one node or (LOCAL_WORLD_SIZE 1) as on two nodes; rank 0 keeps the result."""
    import os

    os.environ["LOCAL_WORLD_SIZE"] = local_world_size
    world = distributed.init("cpu")
    rows = distributed.SharedRows(Path(folder) / "rows.npy", np.int64, (10, 2), 3, world)
    for batch in distributed.rank_batches(10, 3, world):
        rows.write(batch, np.repeat(np.arange(batch.start, batch.stop)[:, None], 2, axis=1))
    out = rows.finish()
    assert (out is None) != world.main
    if world.main:
        np.save(Path(folder) / "result.npy", np.array(out))
    distributed.shutdown()


@pytest.mark.parametrize("nodes", [1, 2])
def test_rows_written_by_every_rank_come_together_on_one_node_and_across_nodes(tmp_path, nodes):
    """Across nodes each rank writes a file of its own (a shared file system need not keep the pages two
    nodes wrote coherent) that rank 0 joins and removes; on one node they share one memory-mapped file."""
    distributed.spawn(fill_rows, (str(tmp_path), str(2 // nodes)), nprocs=2)
    expected = np.repeat(np.arange(10)[:, None], 2, axis=1)
    assert np.array_equal(np.load(tmp_path / "result.npy"), expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.npy", "rows.npy"]


def dino_center(folder: str) -> None:
    """Each of two ranks runs DINO's loss on half of the same two views; rank r saves its centre."""
    world = distributed.init("cpu")
    dino, views = dino_and_views()
    half = slice(2 * world.rank, 2 * world.rank + 2)
    dino.loss([v[half] for v in views])
    save_file({"center": dino.center}, f"{folder}/{world.rank}.st")
    distributed.shutdown()


def dino_and_views() -> tuple[torch.nn.Module, list[torch.Tensor]]:
    from benchmark.encoder_pretraining import build_objective

    torch.manual_seed(0)
    stand_in = {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}
    dino, _ = build_objective({"init": "dino", "stand_in": stand_in, "pretrain": {"out_dim": 32}})
    g = torch.Generator().manual_seed(1)
    return dino, [torch.rand(4, 3, 16, 16, generator=g) for _ in range(2)]


def test_two_processes_keep_dinos_centre_of_the_global_batch(tmp_path):
    """DINO's teacher centre moves towards the mean output over every rank's views (official update_center
    all-reduces it), the same on both ranks as one process on the whole batch."""
    distributed.spawn(dino_center, (str(tmp_path),), nprocs=2)
    dino, views = dino_and_views()
    dino.loss(views)
    for rank in (0, 1):
        torch.testing.assert_close(load_file(str(tmp_path / f"{rank}.st"))["center"], dino.center)


def test_the_global_batch_must_split_into_equal_shards():
    from benchmark.errors import ConfigError
    from benchmark.train import StepBatchSampler

    shards = [list(StepBatchSampler(32, 8, 0, 0, 3, rank=r, world=2)) for r in range(2)]
    whole = list(StepBatchSampler(32, 8, 0, 0, 3))
    assert [a + b for a, b in zip(*shards)] == whole
    with pytest.raises(ConfigError, match="does not split into 3 equal shards"):
        StepBatchSampler(32, 8, 0, 0, 3, rank=0, world=3)


def test_batches_are_dealt_round_robin_and_interleave_back_in_order():
    whole = distributed.rank_batches(18, 4, distributed.ONE_PROCESS)
    assert whole == [range(0, 4), range(4, 8), range(8, 12), range(12, 16), range(16, 18)]
    shards = [distributed.rank_batches(18, 4, distributed.World(r, 2)) for r in range(2)]
    assert shards == [whole[0::2], whole[1::2]]
    assert distributed.interleave(shards) == whole
    assert distributed.rank_batches(4, 4, distributed.World(1, 2)) == []  # a rank may get nothing

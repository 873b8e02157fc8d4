"""Generator stages: cache the training split's latents once, train a generator on them, sample images
with balanced labels (decoded by the cell's final tokenizer) and evaluate them (gFID / IS).

Caching and sampling run under the inference precision (bf16 autocast on CUDA, TF32 for what stays
float32: benchmark/precision.py), recorded with their results; with ``runtime.compile`` sampling runs
the generator's network compiled (``nn.Module.compile``: each sampler step calls it with the same shapes,
while the sampler's own loop, with its Python step times, stays eager).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from benchmark.base import Generator, TokenSpec
from benchmark.checkpoints import build_generator, build_tokenizer, load_generator, load_tokenizer, save_weights
from benchmark.config import EvalConfig, SampleConfig, TrainConfig
from benchmark.encoder_pretraining import with_pretrained_teachers
from benchmark.graph import is_released_generator
from benchmark.image_grid import save_image_grid
from benchmark.latents import LatentStats, read_space
from benchmark.stage_context import StageContext
from benchmark.store import RunStore, read_json


def cache_latents(ctx: StageContext) -> dict[str, Any]:
    """Encode the training split once with the frozen stage-1 tokenizer (benchmark/latents.py), the
    batches shared by the stage's processes."""
    from benchmark.data import build_dataset
    from benchmark.latents import write_cache

    folder = ctx.input_dir("train_tokenizer")
    model = load_tokenizer(folder, ctx.device)
    data = read_json(folder / "tokenizer.json")["data"]
    dataset = build_dataset(data, "train")
    t0 = time.perf_counter()
    meta = write_cache(
        model,
        dataset,
        ctx.dir,
        ctx.device,
        num_workers=ctx.runtime.get("num_workers", 0),
        data=data,
        world=ctx.world,
        seed=read_json(folder / "stage.json")["config"]["seed"],  # the tokenizer's cell seed
    )
    if not ctx.world.main:
        return {}
    return {
        "num_items": meta["num_items"],
        "num_classes": meta["num_classes"],
        "token_spec": meta["token_spec"],
        "precision": meta["precision"],
        "cache_seconds": time.perf_counter() - t0,
        "world_size": ctx.world.size,
    }


def generator_step(model: Generator) -> Callable:
    """The trainer's step for a generator on batches (tokens, labels[, images]): its loss terms; with a
    REPA teacher the loss gets the teacher's patch features of the images (with REG also its class token)."""
    teacher = getattr(model, "repa_teacher", None)
    reg = bool(getattr(model, "reg", False))

    def step(batch: tuple[Tensor, ...], i: int) -> tuple[dict[str, Tensor], None]:
        if teacher is None:
            return model.loss(batch[0], batch[1]), None
        if reg:  # REG: the teacher's class token of each image, from the same pass as its patch features
            features, cls = teacher.teacher_features(batch[2], class_token=True)
            return model.loss(batch[0], batch[1], features=features, class_token=cls), None
        return model.loss(batch[0], batch[1], features=teacher.teacher_features(batch[2])), None

    return step


def train_generator(ctx: StageContext) -> dict[str, Any]:
    from benchmark.cost import generator_cost, training_pflops
    from benchmark.latents import LatentDataset

    cfg = ctx.config
    torch.manual_seed(cfg["seed"])
    if is_released_generator(cfg):
        return install_released_generator(ctx)
    data = LatentDataset(ctx.input_dir("cache_latents"))
    model = build_generator(with_pretrained_teachers(cfg, ctx), data.spec, data.num_classes)
    if getattr(model, "repa_teacher", None) is not None:  # REPA: the teacher sees the images the tokens came from
        from benchmark.data import build_dataset

        data = LatentDataset(ctx.input_dir("cache_latents"), build_dataset(data.meta["data"], "train"))

    train_cfg = TrainConfig(**cfg["generator_train"])
    t0 = time.perf_counter()
    terms, weights = ctx.fit(model, generator_step(model), data, train_cfg, batch_key="generator_train.batch_size")
    seconds = time.perf_counter() - t0
    if not ctx.world.main:
        return {}
    save_weights(ctx.dir, weights)
    tokens, label = data[0][:2]
    model.train()
    cost = generator_cost(model, tokens[None].to(ctx.device), label[None].to(ctx.device))
    cost["train_pflops"] = training_pflops(cost, train_cfg.steps, train_cfg.batch_size)
    return {"final_losses": terms, "train_seconds": seconds, "train_items": len(data), "cost": cost}


def install_released_generator(ctx: StageContext) -> dict[str, Any]:
    """A released generator (generators/released.py) installed in the token space of the cell's
    tokenizer (its token spec, the classes of its training data), not trained (benchmark/release_install.py)."""
    from benchmark.data import build_dataset
    from benchmark.release_install import install_generator

    if not ctx.world.main:  # nothing to compute: one process writes the folder
        return {}
    config = read_json(ctx.input_dir("train_tokenizer") / "tokenizer.json")
    with torch.device("meta"):
        spec = build_tokenizer(config).token_spec
    classes = build_dataset(config["data"], "train").num_classes
    return install_generator(build_generator(ctx.config, spec, classes), ctx.dir, spec, classes, config["data"])


def generator_space(folder: Path, record: dict[str, Any], store: RunStore) -> tuple[TokenSpec, int, LatentStats]:
    """The token space the generator in ``folder`` (``record``: its stage.json) models
    (benchmark.latents.read_space): its latent cache's, or, for a folder trained on none (a converted or
    installed release), the one it records itself."""
    cache = record.get("inputs", {}).get("cache_latents")
    return read_space(store.dir("cache_latents", cache) if cache else folder)


def balanced_labels(n: int, num_classes: int) -> Tensor:
    """Class i mod C for image i: every class equally often (up to one)."""
    return torch.arange(n) % num_classes


@torch.no_grad()
def sample(ctx: StageContext) -> dict[str, Any]:
    """``sample.num_images`` generated images (uint8, memory-mapped ``images.npy``) and their labels,
    decoded through the cell's final tokenizer.

    Batch b draws its noise from a generator seeded with (seed, b), so the images do not depend on
    how batches are shared out: with several processes, rank r generates batches b = r mod world
    into the same memory-mapped file (across nodes, a file of its own that rank 0 joins)."""
    from benchmark import distributed
    from benchmark.cost import gflops
    from benchmark.latents import unflat_tokens
    from benchmark.precision import InferencePrecision

    cfg = SampleConfig(**ctx.config["sample"])
    trained = read_json(ctx.input_dir("train_generator") / "stage.json")
    spec, num_classes, stats = generator_space(ctx.input_dir("train_generator"), trained, ctx.store)
    generator = load_generator(ctx.input_dir("train_generator"), spec, num_classes, ctx.device)
    tokenizer = load_tokenizer(ctx.tokenizer_dir(), ctx.device)
    # a generator may need float32 whatever sample.precision says (SiT predicting noise or a score)
    needs = generator.sample_precision
    if needs and needs != cfg.precision:
        ctx.log.info(
            "sampling in %s, not sample.precision %s: %s", needs, cfg.precision, generator.sample_precision_why
        )
    precision = InferencePrecision(ctx.device, needs or cfg.precision)
    labels = balanced_labels(cfg.num_images, num_classes)
    one = labels[:1].to(ctx.device)
    options = {"cfg_scale": cfg.cfg_scale, "steps": cfg.steps, **cfg.options}
    sample_gflops = (  # counted on the eager network, before it is compiled
        gflops(lambda: generator.sample(one, generator=torch.Generator(device=ctx.device).manual_seed(0), **options))
        if ctx.world.main
        else 0.0
    )
    compiled = bool(ctx.runtime.get("compile", False))
    if compiled:
        generator.compile()
    res = read_json(ctx.tokenizer_dir() / "tokenizer.json")["data"]["resolution"]
    tmp = ctx.dir / "images.tmp.npy"
    rows_out = distributed.SharedRows(tmp, np.uint8, (cfg.num_images, res, res, 3), cfg.batch_size, ctx.world)
    t0 = time.perf_counter()
    for rows in distributed.rank_batches(cfg.num_images, cfg.batch_size, ctx.world):
        y = labels[rows.start : rows.stop].to(ctx.device)
        rng = torch.Generator(device=ctx.device).manual_seed(
            distributed.derived_seed(cfg.seed, rows.start // cfg.batch_size)
        )
        with precision():
            seq = generator.sample(y, generator=rng, **options)
            out = tokenizer.decode(unflat_tokens(stats.denormalize(seq), spec))
        rows_out.write(rows, (out.float().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy())
    seconds = time.perf_counter() - t0
    images = rows_out.finish()
    if images is None:  # not rank 0
        return {}
    first = torch.from_numpy(np.array(images[:16])).permute(0, 3, 1, 2) / 255
    del images
    tmp.replace(ctx.dir / "images.npy")
    np.save(ctx.dir / "labels.npy", labels.numpy())
    save_image_grid(first, ctx.dir / "samples.png", nrow=8)
    return {
        "num_images": cfg.num_images,
        "sample_seconds": seconds,
        "images_per_second": cfg.num_images / seconds,
        "cost": {"sample_gflops": sample_gflops},
        "protocol": {
            "num_images": cfg.num_images,
            "labels": "balanced (i mod C)",
            "noise": "batch b seeded with seed * 1000003 + b",
            "seed": cfg.seed,
            "cfg_scale": cfg.cfg_scale,
            "steps": cfg.steps,
            "sampler": cfg.options,
            "generator": trained["config"]["generator"],
            "precision": precision.describe(),
            "compiled": compiled,
        },
    }


@torch.no_grad()
def evaluate_generator(ctx: StageContext) -> dict[str, Any]:
    """gFID and Inception Score of the stored samples against the reference statistics, in batches of
    ``eval.batch_size`` shared by the stage's processes."""
    from benchmark.fid import generation_metrics

    cfg = EvalConfig(**ctx.config["eval"])
    folder = ctx.input_dir("sample")
    images = np.load(folder / "images.npy", mmap_mode="r")
    results, protocol = generation_metrics(
        images,
        cfg,
        ctx.config["data"],
        ctx.store.root / "fid_stats",
        ctx.device,
        ctx.runtime.get("num_workers", 0),
        cfg.batch_size,
        ctx.world,
    )
    if not ctx.world.main:
        return {}
    protocol["sampling"] = read_json(folder / "result.json")["protocol"]
    return {"metrics": results, "protocol": protocol}

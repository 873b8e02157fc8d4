"""Stage bodies: what each kind of stage does (the graph of kinds and their dependencies is in
benchmark/graph.py). Each body takes a :class:`StageContext` and returns the stage's result record.

    train_tokenizer      build (pretrained init), train, save the tokenizer folder
    finetune_tokenizer   SelfBootTok stage 2: start from stage 1, train what it leaves trainable
    evaluate_tokenizer   reconstruction metrics on the eval split (benchmark/tokenizer_eval.py)
    cache_latents        encode the training split once (benchmark/latents.py)
    train_generator      train a generator on the cached latents
    sample               generate images with balanced labels, decoded by the final tokenizer
    evaluate_generator   gFID / IS of the samples (benchmark/fid.py)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import Tensor

from benchmark.base import Tokenizer
from benchmark.checkpoints import (
    build_generator,
    build_tokenizer,
    load_generator,
    load_tokenizer,
    restore_architecture,
    save_tokenizer,
    save_weights,
)
from benchmark.config import EvalConfig, SampleConfig, TrainConfig
from benchmark.distributed import World
from benchmark.errors import StageError
from benchmark.image_grid import save_image_grid
from benchmark.store import RunStore, read_json, write_json


@dataclass
class StageContext:
    """What a running stage sees: its record, its folder, the store, a logger and its place among
    the data-parallel processes (rank 0 alone writes to the store)."""

    kind: str
    hash: str
    config: dict[str, Any]
    inputs: dict[str, str]
    runtime: dict[str, Any]
    dir: Path
    store: RunStore
    log: logging.Logger
    world: World = World()

    def input_dir(self, kind: str) -> Path:
        return self.store.dir(kind, self.inputs[kind])

    def tokenizer_dir(self) -> Path:
        """The folder of the cell's final tokenizer (finetuned when the cell has that stage)."""
        return self.input_dir("finetune_tokenizer" if "finetune_tokenizer" in self.inputs else "train_tokenizer")

    @property
    def device(self) -> torch.device:
        from benchmark.distributed import device as pick_device

        return pick_device(self.runtime.get("device", "auto"))


# ---------------------------------------------------------------------------------------------
# Tokenizers: train, finetune, evaluate


def initialize_pretrained(model: Tokenizer, ctx: StageContext) -> None:
    """Copy the pretrained weights named by ``tokenizer.encoder`` into ``model.encoder`` and store
    the load report (copied / adapted / new / ignored parameters) as ``init_report.json``."""
    from benchmark.encoders import initialize_encoder

    report = initialize_encoder(model.encoder, model.encoder_init)
    ctx.log.info("encoder initialisation:\n%s", report.table())
    if ctx.world.main:
        write_json(ctx.dir / "init_report.json", report.to_dict())


def tokenizer_step(model: Tokenizer) -> Callable:
    """The trainer's step for a tokenizer: its weighted losses plus, when it has an adversary, the
    adaptively weighted generator term and the (real, fake) pair for the discriminator step."""
    from benchmark.objectives import NLL_TERMS

    adversary = getattr(model, "adversary", None)

    def step(batch: tuple[Tensor, ...], i: int) -> tuple[dict[str, Tensor], tuple[Tensor, Tensor] | None]:
        images = batch[0]
        out = model(images)
        losses = dict(out.losses)
        if adversary is None:
            return losses, None
        nll = sum(losses[k] for k in NLL_TERMS if k in losses)
        losses["adversarial"] = adversary.generator_loss(out.recon, nll, model.last_layer(), i)
        return losses, (images, out.recon)

    return step


def preview_saver(model: Tokenizer, images: Tensor, folder: Path) -> Callable[[int], None]:
    """Saves originals over reconstructions of a fixed batch as ``samples/step_<step>.png`` (seven digits)."""

    def save(step: int) -> None:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            recons = model.reconstruct(images.to(next(model.parameters()).device)).float().cpu()
        model.train(was_training)
        save_image_grid(torch.cat([images, recons]), folder / "samples" / f"step_{step:07d}.png", nrow=len(images))

    return save


def _train(model: Tokenizer, ctx: StageContext, cfg: dict[str, Any], train_cfg: TrainConfig) -> dict[str, Any]:
    from benchmark.cost import tokenizer_cost, training_pflops
    from benchmark.data import build_dataset
    from benchmark.train import fit

    dataset = build_dataset(cfg["data"], "train")
    preview = torch.stack([dataset[i][0] for i in range(min(8, len(dataset)))])
    t0 = time.perf_counter()
    terms, weights = fit(
        model,
        tokenizer_step(model),
        dataset,
        train_cfg,
        cfg["seed"],
        ctx.dir,
        ctx.device,
        ctx.runtime.get("num_workers", 0),
        ctx.log,
        ctx.runtime.get("compile", False),
        adversary=getattr(model, "adversary", None),
        on_checkpoint=preview_saver(model, preview, ctx.dir),
        find_unused_parameters=ctx.runtime.get("find_unused_parameters", False),
    )
    seconds = time.perf_counter() - t0
    if not ctx.world.main:
        return {}
    save_tokenizer(ctx.dir, cfg, weights)
    model.load_state_dict(weights)
    model.eval()
    cost = tokenizer_cost(model, cfg["data"]["resolution"], ctx.device)
    cost["train_pflops"] = training_pflops(cost, train_cfg.steps, train_cfg.batch_size)
    return {
        "final_losses": terms,
        "train_seconds": seconds,
        "train_images": len(dataset),
        "params": sum(p.numel() for p in model.parameters()),
        "cost": cost,
    }


def train_tokenizer(ctx: StageContext) -> dict[str, Any]:
    cfg = ctx.config
    torch.manual_seed(cfg["seed"])
    model = build_tokenizer(cfg)
    if getattr(model, "encoder_init", None):
        if (ctx.dir / "init_report.json").is_file():  # resuming: the checkpoint holds the weights
            restore_architecture(model, ctx.dir)
        else:
            initialize_pretrained(model, ctx)
    return _train(model, ctx, cfg, TrainConfig(**cfg["train"]))


def finetune_tokenizer(ctx: StageContext) -> dict[str, Any]:
    """Stage 2 of a tokenizer (SelfBootTok Sec. 3.4): start from the stage-1 weights, train what the
    finetuned tokenizer leaves trainable, and check that its tokens did not change."""
    first_dir = ctx.input_dir("train_tokenizer")
    first = read_json(first_dir / "tokenizer.json")
    base_train = read_json(first_dir / "stage.json")["config"]["train"]
    cfg = {
        "seed": ctx.config["seed"],
        "data": first["data"],
        "tokenizer": {**first["tokenizer"], **ctx.config["finetune"]["tokenizer"]},
    }
    torch.manual_seed(cfg["seed"])
    model = build_tokenizer(cfg)
    restore_architecture(model, first_dir)
    state = load_file(first_dir / "model.safetensors")
    if hasattr(model, "load_stage1"):
        skipped = model.load_stage1(state)
        ctx.log.info("stage-1 weights loaded; not copied (resized or new): %s", skipped)
    else:
        model.load_state_dict(state)
    if (
        first_dir / "init_report.json"
    ).is_file() and ctx.world.main:  # the finetuned folder restores the same architecture
        write_json(ctx.dir / "init_report.json", read_json(first_dir / "init_report.json"))
    result = _train(model, ctx, cfg, TrainConfig(**{**base_train, **ctx.config["finetune"]["train"]}))
    if ctx.world.main:
        _check_same_tokens(load_tokenizer(first_dir, ctx.device), model, cfg)
    return result


@torch.no_grad()
def _check_same_tokens(before: Tokenizer, after: Tokenizer, cfg: dict[str, Any]) -> None:
    from benchmark.data import build_dataset

    dataset = build_dataset(cfg["data"], "eval")
    images = torch.stack([dataset[i][0] for i in range(min(8, len(dataset)))]).to(next(after.parameters()).device)
    if not torch.equal(before.encode(images), after.encode(images)):
        raise StageError(
            "finetune_tokenizer changed the tokens: a finetune stage must freeze the encoder "
            "(generators trained on the stage-1 tokens would no longer match)"
        )


# ---------------------------------------------------------------------------------------------
# Tokenizer evaluation


def evaluate_tokenizer(ctx: StageContext) -> dict[str, Any]:
    """Reconstruction metrics of the cell's final tokenizer on the eval split; keeps the preview grid
    and the per-code usage counts (for the codebook analyses, thesis Fig. 10)."""
    from benchmark.tokenizer_eval import evaluate_tokenizer as evaluate

    t0 = time.perf_counter()
    evaluation = evaluate(
        ctx.tokenizer_dir(),
        ctx.config["data"],
        EvalConfig(**ctx.config["eval"]),
        ctx.device,
        num_workers=ctx.runtime.get("num_workers", 0),
    )
    if evaluation.histograms:
        write_json(ctx.dir / "codebook_counts.json", evaluation.histograms)
    if evaluation.preview is not None:
        save_image_grid(evaluation.preview, ctx.dir / "reconstructions.png", nrow=len(evaluation.preview) // 2)
    return {"metrics": evaluation.metrics, "protocol": evaluation.protocol, "eval_seconds": time.perf_counter() - t0}


# ---------------------------------------------------------------------------------------------
# Generators: latent cache, training, sampling, evaluation


def cache_latents(ctx: StageContext) -> dict[str, Any]:
    """Encode the training split once with the frozen stage-1 tokenizer (benchmark/latents.py)."""
    from benchmark.data import build_dataset
    from benchmark.latents import write_cache

    folder = ctx.input_dir("train_tokenizer")
    model = load_tokenizer(folder, ctx.device)
    data = read_json(folder / "tokenizer.json")["data"]
    dataset = build_dataset(data, "train")
    t0 = time.perf_counter()
    meta = write_cache(model, dataset, ctx.dir, ctx.device, num_workers=ctx.runtime.get("num_workers", 0), data=data)
    return {
        "num_items": meta["num_items"],
        "num_classes": meta["num_classes"],
        "token_spec": meta["token_spec"],
        "cache_seconds": time.perf_counter() - t0,
    }


def train_generator(ctx: StageContext) -> dict[str, Any]:
    from benchmark.cost import generator_cost, training_pflops
    from benchmark.latents import LatentDataset
    from benchmark.train import fit

    cfg = ctx.config
    torch.manual_seed(cfg["seed"])
    data = LatentDataset(ctx.input_dir("cache_latents"))
    model = build_generator(cfg, data.spec, data.num_classes)
    teacher = getattr(model, "repa_teacher", None)
    if teacher is not None:  # REPA: the teacher sees the images the cached tokens came from
        from benchmark.data import build_dataset

        data = LatentDataset(ctx.input_dir("cache_latents"), build_dataset(data.meta["data"], "train"))

    reg = bool(getattr(model, "reg", False))

    def step(batch: tuple[Tensor, ...], i: int) -> tuple[dict[str, Tensor], None]:
        if teacher is None:
            return model.loss(batch[0], batch[1]), None
        if reg:  # REG: the teacher's class token of each image, from the same pass as its patch features
            features, cls = teacher.teacher_features(batch[2], class_token=True)
            return model.loss(batch[0], batch[1], features=features, class_token=cls), None
        return model.loss(batch[0], batch[1], features=teacher.teacher_features(batch[2])), None

    t0 = time.perf_counter()
    terms, weights = fit(
        model,
        step,
        data,
        TrainConfig(**cfg["generator_train"]),
        cfg["seed"],
        ctx.dir,
        ctx.device,
        ctx.runtime.get("num_workers", 0),
        ctx.log,
        ctx.runtime.get("compile", False),
        find_unused_parameters=ctx.runtime.get("find_unused_parameters", False),
    )
    seconds = time.perf_counter() - t0
    if not ctx.world.main:
        return {}
    save_weights(ctx.dir, weights)
    tokens, label = data[0][:2]
    model.train()
    cost = generator_cost(model, tokens[None].to(ctx.device), label[None].to(ctx.device))
    train_cfg = TrainConfig(**cfg["generator_train"])
    cost["train_pflops"] = training_pflops(cost, train_cfg.steps, train_cfg.batch_size)
    return {"final_losses": terms, "train_seconds": seconds, "train_items": len(data), "cost": cost}


def balanced_labels(n: int, num_classes: int) -> Tensor:
    """Class i mod C for image i: every class equally often (up to one)."""
    return torch.arange(n) % num_classes


@torch.no_grad()
def sample(ctx: StageContext) -> dict[str, Any]:
    """``sample.num_images`` generated images (uint8, memory-mapped ``images.npy``) and their labels,
    decoded through the cell's final tokenizer.

    Batch b draws its noise from a generator seeded with (seed, b), so the images do not depend on
    how batches are shared out: with several processes, rank r generates batches b = r mod world
    into the same memory-mapped file."""
    from benchmark import distributed
    from benchmark.cost import gflops
    from benchmark.latents import LatentDataset, unflat_tokens

    cfg = SampleConfig(**ctx.config["sample"])
    trained = read_json(ctx.input_dir("train_generator") / "stage.json")
    latents = LatentDataset(ctx.store.dir("cache_latents", trained["inputs"]["cache_latents"]))
    stats = latents.stats()
    generator = load_generator(ctx.input_dir("train_generator"), latents.spec, latents.num_classes, ctx.device)
    tokenizer = load_tokenizer(ctx.tokenizer_dir(), ctx.device)
    labels = balanced_labels(cfg.num_images, latents.num_classes)
    res = read_json(ctx.tokenizer_dir() / "tokenizer.json")["data"]["resolution"]
    tmp = ctx.dir / "images.tmp.npy"
    shape = (cfg.num_images, res, res, 3)
    if ctx.world.main:
        np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape).flush()
    distributed.barrier()
    images = np.lib.format.open_memmap(tmp, mode="r+")
    t0 = time.perf_counter()
    starts = range(0, cfg.num_images, cfg.batch_size)
    for b in range(ctx.world.rank, len(starts), ctx.world.size):
        start = starts[b]
        y = labels[start : start + cfg.batch_size].to(ctx.device)
        rng = torch.Generator(device=ctx.device).manual_seed(cfg.seed * 1_000_003 + b)
        seq = generator.sample(y, cfg_scale=cfg.cfg_scale, steps=cfg.steps, generator=rng, **cfg.options)
        out = tokenizer.decode(unflat_tokens(stats.denormalize(seq), latents.spec))
        images[start : start + len(y)] = (
            (out.float().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        )
    seconds = time.perf_counter() - t0
    images.flush()
    distributed.barrier()
    if not ctx.world.main:
        return {}
    first = torch.from_numpy(np.array(images[:16])).permute(0, 3, 1, 2) / 255
    del images
    tmp.replace(ctx.dir / "images.npy")
    np.save(ctx.dir / "labels.npy", labels.numpy())
    save_image_grid(first, ctx.dir / "samples.png", nrow=8)
    one = labels[:1].to(ctx.device)
    sample_gflops = gflops(
        lambda: generator.sample(
            one,
            cfg_scale=cfg.cfg_scale,
            steps=cfg.steps,
            generator=torch.Generator(device=ctx.device).manual_seed(0),
            **cfg.options,
        )
    )
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
        },
    }


@torch.no_grad()
def evaluate_generator(ctx: StageContext) -> dict[str, Any]:
    """gFID and Inception Score of the stored samples against the reference statistics."""
    from benchmark.fid import generation_metrics

    cfg = EvalConfig(**ctx.config["eval"])
    folder = ctx.input_dir("sample")
    images = np.load(folder / "images.npy", mmap_mode="r")
    results, protocol = generation_metrics(
        images, cfg, ctx.config["data"], ctx.store.root / "fid_stats", ctx.device, ctx.runtime.get("num_workers", 0)
    )
    protocol["sampling"] = read_json(folder / "result.json")["protocol"]
    return {"metrics": results, "protocol": protocol}


BODIES: dict[str, Callable[[StageContext], dict[str, Any]]] = {
    "train_tokenizer": train_tokenizer,
    "finetune_tokenizer": finetune_tokenizer,
    "evaluate_tokenizer": evaluate_tokenizer,
    "cache_latents": cache_latents,
    "train_generator": train_generator,
    "sample": sample,
    "evaluate_generator": evaluate_generator,
}

"""Stage kinds: what each depends on (config sections and upstream stages) and what it does.

    train_tokenizer ─► finetune_tokenizer (optional, SelfBootTok stage 2) ─► evaluate_tokenizer
          └──────► cache_latents ─► train_generator ─► sample ─► evaluate_generator
                                                       (decodes through the final tokenizer)

A stage's hash covers exactly ``select(config)`` and its inputs' hashes, so cells that share a
tokenizer share its training and its latent cache, and a finished stage is never run twice. The
need ``tokenizer`` means the cell's final tokenizer: ``finetune_tokenizer`` when the cell has a
``finetune`` stage, else ``train_tokenizer``. Latents always come from ``train_tokenizer``: a
finetune stage must leave the tokens unchanged (it checks), so one generator serves every finetuned
variant (the SelfBootTok paper's Fig. 6 trains its generator once for five local-aligner sizes).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from benchmark.base import Generator, Tokenizer
from benchmark.config import EvalConfig, SampleConfig, TrainConfig
from benchmark.errors import StageError
from benchmark.registry import GENERATORS, TOKENIZERS
from benchmark.store import RunStore, atomic_write, read_json, write_json

TOKENIZER_FILES = ("tokenizer.json", "model.safetensors")


@dataclass
class StageContext:
    """What a running stage sees: its record, its folder, the store and a logger."""

    kind: str
    hash: str
    config: dict[str, Any]
    inputs: dict[str, str]
    runtime: dict[str, Any]
    dir: Path
    store: RunStore
    log: logging.Logger

    def input_dir(self, kind: str) -> Path:
        return self.store.dir(kind, self.inputs[kind])

    def tokenizer_dir(self) -> Path:
        """The folder of the cell's final tokenizer (finetuned when the cell has that stage)."""
        return self.input_dir("finetune_tokenizer" if "finetune_tokenizer" in self.inputs else "train_tokenizer")

    @property
    def device(self) -> torch.device:
        from benchmark.train import pick_device

        return pick_device(self.runtime.get("device", "auto"))


@dataclass(frozen=True)
class StageKind:
    name: str
    sections: tuple[str, ...]
    needs: tuple[str, ...]
    run: Callable[[StageContext], dict[str, Any]]
    version: int = 1
    gpu: bool = True

    def select(self, config: dict[str, Any]) -> dict[str, Any]:
        return {s: config[s] for s in self.sections}

    def inputs(self, config: dict[str, Any]) -> tuple[str, ...]:
        """The stage kinds this one reads, with ``tokenizer`` resolved for this config."""
        final = "finetune_tokenizer" if has_finetune(config) else "train_tokenizer"
        return tuple(final if n == "tokenizer" else n for n in self.needs)


def has_finetune(config: dict[str, Any]) -> bool:
    return bool(config.get("finetune", {}).get("tokenizer"))


# ---------------------------------------------------------------------------------------------
# Tokenizers: build, store, load


def build_tokenizer(config: dict[str, Any]) -> Tokenizer:
    """The tokenizer named by ``config['tokenizer']`` at the data's resolution."""
    opts = {k: v for k, v in config["tokenizer"].items() if k != "name"}
    return TOKENIZERS.build(config["tokenizer"]["name"], image_size=config["data"]["resolution"], **opts)


def initialize_pretrained(model: Tokenizer, ctx: StageContext) -> None:
    """Copy the pretrained weights named by ``tokenizer.encoder`` into ``model.encoder`` and store
    the load report (copied / adapted / new / ignored parameters) as ``init_report.json``."""
    from benchmark.encoders import initialize_encoder

    report = initialize_encoder(model.encoder, model.encoder_init)
    ctx.log.info("encoder initialisation:\n%s", report.table())
    write_json(ctx.dir / "init_report.json", report.to_dict())


def restore_architecture(model: Tokenizer, folder: Path) -> None:
    """Re-apply what a pretrained initialisation changed outside the state dict (LayerNorm eps,
    MLP activation of the copied blocks)."""
    from benchmark.encoders import match_architecture

    report = read_json(folder / "init_report.json")
    if report and report.get("norm_eps") is not None:
        copied = [int(r["target"].split(".")[1]) for r in report["rows"]
                  if r["target"].startswith("transformer.") and r["status"] in ("copied", "adapted")]
        match_architecture(model.encoder, report["norm_eps"], report["activation"], max(copied) + 1)


def save_tokenizer(folder: Path, config: dict[str, Any], weights: dict[str, Tensor]) -> None:
    """A self-contained tokenizer folder: ``tokenizer.json`` (data + tokenizer config) and weights."""
    atomic_write(folder / "model.safetensors", lambda tmp: save_file(weights, str(tmp)))
    write_json(folder / "tokenizer.json", {"data": config["data"], "tokenizer": config["tokenizer"]})


def load_tokenizer_dir(folder: Path, device: torch.device | str = "cpu") -> Tokenizer:
    """The trained tokenizer stored in ``folder`` (a train / finetune stage folder), in eval mode."""
    missing = [f for f in TOKENIZER_FILES if not (folder / f).is_file()]
    if missing:
        raise StageError(f"{folder}: not a trained tokenizer folder (missing {', '.join(missing)})")
    model = build_tokenizer(read_json(folder / "tokenizer.json"))
    restore_architecture(model, folder)
    model.load_state_dict(load_file(folder / "model.safetensors"))
    return model.to(device).eval()


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
    from benchmark.report import save_image_grid

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
    terms, weights = fit(model, tokenizer_step(model), dataset, train_cfg, cfg["seed"], ctx.dir, ctx.device,
                         ctx.runtime.get("num_workers", 0), ctx.log, ctx.runtime.get("compile", False),
                         adversary=getattr(model, "adversary", None),
                         on_checkpoint=preview_saver(model, preview, ctx.dir))
    seconds = time.perf_counter() - t0
    save_tokenizer(ctx.dir, cfg, weights)
    model.load_state_dict(weights)
    model.eval()
    cost = tokenizer_cost(model, cfg["data"]["resolution"], ctx.device)
    cost["train_pflops"] = training_pflops(cost, train_cfg.steps, train_cfg.batch_size)
    return {"final_losses": terms, "train_seconds": seconds, "train_images": len(dataset),
            "params": sum(p.numel() for p in model.parameters()), "cost": cost}


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
    cfg = {"seed": ctx.config["seed"], "data": first["data"],
           "tokenizer": {**first["tokenizer"], **ctx.config["finetune"]["tokenizer"]}}
    torch.manual_seed(cfg["seed"])
    model = build_tokenizer(cfg)
    restore_architecture(model, first_dir)
    state = load_file(first_dir / "model.safetensors")
    if hasattr(model, "load_stage1"):
        skipped = model.load_stage1(state)
        ctx.log.info("stage-1 weights loaded; not copied (resized or new): %s", skipped)
    else:
        model.load_state_dict(state)
    if (first_dir / "init_report.json").is_file():  # the finetuned folder must restore the same architecture
        write_json(ctx.dir / "init_report.json", read_json(first_dir / "init_report.json"))
    result = _train(model, ctx, cfg, TrainConfig(**{**base_train, **ctx.config["finetune"]["train"]}))
    _check_same_tokens(load_tokenizer_dir(first_dir, ctx.device), model, cfg)
    return result


@torch.no_grad()
def _check_same_tokens(before: Tokenizer, after: Tokenizer, cfg: dict[str, Any]) -> None:
    from benchmark.data import build_dataset

    dataset = build_dataset(cfg["data"], "eval")
    images = torch.stack([dataset[i][0] for i in range(min(8, len(dataset)))]).to(next(after.parameters()).device)
    if not torch.equal(before.encode(images), after.encode(images)):
        raise StageError("finetune_tokenizer changed the tokens: a finetune stage must freeze the encoder "
                         "(generators trained on the stage-1 tokens would no longer match)")


# ---------------------------------------------------------------------------------------------
# Tokenizer evaluation


def metric_options(cfg: EvalConfig, device: torch.device) -> dict[str, dict[str, Any]]:
    """Options the metrics that run a network (Inception, LPIPS) take from the eval config."""
    inception = {"weights": cfg.inception_weights, "device": str(device)}
    return {"rfid": inception, "inception_score": inception, "gfid": inception, "lpips": {"device": str(device)}}


def evaluate_batch(model: Tokenizer, images: Tensor, labels: Tensor, metrics: list[Any]) -> Tensor:
    """One batch of ``stages.evaluate_tokenizer``: encode, decode, every metric's update on the CPU
    copies; returns the reconstructions (CPU, float32)."""
    from benchmark.metrics import EvalBatch

    tokens = model.encode(images)
    recons = model.decode(tokens).float()
    codes = getattr(model, "code_ids", None)
    batch = EvalBatch(images=images.cpu(), recons=recons.cpu(), tokens=tokens.cpu(), labels=labels,
                      codes={k: v.cpu() for k, v in codes(images).items()} if codes else None,
                      codebook_sizes=model.codebook_sizes() if codes else None)
    for metric in metrics:
        metric.update(batch)
    return batch.recons


@torch.no_grad()
def reconstruction_metrics(model: Tokenizer, dataset: Any, cfg: EvalConfig, device: torch.device,
                           num_workers: int = 0) -> tuple[list[Any], Tensor]:
    """``cfg.metrics`` of ``model`` over ``dataset`` in order (the metric objects, after every update),
    and the first (up to) 8 originals over their reconstructions."""
    from benchmark.metrics import build_metrics

    metrics = build_metrics(cfg.metrics, model.token_spec, metric_options(cfg, device))
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=False, num_workers=num_workers)
    preview = None
    for images, labels in loader:
        recons = evaluate_batch(model, images.to(device), labels, metrics)
        if preview is None:
            preview = torch.cat([images[:8], recons[:8]])
    return metrics, preview


@torch.no_grad()
def evaluate_tokenizer(ctx: StageContext) -> dict[str, Any]:
    from benchmark.data import build_dataset
    from benchmark.metrics import compute_all, protocols
    from benchmark.report import save_image_grid

    cfg = EvalConfig(**ctx.config["eval"])
    model = load_tokenizer_dir(ctx.tokenizer_dir(), ctx.device)
    dataset = build_dataset(ctx.config["data"], "eval")
    if cfg.num_images is not None:
        dataset = Subset(dataset, range(min(cfg.num_images, len(dataset))))
    t0 = time.perf_counter()
    metrics, preview = reconstruction_metrics(model, dataset, cfg, ctx.device, ctx.runtime.get("num_workers", 0))
    results = compute_all(metrics)
    for metric in metrics:  # per-code usage counts, kept for the codebook analyses (thesis Fig. 10)
        if hasattr(metric, "histograms"):
            write_json(ctx.dir / "codebook_counts.json", {k: v.tolist() for k, v in metric.histograms().items()})
    if preview is not None:
        save_image_grid(preview, ctx.dir / "reconstructions.png", nrow=len(preview) // 2)
    protocol = {"split": "eval", "num_images": len(dataset), "metrics": cfg.metrics,
                "data": ctx.config["data"], "seed": None, "precision": "float32",
                "metric_protocols": protocols(metrics)}
    return {"metrics": results, "protocol": protocol, "eval_seconds": time.perf_counter() - t0}


# ---------------------------------------------------------------------------------------------
# Generators: latent cache, training, sampling, evaluation


def cache_latents(ctx: StageContext) -> dict[str, Any]:
    """Encode the training split once with the frozen stage-1 tokenizer (benchmark/latents.py)."""
    from benchmark.data import build_dataset
    from benchmark.latents import write_cache

    folder = ctx.input_dir("train_tokenizer")
    model = load_tokenizer_dir(folder, ctx.device)
    data = read_json(folder / "tokenizer.json")["data"]
    dataset = build_dataset(data, "train")
    t0 = time.perf_counter()
    meta = write_cache(model, dataset, ctx.dir, ctx.device, num_workers=ctx.runtime.get("num_workers", 0), data=data)
    return {"num_items": meta["num_items"], "num_classes": meta["num_classes"],
            "token_spec": meta["token_spec"], "cache_seconds": time.perf_counter() - t0}


def build_generator(config: dict[str, Any], token_spec: Any, num_classes: int) -> Generator:
    opts = {k: v for k, v in config["generator"].items() if k != "name"}
    return GENERATORS.build(config["generator"]["name"], token_spec=token_spec, num_classes=num_classes, **opts)


def load_generator(folder: Path, latents: Any, device: torch.device) -> Generator:
    """The trained generator of a train_generator folder, for the latent cache (LatentDataset) it
    was trained on."""
    model = build_generator(read_json(folder / "stage.json")["config"], latents.spec, latents.num_classes)
    model.load_state_dict(load_file(folder / "model.safetensors"))
    return model.to(device).eval()


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

    def step(batch: tuple[Tensor, ...], i: int) -> tuple[dict[str, Tensor], None]:
        if teacher is None:
            return model.loss(batch[0], batch[1]), None
        return model.loss(batch[0], batch[1], features=teacher.teacher_features(batch[2])), None

    t0 = time.perf_counter()
    terms, weights = fit(model, step, data, TrainConfig(**cfg["generator_train"]), cfg["seed"], ctx.dir, ctx.device,
                         ctx.runtime.get("num_workers", 0), ctx.log, ctx.runtime.get("compile", False))
    seconds = time.perf_counter() - t0
    atomic_write(ctx.dir / "model.safetensors", lambda tmp: save_file(weights, str(tmp)))
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
    decoded through the cell's final tokenizer."""
    from benchmark.cost import gflops
    from benchmark.latents import LatentDataset, unflat_tokens
    from benchmark.report import save_image_grid

    cfg = SampleConfig(**ctx.config["sample"])
    trained = read_json(ctx.input_dir("train_generator") / "stage.json")
    latents = LatentDataset(ctx.store.dir("cache_latents", trained["inputs"]["cache_latents"]))
    stats = latents.stats()
    generator = load_generator(ctx.input_dir("train_generator"), latents, ctx.device)
    tokenizer = load_tokenizer_dir(ctx.tokenizer_dir(), ctx.device)
    labels = balanced_labels(cfg.num_images, latents.num_classes)
    res = read_json(ctx.tokenizer_dir() / "tokenizer.json")["data"]["resolution"]
    tmp = ctx.dir / "images.tmp.npy"
    images = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(cfg.num_images, res, res, 3))
    rng = torch.Generator(device=ctx.device).manual_seed(cfg.seed)
    t0 = time.perf_counter()
    for start in range(0, cfg.num_images, cfg.batch_size):
        y = labels[start : start + cfg.batch_size].to(ctx.device)
        seq = generator.sample(y, cfg_scale=cfg.cfg_scale, steps=cfg.steps, generator=rng, **cfg.options)
        out = tokenizer.decode(unflat_tokens(stats.denormalize(seq), latents.spec))
        images[start : start + len(y)] = (out.float().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    seconds = time.perf_counter() - t0
    images.flush()
    first = torch.from_numpy(np.array(images[:16])).permute(0, 3, 1, 2) / 255
    del images
    tmp.replace(ctx.dir / "images.npy")
    np.save(ctx.dir / "labels.npy", labels.numpy())
    save_image_grid(first, ctx.dir / "samples.png", nrow=8)
    one = labels[:1].to(ctx.device)
    sample_gflops = gflops(lambda: generator.sample(one, cfg_scale=cfg.cfg_scale, steps=cfg.steps,
                                                    generator=torch.Generator(device=ctx.device).manual_seed(0),
                                                    **cfg.options))
    return {"num_images": cfg.num_images, "sample_seconds": seconds, "images_per_second": cfg.num_images / seconds,
            "cost": {"sample_gflops": sample_gflops},
            "protocol": {"num_images": cfg.num_images, "labels": "balanced (i mod C)", "seed": cfg.seed,
                         "cfg_scale": cfg.cfg_scale, "steps": cfg.steps, "sampler": cfg.options,
                         "generator": trained["config"]["generator"]}}


@torch.no_grad()
def evaluate_generator(ctx: StageContext) -> dict[str, Any]:
    """gFID and Inception Score of the stored samples against the reference statistics."""
    from benchmark.fid import generation_metrics

    cfg = EvalConfig(**ctx.config["eval"])
    folder = ctx.input_dir("sample")
    images = np.load(folder / "images.npy", mmap_mode="r")
    results, protocol = generation_metrics(images, cfg, ctx.config["data"], ctx.store.root / "fid_stats",
                                           ctx.device, ctx.runtime.get("num_workers", 0))
    protocol["sampling"] = read_json(folder / "result.json")["protocol"]
    return {"metrics": results, "protocol": protocol}


STAGES: dict[str, StageKind] = {
    kind.name: kind
    for kind in (
        StageKind("train_tokenizer", ("seed", "data", "tokenizer", "train"), (), train_tokenizer),
        StageKind("finetune_tokenizer", ("seed", "finetune"), ("train_tokenizer",), finetune_tokenizer),
        StageKind("evaluate_tokenizer", ("data", "eval"), ("tokenizer",), evaluate_tokenizer),
        StageKind("cache_latents", (), ("train_tokenizer",), cache_latents),
        StageKind("train_generator", ("seed", "generator", "generator_train"), ("cache_latents",), train_generator),
        StageKind("sample", ("sample",), ("train_generator", "tokenizer"), sample),
        StageKind("evaluate_generator", ("data", "eval"), ("sample",), evaluate_generator),
    )
}


def stage_order(kind: str) -> int:
    return list(STAGES).index(kind)

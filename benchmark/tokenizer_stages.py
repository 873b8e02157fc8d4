"""Tokenizer stages: train (with a pretrained encoder initialisation), train SelfBootTok's 2D OT target,
finetune (SelfBootTok's stage 2, Sec. 3.4) and evaluate (reconstruction metrics, benchmark/tokenizer_eval.py).

A training stage leaves, besides its weights: ``losses.csv``; at every checkpoint ``samples/step_<s>.png``
(originals over reconstructions of fixed training images), ``probe/step_<s>.npz`` (per-code counts, latent
and codebook vectors on fixed eval images: ``train.probe_images``) and, every ``train.eval_every`` steps,
``train_eval/step_<s>.json`` (``train.eval_metrics`` of that checkpoint).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor
from torch.utils.data import Dataset, Subset

from benchmark.base import Tokenizer
from benchmark.checkpoints import (
    build_tokenizer,
    latent_2d_tokenizer,
    load_tokenizer,
    restore_architecture,
    save_tokenizer,
)
from benchmark.config import EvalConfig, TrainConfig
from benchmark.encoder_pretraining import with_pretrained_teachers
from benchmark.errors import StageError
from benchmark.graph import LATENT_2D
from benchmark.image_grid import save_image_grid
from benchmark.quantizers import SoftVectorQuantizer, VectorQuantizer
from benchmark.stage_context import StageContext
from benchmark.store import atomic_write, read_json, write_json


def initialize_pretrained(model: Tokenizer, ctx: StageContext) -> None:
    """Copy the pretrained weights named by ``tokenizer.encoder`` (or, for a stand-in pretrained offline,
    those of the cell's ``pretrain_encoder`` stage) into ``model.encoder`` and store the load report (copied / adapted / new / ignored parameters) as ``init_report.json``."""
    from benchmark.encoders import initialize_encoder

    spec = model.encoder_init
    if "pretrain_encoder" in ctx.inputs:  # the stand-in pretrained offline, in its library's layout
        from benchmark.encoder_pretraining import WEIGHTS_FOLDER

        spec = {**spec, "weights": str(ctx.input_dir("pretrain_encoder") / WEIGHTS_FOLDER)}
    report = initialize_encoder(model.encoder, spec)
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


QUANTIZERS = (VectorQuantizer, SoftVectorQuantizer)


@torch.no_grad()
def codebook_probe(model: Tokenizer, images: Tensor) -> dict[str, np.ndarray]:
    """What the codebook analyses (thesis Figs. 10 and 14) need of one checkpoint, on a fixed batch:
    ``counts.<codebook>``, how often each code is used (the codes of ``encode_with_codes``, or a discrete
    tokenizer's ids); and for each quantiser module, ``latents.<module>``, the vectors it receives in a
    training forward pass (unit-normalised where it compares on the sphere), and ``codebook.<module>``,
    its code vectors (one row per code)."""
    tokens, codes = model.encode_with_codes(images)
    sizes = model.codebook_sizes()
    if not codes and model.token_spec.kind == "discrete":
        codes, sizes = {"codes": tokens}, {"codes": model.token_spec.vocab_size}
    arrays = {
        f"counts.{name}": torch.bincount(ids.reshape(-1).cpu(), minlength=sizes[name]).numpy()
        for name, ids in codes.items()
    }
    modules = {name: m for name, m in model.named_modules() if isinstance(m, QUANTIZERS)}
    seen: dict[str, list[Tensor]] = {name: [] for name in modules}
    hooks = [
        m.register_forward_pre_hook(lambda _, args, name=name: seen[name].append(args[0].detach()))
        for name, m in modules.items()
    ]
    try:
        model(images)
    finally:
        for hook in hooks:
            hook.remove()
    for name, m in modules.items():
        if not seen[name]:
            continue
        latents = torch.cat([z.reshape(-1, z.shape[-1]) for z in seen[name]]).float()
        vectors = m.codebook() if isinstance(m, VectorQuantizer) else m.codebooks().reshape(-1, latents.shape[-1])
        arrays[f"latents.{name}"] = (F.normalize(latents, dim=-1) if m.l2_norm else latents).cpu().numpy()
        arrays[f"codebook.{name}"] = vectors.float().cpu().numpy()
    return arrays


def checkpoint_recorder(
    model: Tokenizer, folder: Path, preview: Tensor, eval_set: Dataset | None, train_cfg: TrainConfig
) -> Callable[[int], None]:
    """What the trainer calls at each checkpoint step (rank 0): the preview grid; the codebook probe on
    the first ``probe_images`` images of ``eval_set`` (``probe/step_<step>.npz``); every ``eval_every``
    steps, ``eval_metrics`` of the checkpoint's weights (those the stage keeps: the EMA's when
    ``train.ema_decay`` > 0, as :func:`benchmark.train.fit` hands them) on its first ``eval_images`` images
    (``train_eval/step_<step>.json``). The random state is left as it was: resumed and uninterrupted
    training reach the same weights."""
    from benchmark.metrics import compute_all
    from benchmark.tokenizer_eval import reconstruction_metrics

    save_preview = preview_saver(model, preview, folder)
    n_probe = min(train_cfg.probe_images, len(eval_set)) if eval_set is not None else 0
    probe = torch.stack([eval_set[i][0] for i in range(n_probe)]) if n_probe else None
    evals = (
        Subset(eval_set, range(min(train_cfg.eval_images, len(eval_set))))
        if eval_set is not None and train_cfg.eval_every
        else None
    )
    eval_cfg = EvalConfig(batch_size=64, metrics=train_cfg.eval_metrics)

    def record(step: int) -> None:
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        # the preview and the probe may sample (a KL posterior): on a forked RNG, so training draws as unrecorded
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            save_preview(step)
            if probe is not None:
                arrays = codebook_probe(model, probe.to(device))
                atomic_write(folder / "probe" / f"step_{step:07d}.npz", lambda tmp: _save_npz(tmp, arrays))
            if evals is not None and step % train_cfg.eval_every == 0:
                metrics, _ = reconstruction_metrics(model, evals, eval_cfg, device)
                write_json(
                    folder / "train_eval" / f"step_{step:07d}.json",
                    {"step": step, "num_images": len(evals), "metrics": compute_all(metrics)},
                )
        model.train(was_training)

    return record


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as fh:  # a file object: np.savez would append ".npz" to a temporary name
        np.savez(fh, **arrays)


def _train(
    model: Tokenizer, ctx: StageContext, cfg: dict[str, Any], train_cfg: TrainConfig, section: str = "train"
) -> dict[str, Any]:
    """Train a tokenizer under ``train_cfg`` (the options of the config's ``section``), save and measure it."""
    from benchmark.cost import tokenizer_cost, training_pflops
    from benchmark.data import build_dataset

    dataset = build_dataset(cfg["data"], "train")
    preview = torch.stack([dataset[i][0] for i in range(min(8, len(dataset)))])
    diagnostics = train_cfg.probe_images or train_cfg.eval_every
    eval_set = build_dataset(cfg["data"], "eval") if diagnostics and ctx.world.main else None
    t0 = time.perf_counter()
    terms, weights = ctx.fit(
        model,
        tokenizer_step(model),
        dataset,
        train_cfg,
        adversary=getattr(model, "adversary", None),
        on_checkpoint=checkpoint_recorder(model, ctx.dir, preview, eval_set, train_cfg),
        batch_key=f"{section}.batch_size",
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
    """Train the cell's tokenizer (an official release, tokenizer ``released``, is installed instead)."""
    cfg = ctx.config
    torch.manual_seed(cfg["seed"])
    model = build_tokenizer(with_pretrained_teachers(cfg, ctx))
    if cfg["tokenizer"]["name"] == "released":  # converted from its release (tokenizers/released.py), not trained
        from benchmark.release_install import install_release

        return install_release(model, ctx.dir, cfg["data"], ctx.device) if ctx.world.main else {}
    if getattr(model, "encoder_init", None):
        # on every attempt: a resumed run's checkpoint then overwrites the weights, and an attempt that failed
        # before its first checkpoint starts again from the pretrained encoder, not from random weights
        initialize_pretrained(model, ctx)
    return _train(model, ctx, cfg, TrainConfig(**cfg["train"]))


def train_latent_2d(ctx: StageContext) -> dict[str, Any]:
    """SelfBootTok's OT target (Sec. 3.3: the latents of a 2D VAE): train the 2D tokenizer that
    ``tokenizer.latent_2d`` names, with its own options, on the cell's training split under its ``train``
    options. Its ``model.safetensors`` becomes the ``latent_2d.checkpoint`` of the stages that train with it
    (:func:`~benchmark.encoder_pretraining.with_pretrained_teachers`); like the frozen copy they build, it has
    no discriminator unless the mapping names one."""
    spec = ctx.config[LATENT_2D]
    cfg = {"seed": ctx.config["seed"], "data": ctx.config["data"], "tokenizer": latent_2d_tokenizer(spec)}
    torch.manual_seed(cfg["seed"])
    return _train(build_tokenizer(cfg), ctx, cfg, TrainConfig(**spec["train"]), f"{LATENT_2D}.train")


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
    model = build_tokenizer(with_pretrained_teachers(cfg, ctx))
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
    result = _train(model, ctx, cfg, TrainConfig(**{**base_train, **ctx.config["finetune"]["train"]}), "finetune.train")
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


def evaluate_tokenizer(ctx: StageContext) -> dict[str, Any]:
    """Reconstruction metrics of the cell's final tokenizer on the eval split (the batches shared by the
    stage's processes); keeps the preview grid and the per-code usage counts (for the codebook analyses,
    thesis Fig. 10)."""
    from benchmark.tokenizer_eval import evaluate_tokenizer as evaluate

    t0 = time.perf_counter()
    evaluation = evaluate(
        ctx.tokenizer_dir(),
        ctx.config["data"],
        cfg := EvalConfig(**ctx.config["eval"]),
        ctx.device,
        num_workers=ctx.runtime.get("num_workers", 0),
        precision=cfg.precision,
        world=ctx.world,
        reference_cache=ctx.store.root / "fid_stats",
    )
    if not ctx.world.main:
        return {}
    if evaluation.histograms:
        write_json(ctx.dir / "codebook_counts.json", evaluation.histograms)
    if evaluation.preview is not None:
        save_image_grid(evaluation.preview, ctx.dir / "reconstructions.png", nrow=len(evaluation.preview) // 2)
    return {"metrics": evaluation.metrics, "protocol": evaluation.protocol, "eval_seconds": time.perf_counter() - t0}

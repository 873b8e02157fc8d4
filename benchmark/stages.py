"""Stage kinds: what each depends on (config sections and upstream stages) and what it does.

A stage's hash covers exactly ``select(config)`` and its inputs' hashes, so cells that share a
tokenizer share its training, and a finished stage is never run twice.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Subset

from benchmark.base import Tokenizer
from benchmark.config import EvalConfig, TrainConfig
from benchmark.registry import TOKENIZERS
from benchmark.store import RunStore, atomic_write, read_json, write_json


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

    def input_config(self, kind: str) -> dict[str, Any]:
        return read_json(self.input_dir(kind) / "stage.json")["config"]

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


def restore_architecture(model: Tokenizer, train_dir: Path) -> None:
    """Re-apply what a pretrained initialisation changed outside the state dict (LayerNorm eps,
    MLP activation of the copied blocks)."""
    from benchmark.encoders import match_architecture

    report = read_json(train_dir / "init_report.json")
    if report and report.get("norm_eps") is not None:
        copied = [int(r["target"].split(".")[1]) for r in report["rows"]
                  if r["target"].startswith("transformer.") and r["status"] in ("copied", "adapted")]
        match_architecture(model.encoder, report["norm_eps"], report["activation"], max(copied) + 1)


def load_tokenizer(ctx: StageContext) -> Tokenizer:
    """The trained tokenizer of this stage's ``train_tokenizer`` input, in eval mode on the device."""
    train_dir = ctx.input_dir("train_tokenizer")
    model = build_tokenizer(ctx.input_config("train_tokenizer"))
    restore_architecture(model, train_dir)
    model.load_state_dict(load_file(train_dir / "model.safetensors"))
    return model.to(ctx.device).eval()


def train_tokenizer(ctx: StageContext) -> dict[str, Any]:
    from benchmark.data import build_dataset
    from benchmark.train import fit

    cfg = ctx.config
    torch.manual_seed(cfg["seed"])
    model = build_tokenizer(cfg)
    if getattr(model, "encoder_init", None):
        if (ctx.dir / "init_report.json").is_file():  # resuming: the checkpoint holds the weights
            restore_architecture(model, ctx.dir)
        else:
            initialize_pretrained(model, ctx)
    dataset = build_dataset(cfg["data"], "train")
    t0 = time.perf_counter()
    terms = fit(model, lambda batch: model(batch[0]).losses, dataset, TrainConfig(**cfg["train"]),
                cfg["seed"], ctx.dir, ctx.device, ctx.runtime.get("num_workers", 0), ctx.log,
                ctx.runtime.get("compile", False))
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(ctx.dir / "model.safetensors", lambda tmp: save_file(state, str(tmp)))
    return {"final_losses": terms, "train_seconds": time.perf_counter() - t0,
            "params": sum(p.numel() for p in model.parameters()), "train_images": len(dataset)}


@torch.no_grad()
def evaluate_tokenizer(ctx: StageContext) -> dict[str, Any]:
    from benchmark.data import build_dataset
    from benchmark.metrics import EvalBatch, build_metrics, compute_all
    from benchmark.report import save_image_grid

    cfg = EvalConfig(**ctx.config["eval"])
    model = load_tokenizer(ctx)
    dataset = build_dataset(ctx.config["data"], "eval")
    if cfg.num_images is not None:
        dataset = Subset(dataset, range(min(cfg.num_images, len(dataset))))
    metrics = build_metrics(cfg.metrics, model.token_spec)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=False,
                        num_workers=ctx.runtime.get("num_workers", 0))
    first = None
    t0 = time.perf_counter()
    for images, labels in loader:
        images = images.to(ctx.device)
        tokens = model.encode(images)
        recons = model.decode(tokens).float()
        batch = EvalBatch(images=images.cpu(), recons=recons.cpu(), tokens=tokens.cpu(), labels=labels)
        for metric in metrics:
            metric.update(batch)
        if first is None:
            first = torch.cat([images[:8].cpu(), recons[:8].cpu()])
    results = compute_all(metrics)
    if first is not None:
        save_image_grid(first, ctx.dir / "reconstructions.png", nrow=min(8, len(first) // 2))
    protocol = {"split": "eval", "num_images": len(dataset), "metrics": cfg.metrics,
                "data": ctx.config["data"]}
    return {"metrics": results, "protocol": protocol, "eval_seconds": time.perf_counter() - t0}


STAGES: dict[str, StageKind] = {
    kind.name: kind
    for kind in (
        StageKind("train_tokenizer", ("seed", "data", "tokenizer", "train"), (), train_tokenizer),
        StageKind("evaluate_tokenizer", ("data", "eval"), ("train_tokenizer",), evaluate_tokenizer),
    )
}


def stage_order(kind: str) -> int:
    return list(STAGES).index(kind)

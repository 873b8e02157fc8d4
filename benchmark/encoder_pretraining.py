"""Offline pretraining of a stand-in encoder with its own family's self-supervised objective, on the
study's images: the ``pretrain_encoder`` stage, and its twins for the alignment teachers
(``pretrain_align``, ``pretrain_align_global``, ``pretrain_align_local``, ``pretrain_repa_teacher``:
benchmark/graph.py ``PRETRAINED``).

At paper scale a tokenizer's encoder starts from published weights (MAE, DINO, DINOv2, ...). At smoke
and repro scale nothing is downloaded: ``tokenizer.encoder.stand_in`` builds the library's architecture,
shrunk, with random weights, which carry nothing of what pretraining gives. With
``tokenizer.encoder.pretrain`` that stand-in is first trained with the objective its family was
pretrained with (benchmark/pretraining_objectives.py: MAE's, DINO's, I-JEPA's, SigLIP's, CLIP's,
Depth-Anything's) on the cell's training split, and saved the way its library saves it (timm's ``save_for_hf`` folder,
transformers' ``save_pretrained`` folder, open_clip's ``local-dir`` folder); the tokenizer's
initialisation then loads it through the same path as a downloaded checkpoint (``tokenizer.encoder.weights``). One pretraining serves every cell with the same
encoder, data and seed. A teacher with ``pretrain`` is loaded the same way by the stages that train
with it (:func:`with_pretrained_teachers`): a frozen teacher of random weights gives features with no
semantics to align to.

Each encoder family names its objective (``pretrain_objective``: MAE -> mae; DINO and DINOv2 -> dino, for
DINOv2 without its iBOT and KoLeo terms; I-JEPA -> ijepa; SigLIP -> siglip and CLIP -> clip, their
image-text losses with the training split's class names as captions; Depth-Anything -> depth, its
relative-depth loss on the built-in scenes' depth maps). SigLIP 2 (decoder and self-distillation losses
besides the sigmoid one) has none.

``pretrain`` takes the training loop's options (benchmark/config.py ``TrainConfig``: steps, batch_size,
lr, ...; defaults: the objective's recipe) and the objective's own (``mask_ratio``, ``out_dim``, ...),
checked by benchmark/pretraining_objectives.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from benchmark.config import TrainConfig
from benchmark.errors import StageError
from benchmark.options import init_parameters
from benchmark.pretraining_objectives import OBJECTIVES, Objective, split_options, train_config

if TYPE_CHECKING:
    from benchmark.stage_context import StageContext

WEIGHTS_FOLDER = "encoder"  # the stage's output: the pretrained stand-in in its library's layout


def _pretraining(spec: Mapping[str, Any], where: str) -> tuple[Any, str, dict[str, Any], dict[str, Any]]:
    """The encoder entry ``spec`` names (nothing built) and its ``pretrain``'s objective name, training-loop
    options and objective options, checked."""
    from benchmark.encoders import build_encoder

    entry = build_encoder({k: v for k, v in spec.items() if k != "weights"}, where=where)
    return entry, *split_options(spec["pretrain"], entry.pretrain_objective, f"{where}.pretrain")


def pretrain_loop(spec: Mapping[str, Any], where: str) -> TrainConfig:
    """The training-loop options of the pretraining of the encoder ``spec`` at ``where``: its objective's
    recipe under the options given (nothing built; the dry run checks its batch)."""
    _, name, train, _ = _pretraining(spec, where)
    return train_config(name, train)


def build_objective(
    spec: Mapping[str, Any], where: str = "tokenizer.encoder", class_names: Sequence[str] = ()
) -> tuple[Objective, TrainConfig]:
    """The objective around a fresh random-weight stand-in of the encoder ``spec`` names (the mapping at
    ``where``, with ``stand_in`` and ``pretrain``), and its training-loop options. ``class_names``: the
    training split's, the captions of an image-text objective (SigLIP's, CLIP's)."""
    entry, name, train, options = _pretraining(spec, where)
    objective = OBJECTIVES[name]
    harness = {  # what an objective's constructor may take besides its options, made only when it does
        "class_names": lambda: class_names,  # the captions of an image-text objective
        "model_cfg": lambda: entry.stand_in_config(dict(entry.stand_in)),  # CLIP builds and saves the whole model
    }
    takes = init_parameters(objective)
    options = {**options, **{key: make() for key, make in harness.items() if key in takes}}
    vit = entry._build_stand_in().train().requires_grad_(True)
    return objective(vit, entry.mean, entry.std, **options), train_config(name, train)


def with_pretrained_teachers(config: dict[str, Any], ctx: StageContext) -> dict[str, Any]:
    """``config`` with ``weights`` set, for each alignment teacher pretrained offline, to what its
    pretraining stage (an input of ``ctx``) saved, and the OT target's ``checkpoint`` to what its
    ``train_latent_2d`` stage saved. The stage's own record keeps the config without them, so a trained
    model never depends on where the run store lies."""
    from benchmark.graph import LATENT_2D, PRETRAINED, encoder_at

    out = {**config}
    if "train_latent_2d" in ctx.inputs:
        checkpoint = ctx.input_dir("train_latent_2d") / "model.safetensors"
        latent_2d = {**encoder_at(out, LATENT_2D), "checkpoint": str(checkpoint)}
        del latent_2d["train"]
        out["tokenizer"] = {**out["tokenizer"], "latent_2d": latent_2d}
        ctx.log.info("%s: the 2D tokenizer trained by train_latent_2d %s", LATENT_2D, ctx.inputs["train_latent_2d"])
    for path, kind in PRETRAINED.items():
        spec = encoder_at(out, path)
        if path == "tokenizer.encoder" or kind not in ctx.inputs or spec is None:
            continue  # the encoder's weights are copied by the tokenizer's initialisation
        weights = ctx.input_dir(kind) / WEIGHTS_FOLDER
        section, key = path.split(".")
        out[section] = {**out[section], key: {**spec, "weights": str(weights)}}
        ctx.log.info("%s: the stand-in pretrained by %s %s (%s)", path, kind, ctx.inputs[kind], weights)
    return out


def pretrain_cost(spec: Mapping[str, Any]) -> dict[str, float]:
    """GFLOPs of one training example (all its views at the stand-in's input size, forward and backward;
    counted on the meta device) and of the whole pretraining, in PFLOPs. Objectives that draw masks (I-JEPA's
    blocks, whose sizes set the predictor's FLOPs) draw them from a fixed seed: the same plan, the same count."""
    from benchmark.cost import gflops, training_pflops

    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        torch.manual_seed(0)
        # an image-text objective's captions are padded to a fixed length: any class name counts the same
        objective, loop = build_objective(spec, class_names=["class"])
        views = [torch.rand(1, 3, *objective.input_size) for _ in range(objective.num_views)]
        targets = objective.example_targets(1)
        cost = {"train_step_gflops": gflops(lambda: sum(objective.loss(views, targets).values()).backward())}
    return {**cost, "train_pflops": training_pflops(cost, loop.steps, loop.batch_size)}


def pretrain_encoder(ctx: StageContext) -> dict[str, Any]:
    """The ``pretrain_encoder`` stage (and each teacher's twin): train the cell's stand-in at the stage's
    path (``tokenizer.encoder``, ``tokenizer.align_global``, ...) with its objective on the training split
    and save it in its library's layout (:meth:`~benchmark.pretraining_objectives.Objective.save`) as
    ``encoder/``, loaded as that encoder's ``weights``."""
    import time

    from torch.utils.data import default_collate

    from benchmark.data import build_dataset
    from benchmark.graph import PRETRAINED_PATH

    cfg, where = ctx.config, PRETRAINED_PATH[ctx.kind]
    spec = cfg.get("teacher") or cfg[where]  # a teacher's mapping, whatever role names it (graph.TeacherPretraining)
    torch.manual_seed(cfg["seed"])
    dataset = build_dataset(cfg["data"], "train")
    # a registered dataset need not name its classes: only an image-text objective needs them, and says so
    objective, train_cfg = build_objective(spec, where, getattr(dataset, "class_names", ()))
    dataset = objective.training_data(dataset)  # (image, label) pairs, or (image, depth map) ones

    def step(batch: tuple[Tensor, ...], i: int) -> tuple[dict[str, Tensor], None]:
        objective.before_step(i, train_cfg.steps)
        return objective(batch[0], batch[1]), None

    t0 = time.perf_counter()
    terms, weights = ctx.fit(objective, step, dataset, train_cfg, batch_key=f"{where}.pretrain.batch_size")
    if not ctx.world.main:
        return {}
    objective.load_state_dict(weights)
    items = [dataset[i] for i in range(min(256, len(dataset)))]
    probe, probe_targets = (batch.to(ctx.device) for batch in default_collate(items))
    reason = objective.eval().collapse(probe)
    if reason:
        raise StageError(
            f"{ctx.kind}: the {objective.name} pretraining of {spec['init']} collapsed: "
            f"{reason}; its weights are not saved (change {where}.pretrain or .stand_in)"
        )
    probe_metrics = objective.probe_metrics(probe, probe_targets)
    if probe_metrics:
        ctx.log.info("on %d training images: %s", len(items), probe_metrics)
    objective.save(ctx.dir / WEIGHTS_FOLDER)
    return {
        "final_losses": terms,
        "probe": probe_metrics,
        "train_seconds": time.perf_counter() - t0,
        "train_images": len(dataset),
        "objective": objective.name,
        "params": sum(p.numel() for p in objective.vit.parameters()),
        "cost": pretrain_cost(spec),
    }

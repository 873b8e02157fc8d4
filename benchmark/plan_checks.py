"""Checks a plan before anything runs or is queued, so that a typo fails ``--dry-run`` on the login
node, not a Slurm job hours later: every data config (the resolution the tokenizers need, the data
root, its split folders and one readable image: nothing is listed in full; depth maps where a stand-in
is pretrained on them; training batches no larger than the training split) and every model (built on the meta device, which runs its constructor's checks
and its forward's shapes; benchmark/estimate.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from benchmark.errors import ConfigError, Tok1dError
from benchmark.study import Plan

if TYPE_CHECKING:
    from benchmark.model_counts import ModelCounts


def check_data(data: dict[str, Any], where: str) -> None:
    """The dataset a cell names can be read: its resolution is set and its splits can be opened."""
    from benchmark.data import check_dataset

    if data.get("resolution") is None:
        raise ConfigError(
            f"{where}: data.resolution is not set (data.name: {data.get('name')}); the tokenizers "
            "take their image size from it"
        )
    for split in ("train", "eval"):
        try:
            check_dataset(data, split)
        except Tok1dError as exc:
            raise type(exc)(f"{where}: {exc}") from None


def check_depth_data(config: dict[str, Any], where: str) -> None:
    """A stand-in pretrained on depth maps (Depth-Anything's objective) reads data that renders them."""
    from benchmark.graph import PRETRAINED, encoder_at
    from benchmark.pretraining_objectives import OBJECTIVES, split_options
    from benchmark.registry import DATASETS, ENCODERS

    data = config["data"].get("name")
    for path in PRETRAINED:
        spec = encoder_at(config, path) or {}
        if spec.get("pretrain") is None or spec.get("init") not in ENCODERS.names():
            continue  # no pretraining here; an unknown encoder is named by the model checks
        default = ENCODERS.get(spec["init"]).obj.pretrain_objective
        if default is None:
            continue  # the encoder entry says it has no objective
        name = split_options(spec["pretrain"], default, f"{path}.pretrain")[0]  # the objective, as the stage builds it
        dataset = DATASETS.get(data).obj if data in DATASETS.names() else None
        if OBJECTIVES[name].targets == "depth" and dataset is not None and not getattr(dataset, "depth_maps", False):
            raise ConfigError(
                f"{where}: {path}.pretrain trains on depth maps, and data '{data}' has none "
                "(the procedural dataset renders them); give this encoder published weights instead"
            )


def check_batches(config: dict[str, Any], stages: dict[str, str], where: str) -> None:
    """Each training stage's batch fits in the training split it samples (tokenizer training, its second
    stage, the generator's training on the split's cached latents), where the split's size is known
    without listing it (the procedural data, ``data.max_images``): the batch sampler would refuse it
    only when the stage starts, after the stages before it ran."""
    from benchmark.estimate import split_images

    images = split_images(config["data"], "train")
    if images is None:
        return
    batches = {
        "train_tokenizer": ("train.batch_size", config["train"]["batch_size"]),
        "finetune_tokenizer": (
            "finetune.train.batch_size",
            (config["finetune"].get("train") or {}).get("batch_size", config["train"]["batch_size"]),
        ),
        "train_generator": ("generator_train.batch_size", config["generator_train"]["batch_size"]),
    }
    for kind, (key, batch) in batches.items():
        if kind in stages and batch > images:
            raise ConfigError(
                f"{where}: {key} {batch} exceeds the {images} images of the training split "
                f"(data.name: {config['data'].get('name')}); use a smaller batch or more training images"
            )


def check_plan(plan: Plan, counts: ModelCounts | None = None) -> dict[str, Any]:
    """Check the selected cells' data and models; returns the stages' cost estimates (stage hash ->
    :class:`~benchmark.estimate.StageCost`), a by-product of building the models (a model ``counts``
    knows, counted before with the same code, is not built again)."""
    from benchmark.estimate import estimate_plan

    seen: set[str] = set()
    for cell in (c for c in plan.cells if c.selected):
        key = repr(sorted(cell.config["data"].items()))
        if key not in seen:
            seen.add(key)
            check_data(cell.config["data"], f"{plan.path}: cell {cell.label}")
        check_depth_data(cell.config, f"{plan.path}: cell {cell.label}")
        check_batches(cell.config, cell.stages, f"{plan.path}: cell {cell.label}")
    return estimate_plan(plan, counts)

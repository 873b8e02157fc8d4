"""Checks a plan before anything runs or is queued, so that a typo fails ``--dry-run`` on the login
node, not a Slurm job hours later: every data config (the resolution the tokenizers need, the data
root, its split folders and one readable image: nothing is listed in full; depth maps where a stand-in
is pretrained on them; training batches the batch sampler will take) and every model (built on the meta
device, which runs its constructor's checks and its forward's shapes; benchmark/estimate.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from benchmark.config import finetune_train, latent_2d_loop
from benchmark.errors import ConfigError, Tok1dError
from benchmark.study import Cell, Plan

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


def check_eval_lpips(config: dict[str, Any], where: str) -> None:
    """``eval.metrics`` with lpips needs images as large as its VGG takes: refused here, not once the
    tokenizer has trained and its evaluation starts."""
    from benchmark.perceptual import MIN_SIZE, too_small

    size = config["data"].get("resolution")
    if "lpips" in (config.get("eval") or {}).get("metrics", []) and size is not None and size < MIN_SIZE["vgg"]:
        raise ConfigError(f"{where}: {too_small('vgg', (size, size), 'eval.metrics: lpips')}")


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


def training_batches(config: dict[str, Any], stages: dict[str, str]) -> list[tuple[str, str, int]]:
    """(stage kind, option, global batch) of a cell's training stages: the pretraining of its stand-in
    encoders and teachers, the training of its OT target, tokenizer training, its second stage and the
    generator's training on the training split's cached latents."""
    from benchmark.encoder_pretraining import pretrain_loop
    from benchmark.graph import LATENT_2D, PRETRAINED, encoder_at

    batches = [
        (kind, f"{path}.pretrain.batch_size", pretrain_loop(encoder_at(config, path), path).batch_size)
        for path, kind in PRETRAINED.items()
        if kind in stages
    ]
    if "train_latent_2d" in stages:
        batches.append(("train_latent_2d", f"{LATENT_2D}.train.batch_size", latent_2d_loop(config).batch_size))
    if "train_tokenizer" in stages:
        batches.append(("train_tokenizer", "train.batch_size", config["train"]["batch_size"]))
    if "finetune_tokenizer" in stages:
        batches.append(("finetune_tokenizer", "finetune.train.batch_size", finetune_train(config)["batch_size"]))
    if "train_generator" in stages:
        batches.append(("train_generator", "generator_train.batch_size", config["generator_train"]["batch_size"]))
    return batches


def check_batches(plan: Plan, cell: Cell, slurm: bool, where: str) -> None:
    """Each training stage's global batch passes the batch sampler's check (:func:`benchmark.train.check_batch`)
    against the training split, where its size is known without listing it (the procedural data,
    ``data.max_images``), and the stage's data-parallel processes (nodes x tasks per node, on Slurm or
    here). The sampler would refuse the batch only when the stage starts, after the stages before it ran
    (on Slurm: once the job is scheduled)."""
    from benchmark.data import split_images
    from benchmark.executors import processes
    from benchmark.train import check_batch

    images = split_images(cell.config["data"], "train")
    for kind, key, batch in training_batches(cell.config, cell.stages):
        nodes, per_node = processes(plan.stages[cell.stages[kind]], cell.config["launcher"], slurm)
        try:
            check_batch(key, batch, images, nodes * per_node)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {kind} on {nodes} node(s) x {per_node} process(es): {exc}") from None


def check_device(plan: Plan, cell: Cell, slurm: bool, where: str) -> None:
    """``runtime.device`` with a GPU index (``cuda:1``) for a stage that runs several processes on a node:
    they would all use that GPU (benchmark/distributed.py :func:`~benchmark.distributed.device`)."""
    from benchmark.executors import processes

    name = str(cell.config.get("runtime", {}).get("device", "auto"))
    if ":" not in name:
        return
    for hash_ in cell.stages.values():
        stage = plan.stages[hash_]
        _, per_node = processes(stage, cell.config["launcher"], slurm)
        if per_node > 1:
            raise ConfigError(
                f"{where}: runtime.device: {name} would put the {per_node} processes per node of {stage.kind} on "
                "one GPU; use cuda (or auto): each process takes the GPU of its local rank"
            )


def check_one_launcher(plan: Plan) -> None:
    """The study is launched once, with the first cell's ``launcher``: a cell (or profile cell block) that
    sets other launcher options would have them silently ignored. Per-stage resources go in
    ``launcher.stages.<kind>``, which every cell shares."""
    first = plan.cells[0]
    for cell in plan.cells[1:]:
        if cell.config["launcher"] != first.config["launcher"]:
            ours, theirs = cell.config["launcher"], first.config["launcher"]
            keys = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
            raise ConfigError(
                f"{plan.path}: cell {cell.label}: launcher.{keys[0]} differs from cell {first.label}'s "
                f"({ours.get(keys[0])!r} vs {theirs.get(keys[0])!r}); a study runs with one launcher: set it in "
                "the study's config or on the command line (per-stage resources: launcher.stages.<kind>)"
            )


def check_plan(plan: Plan, counts: ModelCounts | None = None, slurm: bool = False) -> dict[str, Any]:
    """Check the selected cells' data, training batches (``slurm``: whether the stages run there) and
    models; returns the stages' cost estimates (stage hash -> :class:`~benchmark.estimate.StageCost`), a
    by-product of building the models (a model ``counts`` knows, counted before with the same code, is
    not built again)."""
    from benchmark.estimate import estimate_plan

    check_one_launcher(plan)
    seen: set[str] = set()
    for cell in (c for c in plan.cells if c.selected):
        key = repr(sorted(cell.config["data"].items()))
        if key not in seen:
            seen.add(key)
            check_data(cell.config["data"], f"{plan.path}: cell {cell.label}")
        check_depth_data(cell.config, f"{plan.path}: cell {cell.label}")
        check_eval_lpips(cell.config, f"{plan.path}: cell {cell.label}")
        check_batches(plan, cell, slurm, f"{plan.path}: cell {cell.label}")
        check_device(plan, cell, slurm, f"{plan.path}: cell {cell.label}")
    return estimate_plan(plan, counts)

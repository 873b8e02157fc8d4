"""Configuration: schemas, layered merging with provenance, and validation before anything runs.

A cell's config is the merge, in this order (later wins), of
    schema defaults ⊕ study ``config`` ⊕ profile file ⊕ study ``profiles.<profile>`` ⊕ cell ⊕ CLI.
The profile comes after the study's base so that ``--profile smoke`` can shrink any study.
Sections named by a registry (``tokenizer``, ``data``) take their keys from the registered
class's constructor; when a layer switches a section to another registry name, that section
starts afresh from the layer (the old entry's options would not fit the new one).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from benchmark.errors import ConfigError
from benchmark.options import (
    Decay,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    UnitInterval,
    check_value,
    hint_name,
    nested,
    type_ok,
    unknown_key,
)
from benchmark.registry import DATASETS, GENERATORS, TOKENIZERS, Registry

# Field metadata of options that only add diagnostics to a stage's outputs: at their default value they
# are left out of the stage's hash (benchmark/study.py), so adding one does not invalidate stored runs.
DIAGNOSTIC = {"hashed_at_default": False}


@dataclass
class TrainConfig:
    """Training of a tokenizer or a generator (nanoGPT-style loop in benchmark/train.py).

    ``ema_decay`` > 0 keeps an exponential moving average of the weights (with timm's warm-up
    min(decay, (1 + step) / (10 + step))) and saves it as the trained model. ``disc_lr`` is the
    discriminator's learning rate for adversarial tokenizers (default: ``lr``), on the same schedule.

    Diagnostics of a tokenizer's training, recorded at checkpoint steps (the trained weights do not
    depend on them, so at their defaults they are left out of the stage's hash): ``probe_images``
    (0: off) fixed eval-split images whose per-code counts, latent vectors and codebook vectors are
    stored at every checkpoint (codebook heatmaps and t-SNE, thesis Figs. 10 and 14); ``eval_every``
    (0: off; a multiple of ``checkpoint_every``) evaluates the checkpoint on the first ``eval_images``
    eval-split images with ``eval_metrics`` (metrics over training, SelfBootTok paper Fig. 5).
    """

    steps: PositiveInt = 1000
    batch_size: PositiveInt = 32
    lr: PositiveFloat = 1e-4
    weight_decay: NonNegativeFloat = 1e-4
    beta1: Decay = 0.9
    beta2: Decay = 0.99
    warmup_steps: NonNegativeInt = 0
    schedule: str = "constant"
    min_lr_ratio: UnitInterval = 0.1
    grad_clip: NonNegativeFloat = 1.0  # 0: no clipping
    checkpoint_every: PositiveInt = 200
    log_every: PositiveInt = 10
    precision: str = "bf16"
    ema_decay: Decay = 0.0  # 0: no average
    disc_lr: PositiveFloat | None = None
    probe_images: NonNegativeInt = field(default=8, metadata=DIAGNOSTIC)
    eval_every: NonNegativeInt = field(default=0, metadata=DIAGNOSTIC)
    eval_metrics: list[str] = field(default_factory=lambda: ["psnr", "ssim"], metadata=DIAGNOSTIC)
    eval_images: PositiveInt = field(default=64, metadata=DIAGNOSTIC)


TRAIN_KEYS = typing.get_type_hints(TrainConfig, include_extras=True)  # option -> hint, for nested training mappings


# The values a training section's string options take (TrainConfig's types cannot say it).
TRAIN_CHOICES = {"schedule": ("constant", "cosine"), "precision": ("bf16", "fp32")}


def check_train(section: Mapping[str, Any], where: str) -> None:
    """Checks of a ``train`` / ``generator_train`` section beyond each key's type (which is in
    :class:`TrainConfig`'s type hints): the string options' values and the keys that depend on one another."""
    for key, allowed in TRAIN_CHOICES.items():
        if key in section and section[key] not in allowed:
            raise ConfigError(f"{where}.{key} must be one of {', '.join(allowed)}, got {section[key]!r}")
    every, checkpoint = section.get("eval_every", 0), section.get("checkpoint_every", 1)
    if every and every % checkpoint:
        raise ConfigError(
            f"{where}: eval_every ({every}) must be 0 (off) or a multiple of checkpoint_every ({checkpoint}): "
            "checkpoints are evaluated"
        )


@dataclass
class EvalConfig:
    """Evaluation: tokenizers on the dataset's eval split (``metrics``), generators' samples
    (``generation_metrics``). ``inception_weights``: the FID Inception file (default:
    $TOK1D_INCEPTION_WEIGHTS or torch's hub cache); ``reference``: an ADM-style ``.npz`` of reference
    statistics for gFID (default: the training split's statistics, computed once and cached).
    ``precision``: how the tokenizer encodes and decodes on a GPU (``bf16`` autocast, or ``fp32``);
    the metrics themselves always compute in float32."""

    batch_size: PositiveInt = 64
    num_images: PositiveInt | None = None
    metrics: list[str] = field(default_factory=lambda: ["psnr", "ssim", "codebook_usage"])
    generation_metrics: list[str] = field(default_factory=lambda: ["gfid", "inception_score"])
    inception_weights: str | None = None
    reference: str | None = None
    precision: str = "bf16"


@dataclass
class FinetuneConfig:
    """A second training stage of a trained tokenizer (SelfBootTok Sec. 3.4: load the stage-1
    checkpoint, freeze all but a larger local aligner, train that). ``tokenizer`` holds the tokenizer
    options that change (e.g. ``{stage: 2, local2d_size: 400M}``), ``train`` the training options
    that change; empty ``tokenizer``: no second stage. The tokens must not change (the stage checks):
    generators trained on the stage-1 tokens are reused as they are."""

    tokenizer: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)


def finetune_train(config: Mapping[str, Any]) -> dict[str, Any]:
    """The training options of the second stage: ``train`` with ``finetune.train`` over it."""
    return {**config["train"], **(config["finetune"].get("train") or {})}


def latent_2d_loop(config: Mapping[str, Any]) -> TrainConfig:
    """The training options of the ``train_latent_2d`` stage (SelfBootTok's OT target): ``tokenizer.latent_2d.train``."""
    return TrainConfig(**config["tokenizer"]["latent_2d"]["train"])


@dataclass
class SampleConfig:
    """Generation for gFID: ``num_images`` samples with balanced class labels (image i has class
    i mod C) from noise seeded by ``seed``; ``options`` are the generator's own sampler options
    (keyword arguments of its ``sample``, e.g. MaskGIT's temperature, SiT's sampler / method /
    guidance_interval); ``precision``: sampling and decoding on a GPU, ``bf16`` autocast or ``fp32``."""

    num_images: PositiveInt = 50000
    batch_size: PositiveInt = 125
    cfg_scale: NonNegativeFloat = 1.0
    steps: PositiveInt | None = None
    seed: int = 0
    options: dict = field(default_factory=dict)
    precision: str = "bf16"


@dataclass
class RuntimeConfig:
    """How stages run; not part of any stage's identity (hash). ``find_unused_parameters``: passed to
    DistributedDataParallel (needed only by models with parameters some steps leave unused)."""

    device: str = "auto"
    num_workers: NonNegativeInt = 0
    compile: bool = False
    find_unused_parameters: bool = False


RESOURCE_KEYS = (
    "partition",
    "account",
    "qos",
    "nodes",
    "gpus_per_node",
    "tasks_per_node",
    "cpus_per_task",
    "mem_gb",
    "timeout_min",
)


def check_stage_resources(value: Any, where: str) -> None:
    """``launcher.stages``: ``{<stage kind>: {<resource option>: value}}`` (launcher options per kind)."""
    from benchmark.graph import STAGES

    hints = schema_hints(LauncherConfig)
    for kind, options in value.items():
        if kind not in STAGES:
            raise unknown_key(f"launcher.stages.{kind}", list(STAGES), where)
        if not isinstance(options, Mapping):
            raise ConfigError(f"{where}.{kind} must be a mapping of launcher options, got {options!r}")
        for key, item in options.items():
            if key not in RESOURCE_KEYS:
                raise unknown_key(f"launcher.stages.{kind}.{key}", list(RESOURCE_KEYS), where)
            check_value(item, hints[key], f"{where}.{kind}.{key}")


@dataclass
class LauncherConfig:
    """Where and on what stages run; not hashed.

    ``name``: ``local`` (this machine), ``slurm`` (submitit) or ``auto`` (Slurm when ``sbatch`` is on
    PATH). Stages run data-parallel on ``nodes`` x ``tasks_per_node`` processes: on Slurm
    ``tasks_per_node`` defaults to ``gpus_per_node`` (one process per GPU); locally it is the number of
    processes started on this machine (one per GPU, or gloo processes on the CPU; default 1).
    ``stages`` overrides the resource options per stage kind, e.g.
    ``{train_generator: {gpus_per_node: 8, timeout_min: 4320}}``. ``max_num_timeout``: how many times a
    training job that reaches its time limit (or is preempted) is checkpointed and requeued.
    ``array_parallelism``: how many tasks of one job array run at once. ``parallel`` (local): how many
    independent stages run at once on this machine, each in its own process with ``cores / parallel``
    CPU threads (small models on a CPU train faster side by side than one after another on every core).
    ``fail_fast`` (or ``--fail-fast``): stop the study at its first failing stage; locally nothing more
    starts, on Slurm the job that fails cancels the study's other jobs.
    """

    name: str = "auto"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    nodes: PositiveInt = 1
    gpus_per_node: NonNegativeInt = 1
    tasks_per_node: PositiveInt | None = None
    cpus_per_task: PositiveInt = 8
    mem_gb: NonNegativeInt = 64  # 0: Slurm's --mem=0, all of a node's memory
    timeout_min: PositiveInt = 2880
    max_num_timeout: NonNegativeInt = 3
    array_parallelism: PositiveInt = 64
    parallel: PositiveInt = 1
    fail_fast: bool = False
    stages: nested(check_stage_resources) = field(default_factory=dict)  # type: ignore[valid-type]


def stage_resources(launcher: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """The resource options of one stage kind: the launcher's, with ``launcher.stages.<kind>`` over them."""
    return {**{k: launcher.get(k) for k in RESOURCE_KEYS}, **(launcher.get("stages") or {}).get(kind, {})}


SCHEMAS: dict[str, type] = {
    "train": TrainConfig,
    "eval": EvalConfig,
    "finetune": FinetuneConfig,
    "generator_train": TrainConfig,
    "sample": SampleConfig,
    "runtime": RuntimeConfig,
    "launcher": LauncherConfig,
}
REGISTRY_SECTIONS: dict[str, Registry] = {"tokenizer": TOKENIZERS, "data": DATASETS, "generator": GENERATORS}
TOP_LEVEL: dict[str, Any] = {"seed": int, "plugins": list[str]}
# Options that belong to a registry entry's methods, dropped with its section when a layer switches entry
# (``sample.options`` are keyword arguments of the generator's ``sample``).
DEPENDENT_OPTIONS: dict[str, tuple[str, ...]] = {"generator": ("sample.options",)}
CHOICES = {
    **{
        f"{section}.{key}": allowed
        for section in ("train", "generator_train")
        for key, allowed in TRAIN_CHOICES.items()
    },
    "launcher.name": ("auto", "local", "slurm"),
    "eval.precision": ("bf16", "fp32"),
    "sample.precision": ("bf16", "fp32"),
}


def defaults() -> dict[str, Any]:
    """The schema defaults: the lowest layer of every cell's config."""
    out: dict[str, Any] = {"seed": 0, "plugins": []}
    out.update({name: dataclasses.asdict(schema()) for name, schema in SCHEMAS.items()})
    out["tokenizer"] = {"name": "titok"}
    out["data"] = {"name": "procedural"}
    out["generator"] = {"name": "maskgit"}
    return out


# ---------------------------------------------------------------------------------------------
# Loading and merging


@dataclass
class Layer:
    """One source of settings: a nested mapping and where it came from (file, cell, command line)."""

    source: str
    values: dict[str, Any]


# PyYAML's safe loader, in libyaml's C build where PyYAML has it (the same documents and errors; ~8x faster, and
# every command reads its study, the profiles and, for reports that draw on them, the sibling studies).
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class SourceFloat(float):
    """A number as a study file prints it: a float that keeps its ``text`` (a source's 100.70 keeps its last
    zero in the report, where the float alone would print 100.7)."""

    text: str

    def __new__(cls, value: float, text: str) -> SourceFloat:
        number = super().__new__(cls, value)
        number.text = text
        return number

    def __reduce__(self) -> tuple[Any, ...]:  # float's own would drop ``text``
        return SourceFloat, (float(self), self.text)


def plain_floats(node: Any) -> Any:
    """``node`` (a loaded YAML value) with every :class:`SourceFloat` a plain float."""
    if isinstance(node, SourceFloat):
        return float(node)
    if isinstance(node, dict):
        return {key: plain_floats(value) for key, value in node.items()}
    if isinstance(node, list):
        return [plain_floats(value) for value in node]
    return node


class DigitsLoader(SAFE_LOADER):  # type: ignore[misc, valid-type]
    """The safe loader, with floats as :class:`SourceFloat`."""


DigitsLoader.add_constructor(
    "tag:yaml.org,2002:float", lambda loader, node: SourceFloat(loader.construct_yaml_float(node), node.value)
)


def load_yaml(path: str | Path, keep_digits: bool = False) -> dict[str, Any]:
    """A YAML mapping from ``path``; missing files and malformed YAML name the file. ``keep_digits``: floats
    as :class:`SourceFloat`, which keep the digits the file gives them."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        data = yaml.load(path.read_text(), Loader=DigitsLoader if keep_digits else SAFE_LOADER)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: malformed YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def nest(flat: Mapping[str, Any], source: str) -> dict[str, Any]:
    """``{"a.b": 1}`` -> ``{"a": {"b": 1}}``; nested mappings are expanded recursively too."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        if not isinstance(key, str) or not key:
            raise ConfigError(f"{source}: bad key {key!r}")
        parts = key.split(".")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{source}: key '{key}' conflicts with a value set for '{part}'")
        leaf = nest(value, source) if isinstance(value, Mapping) else value
        if isinstance(leaf, dict) and isinstance(node.get(parts[-1]), dict):
            node[parts[-1]] = merge_dicts(node[parts[-1]], leaf)
        else:
            node[parts[-1]] = leaf
    return out


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Command-line ``key=value`` items (values parsed as YAML, as OmegaConf's dotlist does)."""
    for item in items:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"command line: override '{item}' is not of the form key=value")
    try:
        conf = OmegaConf.from_dotlist(items)
    except Exception as exc:
        raise ConfigError(f"command line: cannot parse overrides {items}: {exc}") from exc
    return OmegaConf.to_container(conf, resolve=False)  # type: ignore[return-value]


def merge_dicts(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge (later wins) with OmegaConf.merge's semantics on plain YAML data: mappings merge key by
    key (base keys first), anything else (lists, scalars, None, interpolation strings) is replaced. Written
    out because OmegaConf builds a typed node tree per layer, which made planning a study take seconds;
    OmegaConf still resolves the interpolations (:func:`resolve`)."""
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_dicts(out[key], value)
        else:
            out[key] = copy.deepcopy(dict(value) if isinstance(value, Mapping) else value)
    return out


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Keys down to ``section.key`` (not deeper: a key's value may itself be a mapping, such as
    ``tokenizer.encoder``), the granularity at which provenance is tracked and validated."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value and path.count(".") < 1:
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def merge_layers(
    layers: list[Layer],
    start: tuple[dict[str, Any], dict[str, str]] | None = None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """Merge layers in order onto ``start`` (an earlier result), validating after each one (so a
    value a later layer overrides is still checked); return the config, its interpolations left
    for :func:`resolve` (a later merge may change what they point at), and, for each
    ``section.key``, the layer that set it."""
    config, origin = (dict(start[0]), dict(start[1])) if start else ({}, {})
    for layer in layers:
        values = dict(layer.values)
        for section in REGISTRY_SECTIONS:
            new = values.get(section)
            if isinstance(new, Mapping) and "name" in new and config.get(section, {}).get("name") != new["name"]:
                config.pop(section, None)  # another registry entry: its options start afresh
                origin = {k: v for k, v in origin.items() if not k.startswith(section + ".")}
                for dependent in DEPENDENT_OPTIONS.get(section, ()):  # options of that entry's methods go too
                    config.get(dependent.split(".")[0], {}).pop(dependent.split(".")[1], None)
                    origin.pop(dependent, None)
        config = merge_dicts(config, values)
        origin.update(dict.fromkeys(flatten(values), layer.source))
        if "defaults" != layer.source:
            validate(resolve(config, layer.source), origin)
    return config, origin


# ---------------------------------------------------------------------------------------------
# Validation


@functools.cache
def schema_hints(schema: type) -> dict[str, Any]:
    """A config section's dataclass fields and their type hints (read once: every layer is validated)."""
    return typing.get_type_hints(schema, include_extras=True)


def section_schema(config: Mapping[str, Any], section: str, origin: Mapping[str, str]) -> dict[str, Any]:
    """Key -> type hint for one section of a merged config."""
    if section in SCHEMAS:
        return dict(schema_hints(SCHEMAS[section]))
    registry = REGISTRY_SECTIONS[section]
    name = config[section].get("name")
    where = f"{origin.get(section + '.name', 'config')}: {section}.name"
    if not isinstance(name, str):
        raise ConfigError(f"{where}: expected a registry name, got {name!r}")
    return {"name": str, **registry.params(name, where=where)}


def validate(config: Mapping[str, Any], origin: Mapping[str, str]) -> None:
    """Check every key and value of a merged config; errors name the layer (file) and key."""
    known = [*TOP_LEVEL, *SCHEMAS, *REGISTRY_SECTIONS]
    for top, value in config.items():
        where = origin.get(top, "config")
        if top not in known:
            raise unknown_key(
                top, known, origin.get(top, next((v for k, v in origin.items() if k.startswith(top + ".")), "config"))
            )
        if top in TOP_LEVEL:
            if not type_ok(value, TOP_LEVEL[top]):
                raise ConfigError(f"{where}: {top} must be {hint_name(TOP_LEVEL[top])}, got {value!r}")
            continue
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: '{top}' must be a mapping, got {value!r}")
        schema = section_schema(config, top, origin)
        for key, item in value.items():
            dotted = f"{top}.{key}"
            where = origin.get(dotted, "config")
            if key not in schema:
                raise unknown_key(dotted, list(schema), where)
            check_value(item, schema[key], f"{where}: {dotted}")
            if dotted in ("finetune.tokenizer", "finetune.train") and item:
                _check_overrides(config, dotted, item, where)
            if dotted == "sample.options" and item:
                _check_sampler_options(config, item, where)
            if dotted in CHOICES and item not in CHOICES[dotted]:
                raise ConfigError(f"{where}: {dotted} must be one of {', '.join(CHOICES[dotted])}, got {item!r}")
        if SCHEMAS.get(top) is TrainConfig:
            source = origin.get(f"{top}.eval_every") or origin.get(f"{top}.checkpoint_every", "config")
            check_train(value, f"{source}: {top}")


def has_interpolation(value: Any) -> bool:
    """Whether a config value holds an OmegaConf interpolation (``${...}``) anywhere inside it."""
    if isinstance(value, str):
        return "${" in value
    if isinstance(value, Mapping):
        return any(has_interpolation(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(has_interpolation(v) for v in value)
    return False


def resolve(config: dict[str, Any], where: str) -> dict[str, Any]:
    """Resolve OmegaConf interpolations (``${oc.env:BDD100K_ROOT}``, ``${data.resolution}``); a config
    without any is copied as it is (building OmegaConf's tree is most of a plan's time)."""
    if not has_interpolation(config):
        return copy.deepcopy(config)
    try:
        return OmegaConf.to_container(OmegaConf.create(config), resolve=True)  # type: ignore[return-value]
    except Exception as exc:
        raise ConfigError(f"{where}: cannot resolve an interpolation: {exc}") from exc


def _check_overrides(config: Mapping[str, Any], dotted: str, overrides: Mapping[str, Any], where: str) -> None:
    """``finetune.tokenizer`` / ``finetune.train`` may only change keys the target section has."""
    target = dotted.split(".")[1]
    schema = section_schema(config, target, {})
    for key, value in overrides.items():
        if key == "name" or key not in schema:
            raise unknown_key(f"{dotted}.{key}", [k for k in schema if k != "name"], where)
        check_value(value, schema[key], f"{where}: {dotted}.{key}")
    if target == "train":
        check_train(overrides, f"{where}: {dotted}")


def _check_sampler_options(config: Mapping[str, Any], options: Mapping[str, Any], where: str) -> None:
    """``sample.options`` must be keyword-only arguments of the generator's ``sample`` (a generator whose
    sampler takes ``**options``, a released one, checks them when it is built: benchmark/estimate.py)."""
    name = config.get("generator", {}).get("name")
    generator = GENERATORS.get(name, where=f"{where}: generator.name").obj
    if hasattr(generator, "check_sampler_choices"):  # values that only make sense together (generators/sit.py)
        generator.check_sampler_choices(options, where)
    signature = inspect.signature(generator.sample).parameters
    if any(prm.kind == prm.VAR_KEYWORD for prm in signature.values()):
        return
    params = {p: prm for p, prm in signature.items() if prm.kind == prm.KEYWORD_ONLY}
    for key in options:
        if key not in params:
            raise unknown_key(f"sample.options.{key}", list(params), where)

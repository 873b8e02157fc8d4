"""The stage graph: the kinds of stage, what each reads from a cell's config and from upstream stages.

    pretrain_encoder (optional) ─► train_tokenizer ─► finetune_tokenizer (optional, SelfBootTok stage 2) ─► evaluate_tokenizer
                                         └──────► cache_latents ─► train_generator ─► sample ─► evaluate_generator
                                                                      (decodes through the final tokenizer)

``pretrain_encoder`` trains a stand-in encoder offline with its family's objective when
``tokenizer.encoder.pretrain`` is set (benchmark/encoder_pretraining.py); its hash covers the seed, the
data and ``tokenizer.encoder`` alone, so every cell with the same stand-in shares one pretraining. An
alignment teacher's stand-in with ``pretrain`` (``tokenizer.align``, ``.align_global``, ``.align_local``,
``generator.repa_teacher``) gets a stage of its role's kind the same way (:data:`PRETRAINED`), read by the
stages that train with that teacher; the roles share one folder, so one pretraining serves every role
with the same teacher (:class:`TeacherPretraining`). SelfBootTok's OT target, the 2D tokenizer at
``tokenizer.latent_2d``, is trained first by a ``train_latent_2d`` stage when its mapping has ``train``
(hash: seed, data and the mapping), read by the stages that train with it.

A released generator (``generator.name: released``) is installed, not trained: its train_generator
stage reads ``train_tokenizer`` (the token space it is used in) instead of a latent cache (the need
``latents``).

A stage's hash covers exactly ``select(config)`` and its inputs' hashes, so cells that share a
tokenizer share its training and its latent cache, and a finished stage is never run twice. The
need ``tokenizer`` means the cell's final tokenizer: ``finetune_tokenizer`` when the cell has a
``finetune`` stage, else ``train_tokenizer``. Latents always come from ``train_tokenizer``: a
finetune stage must leave the tokens unchanged (it checks), so one generator serves every finetuned
variant (the SelfBootTok paper's Fig. 6 trains its generator once for five local-aligner sizes).

No torch here: the planner, ``--dry-run``, ``status`` and ``report`` read the graph without loading
any model; the stage bodies are in benchmark/tokenizer_stages.py and benchmark/generator_stages.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from benchmark.errors import ConfigError


@dataclass(frozen=True)
class StageKind:
    """One kind of stage: the config sections and upstream kinds it depends on.

    ``gpu``: whether it asks a cluster for GPUs; ``trains``: a training loop (data-parallel, checkpointed,
    requeued on a time limit); ``version`` is part of the hash (bump it when a body's outputs change);
    ``folder``: the run store's folder of its stages, which also names them in their hashes (default:
    ``name``; kinds that share one share their stages).
    """

    name: str
    sections: tuple[str, ...]
    needs: tuple[str, ...]
    version: int = 1
    gpu: bool = True
    trains: bool = False
    folder: str = ""

    @property
    def store_name(self) -> str:
        return self.folder or self.name

    def select(self, config: dict[str, Any]) -> dict[str, Any]:
        """The part of a cell's config this stage's hash covers (a dotted section: one nested mapping)."""
        return {s: _lookup(config, s) for s in self.sections}

    def inputs(self, config: dict[str, Any]) -> tuple[str, ...]:
        """The stage kinds this one reads, with ``tokenizer``, ``latents`` and the pretrained stand-ins
        resolved for this config (``pretrained_tokenizer``: the tokenizer's encoder and teachers;
        ``pretrained_teachers``: its teachers alone; ``pretrained_generator``: the REPA teacher; each the
        stand-ins that ``pretrain``, none otherwise; the tokenizer's and its teachers' include a trained
        OT target, ``train_latent_2d``)."""
        resolved = {
            "tokenizer": ("finetune_tokenizer" if has_finetune(config) else "train_tokenizer",),
            "latents": ("train_tokenizer" if is_released_generator(config) else "cache_latents",),
            "pretrained_tokenizer": pretrained_kinds(config, "tokenizer.") + trained_ot_target(config),
            "pretrained_teachers": pretrained_kinds(config, "tokenizer.align") + trained_ot_target(config),
            "pretrained_generator": pretrained_kinds(config, "generator."),
        }
        return tuple(r for n in self.needs for r in resolved.get(n, (n,)))


@dataclass(frozen=True)
class TeacherPretraining(StageKind):
    """The offline pretraining of the alignment teacher at ``sections[2]``. The kinds of every teacher role
    share one folder, and the hash covers the teacher's mapping under the key ``teacher``, not the key that
    names it: the cells and roles with the same teacher, data and seed share one pretraining (SelfBootTok's
    global teacher and SiT's REPA teacher are the same DINOv2, say)."""

    folder: str = "pretrain_teacher"

    def select(self, config: dict[str, Any]) -> dict[str, Any]:
        return {"seed": config["seed"], "data": config["data"], "teacher": _lookup(config, self.sections[2])}


def _lookup(config: dict[str, Any], dotted: str) -> Any:
    for key in dotted.split("."):
        config = config[key]
    return config


# The encoders a cell may name as stand-ins pretrained offline, and the stage kind that pretrains each.
PRETRAINED = {
    "tokenizer.encoder": "pretrain_encoder",
    "tokenizer.align": "pretrain_align",
    "tokenizer.align_global": "pretrain_align_global",
    "tokenizer.align_local": "pretrain_align_local",
    "generator.repa_teacher": "pretrain_repa_teacher",
}
PRETRAINED_PATH = {kind: path for path, kind in PRETRAINED.items()}


def encoder_at(config: dict[str, Any], path: str) -> Mapping[str, Any] | None:
    """The encoder mapping a config names at ``path`` (``section.key``, e.g. ``tokenizer.align_global``),
    or None when it names none there."""
    section, key = path.split(".")
    encoder = (config.get(section) or {}).get(key)
    return encoder if isinstance(encoder, Mapping) else None


# The weights that scale the loss term each tokenizer teacher (and the OT target) serves. A config that sets
# one of them to 0 leaves the term out, and the tokenizer builds no teacher or target for it
# (tokenizers/softvq.py, tokenizers/selfboottok.py), so nothing pretrains or trains it. Every plugin's
# default for these weights is positive: an unset weight means the term is used. (SiT's REPA teacher also
# gives REG its class token, whatever ``generator.repa_weight``: it is always built.)
TERM_WEIGHTS: dict[str, tuple[str, ...]] = {
    "tokenizer.align": ("tokenizer.align_weight",),
    "tokenizer.align_global": ("tokenizer.align_weight", "tokenizer.repa_global_weight"),
    "tokenizer.align_local": ("tokenizer.align_weight", "tokenizer.repa_local_weight"),
    "tokenizer.latent_2d": ("tokenizer.align_weight", "tokenizer.ot_weight"),
}


def weighted_out(config: dict[str, Any], path: str) -> bool:
    """Whether a config weights the term of the teacher (or OT target) at ``path`` 0 (:data:`TERM_WEIGHTS`)."""
    for dotted in TERM_WEIGHTS.get(path, ()):
        section, key = dotted.split(".")
        if (config.get(section) or {}).get(key, 1) == 0:
            return True
    return False


def has_pretrain(config: dict[str, Any], path: str) -> bool:
    """Whether the encoder at ``path`` is a stand-in pretrained offline (``<path>.pretrain`` is set) for a
    term the config uses (a teacher whose term is weighted 0 is not pretrained)."""
    encoder = encoder_at(config, path)
    return encoder is not None and encoder.get("pretrain") is not None and not weighted_out(config, path)


LATENT_2D = "tokenizer.latent_2d"


def uses_ot_target(config: dict[str, Any]) -> bool:
    """Whether a cell's tokenizer aligns to an OT target: a ``tokenizer.latent_2d``, SelfBootTok's local-2D
    branch (``branches`` with L2, its default: tokenizers/selfboottok.py builds no target without it) and an
    OT term not weighted 0."""
    return (
        encoder_at(config, LATENT_2D) is not None
        and "L2" in config["tokenizer"].get("branches", "G+L1+L2")
        and not weighted_out(config, LATENT_2D)
    )


def trained_ot_target(config: dict[str, Any]) -> tuple[str, ...]:
    """``("train_latent_2d",)`` when a cell trains its OT target first (``tokenizer.latent_2d.train`` is set)."""
    trains = uses_ot_target(config) and encoder_at(config, LATENT_2D).get("train") is not None
    return ("train_latent_2d",) if trains else ()


def pretrained_kinds(config: dict[str, Any], prefix: str) -> tuple[str, ...]:
    """The pretraining stage kinds of the stand-ins under ``prefix`` that this config pretrains."""
    return tuple(kind for path, kind in PRETRAINED.items() if path.startswith(prefix) and has_pretrain(config, path))


def has_finetune(config: dict[str, Any]) -> bool:
    """Whether a cell has a second tokenizer stage (``finetune.tokenizer`` is set)."""
    return bool(config.get("finetune", {}).get("tokenizer"))


def check_stage2_teachers(config: dict[str, Any], where: str) -> None:
    """Stage 2 (``finetune.tokenizer``) trains with stage 1's teachers and their offline pretraining: a
    teacher that stage 2 names anew may not ask for a pretraining of its own."""
    for key, spec in ((config.get("finetune") or {}).get("tokenizer") or {}).items():
        if key == "latent_2d" and isinstance(spec, dict) and spec.get("train") is not None:
            raise ConfigError(
                f"{where}: finetune.tokenizer.latent_2d.train: stage 2 trains with stage 1's OT target; "
                "train it under tokenizer.latent_2d"
            )
        if key.startswith("align") and isinstance(spec, dict) and spec.get("pretrain") is not None:
            raise ConfigError(
                f"{where}: finetune.tokenizer.{key}.pretrain: stage 2 trains with stage 1's teachers; "
                f"pretrain the teacher under tokenizer.{key}"
            )


def is_released_generator(config: dict[str, Any]) -> bool:
    """Whether a cell's generator is an official release (generators/released.py): installed in the token
    space of the cell's tokenizer, not trained, so it needs no latent cache."""
    return config.get("generator", {}).get("name") == "released"


STAGES: dict[str, StageKind] = {
    kind.name: kind
    for kind in (
        StageKind("pretrain_encoder", ("seed", "data", "tokenizer.encoder"), (), trains=True),
        *(
            TeacherPretraining(kind, ("seed", "data", path), (), trains=True)
            for path, kind in PRETRAINED.items()
            if kind != "pretrain_encoder"
        ),
        StageKind("train_latent_2d", ("seed", "data", LATENT_2D), (), trains=True),
        StageKind("train_tokenizer", ("seed", "data", "tokenizer", "train"), ("pretrained_tokenizer",), trains=True),
        StageKind("finetune_tokenizer", ("seed", "finetune"), ("train_tokenizer", "pretrained_teachers"), trains=True),
        StageKind("evaluate_tokenizer", ("data", "eval"), ("tokenizer",)),
        StageKind("cache_latents", (), ("train_tokenizer",)),
        StageKind(
            "train_generator",
            ("seed", "generator", "generator_train"),
            ("latents", "pretrained_generator"),
            trains=True,
        ),
        StageKind("sample", ("sample",), ("train_generator", "tokenizer"), version=2),
        StageKind("evaluate_generator", ("data", "eval"), ("sample",)),
    )
}


TRAINING_KINDS = tuple(name for name, kind in STAGES.items() if kind.trains)  # in dependency order
# Training stages that make what a paper takes as published weights (the encoder's and the teachers'
# stand-ins, SelfBootTok's OT target): a compute comparison of the tokenizers and generators leaves them out.
PREREQUISITE_KINDS = (*PRETRAINED.values(), "train_latent_2d")


def store_folder(kind: str) -> str:
    """The run store's folder of a kind's stages."""
    return STAGES[kind].store_name if kind in STAGES else kind


def stage_order(kind: str) -> int:
    """Position of a kind in dependency order (upstream kinds first)."""
    return list(STAGES).index(kind)


def closure(kinds: list[str], config: dict[str, Any]) -> list[str]:
    """The wanted stage kinds plus everything they need for this cell's config, in dependency order."""
    out: set[str] = set()
    pending = list(kinds)
    while pending:
        kind = pending.pop()
        if kind not in out:
            out.add(kind)
            pending.extend(STAGES[kind].inputs(config))
    return sorted(out, key=stage_order)

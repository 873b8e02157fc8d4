"""The body of each stage kind (the graph of kinds and their dependencies is in benchmark/graph.py):
benchmark/tokenizer_stages.py trains, finetunes and evaluates tokenizers; benchmark/generator_stages.py
caches latents, trains generators, samples and evaluates the samples; benchmark/encoder_pretraining.py
pretrains a stand-in encoder or alignment teacher. Each body takes a
:class:`~benchmark.stage_context.StageContext` and returns the stage's result record.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from benchmark import generator_stages as gen
from benchmark import tokenizer_stages as tok
from benchmark.encoder_pretraining import pretrain_encoder
from benchmark.graph import PRETRAINED
from benchmark.stage_context import StageContext

BODIES: dict[str, Callable[[StageContext], dict[str, Any]]] = {
    **dict.fromkeys(PRETRAINED.values(), pretrain_encoder),
    "train_latent_2d": tok.train_latent_2d,
    "train_tokenizer": tok.train_tokenizer,
    "finetune_tokenizer": tok.finetune_tokenizer,
    "evaluate_tokenizer": tok.evaluate_tokenizer,
    "cache_latents": gen.cache_latents,
    "train_generator": gen.train_generator,
    "sample": gen.sample,
    "evaluate_generator": gen.evaluate_generator,
}

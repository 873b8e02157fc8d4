"""The stages: what a running stage sees (:class:`StageContext`) and the body of each kind.

The graph of kinds and their dependencies is in benchmark/graph.py; the bodies are in
benchmark/tokenizer_stages.py (train, finetune, evaluate a tokenizer) and
benchmark/generator_stages.py (cache latents, train a generator, sample, evaluate the samples). Each
body takes a :class:`StageContext` and returns the stage's result record.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmark.distributed import World
from benchmark.store import RunStore


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


def bodies() -> dict[str, Callable[[StageContext], dict[str, Any]]]:
    """Stage kind -> its body."""
    from benchmark import generator_stages as gen
    from benchmark import tokenizer_stages as tok

    return {
        "train_tokenizer": tok.train_tokenizer,
        "finetune_tokenizer": tok.finetune_tokenizer,
        "evaluate_tokenizer": tok.evaluate_tokenizer,
        "cache_latents": gen.cache_latents,
        "train_generator": gen.train_generator,
        "sample": gen.sample,
        "evaluate_generator": gen.evaluate_generator,
    }

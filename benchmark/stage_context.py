"""What a running stage sees: its record, its folder, the run store, a logger and its place among
the data-parallel processes (benchmark/stages.py maps each stage kind to its body)."""

from __future__ import annotations

import logging
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

"""What a running stage sees: its record, its folder, the run store, a logger and its place among
the data-parallel processes (benchmark/stages.py maps each stage kind to its body)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from benchmark.distributed import World

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from benchmark.config import TrainConfig
    from benchmark.train import StepFn
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

    def fit(
        self, model: torch.nn.Module, step_fn: StepFn, dataset: Dataset, cfg: TrainConfig, **extra: Any
    ) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        """``benchmark.train.fit`` in this stage: its seed, folder, device, data workers, log, ``runtime.compile``
        and ``runtime.find_unused_parameters``; ``extra``: the adversary, the checkpoint callback and the batch
        size's option (``batch_key``)."""
        from benchmark.train import fit

        return fit(
            model,
            step_fn,
            dataset,
            cfg,
            self.config["seed"],
            self.dir,
            self.device,
            self.runtime.get("num_workers", 0),
            self.log,
            self.runtime.get("compile", False),
            find_unused_parameters=self.runtime.get("find_unused_parameters", False),
            **extra,
        )

    @property
    def device(self) -> torch.device:
        from benchmark.distributed import device as pick_device

        return pick_device(self.runtime.get("device", "auto"))

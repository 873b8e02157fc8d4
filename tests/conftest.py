"""Shared fixtures: a tiny study that runs end to end on CPU in seconds."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning: on a loaded 2-core machine spinning threads made
# small CPU ops up to 60x slower (measured).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

from benchmark.registry import load_plugins  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

load_plugins()
torch.set_num_threads(2)

# Overrides that shrink the smoke profile further, for tests.
TINY = ["train.steps=24", "train.batch_size=16", "train.checkpoint_every=8", "train.log_every=4",
        "data.train_size=64", "data.eval_size=32", "data.resolution=16"]


@pytest.fixture
def write_study(tmp_path: Path):
    """Write a study YAML into tmp_path and return its path."""

    def write(text: str, name: str = "mini.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write


MINI_STUDY = """
title: Mini token-count study
source: tests
config:
  tokenizer: {name: titok, size: tiny, patch_size: 4, codebook_size: 64, l2_norm: false}
axes:
  grid:
    tokenizer.num_latent_tokens: [4, 8]
label: "{tokenizer.num_latent_tokens}"
stages: [evaluate_tokenizer]
report:
  tables:
    - name: main
      row_label: K
      columns: {psnr: PSNR, codebook_usage: CB usage}
      reference:
        label: paper
        columns: {codebook_usage: CB usage}
        rows: {"4": {codebook_usage: 11.0}}
  figures:
    - {name: curve, x: tokenizer.num_latent_tokens, y: [psnr]}
"""

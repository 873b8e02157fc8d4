"""tok1d: a benchmark and ablation harness for 1D image tokenizers."""

from pathlib import Path

__version__ = "0.1.0"
REPO_ROOT = Path(__file__).resolve().parent.parent

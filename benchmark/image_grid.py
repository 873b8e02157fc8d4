"""Image grids written as PNG: reconstructions (originals above reconstructions), samples, previews."""

from __future__ import annotations

from pathlib import Path

import torch

from benchmark.store import atomic_write


def save_image_grid(images: torch.Tensor, path: Path, nrow: int = 8) -> None:
    """Images (N, 3, H, W) in [0, 1] as one PNG grid of ``nrow`` columns, written atomically."""
    from torchvision.utils import save_image

    atomic_write(path, lambda tmp: save_image(images.clamp(0, 1), tmp, nrow=nrow, padding=1, format="png"))

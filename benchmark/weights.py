"""Finding weight files on this machine: one lookup for every network tok1d loads from a file (the FID
Inception, LPIPS backbones, pretrained encoders given as local files). tok1d never downloads weights
itself; a missing file is a :class:`~benchmark.errors.WeightsError` naming where it looked and how to
obtain it."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from benchmark.errors import WeightsError


def hub_cache(filename: str) -> Path:
    """Where torch's hub (torchvision, torch-fidelity) caches a downloaded checkpoint file."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def find_weights(
    what: str,
    given: str | os.PathLike | None = None,
    origin: str = "",
    env: str | None = None,
    hub_file: str | None = None,
    how: Callable[[], str] = lambda: "",
) -> tuple[Path, str] | None:
    """The first of: ``given`` (a path set in ``origin``), ``$env``, ``hub_file`` in torch's hub cache;
    with where it came from. A path that is set but missing is an error naming it and its origin; None
    when nothing is set and the cache holds no such file (the caller may have a fallback)."""
    for path, source in ((given, origin), (os.environ.get(env) if env else None, f"${env}")):
        if path:
            file = Path(path).expanduser()
            if not file.exists():
                raise WeightsError(f"{what}: {file} (from {source}) does not exist", how())
            return file.resolve(), source
    if hub_file is not None and hub_cache(hub_file).is_file():
        return hub_cache(hub_file), "torch hub cache"
    return None

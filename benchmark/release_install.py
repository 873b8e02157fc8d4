"""An official release inside a study: opened by the ``released`` tokenizer (tokenizers/released.py) or
generator (generators/released.py), and installed, not trained, by its training stage.

    tokenizer: {name: released, release: titok-l32}                # train_tokenizer installs the tokenizer
    generator: {name: released, release: titok-l32-generator}      # train_generator installs the generator

:func:`open_release` reads what the entry names (a converted folder, a release from the caches or a local
copy, or a random-weight stand-in of the release's architecture for smoke runs) through benchmark/convert.py.
:func:`install_release` writes a tokenizer stage's folder (tokenizer.json of the plain tok1d tokenizer it
converted to, so every later stage loads that), :func:`install_generator` a train_generator folder:
``generator.json`` (the plain tok1d generator, which ``benchmark.checkpoints.load_generator`` builds),
``latents.json`` (the token space it models: the tokenizer's token spec and the data's classes, as a latent
cache records them; a release needs no cache of the training set) and the weights.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor

from benchmark.base import Generator, Tokenizer, TokenSpec
from benchmark.checkpoints import save_tokenizer, save_weights
from benchmark.convert import (
    convert,
    get_format,
    local_release,
    provenance,
    read_release,
    release_info,
    resolve_source,
    write_stand_in,
)
from benchmark.errors import CheckpointError, ConfigError
from benchmark.store import read_json, write_json

STAND_IN_SIZE = 256  # a generator stand-in's config does not depend on the image size


def _read_folder(folder: Path, kind: str) -> dict[str, Any]:
    """The folder config of a converted tokenizer (tokenizer.json) or generator (stage.json's config)."""
    if kind == "tokenizer":
        config = read_json(folder / "tokenizer.json")
    else:
        config = (read_json(folder / "stage.json") or {}).get("config")
        config = config if config and "token_spec" in config else None
    if config is None or not (folder / "model.safetensors").is_file():
        needs = "tokenizer.json" if kind == "tokenizer" else "stage.json (of benchmark.convert)"
        raise CheckpointError(f"{folder}: not a converted {kind} folder (needs {needs} and model.safetensors)")
    return config


def open_release(
    *,
    kind: str = "tokenizer",
    image_size: int = STAND_IN_SIZE,
    release: str | None = None,
    format: str | None = None,
    source: str | None = None,
    config: str | None = None,
    checkpoint: str | None = None,
    stand_in: bool = False,
    seed: int = 0,
    weights: bool = True,
) -> tuple[dict[str, Any], dict[str, Tensor] | None, dict[str, Any]]:
    """(tok1d folder config, tok1d state dict or None without ``weights``, provenance) of what the options of
    a ``released`` tokenizer or generator (``kind``) name: a converted ``checkpoint`` folder, a ``release`` of
    benchmark.convert.RELEASES (its files from the caches, or ``source``), its random-weight ``stand_in``, or
    a ``format`` + ``source``."""
    where = kind
    if sum(x is not None for x in (checkpoint, release, format)) != 1 or (format and not source):
        raise ConfigError(f"{where}: name exactly one of checkpoint, release, or format with source")
    named = format or (release_info(release).format if release else None)
    if named and get_format(named).model != kind:
        raise ConfigError(f"{where}: {release or format} is a {get_format(named).model} release, not a {kind}")
    if checkpoint is not None:
        folder = Path(checkpoint).expanduser()
        folder_config = _read_folder(folder, kind)
        state = load_file(folder / "model.safetensors") if weights else None
        record = {**(read_json(folder / "release.json") or {}), "checkpoint": str(folder)}
    elif stand_in:
        if release is None:
            raise ConfigError(f"{where}.stand_in: needs a release name ({kind}.release) whose architecture to shrink")
        info = release_info(release)
        record = {"format": info.format, "stand_in": release, "seed": seed, "image_size": image_size}
        if weights:
            with tempfile.TemporaryDirectory() as tmp:
                converted, state = convert(info.format, write_stand_in(release, image_size, Path(tmp), seed))
            folder_config = converted.config
        else:
            folder_config, state = get_format(info.format).parse(info.stand_in(image_size), release), None
    else:
        if release is not None:
            format = release_info(release).format
            path = resolve_source(format, source) if source else local_release(release)
        else:
            path = resolve_source(format, source)
        if weights:
            converted, state = convert(format, path, Path(config) if config else None)
            record = provenance(converted, source or release)
        else:
            converted, state = read_release(format, path, Path(config) if config else None, weights=False), None
            record = {"format": format, "source": source or release}
        folder_config = converted.config
        record["release"] = release
    if kind == "tokenizer" and (resolution := folder_config["data"]["resolution"]) != image_size:
        raise ConfigError(f"{where}: the release is a {resolution} px tokenizer; data.resolution is {image_size}")
    return folder_config, state, record


@torch.no_grad()
def throughput(model: Tokenizer, image_size: int, device: torch.device, batch: int = 16, iters: int = 3) -> float:
    """Images/s of ``reconstruct`` (encode + decode) on a batch of random images, fp32, after one warm-up."""
    images = torch.rand(batch, 3, image_size, image_size, device=device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    model.reconstruct(images)
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        model.reconstruct(images)
    sync()
    return batch * iters / (time.perf_counter() - t0)


def install_release(model: Tokenizer, folder: Path, data: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """The train_tokenizer stage of a ``released`` tokenizer: its converted model written into the stage's
    folder (with the cell's data config and ``release.json``), nothing trained; the result records its
    parameters, GFLOPs of encode / decode / a train step (benchmark.cost), tokens, images/s and provenance."""
    from benchmark.cost import tokenizer_cost

    inner = model.model
    save_tokenizer(folder, {"data": dict(data), "tokenizer": model.folder_config["tokenizer"]}, inner.state_dict())
    write_json(folder / "release.json", model.provenance)
    inner = inner.to(device).eval()
    cost = tokenizer_cost(inner, data["resolution"], device)
    return {
        "params": cost["params"]["total"],
        "tokens": inner.token_spec.num_tokens,
        "images_per_s": throughput(inner, data["resolution"], device),
        "cost": cost,
        "release": model.provenance,
    }


def install_generator(
    model: Generator, folder: Path, spec: TokenSpec, num_classes: int, data: Mapping[str, Any]
) -> dict[str, Any]:
    """The train_generator stage of a ``released`` generator: the converted generator (``generator.json``: its
    folder config, with the token spec and classes it was released with), weights and provenance, and the
    token space it is used in (``latents.json``: the cell's token spec and classes), nothing trained. The
    result records its parameters and GFLOPs (benchmark.cost), the release's own sampling settings (to set as the study's ``sample``
    for its published protocol) and provenance."""
    write_json(folder / "generator.json", model.folder_config)
    save_weights(folder, model.model.state_dict())
    write_json(folder / "release.json", model.provenance)
    write_json(
        folder / "latents.json",
        {"token_spec": dataclasses.asdict(spec), "num_classes": num_classes, "data": dict(data), "num_items": 0},
    )
    from benchmark.cost import generator_cost

    inner = model.model.train()
    n = spec.num_generated
    tokens = torch.zeros(1, n, dtype=torch.long) if spec.kind == "discrete" else torch.zeros(1, n, spec.dim)
    cost = generator_cost(inner, tokens, torch.zeros(1, dtype=torch.long))
    return {
        "generator_params": cost["params"]["total"],
        "cost": cost,
        "release_sample": model.folder_config.get("sample"),
        "release": model.provenance,
    }

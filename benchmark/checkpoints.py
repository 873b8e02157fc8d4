"""Building, saving and loading tokenizers and generators: the one place that knows a model folder.

A tokenizer folder (a train / finetune stage's folder, or one written by ``benchmark.convert``) holds

    tokenizer.json      {"data": <data config>, "tokenizer": <tokenizer config>}
    model.safetensors   the weights (the EMA weights when training kept an average)
    init_report.json    (optional) what a pretrained initialisation changed outside the state dict

and :func:`load_tokenizer` rebuilds the model from it. A generator folder (a train_generator stage's)
holds ``stage.json`` (its config) and ``model.safetensors``; it is rebuilt for the token spec and class
count of the latent cache it was trained on (an installed release: from its ``generator.json``). Stages, ``benchmark.evaluate`` and ``benchmark.bench``
all go through here.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from benchmark.base import Generator, Tokenizer, TokenSpec
from benchmark.errors import CheckpointError
from benchmark.registry import GENERATORS, TOKENIZERS
from benchmark.store import atomic_write, read_json, write_json

TOKENIZER_FILES = ("tokenizer.json", "model.safetensors")


def build_tokenizer(config: Mapping[str, Any]) -> Tokenizer:
    """The tokenizer named by ``config['tokenizer']`` at ``config['data']['resolution']``, fresh weights."""
    opts = {k: v for k, v in config["tokenizer"].items() if k != "name"}
    return TOKENIZERS.build(config["tokenizer"]["name"], image_size=config["data"]["resolution"], **opts)


def latent_2d_tokenizer(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The tokenizer mapping (``name`` and options) of SelfBootTok's OT target ``tokenizer.latent_2d``,
    without its ``checkpoint`` or ``train`` options; a frozen encoder needs no discriminator, so
    ``adversarial`` defaults to None (also when the ``train_latent_2d`` stage trains it)."""
    opts = {k: v for k, v in spec.items() if k not in ("tokenizer", "checkpoint", "train")}
    if "adversarial" in TOKENIZERS.params(spec["tokenizer"]):
        opts.setdefault("adversarial", None)
    return {"name": spec["tokenizer"], **opts}


def build_generator(config: Mapping[str, Any], token_spec: TokenSpec, num_classes: int) -> Generator:
    """The generator named by ``config['generator']`` for a tokenizer's token spec, fresh weights."""
    opts = {k: v for k, v in config["generator"].items() if k != "name"}
    return GENERATORS.build(config["generator"]["name"], token_spec=token_spec, num_classes=num_classes, **opts)


def restore_architecture(model: Tokenizer, folder: Path) -> None:
    """Re-apply what a pretrained initialisation changed outside the state dict (LayerNorm eps,
    MLP activation of the copied blocks), as recorded in ``folder/init_report.json``."""
    report = read_json(folder / "init_report.json")
    if report and report.get("norm_eps") is not None:
        from benchmark.weight_transfer import match_architecture

        copied = [
            int(r["target"].split(".")[1])
            for r in report["rows"]
            if r["target"].startswith("transformer.") and r["status"] in ("copied", "adapted")
        ]
        match_architecture(model.encoder, report["norm_eps"], report["activation"], max(copied) + 1)


def save_weights(folder: Path, weights: Mapping[str, Tensor]) -> None:
    """``folder/model.safetensors``, written atomically."""
    atomic_write(folder / "model.safetensors", lambda tmp: save_file(dict(weights), str(tmp)))


def save_tokenizer(folder: Path, config: Mapping[str, Any], weights: Mapping[str, Tensor]) -> None:
    """A self-contained tokenizer folder: ``tokenizer.json`` (data + tokenizer config) and its weights."""
    save_weights(folder, weights)
    write_json(folder / "tokenizer.json", {"data": config["data"], "tokenizer": config["tokenizer"]})


def is_tokenizer_folder(path: Path) -> bool:
    return path.is_dir() and all((path / f).is_file() for f in TOKENIZER_FILES)


def _weights(folder: Path) -> dict[str, Tensor]:
    try:
        return load_file(folder / "model.safetensors")
    except (OSError, RuntimeError, ValueError) as exc:  # safetensors raises its own SafetensorError (a ValueError)
        raise CheckpointError(
            f"{folder / 'model.safetensors'}: unreadable weights: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None


def _load_state(model: torch.nn.Module, state: dict[str, Tensor], folder: Path) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        detail = " ".join(line.strip() for line in str(exc).splitlines()[1:3])
        raise CheckpointError(
            f"{folder / 'model.safetensors'} does not fit the model its config builds: {detail[:400]}"
        ) from None


def load_tokenizer(folder: str | Path, device: torch.device | str = "cpu") -> Tokenizer:
    """The tokenizer stored in ``folder``, in eval mode on ``device``.

    Its ``encode(images)`` takes float images in [0, 1] (B, 3, H, W) and returns its tokens (ids
    (B, K) for a discrete tokenizer), and ``decode(tokens)`` returns images in [0, 1].
    """
    folder = Path(folder).expanduser()
    missing = [f for f in TOKENIZER_FILES if not (folder / f).is_file()]
    if missing:
        raise CheckpointError(f"{folder}: not a tokenizer folder (missing {', '.join(missing)})")
    model = build_tokenizer(read_json(folder / "tokenizer.json"))
    restore_architecture(model, folder)
    _load_state(model, _weights(folder), folder)
    return model.to(device).eval()


def load_generator(
    folder: Path, token_spec: TokenSpec, num_classes: int, device: torch.device | str = "cpu"
) -> Generator:
    """The trained generator of a train_generator folder, for the token spec and classes of the latent
    cache it was trained on, in eval mode on ``device``. A released generator's folder (its
    train_generator stage installed it: benchmark/release_install.py) holds ``generator.json``: the
    converted generator, built for the token spec and classes it was released with."""
    record = read_json(folder / "stage.json")
    if record is None or not (folder / "model.safetensors").is_file():
        raise CheckpointError(f"{folder}: not a trained generator folder (needs stage.json and model.safetensors)")
    installed = read_json(folder / "generator.json")
    if installed is not None:
        config, token_spec = installed, TokenSpec.from_dict(installed["token_spec"])
        num_classes = installed["num_classes"]
    else:
        config = record["config"]
    model = build_generator(config, token_spec, num_classes)
    _load_state(model, _weights(folder), folder)
    return model.to(device).eval()

"""``python -m benchmark.evaluate PATH [options]``: evaluate a stored checkpoint or a set of images
without a study, printing the markdown table and protocol lines that the study reports print.

PATH is recognised by what it holds, in this order:

    tokenizer folder   tokenizer.json + model.safetensors (a train / finetune_tokenizer stage):
                       --metrics (psnr ssim codebook_usage rfid ...) on its data's eval split
    generator folder   stage.json of a train_generator stage + model.safetensors, in its run store
                       (latents at <runs>/cache_latents/<hash>), or a generator release converted by
                       benchmark.convert (its latents.json): samples --num-images images with
                       balanced labels, decodes them through --tokenizer DIR, then gFID / IS
    sample folder      images.npy, (N, H, W, 3) uint8 (a sample stage): gFID / IS
    .npz file          arr_0, (N, H, W, 3) uint8 (an ADM sample batch): gFID / IS
    image folder       image files directly in it: gFID / IS

gFID's reference is --reference (an .npz of mu / sigma, e.g. ADM's VIRTUAL_imagenet256_labeled.npz)
or the statistics of the tokenizer data's train split, computed once and cached under --cache;
rFID's originals (the evaluated split's first --num-images images) are cached there too.
The same checkpoint, options and --seed give the same numbers.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from benchmark.checkpoints import TOKENIZER_FILES, is_tokenizer_folder
from benchmark.config import EvalConfig, SampleConfig, parse_overrides, validate
from benchmark.data import list_images
from benchmark.distributed import device as pick_device
from benchmark.errors import ConfigError, DataError, Tok1dError
from benchmark.fid import (
    GENERATION_METRICS,
    IS_SPLITS,
    array_images,
    folder_images,
    generation_metrics,
)
from benchmark.generator_stages import sample
from benchmark.image_grid import save_image_grid
from benchmark.registry import METRICS, load_plugins
from benchmark.report import cell_protocol_lines
from benchmark.stage_context import StageContext
from benchmark.store import RunStore, read_json, write_json
from benchmark.tokenizer_eval import evaluate_tokenizer

DEFAULT_CACHE = "~/.cache/tok1d/fid_stats"
SOURCES = {
    "samples": "images.npy of a sample folder",
    "npz": "arr_0 of an .npz (ADM sample batch)",
    "images": "image files of a folder, as stored",
}
WHAT_PATH_CAN_BE = (
    "a tokenizer folder (tokenizer.json + model.safetensors), a train_generator folder "
    "(stage.json + model.safetensors), a sample folder (images.npy), an .npz of samples "
    "(arr_0) or a folder of images"
)


@dataclass
class Evaluation:
    """What one evaluation measured: its metrics and the protocol record the reports print."""

    path: Path
    mode: str
    metrics: dict[str, float]
    protocol: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """The stage kind whose protocol line this evaluation's record follows."""
        if self.mode == "tokenizer":
            return "evaluate_tokenizer"
        return "evaluate_generator" if "sampling" in self.protocol else "evaluate_images"

    def markdown(self) -> str:
        """The metrics as a one-row pandas markdown table, then the protocol lines."""
        table = pd.DataFrame([{"path": str(self.path), **self.metrics}])
        lines = [table.to_markdown(index=False, floatfmt=".4g"), "", "## Protocol", ""]
        if self.kind == "evaluate_images":
            lines.append(f"- {self.path}: {self.protocol['num_images']} images, {SOURCES[self.mode]}")
        lines += cell_protocol_lines(str(self.path), {self.kind: self.protocol})
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "mode": self.mode,
            "metrics": self.metrics,
            "protocol": self.protocol,
            **self.details,
        }


@dataclass
class FolderContext(StageContext):
    """A stage context whose upstream folders are given as paths (a checkpoint evaluated outside its
    study) instead of being looked up by hash in the run store; ``folders["tokenizer"]`` is the
    final tokenizer."""

    folders: dict[str, Path] = field(default_factory=dict)

    def input_dir(self, kind: str) -> Path:
        return self.folders[kind]

    def tokenizer_dir(self) -> Path:
        return self.folders["tokenizer"]


# ---------------------------------------------------------------------------------------------
# What PATH is


def detect_mode(path: Path) -> str:
    """tokenizer, generator, samples, npz or images: what the path holds; anything else is a
    DataError naming it."""
    if path.is_file() and path.suffix == ".npz":
        return "npz"
    if not path.is_dir():
        raise DataError(
            f"{path}: {'no such file or folder' if not path.exists() else 'not an .npz file'}; "
            f"expected {WHAT_PATH_CAN_BE}"
        )
    if is_tokenizer_folder(path):
        return "tokenizer"
    record = read_json(path / "stage.json")
    trained = record and record.get("kind") == "train_generator"
    converted = record and (path / "latents.json").is_file()  # a generator release (benchmark.convert)
    if (trained or converted) and (path / "model.safetensors").is_file():
        return "generator"
    if (path / "images.npy").is_file():
        return "samples"
    if list_images(path):
        return "images"
    what = "an empty folder" if not any(path.iterdir()) else "a folder with none of the expected files"
    raise DataError(f"{path}: {what}; expected {WHAT_PATH_CAN_BE}")


def checked_tokenizer_dir(given: str | None) -> Path:
    """The ``--tokenizer`` folder, which must hold a trained tokenizer."""
    if given is None:
        raise ConfigError("--tokenizer DIR is required: the tokenizer folder whose decoder turns tokens into images")
    folder = Path(given).expanduser()
    if not is_tokenizer_folder(folder):
        raise DataError(f"--tokenizer {folder}: not a tokenizer folder (needs {' + '.join(TOKENIZER_FILES)})")
    return folder


def data_config(base: dict[str, Any] | None, overrides: list[str]) -> dict[str, Any] | None:
    """``base`` (a tokenizer's data config) with ``--data key=value`` overrides; naming another dataset
    starts afresh, as a study layer switching ``data.name`` does."""
    over = parse_overrides(overrides) if overrides else {}
    if base is None or ("name" in over and over["name"] != base.get("name")):
        base = {}
    merged = {**base, **over}
    return merged or None


# ---------------------------------------------------------------------------------------------
# Tokenizers: reconstruction metrics


def evaluate_tokenizer_dir(folder: Path, args: argparse.Namespace, out: Path | None) -> Evaluation:
    """Reconstruction metrics of the tokenizer in ``folder`` on a split of its own data config."""
    device = pick_device(args.device)
    trained_on = read_json(folder / "tokenizer.json")["data"]
    data = data_config(trained_on, args.data)
    if data.get("resolution") != trained_on.get("resolution"):
        raise ConfigError(
            f"--data resolution={data.get('resolution')}: the tokenizer in {folder} was trained "
            f"at {trained_on.get('resolution')} px"
        )
    cfg = EvalConfig(
        batch_size=args.batch_size,
        num_images=args.num_images,
        inception_weights=args.inception_weights,
        **({"metrics": args.metrics} if args.metrics else {}),
    )
    for name in cfg.metrics:
        METRICS.get(name, where="--metrics")
    evaluation = evaluate_tokenizer(
        folder,
        data,
        cfg,
        device,
        split=args.split,
        num_workers=args.num_workers,
        seed=args.seed,
        precision=cfg.precision,
        reference_cache=Path(args.cache).expanduser(),
    )
    if out is not None and evaluation.preview is not None:
        save_image_grid(evaluation.preview, out / "reconstructions.png", nrow=len(evaluation.preview) // 2)
    return Evaluation(folder, "tokenizer", evaluation.metrics, evaluation.protocol)


# ---------------------------------------------------------------------------------------------
# Generated images: gFID / IS


def run_store_tokenizer(folder: Path) -> Path | None:
    """The final tokenizer of a stage folder inside a run store (``<runs>/<kind>/<hash>``), if any."""
    inputs = (read_json(folder / "stage.json") or {}).get("inputs", {})
    for kind in ("finetune_tokenizer", "train_tokenizer"):
        if kind in inputs and is_tokenizer_folder(folder.parent.parent / kind / inputs[kind]):
            return folder.parent.parent / kind / inputs[kind]
    return None


def generation_cfg(args: argparse.Namespace) -> EvalConfig:
    metrics = args.metrics or list(GENERATION_METRICS)
    unknown = [m for m in metrics if m not in GENERATION_METRICS]
    if unknown:
        raise ConfigError(
            f"--metrics: {', '.join(unknown)} cannot be computed from generated images; "
            f"choose from {', '.join(GENERATION_METRICS)}"
        )
    return EvalConfig(
        batch_size=args.batch_size,
        generation_metrics=metrics,
        inception_weights=args.inception_weights,
        reference=args.reference,
    )


def min_images(cfg: EvalConfig) -> int:
    """The fewest images the generation metrics accept: 2 for a covariance, one per IS split."""
    return max(
        2 if "gfid" in cfg.generation_metrics else 0, IS_SPLITS if "inception_score" in cfg.generation_metrics else 0
    )


def reference_data(args: argparse.Namespace, tokenizer: Path | None) -> dict[str, Any]:
    """The data config whose train split is gFID's reference (unused with --reference)."""
    base = read_json(tokenizer / "tokenizer.json")["data"] if tokenizer is not None else None
    data = data_config(base, args.data)
    if data is None and not args.reference and "gfid" in (args.metrics or GENERATION_METRICS):
        raise ConfigError(
            "gFID needs reference statistics: pass --reference NPZ (mu / sigma, e.g. ADM's "
            "VIRTUAL_imagenet256_labeled.npz), or --tokenizer DIR or --data name=... to use the "
            "statistics of a dataset's train split"
        )
    return data or {}


def evaluate_images(
    images: np.ndarray, where: Path, mode: str, args: argparse.Namespace, tokenizer: Path | None
) -> Evaluation:
    """gFID / IS of (N, H, W, 3) uint8 ``images`` read from ``where``; the reference dataset, if
    needed, is that of ``tokenizer`` (with --data overrides)."""
    cfg = generation_cfg(args)
    next(array_images(images, batch_size=1, where=str(where)), None)  # its shape / dtype check, naming the path
    need = min_images(cfg)
    if len(images) < need:
        raise DataError(f"{where}: {len(images)} images; {' and '.join(cfg.generation_metrics)} need at least {need}")
    data = reference_data(args, tokenizer)
    results, protocol = generation_metrics(
        images, cfg, data, Path(args.cache).expanduser(), pick_device(args.device), args.num_workers, args.batch_size
    )
    protocol["num_images"] = len(images)
    return Evaluation(where, mode, results, protocol)


def load_images(path: Path, mode: str, limit: int | None, scratch: Path, batch_size: int) -> np.ndarray:
    """The first ``limit`` (all if None) images of a sample folder, an .npz or an image folder, as an
    (N, H, W, 3) uint8 array (memory-mapped where the source allows)."""
    if mode == "samples":
        try:
            return np.load(path / "images.npy", mmap_mode="r")[:limit]
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read {path / 'images.npy'}: {type(exc).__name__}: {exc}") from exc
    if mode == "npz":
        if not zipfile.is_zipfile(path):
            raise DataError(
                f"{path} is not an .npz archive (a zip of .npy arrays, as ADM's sample batches); "
                "save images with numpy.savez(path, arr_0=images) as an (N, H, W, 3) uint8 array"
            )
        try:
            with np.load(path, allow_pickle=False) as npz:
                names = list(npz.files)
                if "arr_0" in names:
                    return npz["arr_0"][:limit]
        except (OSError, ValueError, EOFError) as exc:
            raise DataError(f"cannot read {path} as an .npz: {type(exc).__name__}: {exc}") from exc
        if "mu" in names and "sigma" in names:
            raise DataError(f"{path} holds reference statistics (mu, sigma), not images: pass it as --reference")
        raise DataError(
            f"{path}: no 'arr_0' array of images (N, H, W, 3) uint8; it holds {', '.join(names) or 'nothing'}"
        )
    n = min(len(list_images(path)), limit or sys.maxsize)
    array, i = None, 0
    for batch in folder_images(path, batch_size):
        batch = batch[: n - i].permute(0, 2, 3, 1).numpy()
        if array is None:
            array = np.lib.format.open_memmap(
                scratch / "images.npy", mode="w+", dtype=np.uint8, shape=(n, *batch.shape[1:])
            )
        elif batch.shape[1:] != array.shape[1:]:
            raise DataError(
                f"{path}: images of {batch.shape[2]}x{batch.shape[1]} after images of "
                f"{array.shape[2]}x{array.shape[1]}; the folder's images must share one size"
            )
        array[i : i + len(batch)] = batch
        i += len(batch)
        if i == n:
            break
    return array


def same_lineage(tokenizer: Path, trained: Path) -> bool:
    """Whether ``tokenizer`` is ``trained`` or a finetuned child of it (same tokens)."""
    inputs = (read_json(tokenizer / "stage.json") or {}).get("inputs", {})
    return tokenizer.resolve() == trained.resolve() or inputs.get("train_tokenizer") == trained.name


def evaluate_generator_dir(folder: Path, args: argparse.Namespace, out: Path) -> Evaluation:
    """Sample from the generator in ``folder`` exactly as the study's sample stage does (into
    ``out``), then gFID / IS of the samples."""
    tokenizer = checked_tokenizer_dir(args.tokenizer)
    record = read_json(folder / "stage.json")
    runs = folder.parent.parent
    cache_hash = record.get("inputs", {}).get("cache_latents")
    cache = runs / "cache_latents" / cache_hash if cache_hash else folder  # no cache: a converted / installed release
    if not (cache / "latents.json").is_file():
        raise DataError(
            f"{folder}: its latent cache {cache} is missing; the generator folder must stay in its "
            f"run store (<runs>/train_generator/<hash>, latents in <runs>/cache_latents/<hash>)"
        )
    trained = run_store_tokenizer(cache) if cache_hash else None
    if trained is not None and not same_lineage(tokenizer, trained):
        print(
            f"warning: --tokenizer {tokenizer} is not the tokenizer whose latents trained {folder} ({trained}) "
            f"nor a finetuned version of it",
            file=sys.stderr,
        )
    sample_cfg = {
        **asdict(SampleConfig(seed=args.seed, cfg_scale=args.cfg_scale, steps=args.steps, batch_size=args.batch_size)),
        "options": parse_overrides(args.sampler) if args.sampler else {},
    }
    if args.num_images is not None:
        sample_cfg["num_images"] = args.num_images
    validate(
        {"generator": (read_json(folder / "generator.json") or record["config"])["generator"], "sample": sample_cfg},
        {"sample.options": "--sampler", "sample.num_images": "--num-images", "sample.steps": "--steps"},
    )
    reference_data(args, tokenizer)  # fail before sampling when gFID has no reference
    cfg = generation_cfg(args)
    if sample_cfg["num_images"] < min_images(cfg):
        raise ConfigError(
            f"--num-images {sample_cfg['num_images']}: {' and '.join(cfg.generation_metrics)} "
            f"need at least {min_images(cfg)} images"
        )
    ctx = FolderContext(
        "sample",
        folder.name,
        {"sample": sample_cfg},
        {},
        {"device": args.device},
        out,
        RunStore(runs),
        logging.getLogger("tok1d.evaluate"),
        folders={"train_generator": folder, "tokenizer": tokenizer},
    )
    sampled = sample(ctx)
    write_json(out / "result.json", sampled)  # --out is then a sample folder with its protocol
    images = np.load(out / "images.npy", mmap_mode="r")
    evaluation = evaluate_images(images, folder, "generator", args, tokenizer)
    evaluation.protocol["sampling"] = sampled["protocol"]
    evaluation.details = {
        "sample_result": {k: sampled[k] for k in ("sample_seconds", "images_per_second", "cost")},
        "tokenizer": str(tokenizer),
    }
    return evaluation


# ---------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmark.evaluate",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("path", help="a tokenizer / train_generator / sample folder, an .npz of samples or an image folder")
    p.add_argument(
        "--metrics",
        nargs="+",
        help="tokenizers: psnr ssim codebook_usage rfid inception_score ... "
        "(default: psnr ssim codebook_usage); images: gfid inception_score (default: both)",
    )
    p.add_argument(
        "--num-images",
        type=int,
        help="images to evaluate (default: the whole split / every image; a generator: 50000 samples)",
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument(
        "--data",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="data config overrides, e.g. eval_size=500 or name=imagefolder root=/data/imagenet",
    )
    p.add_argument("--split", choices=("eval", "train"), default="eval", help="tokenizers: the split evaluated")
    p.add_argument(
        "--inception-weights", help="Inception file (default: $TOK1D_INCEPTION_WEIGHTS or torch's hub cache)"
    )
    p.add_argument(
        "--tokenizer",
        help="generators: the tokenizer folder that decodes the samples; sample "
        "folders / images: its data's train split is gFID's reference",
    )
    p.add_argument("--seed", type=int, default=0, help="generators: sampling seed")
    p.add_argument("--cfg-scale", type=float, default=1.0, help="generators: classifier-free guidance scale")
    p.add_argument("--steps", type=int, help="generators: sampling steps (default: the generator's)")
    p.add_argument(
        "--sampler",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="generators: options of the generator's sample(), e.g. temperature=1.2",
    )
    p.add_argument("--reference", help="gFID reference statistics: an .npz of mu / sigma (or arr_0 images)")
    p.add_argument(
        "--cache",
        default=DEFAULT_CACHE,
        help=f"Inception statistics cache: gFID's reference and rFID's originals (default: {DEFAULT_CACHE})",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--out", help="keep reconstructions.png / the samples (images.npy, samples.png) in this folder")
    p.add_argument("--json", help="also write the results and protocol to this JSON file")
    return p.parse_args(argv)


def evaluate(args: argparse.Namespace) -> Evaluation:
    """Evaluate ``args.path`` by what it is (see the module docstring)."""
    load_plugins()
    path = Path(args.path).expanduser()
    mode = detect_mode(path)
    for name in ("num_images", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')}: must be at least 1, got {value}")
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory(prefix="tok1d-evaluate-") as tmp:
        out = Path(args.out).expanduser() if args.out else None
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
        if mode == "tokenizer":
            return evaluate_tokenizer_dir(path, args, out)
        if mode == "generator":
            return evaluate_generator_dir(path, args, out or Path(tmp))
        images = load_images(path, mode, args.num_images, Path(tmp), args.batch_size)
        tokenizer = (
            checked_tokenizer_dir(args.tokenizer)
            if args.tokenizer
            else (run_store_tokenizer(path) if mode == "samples" else None)
        )
        evaluation = evaluate_images(images, path, mode, args, tokenizer)
        sampling = read_json(path / "result.json") if mode == "samples" else None
        if sampling and "protocol" in sampling:
            evaluation.protocol["sampling"] = sampling["protocol"]
        return evaluation


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        evaluation = evaluate(args)
    except Tok1dError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(evaluation.markdown())
    if args.json:
        write_json(Path(args.json).expanduser(), evaluation.as_dict())
    return 0


if __name__ == "__main__":
    sys.exit(main())

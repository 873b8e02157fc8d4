"""Datasets: a built-in procedural one, ImageNet-layout folders and BDD100K frames (see README, "Architecture").

Every dataset is a ``torch.utils.data.Dataset`` of ``(image, label)`` pairs: ``image`` a float32
tensor (3, resolution, resolution) in [0, 1], ``label`` an int below ``num_classes``. A registered
class's ``__init__`` is its config schema: ``split`` ("train" or "eval") and keyword-only settings.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from benchmark.errors import ConfigError, DataError
from benchmark.options import PositiveInt, check_value
from benchmark.registry import DATASETS, register_dataset

SPLITS = ("train", "eval")
SUBSETS = ("day", "all")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
PROCEDURAL_KINDS = (
    "circle",
    "square",
    "triangle",
    "ring",
    "cross",
    "stripes",
    "checkerboard",
    "dots",
    "blob",
    "noise",
)
WALL_KINDS = ("stripes", "checkerboard", "dots", "noise")  # textures painted on the background wall
# Per-channel colour ranges (background, foreground) of the procedural images.
PALETTES = {
    "day": ((0.6, 1.0), (0.0, 0.5)),
    "wide_day": ((0.4, 1.0), (0.0, 0.75)),
    "night": ((0.0, 0.25), (0.3, 1.0)),
}


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}: '{value}' is not one of {', '.join(choices)}")


# ----------------------------------------------------------------------------------------------
# Procedural shapes
# ----------------------------------------------------------------------------------------------


def _coords(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1] of an n x n grid: y as a column (n, 1), x as a row (1, n)."""
    t = (np.arange(n, dtype=np.float32) + 0.5) * (2.0 / n) - 1.0
    return t[:, None], t[None, :]


def _value_noise(lattice: np.ndarray, n: int) -> np.ndarray:
    """A smooth random field in [0, 1] on an n x n grid: ``lattice`` values, smoothstep-interpolated."""
    cells = lattice.shape[0] - 1
    t = (np.arange(n, dtype=np.float32) + 0.5) * (cells / n)
    f = t - np.floor(t)
    i = t.astype(np.int64)
    f = f * f * (3 - 2 * f)
    rows = lattice[i] * (1 - f)[:, None] + lattice[i + 1] * f[:, None]
    return rows[:, i] * (1 - f) + rows[:, i + 1] * f


def _ramp(y: np.ndarray, x: np.ndarray, angle: float) -> np.ndarray:
    """A linear ramp from 0 to 1 across the image along direction ``angle``."""
    return (x * math.cos(angle) + y * math.sin(angle)) * (0.5 / math.sqrt(2)) + 0.5


def _coverage(
    kind: str, u: np.ndarray, v: np.ndarray, ur: np.ndarray, vr: np.ndarray, freq: float, noise: np.ndarray
) -> np.ndarray:
    """The foreground's opacity for one kind. (u, v): shape-local coordinates (unit = shape size);
    (ur, vr): the same axes in image units, for the textures that fill the whole image."""
    if kind == "circle":
        mask = u * u + v * v <= 1
    elif kind == "square":
        mask = np.maximum(abs(u), abs(v)) <= 0.8
    elif kind == "triangle":  # equilateral, inradius 0.5: three half-planes
        s = math.sqrt(3) / 2
        mask = (v >= -0.5) & (s * u + 0.5 * v <= 0.5) & (-s * u + 0.5 * v <= 0.5)
    elif kind == "ring":
        mask = (u * u + v * v <= 1) & (u * u + v * v >= 0.36)
    elif kind == "cross":
        mask = (np.minimum(abs(u), abs(v)) <= 0.3) & (np.maximum(abs(u), abs(v)) <= 1)
    elif kind == "stripes":
        mask = np.sin(2 * math.pi * freq * ur) > 0
    elif kind == "checkerboard":
        mask = (np.floor(freq * ur) + np.floor(freq * vr)) % 2 == 0
    elif kind == "dots":
        mask = (freq * ur % 1 - 0.5) ** 2 + (freq * vr % 1 - 0.5) ** 2 <= 0.09
    elif kind == "blob":
        return np.exp(-1.5 * (u * u + 3 * v * v))
    elif kind == "noise":
        return np.clip((noise - 0.5) * 5 + 0.5, 0, 1)
    else:
        raise ValueError(f"unknown procedural kind '{kind}'")
    return mask.astype(np.float32)


def render_procedural(
    kind: str, rng: np.random.Generator, resolution: int, palette: str
) -> tuple[np.ndarray, np.ndarray]:
    """One image (resolution, resolution, 3) in [0, 1]: a ``kind`` shape or texture with random colours,
    position, size, rotation, fill (solid, gradient or noise) and gradient background; and its scene's
    depth map (resolution, resolution), distances from the camera.

    The scene: the background is a wall, a plane tilted along the colour gradient's direction (depth 2
    to 3, farther where the gradient ends); a texture (:data:`WALL_KINDS`) is painted on it; any other
    shape is a flat cut-out in front of it, at depth 0.5 / size (0.77 to 1.43: a shape looks bigger the
    nearer it is), blended into the wall by the shape's opacity as its colour is (anti-aliased edges;
    the blob a smooth bump).

    The opacity is rendered at 2x and average-pooled, so edges are anti-aliased. Every random draw is
    made whatever the kind and resolution, so one ``rng`` state gives the same picture at any size.
    """
    (bg_lo, bg_hi), (fg_lo, fg_hi) = PALETTES[palette]
    bg = rng.uniform(bg_lo, bg_hi, 3).astype(np.float32)
    bg2 = np.clip(bg + rng.uniform(-0.2, 0.2, 3), 0, 1).astype(np.float32)
    fg = rng.uniform(fg_lo, fg_hi, 3).astype(np.float32)
    fg2 = rng.uniform(fg_lo, fg_hi, 3).astype(np.float32)
    cx, cy = rng.uniform(-0.4, 0.4, 2).tolist()
    size = rng.uniform(0.35, 0.65)
    angle, bg_angle, fg_angle = rng.uniform(0, 2 * math.pi, 3).tolist()
    freq = rng.uniform(2.0, 4.0)
    fill = rng.integers(3)
    lattice = rng.random((7, 7), dtype=np.float32)

    y, x = _coords(2 * resolution)
    c, s = math.cos(angle), math.sin(angle)
    ur = (x - cx) * c + (y - cy) * s
    vr = (y - cy) * c - (x - cx) * s
    noise = _value_noise(lattice, 2 * resolution)
    alpha = _coverage(kind, ur / size, vr / size, ur, vr, freq, noise)
    alpha = alpha.reshape(resolution, 2, resolution, 2).mean(axis=(1, 3))[..., None]

    y, x = _coords(resolution)
    back = bg + (bg2 - bg) * _ramp(y, x, bg_angle)[..., None]
    if fill == 0:
        t = np.zeros((resolution, resolution), np.float32)
    elif fill == 1:
        t = _ramp(y, x, fg_angle)
    else:
        t = noise.reshape(resolution, 2, resolution, 2).mean(axis=(1, 3))
    front = fg + (fg2 - fg) * t[..., None]
    image = np.clip(back * (1 - alpha) + front * alpha, 0, 1)
    depth = 2.0 + _ramp(y, x, bg_angle)
    if kind not in WALL_KINDS:
        depth = depth + (0.5 / size - depth) * alpha[..., 0]
    return image, depth.astype(np.float32)


@register_dataset("procedural")
class ProceduralShapes(Dataset):
    """Built-in shapes and textures (circle, stripes, ...): any resolution, deterministic, no files.

    Image ``i`` of a split is drawn from ``numpy.random.default_rng([seed, split, i])`` and its label
    is ``i % num_classes``. ``subset`` mirrors the BDD100K thesis's two data configurations (Sec. 4.1.1):
    ``day`` has bright backgrounds only; ``all`` is a bigger, more diverse train split that contains
    the ``day`` one: its first ``train_size`` images are the ``day`` images, and ``2 * train_size``
    more have dark "night" backgrounds or a wider colour range (half each). As in the thesis, which
    keeps "the same 1,764 validation images" for both configurations, the eval split is the ``day``
    one whatever the subset, so the two configurations are scored on the same images.

    Each image's scene also has a depth map (:meth:`scene`; :class:`DepthPairs`), which a depth objective
    pretrains Depth-Anything's stand-in on.
    """

    depth_maps: ClassVar[bool] = True

    def __init__(
        self,
        split: str,
        *,
        resolution: PositiveInt = 32,
        num_classes: PositiveInt = 8,
        train_size: PositiveInt = 2048,
        eval_size: PositiveInt = 256,
        seed: int = 0,
        subset: str = "day",
    ) -> None:
        _check_choice("split", split, SPLITS)
        _check_choice("data.subset", subset, SUBSETS)
        if not 16 <= resolution <= 512:
            raise ConfigError(f"data.resolution: {resolution} is outside 16..512 for the procedural dataset")
        if not 1 <= num_classes <= len(PROCEDURAL_KINDS):
            raise ConfigError(
                f"data.num_classes: {num_classes} is outside 1..{len(PROCEDURAL_KINDS)} "
                f"(kinds: {', '.join(PROCEDURAL_KINDS)})"
            )
        check_value(train_size, PositiveInt | None, "data.train_size")
        check_value(eval_size, PositiveInt | None, "data.eval_size")
        self.split, self.resolution, self.seed, self.subset = split, resolution, seed, subset
        self.num_classes = num_classes
        self.class_names = list(PROCEDURAL_KINDS[:num_classes])
        self.day_size = train_size  # train images [0, train_size) are the ``day`` images in both subsets
        if split == "train":
            self.size = train_size * (3 if subset == "all" else 1)
        else:
            self.size = eval_size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image, label, _ = self.scene(index)
        return image, label

    def scene(self, index: int) -> tuple[Tensor, int, Tensor]:
        """Image ``index`` (3, H, W), its label and its scene's depth map (1, H, W) (:func:`render_procedural`)."""
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} procedural images")
        rng = np.random.default_rng([self.seed, SPLITS.index(self.split), index])
        palette = "day"
        if self.subset == "all" and self.split == "train" and index >= self.day_size:
            palette = "night" if rng.random() < 0.5 else "wide_day"
        label = index % self.num_classes
        image, depth = render_procedural(PROCEDURAL_KINDS[label], rng, self.resolution, palette)
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), label, torch.from_numpy(depth[None])


class DepthPairs(Dataset):
    """(image, depth map) pairs of a dataset that renders its scenes' depth (``depth_maps``: the procedural
    one): the targets of a depth objective (benchmark/pretraining_objectives.py ``RelativeDepth``)."""

    def __init__(self, dataset: Dataset) -> None:
        if not getattr(dataset, "depth_maps", False):
            raise ConfigError(f"data: {type(dataset).__name__} has no depth maps (the procedural dataset renders them)")
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image, _, depth = self.dataset.scene(index)
        return image, depth


# ----------------------------------------------------------------------------------------------
# Image files
# ----------------------------------------------------------------------------------------------


def list_images(folder: Path) -> list[Path]:
    """The image files directly in ``folder`` (by suffix, case-insensitive), sorted by name."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def open_rgb(path: Path) -> Image.Image:
    """An image file as RGB; an unreadable or corrupt file is a DataError naming it."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from exc


CROPS = ("torchvision", "adm")


def load_image(path: Path, resolution: int, crop: str = "torchvision") -> Tensor:
    """An image file, RGB, as a float32 tensor (3, H, W) in [0, 1], ``resolution`` x ``resolution``:

    ``torchvision`` (TiTok's eval_transform): shorter side resized to ``resolution`` (bicubic, antialiased),
    centre crop. ``adm`` (ADM's ``center_crop_arr``, which SoftVQ and ADM's FID reference batches use):
    halved with a box filter while the shorter side is at least twice ``resolution``, resized (bicubic,
    sides rounded) so the shorter is ``resolution``, centre crop at the floor of half the margin. The two
    differ by up to a pixel's shift of the crop on some sizes."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    img = open_rgb(path)
    if crop == "adm":
        while min(img.size) >= 2 * resolution:
            img = img.resize(tuple(side // 2 for side in img.size), resample=Image.BOX)
        scale = resolution / min(img.size)
        img = img.resize(tuple(round(side * scale) for side in img.size), resample=Image.BICUBIC)
        left, top = (img.size[0] - resolution) // 2, (img.size[1] - resolution) // 2
        img = img.crop((left, top, left + resolution, top + resolution))
    else:
        img = TF.resize(img, [resolution], interpolation=InterpolationMode.BICUBIC, antialias=True)
        img = TF.center_crop(img, [resolution, resolution])
    return TF.to_dtype(TF.pil_to_tensor(img), torch.float32, scale=True)


def _data_root(root: str | None, layout: str) -> Path:
    if root is None:
        raise DataError(f"data.root is not set; set data.root=/path/to/dataset ({layout})")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"data.root: {path} does not exist; set data.root=/path/to/dataset ({layout})")
    return path


def _split_folder(parent: Path, split: str, train_dir: str, eval_dir: str) -> Path:
    _check_choice("split", split, SPLITS)
    key, name = ("data.train_dir", train_dir) if split == "train" else ("data.eval_dir", eval_dir)
    folder = parent / name
    if not folder.is_dir():
        raise DataError(f"the {split} split folder {folder} does not exist; set {key} to its name")
    return folder


def unreadable(paths: list[Path], workers: int = 16) -> list[tuple[Path, str]]:
    """Every file of ``paths`` that does not decode as an image, with the reason (read in threads)."""

    def check(path: Path) -> tuple[Path, str] | None:
        try:
            open_rgb(path)
        except DataError as exc:
            return path, str(exc).split(": ", 1)[-1]
        return None

    with ThreadPoolExecutor(workers) as pool:
        return [bad for bad in pool.map(check, paths) if bad is not None]


def bad_images_error(bad: list[tuple[Path, str]], total: int) -> DataError:
    """One error naming every unreadable image (the first 20 in full, then a count)."""
    shown = "; ".join(f"{p} ({why})" for p, why in bad[:20])
    more = f"; and {len(bad) - 20} more" if len(bad) > 20 else ""
    return DataError(
        f"{len(bad)} of {total} images cannot be read: {shown}{more}. Remove or replace them, or set "
        f"data.on_bad_image: skip to leave them out (counted in the protocol)"
    )


class _ImageFiles(Dataset):
    """A list of (image file, label) pairs, loaded and preprocessed on access.

    ``on_bad_image``: ``error`` (an unreadable image fails the stage with one error listing every
    unreadable file of the split) or ``skip`` (they are found when the dataset is built, left out, and
    listed in ``skipped``; that check decodes every image once). ``crop``: :func:`load_image`'s
    preprocessing, ``torchvision`` (TiTok's) or ``adm`` (ADM's and SoftVQ's).
    """

    samples: list[tuple[Path, int]]
    resolution: int
    crop: str = "torchvision"
    on_bad_image: str = "error"
    skipped: list[str]

    def _keep_readable(self, on_bad_image: str) -> None:
        _check_choice("data.on_bad_image", on_bad_image, ("error", "skip"))
        self.on_bad_image, self.skipped = on_bad_image, []
        if on_bad_image == "skip":
            bad = {p for p, _ in unreadable([p for p, _ in self.samples])}
            self.skipped = sorted(str(p) for p in bad)
            self.samples = [(p, label) for p, label in self.samples if p not in bad]
            if not self.samples:
                raise DataError(f"every image of {self.folder} is unreadable")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path, label = self.samples[index]
        try:
            return load_image(path, self.resolution, self.crop), label
        except DataError:
            raise bad_images_error(unreadable([p for p, _ in self.samples]), len(self.samples)) from None


@register_dataset("imagefolder")
class ImageFolderDataset(_ImageFiles):
    """Images in ImageNet layout, root/<split_dir>/<class>/*.jpg, resized and centre-cropped.

    Classes are the sorted sub-folders of the split folder; ``max_images`` keeps each class's first images
    in file-name order, the classes taken in turn (:func:`across_classes_order`), listed in (class, file
    name) order: a limited split still holds every class, as the labels a generator samples do.
    """

    def __init__(
        self,
        split: str,
        *,
        root: str | None = None,
        resolution: PositiveInt = 256,
        train_dir: str = "train",
        eval_dir: str = "val",
        max_images: PositiveInt | None = None,
        on_bad_image: str = "error",
        crop: str = "torchvision",
    ) -> None:
        check_value(resolution, PositiveInt | None, "data.resolution")
        check_value(max_images, PositiveInt | None, "data.max_images")
        layout = "root/<split_dir>/<class>/*.jpg"
        folder = _split_folder(_data_root(root, layout), split, train_dir, eval_dir)
        classes = sorted(p for p in folder.iterdir() if p.is_dir())
        if not classes:
            raise DataError(f"{folder} holds no class folders; expected {folder}/<class>/*.jpg")
        samples = [(path, label) for label, cls in enumerate(classes) for path in list_images(cls)]
        if not samples:
            raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in the class folders of {folder}")
        self.folder, self.resolution = folder, resolution
        self.class_names = [cls.name for cls in classes]
        self.num_classes = len(classes)
        if max_images is not None and max_images < len(samples):  # every class's first images, not the first classes
            keep = sorted(across_classes_order([label for _, label in samples])[:max_images])
            samples = [samples[i] for i in keep]
        self.samples = samples
        _check_choice("data.crop", crop, CROPS)
        self.crop = crop
        self._keep_readable(on_bad_image)

    @classmethod
    def check(
        cls,
        split: str,
        *,
        root: str | None = None,
        resolution: PositiveInt = 256,
        train_dir: str = "train",
        eval_dir: str = "val",
        max_images: PositiveInt | None = None,
        on_bad_image: str = "error",
        crop: str = "torchvision",
    ) -> None:
        """The split folder exists and its first class folder holds a readable image."""
        check_value(resolution, PositiveInt | None, "data.resolution")
        check_value(max_images, PositiveInt | None, "data.max_images")
        _check_choice("data.on_bad_image", on_bad_image, ("error", "skip"))
        _check_choice("data.crop", crop, CROPS)
        folder = _split_folder(_data_root(root, "root/<split_dir>/<class>/*.jpg"), split, train_dir, eval_dir)
        _first_image((p for p in sorted(folder.iterdir()) if p.is_dir()), folder)


@register_dataset("bdd100k")
class BDD100K(_ImageFiles):
    """BDD100K frames, root/images/<split_dir>/*.jpg; subset "day" (daytime only) or "all".

    ``day`` (the thesis's configuration 1) keeps the frames whose ``attributes.timeofday`` is
    ``daytime`` in root/labels/bdd100k_labels_images_<split>.json, where <split> is the last part of
    the split folder; ``all`` (configuration 2) keeps every training frame and the same daytime eval
    frames. Unlabelled: every label is 0.
    """

    def __init__(
        self,
        split: str,
        *,
        root: str | None = None,
        resolution: PositiveInt = 256,
        train_dir: str = "train",
        eval_dir: str = "val",
        subset: str = "day",
        max_images: PositiveInt | None = None,
        on_bad_image: str = "error",
        crop: str = "torchvision",
    ) -> None:
        _check_choice("data.subset", subset, SUBSETS)
        check_value(resolution, PositiveInt | None, "data.resolution")
        check_value(max_images, PositiveInt | None, "data.max_images")
        base = _data_root(root, "root/images/<split_dir>/*.jpg")
        folder = _split_folder(base / "images", split, train_dir, eval_dir)
        frames = list_images(folder)
        # The thesis's configuration 2 adds frames to training only, keeping "the same 1,764 validation
        # images": its eval split is the daytime one whatever the subset (as ProceduralShapes').
        if subset == "day" or split == "eval":
            labels = base / "labels" / f"bdd100k_labels_images_{folder.name}.json"
            daytime = self._daytime_names(labels)
            frames = [f for f in frames if f.name in daytime]
        if not frames:
            raise DataError(f"no {'daytime ' if subset == 'day' else ''}frames found in {folder}")
        self.folder, self.resolution, self.subset = folder, resolution, subset
        self.num_classes = 1
        self.class_names = ["frame"]
        self.samples = [(f, 0) for f in frames[:max_images]]
        _check_choice("data.crop", crop, CROPS)
        self.crop = crop
        self._keep_readable(on_bad_image)

    @classmethod
    def check(
        cls,
        split: str,
        *,
        root: str | None = None,
        resolution: PositiveInt = 256,
        train_dir: str = "train",
        eval_dir: str = "val",
        subset: str = "day",
        max_images: PositiveInt | None = None,
        on_bad_image: str = "error",
        crop: str = "torchvision",
    ) -> None:
        """The frame folder exists and holds a readable frame; subset ``day`` needs its labels file."""
        _check_choice("data.subset", subset, SUBSETS)
        check_value(resolution, PositiveInt | None, "data.resolution")
        _check_choice("data.on_bad_image", on_bad_image, ("error", "skip"))
        _check_choice("data.crop", crop, CROPS)
        base = _data_root(root, "root/images/<split_dir>/*.jpg")
        folder = _split_folder(base / "images", split, train_dir, eval_dir)
        if (subset == "day" or split == "eval") and not (
            base / "labels" / f"bdd100k_labels_images_{folder.name}.json"
        ).is_file():
            raise DataError(
                f"subset 'day' needs the labels file {base / 'labels'}/bdd100k_labels_images_"
                f"{folder.name}.json, which does not exist (or set data.subset=all)"
            )
        _first_image(iter([folder]), folder)

    @staticmethod
    def _daytime_names(labels: Path) -> set[str]:
        """The frame names that ``labels`` (a BDD100K image-attribute JSON) marks as daytime."""
        if not labels.is_file():
            raise DataError(
                f"subset 'day' needs the labels file {labels}, which does not exist (or set data.subset=all)"
            )
        try:
            entries = json.loads(labels.read_text())
            return {e["name"] for e in entries if e.get("attributes", {}).get("timeofday") == "daytime"}
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            raise DataError(f"cannot read BDD100K labels {labels}: {type(exc).__name__}: {exc}") from exc


def _dataset_class(data_cfg: Mapping[str, Any], split: str) -> tuple[type, dict[str, Any]]:
    cfg = dict(data_cfg)
    if "name" not in cfg:
        raise ConfigError(f"data.name is missing; registered datasets: {', '.join(DATASETS.names())}")
    cls = DATASETS.get(cfg.pop("name"), where="data.name").obj
    try:
        inspect.signature(cls).bind(split, **cfg)
    except TypeError as exc:
        accepted = [p for p in inspect.signature(cls).parameters if p != "split"]
        raise ConfigError(f"data: {exc}; {cls.registry_name} accepts {', '.join(accepted)}") from exc
    return cls, cfg


def build_dataset(data_cfg: Mapping[str, Any], split: str) -> Dataset:
    """The dataset named by ``data_cfg["name"]``, built with the other keys as its settings."""
    cls, cfg = _dataset_class(data_cfg, split)
    return cls(split, **cfg)


def check_dataset(data_cfg: Mapping[str, Any], split: str) -> None:
    """Plan-time check that a split can be read, without reading it all: the class's ``check`` when it
    has one (image folders: the folders exist and one image decodes), else building it."""
    cls, cfg = _dataset_class(data_cfg, split)
    check = getattr(cls, "check", None)
    if check is None:
        cls(split, **cfg)
    else:
        check(split, **cfg)


def dataset_labels(dataset: Dataset) -> list[int] | None:
    """Every image's label, known without reading an image (an image folder's sample list, the procedural
    split's i mod C); None for a dataset that does not list them."""
    if isinstance(dataset, ProceduralShapes):
        return [i % dataset.num_classes for i in range(len(dataset))]
    samples = getattr(dataset, "samples", None)
    return [int(label) for _, label in samples] if isinstance(samples, list) else None


def across_classes_order(labels: Sequence[int]) -> list[int]:
    """The indices with the classes taken in turn: each class's first image (in index order), then each
    class's second, and so on. The first n of them spread over the classes as evenly as the split allows,
    whatever order it lists them in; a split already listed that way (label i mod C) keeps its order."""
    seen: dict[int, int] = {}
    rank = []
    for label in labels:
        rank.append(seen.get(label, 0))
        seen[label] = rank[-1] + 1
    return sorted(range(len(labels)), key=lambda i: (rank[i], i))


def split_images(data: dict[str, Any], split: str, limit: int | None = None) -> int | None:
    """How many images a split holds, when that is known without reading the data (procedural data,
    ``max_images``, an evaluation limit); None otherwise."""
    if limit is not None:
        return limit
    if data.get("max_images") is not None:
        return int(data["max_images"])
    if data.get("name") == "procedural":
        return len(ProceduralShapes(split, **{k: v for k, v in data.items() if k != "name"}))
    return None


def _first_image(folders: Iterator[Path], where: Path) -> None:
    """The first image file found in ``folders`` decodes (a DataError names it otherwise)."""
    for folder in folders:
        for path in folder.iterdir():
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                open_rgb(path)
                return
    raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {where}")

"""Datasets: the procedural one's determinism and diversity, folder layouts, their errors, the builder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark.data import (
    BDD100K,
    PROCEDURAL_KINDS,
    ImageFolderDataset,
    ProceduralShapes,
    build_dataset,
    load_image,
)
from benchmark.errors import ConfigError, DataError


def stack(ds, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    items = [ds[i] for i in range(len(ds) if n is None else n)]
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])


# ---------------------------------------------------------------------------------------------- procedural


def test_procedural_images_are_rgb_float_in_unit_range():
    ds = ProceduralShapes("train", train_size=64)
    images, labels = stack(ds)
    assert len(ds) == 64 and images.shape == (64, 3, 32, 32) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    assert (images.flatten(1).std(dim=1) > 0.02).all()
    assert sorted(set(labels.tolist())) == list(range(8)) and ds.num_classes == 8
    assert ds.class_names == list(PROCEDURAL_KINDS[:8])
    assert torch.bincount(labels).tolist() == [8] * 8


def test_procedural_is_deterministic_and_seeded():
    a, b = ProceduralShapes("train", seed=3), ProceduralShapes("train", seed=3)
    for i in (0, 5, 2047):
        assert torch.equal(a[i][0], b[i][0])
    other = ProceduralShapes("train", seed=4)
    assert not torch.equal(a[5][0], other[5][0])
    evals = ProceduralShapes("eval", seed=3)
    assert all(not torch.equal(a[i][0], evals[i][0]) for i in range(8))


@pytest.mark.parametrize("resolution", [16, 64])
def test_procedural_resolutions(resolution: int):
    image, label = ProceduralShapes("eval", resolution=resolution)[9]
    assert image.shape == (3, resolution, resolution) and label == 1
    assert image.std() > 0


def test_procedural_same_picture_at_any_resolution():
    small = ProceduralShapes("eval", resolution=16)[4][0]
    large = ProceduralShapes("eval", resolution=64)[4][0]
    pooled = torch.nn.functional.avg_pool2d(large[None], 4)[0]
    assert (pooled - small).abs().mean() < 0.03


def test_procedural_all_subset_is_bigger_and_has_night_images():
    day = ProceduralShapes("train", train_size=100)
    full = ProceduralShapes("train", train_size=100, subset="all")
    assert len(day) == 100 and len(full) == 300
    assert len(ProceduralShapes("eval", eval_size=50, subset="all")) == 50
    day_brightness = stack(day)[0].mean(dim=(1, 2, 3)).sort().values
    extra = torch.stack([full[i][0] for i in range(100, 200)])  # past the day images it starts with
    all_brightness = extra.mean(dim=(1, 2, 3)).sort().values
    assert all_brightness[:20].mean() < day_brightness[:20].mean() - 0.2
    assert all_brightness.std() > day_brightness.std()


def test_procedural_classes_are_distinguishable():
    """Per-class mean amplitude spectra (translation-invariant) of two disjoint halves match by class."""
    kinds = len(PROCEDURAL_KINDS)
    images, labels = stack(ProceduralShapes("train", num_classes=kinds, train_size=kinds * 40))
    gray = images.mean(dim=1)
    spectra = torch.fft.fft2(gray - gray.mean(dim=(1, 2), keepdim=True)).abs().flatten(1)
    spectra = spectra / spectra.norm(dim=1, keepdim=True)
    first = torch.stack([spectra[labels == c][::2].mean(0) for c in range(kinds)])
    second = torch.stack([spectra[labels == c][1::2].mean(0) for c in range(kinds)])
    assert torch.equal(torch.cdist(first, second).argmin(dim=1), torch.arange(kinds))


def test_procedural_rejects_bad_settings():
    with pytest.raises(ConfigError, match="'test'"):
        ProceduralShapes("test")
    with pytest.raises(ConfigError, match="num_classes"):
        ProceduralShapes("train", num_classes=len(PROCEDURAL_KINDS) + 1)
    with pytest.raises(ConfigError, match="resolution"):
        ProceduralShapes("train", resolution=8)
    with pytest.raises(ConfigError, match="'night'"):
        ProceduralShapes("train", subset="night")
    with pytest.raises(IndexError):
        ProceduralShapes("eval", eval_size=4)[4]


# ---------------------------------------------------------------------------------------------- image folders


def write_image(path: Path, size: tuple[int, int], colour: tuple[int, int, int]) -> None:
    """A ``size`` (w, h) image of ``colour`` with a 4-px white border on its left and right edges."""
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.full((size[1], size[0], 3), colour, np.uint8)
    array[:, :4] = array[:, -4:] = 255
    Image.fromarray(array).save(path)


@pytest.fixture
def imagenet(tmp_path: Path) -> Path:
    for split in ("train", "val"):
        for cls, colour in (("zebra", (0, 200, 0)), ("apple", (200, 0, 0))):
            for i, suffix in enumerate((".JPG", ".png", ".jpeg")):
                write_image(tmp_path / split / cls / f"{i}{suffix}", (48 + 8 * i, 24), colour)
    (tmp_path / "train" / "apple" / "notes.txt").write_text("not an image")
    return tmp_path


def test_imagefolder_resizes_crops_and_labels(imagenet: Path):
    ds = ImageFolderDataset("train", root=str(imagenet), resolution=16)
    assert ds.class_names == ["apple", "zebra"] and ds.num_classes == 2 and len(ds) == 6
    images, labels = stack(ds)
    assert images.shape == (6, 3, 16, 16) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    assert labels.tolist() == [0, 0, 0, 1, 1, 1]
    red, green = images[0, :, 8, 8], images[3, :, 8, 8]
    assert red[0] > 0.7 and red[1] < 0.1 and green[1] > 0.7 and green[0] < 0.1
    # The white side borders of the wide images are cropped away: every pixel keeps the class colour.
    assert (images[:, 2] < 0.1).all()


def test_load_image_matches_resize_then_center_crop(tmp_path: Path):
    path = tmp_path / "a.png"
    array = np.random.default_rng(0).integers(0, 256, (30, 60, 3), dtype=np.uint8)
    Image.fromarray(array).save(path)
    expected = Image.fromarray(array).resize((40, 20), Image.BICUBIC).crop((10, 0, 30, 20))
    expected = torch.from_numpy(np.array(expected)).permute(2, 0, 1).float() / 255
    assert torch.allclose(load_image(path, 20), expected, atol=1 / 255)


def adm_center_crop_arr(pil_image: Image.Image, image_size: int) -> np.ndarray:
    """ADM's guided_diffusion/image_datasets.py center_crop_arr, verbatim in behaviour (the reference)."""
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.array(pil_image)
    crop_y, crop_x = (arr.shape[0] - image_size) // 2, (arr.shape[1] - image_size) // 2
    return arr[crop_y : crop_y + image_size, crop_x : crop_x + image_size]


@pytest.mark.parametrize("size", [(500, 375), (500, 334), (800, 600), (77, 131)])
def test_adm_crop_is_adms_center_crop_arr(tmp_path: Path, size: tuple[int, int]):
    """``data.crop: adm`` reproduces ADM's preprocessing (SoftVQ's, and ADM's FID reference batches') pixel
    for pixel; the default is TiTok's torchvision resize and crop, which differs on some sizes."""
    path = tmp_path / "a.png"
    array = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(array).save(path)
    expected = torch.from_numpy(adm_center_crop_arr(Image.fromarray(array), 64)).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(load_image(path, 64, "adm"), expected, rtol=0, atol=1e-6)  # the same 8-bit pixels
    ds = ImageFolderDataset("train", root=str(write_classes(tmp_path, array)), resolution=64, crop="adm")
    torch.testing.assert_close(ds[0][0], expected, rtol=0, atol=1e-6)
    with pytest.raises(ConfigError, match="data.crop"):
        ImageFolderDataset("train", root=str(tmp_path / "folder"), resolution=64, crop="pil")


def write_classes(root: Path, array: np.ndarray) -> Path:
    (root / "folder" / "train" / "a").mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(root / "folder" / "train" / "a" / "0.png")
    return root / "folder"


def test_imagefolder_eval_split_and_max_images(imagenet: Path):
    """``max_images`` keeps each class's first images (classes in turn), not the first classes' images."""
    ds = ImageFolderDataset("eval", root=str(imagenet), resolution=8, max_images=4)
    assert ds.folder == imagenet / "val" and len(ds) == 4 and ds.num_classes == 2
    assert [(p.parent.name, p.name) for p, _ in ds.samples] == [
        ("apple", "0.JPG"),
        ("apple", "1.png"),
        ("zebra", "0.JPG"),
        ("zebra", "1.png"),
    ]
    assert [label for _, label in ds.samples] == [0, 0, 1, 1]
    three = ImageFolderDataset("eval", root=str(imagenet), max_images=3)
    assert [label for _, label in three.samples] == [0, 0, 1]


def test_imagefolder_converts_to_rgb(tmp_path: Path):
    (tmp_path / "train" / "gray").mkdir(parents=True)
    Image.new("L", (20, 20), 128).save(tmp_path / "train" / "gray" / "g.png")
    image, label = ImageFolderDataset("train", root=str(tmp_path), resolution=8)[0]
    assert image.shape == (3, 8, 8) and label == 0
    assert torch.allclose(image, torch.full_like(image, 128 / 255))


def test_imagefolder_errors_name_the_path(tmp_path: Path, imagenet: Path):
    with pytest.raises(DataError, match="data.root is not set"):
        ImageFolderDataset("train")
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=f"{missing}.*does not exist"):
        ImageFolderDataset("train", root=str(missing))
    with pytest.raises(DataError, match="data.eval_dir"):
        ImageFolderDataset("eval", root=str(imagenet), eval_dir="validation")
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    with pytest.raises(DataError, match=f"{empty / 'train'} holds no class folders"):
        ImageFolderDataset("train", root=str(empty))
    (empty / "train" / "cls").mkdir()
    with pytest.raises(DataError, match="no images"):
        ImageFolderDataset("train", root=str(empty))
    with pytest.raises(ConfigError, match="'val'"):
        ImageFolderDataset("val", root=str(imagenet))


def test_imagefolder_corrupt_image_names_the_file(imagenet: Path):
    bad = imagenet / "train" / "zebra" / "3.jpg"
    bad.write_bytes(b"this is not a jpeg" * 10)
    ds = ImageFolderDataset("train", root=str(imagenet), resolution=8)
    index = [p for p, _ in ds.samples].index(bad)
    assert ds[index - 1][0].shape == (3, 8, 8)
    with pytest.raises(DataError, match=str(bad)):
        ds[index]


# ---------------------------------------------------------------------------------------------- BDD100K


@pytest.fixture
def bdd(tmp_path: Path) -> Path:
    times = {"a.jpg": "daytime", "b.jpg": "night", "c.jpg": "daytime", "d.jpg": "dawn/dusk"}
    for split in ("train", "val"):
        for name in times:
            write_image(tmp_path / "images" / split / name, (64, 36), (90, 90, 200))
        labels = [
            {"name": n, "attributes": {"timeofday": t, "weather": "clear", "scene": "city street"}}
            for n, t in times.items()
        ]
        labels.append({"name": "unlisted.jpg", "attributes": {"timeofday": "daytime"}})
        (tmp_path / "labels").mkdir(exist_ok=True)
        (tmp_path / "labels" / f"bdd100k_labels_images_{split}.json").write_text(json.dumps(labels))
    return tmp_path


def test_bdd100k_day_keeps_daytime_frames(bdd: Path):
    ds = BDD100K("train", root=str(bdd), resolution=16)
    assert [p.name for p, _ in ds.samples] == ["a.jpg", "c.jpg"]
    image, label = ds[1]
    assert image.shape == (3, 16, 16) and label == 0 and ds.num_classes == 1 and len(ds.class_names) == 1
    assert image[2].mean() > 0.7 and image[0].mean() < 0.45


def test_bdd100k_all_keeps_every_training_frame_and_the_same_eval_frames(bdd: Path):
    """Configuration 2 adds night and dawn frames to training and keeps "the same 1,764 validation
    images" (thesis Sec. 4.1.1): its eval split is the daytime one."""
    ds = BDD100K("train", root=str(bdd), resolution=8, subset="all")
    assert ds.folder == bdd / "images" / "train"
    assert [p.name for p, _ in ds.samples] == ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    assert len(BDD100K("train", root=str(bdd), subset="all", max_images=3)) == 3
    day, everything = (BDD100K("eval", root=str(bdd), subset=s) for s in ("day", "all"))
    assert [p.name for p, _ in everything.samples] == [p.name for p, _ in day.samples] == ["a.jpg", "c.jpg"]


def test_bdd100k_day_needs_the_labels_file(bdd: Path):
    labels = bdd / "labels" / "bdd100k_labels_images_train.json"
    labels.unlink()
    with pytest.raises(DataError, match=str(labels)):
        BDD100K("train", root=str(bdd))
    assert len(BDD100K("train", root=str(bdd), subset="all")) == 4
    labels.write_text("{not json")
    with pytest.raises(DataError, match=str(labels)):
        BDD100K("train", root=str(bdd))


def test_bdd100k_labels_follow_the_split_folder_name(bdd: Path):
    (bdd / "images" / "100k").mkdir()
    (bdd / "images" / "val").rename(bdd / "images" / "100k" / "val")
    ds = BDD100K("eval", root=str(bdd), eval_dir="100k/val")
    assert [p.name for p, _ in ds.samples] == ["a.jpg", "c.jpg"]


# ---------------------------------------------------------------------------------------------- builder


def test_build_dataset_passes_settings():
    ds = build_dataset({"name": "procedural", "resolution": 16, "eval_size": 10}, "eval")
    assert isinstance(ds, ProceduralShapes) and len(ds) == 10 and ds[0][0].shape == (3, 16, 16)


def test_build_dataset_unknown_name_suggests_close_match():
    match = r"data.name: unknown dataset 'procedual'.*Did you mean: procedural"
    with pytest.raises(ConfigError, match=match):
        build_dataset({"name": "procedual"}, "train")


def test_build_dataset_bad_key_or_missing_name():
    with pytest.raises(ConfigError, match="resolution"):
        build_dataset({"name": "procedural", "resolutoin": 16}, "train")
    with pytest.raises(ConfigError, match="data.name is missing"):
        build_dataset({"resolution": 16}, "train")


def test_procedural_all_subset_contains_the_day_set_and_shares_its_eval_split():
    """The thesis's big data set adds conditions to the daytime set and keeps its validation images."""
    day, full = ProceduralShapes("train", train_size=12), ProceduralShapes("train", train_size=12, subset="all")
    assert all(torch.equal(day[i][0], full[i][0]) for i in range(12))
    assert not torch.equal(ProceduralShapes("train", train_size=36)[20][0], full[20][0])
    day_eval, all_eval = ProceduralShapes("eval", eval_size=8), ProceduralShapes("eval", eval_size=8, subset="all")
    assert all(torch.equal(day_eval[i][0], all_eval[i][0]) for i in range(8))

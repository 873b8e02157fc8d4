"""Tests of benchmark.metrics against hand-computed values and scikit-image."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.filters import gaussian
from skimage.metrics import structural_similarity

from benchmark.base import TokenSpec
from benchmark.errors import ConfigError
from benchmark.metrics import (
    PSNR,
    SSIM,
    CodebookUsage,
    EvalBatch,
    build_metrics,
    compute_all,
)
from benchmark.registry import METRICS

DISCRETE = TokenSpec(kind="discrete", shape=(8,), vocab_size=16)
CONTINUOUS = TokenSpec(kind="continuous", shape=(8,), dim=4)


def batch(images: np.ndarray, recons: np.ndarray, tokens: torch.Tensor | None = None) -> EvalBatch:
    """An EvalBatch from (B, H, W, 3) float arrays in [0, 1], as float32 (B, 3, H, W) tensors."""
    n = images.shape[0]
    if tokens is None:
        tokens = torch.zeros(n, *DISCRETE.shape, dtype=torch.int64)
    return EvalBatch(nchw(images), nchw(recons), tokens, torch.zeros(n, dtype=torch.int64))


def nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().contiguous()


def natural_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth colour gradient with a disc, a rectangle and mild noise: (H, W, 3) in [0, 1]."""
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w]).reshape(2, 1, 1)
    img = np.stack([xx, yy, 0.5 * (xx + yy)], axis=-1) * rng.uniform(0.4, 1.0, 3)
    cy, cx, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.15, 0.3)
    img[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = rng.uniform(0, 1, 3)
    y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
    img[y0 : y0 + h // 4, x0 : x0 + w // 3] = rng.uniform(0, 1, 3)
    return np.clip(img + rng.normal(0, 0.02, img.shape), 0, 1)


# (blur sigma, noise std) for the degraded version of each image, from mild to strong
DEGRADATIONS = [(0.0, 0.01), (0.7, 0.0), (1.0, 0.03), (0.0, 0.08), (2.0, 0.0), (2.0, 0.1)]


def image_pairs(rng: np.random.Generator, h: int, w: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n originals and degraded (blurred and/or noisy) versions, float32-representable."""
    originals, degraded = [], []
    for i in range(n):
        img = natural_image(rng, h, w)
        blur, noise = DEGRADATIONS[i % len(DEGRADATIONS)]
        out = gaussian(img, sigma=blur, channel_axis=-1) if blur else img
        originals.append(img)
        degraded.append(np.clip(out + rng.normal(0, noise, img.shape), 0, 1))
    return float32_exact(originals), float32_exact(degraded)


def float32_exact(images: list[np.ndarray]) -> np.ndarray:
    """Round to float32 so the float32 tensors and the float64 references hold the same values."""
    return np.stack(images).astype(np.float32).astype(np.float64)


def run(metric, images: np.ndarray, recons: np.ndarray, splits: list[int]) -> dict[str, float]:
    start = 0
    for size in splits:
        metric.update(batch(images[start : start + size], recons[start : start + size]))
        start += size
    assert start == len(images)
    return metric.compute()


def test_registered_with_descriptions():
    for name in ("psnr", "ssim", "codebook_usage"):
        entry = METRICS.get(name)
        assert entry.description and "\n" not in entry.description


def test_psnr_matches_textbook_formula():
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (6, 16, 20, 3))
    recons = np.clip(images + rng.normal(0, 0.1, images.shape), 0, 1).astype(np.float32)
    images = images.astype(np.float32).astype(np.float64)
    recons = recons.astype(np.float64)
    expected = np.mean([10 * np.log10(1.0 / np.mean((a - b) ** 2)) for a, b in zip(images, recons)])
    result = run(PSNR(DISCRETE), images, recons, [6])
    assert set(result) == {"psnr"}
    # float32 per-image MSE (on the evaluation device) against the float64 textbook value
    assert result["psnr"] == pytest.approx(expected, rel=1e-6)


def test_psnr_clamps_to_unit_range():
    images = np.full((1, 4, 4, 3), 0.5)
    recons = np.full((1, 4, 4, 3), 1.5)  # clamped to 1 -> MSE 0.25 -> 10 log10(4)
    assert run(PSNR(DISCRETE), images, recons, [1])["psnr"] == pytest.approx(10 * math.log10(4))


def test_psnr_identical_images_large_and_finite():
    images = np.random.default_rng(1).uniform(0, 1, (3, 8, 8, 3))
    value = run(PSNR(DISCRETE), images, images, [3])["psnr"]
    assert math.isfinite(value) and value == pytest.approx(100.0)


@pytest.mark.parametrize("cls", [PSNR, SSIM])
def test_independent_of_batch_split(cls):
    images, recons = image_pairs(np.random.default_rng(2), 24, 24, 7)
    whole = run(cls(DISCRETE), images, recons, [7])
    for splits in ([1] * 7, [3, 4], [2, 1, 4]):
        assert run(cls(DISCRETE), images, recons, splits) == pytest.approx(whole, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("cls", [PSNR, SSIM, CodebookUsage])
def test_states_of_shards_merge_into_the_whole_set(cls):
    """Batch b on rank b mod 2 of three ranks (the third gets none): every rank's merged metric is the
    metric of all batches, as gather_metrics leaves it."""
    images, recons = image_pairs(np.random.default_rng(3), 16, 16, 9)
    ids = torch.randint(0, 16, (9, 8), generator=torch.Generator().manual_seed(0))
    batches = [batch(images[i : i + 2], recons[i : i + 2], ids[i : i + 2]) for i in range(0, 9, 2)]
    whole, ranks = cls(DISCRETE), [cls(DISCRETE) for _ in range(3)]
    for b, item in enumerate(batches):
        whole.update(item)
        ranks[b % 2].update(item)
    states = [m.state() for m in ranks]
    assert states[2] is None
    for metric in ranks:
        metric.merge(states)
        assert metric.compute() == pytest.approx(whole.compute(), rel=1e-12)
    if cls is CodebookUsage:
        assert all(torch.equal(m.histogram(), whole.histogram()) for m in ranks)


@pytest.mark.parametrize("h, w", [(32, 32), (48, 40)])
def test_ssim_matches_skimage(h, w):
    images, recons = image_pairs(np.random.default_rng(h * w), h, w, 6)
    reference = [
        structural_similarity(
            a, b, channel_axis=-1, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
        )
        for a, b in zip(images, recons)
    ]
    # the pairs cover a useful range of similarity, not just near-identical images
    assert min(reference) < 0.8 and max(reference) > 0.9
    # float32 SSIM maps (on the evaluation device) against scikit-image's float64 ones
    for i in range(len(images)):
        one = run(SSIM(DISCRETE), images[i : i + 1], recons[i : i + 1], [1])["ssim"]
        assert one == pytest.approx(reference[i], abs=1e-5)
    mean = run(SSIM(DISCRETE), images, recons, [2, 4])["ssim"]
    assert mean == pytest.approx(np.mean(reference), abs=1e-5)


def test_updates_read_nothing_back_from_the_device():
    """Every update runs on meta tensors (which hold no values): no per-batch sync or copy to the host."""
    images = torch.rand(2, 3, 16, 16, device="meta")
    tokens = torch.zeros(2, 8, dtype=torch.int64, device="meta")
    batch = EvalBatch(images, images, tokens, torch.zeros(2, dtype=torch.int64, device="meta"))
    metrics = build_metrics(["psnr", "ssim", "codebook_usage"], DISCRETE)
    for metric in metrics:
        metric.update(batch)
        metric.update(batch)
    assert metrics[0]._total.device.type == "meta" and metrics[2]._counts["codes"].device.type == "meta"


def test_ssim_of_identical_images_is_one():
    images, _ = image_pairs(np.random.default_rng(3), 32, 40, 3)
    assert run(SSIM(DISCRETE), images, images, [3])["ssim"] == pytest.approx(1.0, abs=1e-6)


def test_ssim_rejects_images_smaller_than_window():
    tiny = np.zeros((1, 8, 8, 3))
    with pytest.raises(ValueError, match="11x11"):
        run(SSIM(DISCRETE), tiny, tiny, [1])


def codebook_batch(tokens: torch.Tensor) -> EvalBatch:
    n = tokens.shape[0]
    images = torch.zeros(n, 3, 4, 4)
    return EvalBatch(images, images, tokens, torch.zeros(n, dtype=torch.int64))


def test_codebook_uniform_over_four_codes():
    metric = CodebookUsage(DISCRETE)
    codes = torch.tensor([0, 5, 7, 15])
    tokens = codes.repeat(6).view(3, 8)  # each code 6 times
    metric.update(codebook_batch(tokens[:1]))
    metric.update(codebook_batch(tokens[1:]))
    result = metric.compute()
    assert result == pytest.approx({"codebook_usage": 25.0, "codebook_perplexity": 4.0, "code_entropy": math.log(4)})
    expected = torch.zeros(16, dtype=torch.int64)
    expected[codes] = 6
    histogram = metric.histogram()
    assert histogram.dtype == torch.int64 and torch.equal(histogram, expected)


def test_codebook_skewed_counts_on_a_grid():
    spec = TokenSpec(kind="discrete", shape=(2, 2), vocab_size=8)
    metric = CodebookUsage(spec)
    metric.update(codebook_batch(torch.tensor([[[3, 3], [3, 1]]])))  # p = (3/4, 1/4)
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert metric.compute() == pytest.approx(
        {"codebook_usage": 100 * 2 / 8, "codebook_perplexity": math.exp(entropy), "code_entropy": entropy}
    )
    assert metric.histogram().tolist() == [0, 1, 0, 3, 0, 0, 0, 0]


@pytest.mark.parametrize("bad", [16, -1])
def test_codebook_rejects_out_of_range_ids(bad):
    metric = CodebookUsage(DISCRETE)
    metric.update(codebook_batch(torch.zeros(1, 8, dtype=torch.int64)))
    metric.update(codebook_batch(torch.full((1, 8), bad)))  # found when the counts are read, not per batch
    span = f"codes ids span \\[{min(bad, 0)}, {max(bad, 0)}\\], outside \\[0, 16\\)"
    with pytest.raises(ValueError, match=span):
        metric.compute()
    with pytest.raises(ValueError, match=span):
        metric.histogram()


def test_codebook_needs_discrete_tokens_or_code_ids():
    metric = CodebookUsage(CONTINUOUS)
    floats = EvalBatch(
        images=torch.zeros(1, 3, 8, 8),
        recons=torch.zeros(1, 3, 8, 8),
        tokens=torch.zeros(1, 4, 2),
        labels=torch.zeros(1),
    )
    with pytest.raises(ConfigError, match="kind=continuous"):
        metric.update(floats)


def test_codebook_usage_per_codebook_from_code_ids():
    metric = CodebookUsage(CONTINUOUS)
    codes = {"global": torch.tensor([[0, 1, 2, 3]]), "local1d": torch.tensor([[5, 5, 5, 5]])}
    batch = EvalBatch(
        images=torch.zeros(1, 3, 8, 8),
        recons=torch.zeros(1, 3, 8, 8),
        tokens=torch.zeros(1, 4, 2),
        labels=torch.zeros(1),
        codes=codes,
        codebook_sizes={"global": 8, "local1d": 16},
    )
    metric.update(batch)
    out = metric.compute()
    assert out["codebook_usage"] == out["codebook_usage_global"] == 50.0
    assert out["codebook_perplexity_global"] == pytest.approx(4.0)
    assert out["codebook_usage_local1d"] == 100 / 16 and out["code_entropy_local1d"] == 0.0
    assert metric.histogram("local1d")[5] == 4


def test_build_metrics_and_compute_all():
    metrics = build_metrics(["psnr", "ssim", "codebook_usage"], DISCRETE)
    assert [type(m) for m in metrics] == [PSNR, SSIM, CodebookUsage]
    images, recons = image_pairs(np.random.default_rng(4), 16, 16, 2)
    tokens = torch.arange(16).view(2, 8)
    for m in metrics:
        m.update(batch(images, recons, tokens))
    results = compute_all(metrics)
    assert set(results) == {"psnr", "ssim", "codebook_usage", "codebook_perplexity", "code_entropy"}
    assert results["codebook_usage"] == 100.0
    assert results["codebook_perplexity"] == pytest.approx(16.0)


def test_build_metrics_unknown_name_suggests_close_match():
    with pytest.raises(ConfigError, match="psnr") as info:
        build_metrics(["psnrr"], DISCRETE)
    assert "eval.metrics" in str(info.value) and "psnrr" in str(info.value)


def test_build_metrics_rejects_repeated_names():
    with pytest.raises(ConfigError, match="more than once"):
        build_metrics(["ssim", "ssim"], DISCRETE)


def test_compute_all_rejects_duplicate_keys():
    images = np.zeros((1, 16, 16, 3))
    first, second = PSNR(DISCRETE), PSNR(DISCRETE)
    for m in (first, second):
        m.update(batch(images, images))
    with pytest.raises(ConfigError, match="'psnr'"):
        compute_all([first, second])

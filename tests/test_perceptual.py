"""LPIPS perceptual loss: values, gradients, Frozen ownership and backbone weight loading (offline)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from benchmark.errors import ConfigError, WeightsError
from benchmark.perceptual import PerceptualLoss, hub_weights_path

ALEX_FILE = "alexnet-owt-7be5be79.pth"  # torchvision's AlexNet_Weights.IMAGENET1K_V1


def images(n: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def alex() -> PerceptualLoss:
    torch.manual_seed(0)
    return PerceptualLoss(net="alex", weights="random")


@pytest.fixture(scope="module")
def alex_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A torchvision AlexNet state dict (random weights, classifier included) saved as a file."""
    torch.manual_seed(1)
    state = torchvision.models.alexnet(weights=None).state_dict()
    path = tmp_path_factory.mktemp("weights") / "alexnet_random.pth"
    torch.save(state, path)
    return path, state


@pytest.fixture
def empty_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert Path(torch.hub.get_dir()) == tmp_path / "hub"
    return tmp_path / "hub"


def assert_backbone_equals(loss: PerceptualLoss, state: dict[str, torch.Tensor]) -> None:
    trunk = loss.lpips.net.net.state_dict()  # lpips keys: slice<k>.<torchvision features index>.<param>
    assert len(trunk) == len([k for k in state if k.startswith("features.")])
    for name, value in trunk.items():
        assert torch.equal(value, state["features." + name.split(".", 1)[1]]), name


def test_distance_zero_for_identical_images_positive_otherwise(alex: PerceptualLoss) -> None:
    x, y = images(3, seed=1), images(3, seed=2)
    same = alex.distance(x, x)
    assert same.shape == (3,) and torch.equal(same, torch.zeros(3))
    different = alex.distance(x, y)
    assert different.shape == (3,) and (different > 0).all()
    assert alex(x, y).item() == pytest.approx(different.mean().item())
    # a small perturbation is closer than an unrelated image
    assert (alex.distance(x, (x + 0.02 * (y - 0.5)).clamp(0, 1)) < different).all()


def test_distance_is_the_lpips_formula_on_images_mapped_to_minus_one_one(alex: PerceptualLoss) -> None:
    x, y = images(2, seed=3), images(2, seed=4)
    net = alex.lpips.net
    with torch.no_grad():
        fx = net.net(net.scaling_layer(x * 2 - 1))
        fy = net.net(net.scaling_layer(y * 2 - 1))
        expected = 0
        for layer, (a, b) in enumerate(zip(fx, fy)):
            a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            expected = expected + net.lins[layer].model[1].forward((a - b).pow(2)).mean(dim=(1, 2, 3))
        assert torch.allclose(alex.distance(x, y), expected, rtol=1e-5)


def test_gradient_reaches_x_and_not_the_lpips_weights(alex: PerceptualLoss) -> None:
    x = images(2, seed=5).requires_grad_(True)
    alex(x, images(2, seed=6)).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in alex.lpips.net.parameters())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert alex(x, images(2, seed=6)).dtype == torch.float32


def test_frozen_keeps_lpips_out_of_the_owner(alex: PerceptualLoss) -> None:
    owner = nn.Module()
    owner.decoder = nn.Conv2d(3, 3, 1)
    owner.perceptual = alex
    assert list(owner.state_dict()) == ["decoder.weight", "decoder.bias"]
    assert [n for n, _ in owner.named_parameters()] == ["decoder.weight", "decoder.bias"]
    owner.train()
    assert not alex.lpips.net.training
    owner.double()
    assert alex.lpips.net.lin0.model[1].weight.dtype == torch.float64
    assert alex.distance(images(1).double(), images(1, seed=1).double()).dtype == torch.float64
    owner.float()


def test_weights_path_loads_a_torchvision_alexnet_state_dict(alex_file) -> None:
    path, state = alex_file
    loss = PerceptualLoss(net="alex", weights=str(path))
    assert_backbone_equals(loss, state)
    assert loss.distance(images(1), images(1, seed=1)).item() > 0


def test_weights_path_loads_a_torchvision_vgg16_state_dict(tmp_path: Path) -> None:
    torch.manual_seed(2)
    features = torchvision.models.vgg16(weights=None).features.state_dict()
    state = {f"features.{k}": v for k, v in features.items()}  # the classifier is not used by LPIPS
    torch.save(state, tmp_path / "vgg16.pth")
    loss = PerceptualLoss(net="vgg", weights=str(tmp_path / "vgg16.pth"))
    assert_backbone_equals(loss, state)
    assert loss.distance(images(1, 32), images(1, 32, seed=1)).item() > 0


def test_missing_weights_path_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "vgg16.pth"
    with pytest.raises(WeightsError, match=str(missing)):
        PerceptualLoss(net="vgg", weights=str(missing))


def test_wrong_backbone_file_is_a_weights_error(tmp_path: Path, alex: PerceptualLoss) -> None:
    state = {"features." + k.split(".", 1)[1]: v for k, v in alex.lpips.net.net.state_dict().items()}
    torch.save(state, tmp_path / "alex.pth")
    with pytest.raises(WeightsError, match="lacks features.3.squeeze.weight"):
        PerceptualLoss(net="squeeze", weights=str(tmp_path / "alex.pth"))
    state["features.0.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match="does not fit"):
        PerceptualLoss(net="alex", weights=str(tmp_path / "bad.pth"))


def test_no_weights_and_empty_hub_cache_names_the_expected_file(empty_hub: Path) -> None:
    expected = empty_hub / "checkpoints" / ALEX_FILE
    assert hub_weights_path("alex") == expected
    with pytest.raises(WeightsError) as info:
        PerceptualLoss(net="alex")
    message = str(info.value)
    assert str(expected) in message
    assert "torchvision.models.alexnet(weights='IMAGENET1K_V1')" in message
    assert "tokenizer.perceptual.weights" in message


def test_no_weights_loads_from_the_hub_cache(empty_hub: Path, alex_file) -> None:
    path, state = alex_file
    (empty_hub / "checkpoints").mkdir(parents=True)
    (empty_hub / "checkpoints" / ALEX_FILE).symlink_to(path)
    assert_backbone_equals(PerceptualLoss(net="alex"), state)


def test_unknown_net_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"tokenizer\.perceptual\.net: unknown LPIPS network 'resnet'"):
        PerceptualLoss(net="resnet", weights="random")


def test_lpips_metric_is_the_mean_per_image_distance():
    from benchmark.base import TokenSpec
    from benchmark.metrics import EvalBatch, build_metrics

    torch.manual_seed(0)
    images, recons = torch.rand(3, 3, 32, 32), torch.rand(3, 3, 32, 32)
    spec = TokenSpec("discrete", (4,), vocab_size=8)
    (metric,) = build_metrics(["lpips"], spec, {"lpips": {"net": "alex", "weights": "random"}})
    metric.update(
        EvalBatch(images=images, recons=recons, tokens=torch.zeros(3, 4, dtype=torch.long), labels=torch.zeros(3))
    )
    expected = metric.loss.distance(recons, images).mean().item()
    assert metric.compute()["lpips"] == pytest.approx(expected, rel=1e-6) and expected > 0

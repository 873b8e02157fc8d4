"""LPIPS perceptual loss (Zhang et al. 2018) through the ``lpips`` package, for tokenizers and metrics.

    d(x, y) = sum_l 1 / (H_l W_l) sum_{h,w} || w_l * (f^l_hw(x) - f^l_hw(y)) ||^2

with f^l the unit-normalised (over channels) activations of layer l of a frozen ImageNet backbone
(VGG-16, AlexNet or SqueezeNet 1.1) and w_l the calibrated linear heads. The heads are the weights
shipped inside the ``lpips`` wheel; the backbone comes from torchvision's own pretrained file in the
torch hub cache (never downloaded here), from a local torchvision state-dict file, or is random
(``weights: random``, for smoke runs and tests).
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from benchmark.base import TokenSpec
from benchmark.errors import ConfigError, WeightsError
from benchmark.layers import Frozen
from benchmark.metrics import PerImageMean
from benchmark.options import check_options, check_value, init_params, nested
from benchmark.registry import register_metric
from benchmark.weights import find_weights, hub_cache

# The smallest image side each LPIPS trunk can take (smaller ones pool down to nothing; measured)
MIN_SIZE = {"vgg": 16, "alex": 31, "squeeze": 17}
# LPIPS network -> (torchvision builder, the torchvision weights lpips' trunks were built with)
BACKBONES = {
    "vgg": ("vgg16", "VGG16_Weights.IMAGENET1K_V1"),
    "alex": ("alexnet", "AlexNet_Weights.IMAGENET1K_V1"),
    "squeeze": ("squeezenet1_1", "SqueezeNet1_1_Weights.IMAGENET1K_V1"),
}


def hub_weights_path(net: str) -> Path:
    """Where torchvision caches the backbone's ImageNet weights: ``torch.hub.get_dir()/checkpoints/<file>``."""
    from torchvision.models import get_weight

    return hub_cache(get_weight(BACKBONES[net][1]).url.rsplit("/", 1)[-1])


def _how_to_obtain(net: str, target: Path) -> str:
    from torchvision.models import get_weight

    builder, enum = BACKBONES[net]
    return (
        f'On a machine with network access run `python -c "import torchvision; '
        f"torchvision.models.{builder}(weights='{enum.split('.')[1]}')\"` (it downloads "
        f"{get_weight(enum).url} into torch.hub.get_dir()/checkpoints/ on that machine) and copy the file "
        f"to {target}, or set tokenizer.perceptual.weights: /path/to/{target.name} "
        f"(a torchvision state dict), or weights: random for a random backbone"
    )


def backbone_state(net: str, weights: str | Path | None) -> dict[str, Tensor] | None:
    """The torchvision state dict of the backbone (None for ``random``), loaded with weights_only=True."""
    if weights == "random":
        return None
    hub = hub_weights_path(net)
    found = find_weights(
        f"LPIPS {net} backbone weights",
        weights,
        "tokenizer.perceptual.weights",
        None,
        hub.name,
        lambda: _how_to_obtain(net, hub),
    )
    if found is None:
        raise WeightsError(
            f"LPIPS {net} backbone weights not found: tokenizer.perceptual.weights is unset and {hub} "
            "is not in torch's hub cache; tok1d never downloads them",
            _how_to_obtain(net, hub),
        )
    path = found[0]
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise WeightsError(
            f"cannot load LPIPS {net} backbone weights {path}: {type(exc).__name__}: {first}", _how_to_obtain(net, path)
        ) from None
    if not isinstance(state, dict):
        raise WeightsError(
            f"LPIPS {net} backbone weights {path} hold a {type(state).__name__}, not a torchvision state dict",
            _how_to_obtain(net, path),
        )
    return state


def load_backbone(trunk: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """Copy torchvision ``features.<i>.*`` tensors into lpips' trunk, whose slices keep the same indices
    (``slice<k>.<i>.*``, see lpips/pretrained_networks.py); torchvision's classifier is not used."""
    wanted = {name: "features." + name.split(".", 1)[1] for name in trunk.state_dict()}
    missing = [src for src in wanted.values() if src not in state]
    if missing:
        raise WeightsError(
            f"{source} is not a torchvision state dict of this LPIPS backbone: it lacks "
            f"{', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}"
        )
    try:
        trunk.load_state_dict({name: state[src] for name, src in wanted.items()})
    except RuntimeError as exc:
        raise WeightsError(f"{source} does not fit the LPIPS backbone: {str(exc).splitlines()[-1].strip()}") from None


def check_perceptual(spec: Mapping[str, Any], where: str) -> None:
    """A ``perceptual`` mapping: a numeric ``weight`` plus :class:`PerceptualLoss`'s options, a known net."""
    check_options(spec, init_params(PerceptualLoss), where, "the LPIPS loss", extra=("weight",))
    if "weight" in spec:
        check_value(spec["weight"], float, f"{where}.weight")
    if "net" in spec and spec["net"] not in BACKBONES:
        raise ConfigError(f"{where}.net: unknown LPIPS network '{spec['net']}'; choose from {', '.join(BACKBONES)}")


PerceptualOptions = nested(check_perceptual)


class PerceptualLoss(nn.Module):
    """Mean LPIPS distance between images in [0, 1]; differentiable w.r.t. both.

    The LPIPS network is held in :class:`benchmark.layers.Frozen`: the tokenizer that owns this loss
    gets no parameters and no state-dict entries from it, and it always runs in eval mode.
    """

    def __init__(self, *, net: str = "vgg", weights: str | None = None, where: str = "tokenizer.perceptual") -> None:
        super().__init__()
        check_perceptual({"net": net}, where)
        self.where = where  # the option that asked for it, named by its errors
        import lpips  # only when a perceptual loss is built: plugin loading registers the metric cheaply

        # built on the meta device (a shapes-only model for plan-time checks and cost estimates): no file read
        state = None if torch.get_default_device().type == "meta" else backbone_state(net, weights)
        with warnings.catch_warnings():  # lpips builds its random trunk with torchvision's legacy `pretrained=`
            warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
            model = lpips.LPIPS(pretrained=True, net=net, pnet_rand=True, verbose=False)
        if state is not None:
            load_backbone(model.net, state, str(weights or hub_weights_path(net)))
        self.net_name = net
        self.lpips = Frozen(model)

    def distance(self, x: Tensor, y: Tensor) -> Tensor:
        """Per-image LPIPS distance (B,) between images x, y in [0, 1] of shape (B, 3, H, W), in float32
        or wider (also under autocast)."""
        if min(x.shape[-2:]) < MIN_SIZE[self.net_name]:
            raise ConfigError(too_small(self.net_name, tuple(x.shape[-2:]), self.where))
        d = self.lpips(x, y, normalize=True).flatten()
        return d.to(torch.promote_types(d.dtype, torch.float32))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """The mean LPIPS distance over the batch (a scalar)."""
        return self.distance(x, y).mean()


def too_small(net: str, size: tuple[int, ...], where: str) -> str:
    """The error for images smaller than LPIPS' ``net`` takes, naming the option that asked for it."""
    need = f"LPIPS '{net}' needs images of at least {MIN_SIZE[net]} px, got {size}; use a larger data.resolution"
    if where == "tokenizer.perceptual":
        return f"{where}.net: {need} or net: {min(MIN_SIZE, key=MIN_SIZE.get)}"
    return f"{where}: {need} or leave lpips out"


@register_metric("lpips")
class LPIPSMetric(PerImageMean):
    """LPIPS (Zhang et al. 2018) between originals and reconstructions, VGG backbone (lower is better)."""

    key = "lpips"

    def __init__(
        self, token_spec: TokenSpec, *, net: str = "vgg", weights: str | None = None, device: str = "cpu"
    ) -> None:
        super().__init__(token_spec)
        self.device = torch.device(device)
        self.loss = PerceptualLoss(net=net, weights=weights, where="eval.metrics: lpips").to(self.device)

    def per_image(self, images: Tensor, recons: Tensor) -> Tensor:
        return self.loss.distance(recons.to(self.device), images.to(self.device))

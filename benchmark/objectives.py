"""The pixel-space terms every tokenizer shares, built from its config.

    L_pixel = w_rec * ||x - x_hat||  +  w_p * LPIPS(x, x_hat)        (thesis Sec. 3.1; SelfBootTok Eq. 4)

plus the adversarial term, which the trainer adds through the tokenizer's :class:`Adversary`
(its adaptive weight needs the gradient of exactly these two terms, the "nll").
Config shapes (tokenizer section): ``perceptual: {weight: 1.0, net: vgg, weights: null}`` and
``adversarial: {weight: 0.1, kind: patchgan, start: 20000, ...}`` (options of benchmark.gan.Adversary).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.config import check_options, init_params
from benchmark.errors import ConfigError
from benchmark.gan import Adversary
from benchmark.perceptual import PerceptualLoss

NLL_TERMS = ("recon", "perceptual")  # what the adaptive adversarial weight balances against


def _options(spec: Mapping[str, Any] | None, cls: type, where: str, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """A nested config mapping checked against ``cls``'s keyword arguments (plus ``extra`` keys)."""
    spec = dict(spec or {})
    check_options(spec, init_params(cls, {"image_size"}), where, cls.__name__, extra)
    return spec


class PixelObjective(nn.Module):
    """Reconstruction (L1 or L2) and LPIPS perceptual terms, already weighted."""

    def __init__(self, recon_loss: str = "l2", recon_weight: float = 1.0,
                 perceptual: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if recon_loss not in ("l1", "l2"):
            raise ConfigError(f"tokenizer.recon_loss: '{recon_loss}' is not l1 or l2")
        self.recon_loss, self.recon_weight = recon_loss, recon_weight
        opts = _options(perceptual, PerceptualLoss, "tokenizer.perceptual", extra=("weight",))
        self.perceptual_weight = float(opts.pop("weight", 1.0)) if perceptual else 0.0
        self.perceptual = PerceptualLoss(**opts) if self.perceptual_weight > 0 else None

    def forward(self, images: Tensor, recon: Tensor) -> dict[str, Tensor]:
        dist = F.l1_loss if self.recon_loss == "l1" else F.mse_loss
        losses = {"recon": self.recon_weight * dist(recon.float(), images.float())}
        if self.perceptual is not None:
            losses["perceptual"] = self.perceptual_weight * self.perceptual(recon.float(), images.float())
        return losses


def build_adversary(spec: Mapping[str, Any] | None, image_size: int) -> Adversary | None:
    """The tokenizer's adversary from its ``adversarial`` config, or None when absent / weight 0."""
    if not spec:
        return None
    opts = _options(spec, Adversary, "tokenizer.adversarial")
    if float(opts.get("weight", 0.1)) <= 0:
        return None
    return Adversary(image_size=image_size, **opts)

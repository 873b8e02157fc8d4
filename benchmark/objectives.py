"""The pixel-space terms every tokenizer shares, built from its config.

    L_pixel = w_rec * ||x - x_hat||  +  w_p * LPIPS(x, x_hat)        (thesis Sec. 3.1; SelfBootTok Eq. 4)

plus the adversarial term, which the trainer adds through the tokenizer's :class:`Adversary`
(its adaptive weight needs the gradient of exactly these two terms, the "nll").
Config shapes (tokenizer section): ``perceptual: {weight: 1.0, net: vgg, weights: null}`` and
``adversarial: {weight: 0.1, kind: patchgan, start: 20000, ...}`` (options of benchmark.gan.Adversary).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.errors import ConfigError
from benchmark.gan import AdversarialOptions, Adversary, check_adversarial
from benchmark.perceptual import PerceptualLoss, PerceptualOptions, check_perceptual

NLL_TERMS = ("recon", "perceptual")  # what the adaptive adversarial weight balances against
__all__ = ["NLL_TERMS", "AdversarialOptions", "PerceptualOptions", "PixelObjective", "build_adversary"]


class PixelObjective(nn.Module):
    """Reconstruction (L1 or L2) and LPIPS perceptual terms, already weighted."""

    def __init__(
        self,
        recon_loss: str = "l2",
        recon_weight: float = 1.0,
        perceptual: PerceptualOptions | None = None,
        pixel_range: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        """``pixel_range``: the range the reconstruction distance is taken in (images and reconstructions
        arrive in [0, 1]): code that trains on [-1, 1] images, as SoftVQ's, weighs its MSE 4x (L1 2x)
        against the same perceptual term."""
        super().__init__()
        if recon_loss not in ("l1", "l2"):
            raise ConfigError(f"tokenizer.recon_loss: '{recon_loss}' is not l1 or l2")
        self.recon_loss, self.recon_weight = recon_loss, recon_weight
        self.pixel_scale = pixel_range[1] - pixel_range[0]
        opts = dict(perceptual or {})
        check_perceptual(opts, "tokenizer.perceptual")
        # ``perceptual: {}`` is the term at its defaults (weight 1), not no term: None is no term
        self.perceptual_weight = float(opts.pop("weight", 1.0)) if perceptual is not None else 0.0
        self.perceptual = PerceptualLoss(**opts) if self.perceptual_weight > 0 else None

    def forward(self, images: Tensor, recon: Tensor) -> dict[str, Tensor]:
        dist = F.l1_loss if self.recon_loss == "l1" else F.mse_loss
        x, y = recon.float(), images.float()
        if self.pixel_scale != 1.0:  # the offset of the range cancels in the difference
            x, y = x * self.pixel_scale, y * self.pixel_scale
        losses = {"recon": self.recon_weight * dist(x, y)}
        if self.perceptual is not None:
            losses["perceptual"] = self.perceptual_weight * self.perceptual(recon.float(), images.float())
        return losses


def build_adversary(spec: Mapping[str, Any] | None, image_size: int) -> Adversary | None:
    """The tokenizer's adversary from its ``adversarial`` config (``{}``: every default), or None when
    absent / weight 0."""
    if spec is None:
        return None
    opts = dict(spec)
    check_adversarial(opts, "tokenizer.adversarial")
    if float(opts.get("weight", 0.1)) <= 0:
        return None
    return Adversary(image_size=image_size, **opts)

"""Adversarial training for tokenizers: discriminators, GAN losses and their regularisers.

Shared by every tokenizer that trains its decoder against a discriminator (VQGAN, TiTok, SoftVQ-VAE,
SelfBootTok). A tokenizer holds one :class:`Adversary` as a normal child module; the trainer optimises
``adversary.discriminator`` with its own optimiser on :meth:`Adversary.discriminator_loss`.

- :class:`PatchGANDiscriminator`: pix2pix / taming-transformers' ``NLayerDiscriminator`` (a logit map).
- :class:`StyleGANDiscriminator`: a StyleGAN2-style residual discriminator (Karras et al. 2020).
- Losses on logits: hinge (Lim & Ye 2017) and non-saturating (Goodfellow et al. 2014).
- :class:`LeCAM` regularisation (Tseng et al. 2021), :func:`consistency_loss` (bCR, Zhang et al. 2019)
  with the differentiable :func:`augment`, and taming's :func:`adaptive_weight` (Esser et al. 2021, eq. 7).

Images cross the :class:`Adversary` API in [0, 1]; the discriminators see them mapped to [-1, 1].
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark import distributed
from benchmark.errors import ConfigError
from benchmark.options import check_options, init_params, nested

KINDS = ("patchgan", "stylegan")
LOSSES = ("hinge", "non_saturating")


# ---------------------------------------------------------------------------------------------
# Discriminators


class PatchGANDiscriminator(nn.Sequential):
    """PatchGAN (Isola et al. 2017), as taming-transformers' ``NLayerDiscriminator``.

    ``num_layers`` stride-2 4x4 convs (width doubling up to 8x), one stride-1 4x4 conv, then a 4x4 conv
    to one logit per patch: (B, 3, H, W) -> (B, 1, H / 2^n - 2, W / 2^n - 2). LeakyReLU(0.2) and
    BatchNorm (no norm on the first conv); conv weights ~ N(0, 0.02), BatchNorm weights ~ N(1, 0.02).
    """

    def __init__(self, in_channels: int = 3, width: int = 64, num_layers: int = 3) -> None:
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, num_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < num_layers else 1
            layers += [
                nn.Conv2d(width * prev, width * mult, 4, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(width * mult),
                nn.LeakyReLU(0.2),
            ]
        layers.append(nn.Conv2d(width * mult, 1, 4, stride=1, padding=1))
        super().__init__(*layers)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    @staticmethod
    def output_size(image_size: int, num_layers: int) -> int:
        """Side of the logit map: each stride-2 conv halves (floor), the two stride-1 convs take 1 each."""
        return image_size // 2**num_layers - 2


class StyleGANResBlock(nn.Module):
    """StyleGAN2 residual block: (lrelu(conv3x3(lrelu(conv3x3(x)))) down + conv1x1(x down)) / sqrt(2)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.conv2 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        h = F.leaky_relu(self.conv1(x), 0.2)
        h = F.avg_pool2d(F.leaky_relu(self.conv2(h), 0.2), 2)
        return (h + self.skip(F.avg_pool2d(x, 2))) / math.sqrt(2)


def minibatch_std(x: Tensor, group_size: int = 4, eps: float = 1e-8) -> Tensor:
    """StyleGAN's minibatch standard deviation: append, per group of samples, the mean over (C, H, W)
    of the per-feature standard deviation across the group as one extra channel.

    The group is the largest divisor of the batch no larger than ``group_size``; sample i belongs to
    group i mod (B / G), as in StyleGAN2.
    """
    b, c, h, w = x.shape
    g = max(d for d in range(1, min(group_size, b) + 1) if b % d == 0)
    y = x.float().reshape(g, b // g, c, h, w)
    y = (y.var(dim=0, unbiased=False) + eps).sqrt().mean(dim=(1, 2, 3))  # (B / G,)
    y = y.to(x.dtype).view(1, -1, 1, 1, 1).expand(g, -1, 1, h, w).reshape(b, 1, h, w)
    return torch.cat([x, y], dim=1)


class StyleGANDiscriminator(nn.Module):
    """A StyleGAN2 residual discriminator (Karras et al. 2020, Fig. 7b), one logit per image: (B, 1).

    fromRGB (1x1 conv) at ``image_size``, residual blocks halving the resolution down to 4x4 (average
    pooling as the downsampler), minibatch standard deviation, a 3x3 conv, then two linear layers.
    Widths double at each halving, from ``width`` up to ``max_width``. Unlike StyleGAN2 it uses plain
    PyTorch initialisation (no equalised learning rate) and no FIR blur before downsampling.
    """

    def __init__(self, image_size: int, width: int = 64, max_width: int = 512) -> None:
        super().__init__()
        if image_size < 8 or image_size & (image_size - 1):
            raise ValueError(f"StyleGANDiscriminator needs a power-of-two image size >= 8, got {image_size}")
        channels = {
            res: min(width * image_size // res, max_width) for res in (2**i for i in range(2, 20)) if res <= image_size
        }
        self.from_rgb = nn.Conv2d(3, channels[image_size], 1)
        self.blocks = nn.Sequential(
            *(StyleGANResBlock(channels[res], channels[res // 2]) for res in sorted(channels, reverse=True) if res > 4)
        )
        top = channels[4]
        self.conv = nn.Conv2d(top + 1, top, 3, padding=1)
        self.fc = nn.Linear(top * 4 * 4, top)
        self.out = nn.Linear(top, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.blocks(F.leaky_relu(self.from_rgb(x), 0.2))
        x = F.leaky_relu(self.conv(minibatch_std(x)), 0.2)
        return self.out(F.leaky_relu(self.fc(x.flatten(1)), 0.2))


# ---------------------------------------------------------------------------------------------
# Losses on logits


def hinge_d_loss(real: Tensor, fake: Tensor) -> Tensor:
    """Hinge discriminator loss, halved as in taming / TiTok: 1/2 (E[relu(1 - D(x))] + E[relu(1 + D(G(z)))])."""
    return 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())


def hinge_g_loss(fake: Tensor) -> Tensor:
    """Hinge generator loss: -E[D(G(z))]."""
    return -fake.mean()


def non_saturating_d_loss(real: Tensor, fake: Tensor) -> Tensor:
    """Non-saturating discriminator loss, halved like the hinge: 1/2 (E[-log sigmoid D(x)] + E[-log(1 - sigmoid D(G(z)))])."""
    return 0.5 * (F.softplus(-real).mean() + F.softplus(fake).mean())


def non_saturating_g_loss(fake: Tensor) -> Tensor:
    """Non-saturating generator loss: E[-log sigmoid D(G(z))] = E[softplus(-D(G(z)))]."""
    return F.softplus(-fake).mean()


D_LOSSES = {"hinge": hinge_d_loss, "non_saturating": non_saturating_d_loss}
G_LOSSES = {"hinge": hinge_g_loss, "non_saturating": non_saturating_g_loss}


# ---------------------------------------------------------------------------------------------
# Regularisers and the adaptive weight


class LeCAM(nn.Module):
    """LeCAM regulariser (Tseng et al. 2021, eq. 3):

        R = E[relu(D(x) - a_F)^2] + E[relu(a_R - D(G(z)))^2]

    with a_R, a_F exponential moving averages (``decay``) of the mean real and fake logits. In training
    mode each call first updates the averages (no gradient) and then regularises against them, as the
    authors' code does; the first update sets them to the current means.
    """

    def __init__(self, decay: float = 0.99) -> None:
        super().__init__()
        self.decay = decay
        self.register_buffer("ema_real", torch.zeros(()))
        self.register_buffer("ema_fake", torch.zeros(()))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, real_logits: Tensor, fake_logits: Tensor) -> None:
        """Move the averages towards this step's mean logits, those of the global batch: with several
        processes the means are averaged over the ranks (equal shards), so every rank keeps the same
        averages (the generator's DDP would otherwise overwrite them with rank 0's, its shard's alone)."""
        real, fake = distributed.mean_over_ranks(torch.stack([real_logits.float().mean(), fake_logits.float().mean()]))
        # 1 - decay, or 1 at the first update; a device tensor, not a Python branch: no host sync
        weight = torch.where(self.num_updates > 0, 1.0 - self.decay, 1.0)
        self.ema_real.lerp_(real, weight)
        self.ema_fake.lerp_(fake, weight)
        self.num_updates += 1

    def loss(self, real_logits: Tensor, fake_logits: Tensor) -> Tensor:
        if self.training:
            self.update(real_logits, fake_logits)
        return (
            F.relu(real_logits.float() - self.ema_fake).pow(2).mean()
            + F.relu(self.ema_real - fake_logits.float()).pow(2).mean()
        )


def augment(images: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """DiffAugment-style differentiable augmentation T (Zhao et al. 2020), per image:

    a horizontal flip with probability 1/2, a translation by up to 1/8 of the size in each direction
    (zero padding), and a cutout: one square of half the size, centred anywhere in the image, set to 0.
    Zero is the discriminator's grey: call it on images in [-1, 1].
    """
    b, _, h, w = images.shape
    device = images.device
    rng = generator.device if generator is not None else device

    def uniform(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=generator, device=rng).to(device)

    flip = uniform(b, 1, 1, 1) < 0.5
    x = torch.where(flip, images.flip(3), images)

    sh, sw = max(1, h // 8), max(1, w // 8)
    ty = (uniform(b) * (2 * sh + 1)).long() - sh
    tx = (uniform(b) * (2 * sw + 1)).long() - sw
    rows = torch.arange(h, device=device) + sh - ty[:, None]  # (B, H) rows of the padded image
    cols = torch.arange(w, device=device) + sw - tx[:, None]
    padded = F.pad(x, (sw, sw, sh, sh))
    x = padded[torch.arange(b, device=device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    x = x.permute(0, 3, 1, 2)

    ch, cw = h // 2, w // 2
    top = (uniform(b) * h).long() - ch // 2
    left = (uniform(b) * w).long() - cw // 2
    r, c = torch.arange(h, device=device), torch.arange(w, device=device)
    in_rows = (r >= top[:, None]) & (r < top[:, None] + ch)
    in_cols = (c >= left[:, None]) & (c < left[:, None] + cw)
    keep = ~(in_rows[:, :, None] & in_cols[:, None, :])
    return x * keep[:, None].to(x.dtype)


def consistency_loss(
    discriminator: nn.Module,
    real: Tensor,
    fake: Tensor,
    *,
    real_logits: Tensor | None = None,
    fake_logits: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Balanced consistency regularisation (bCR, Zhang et al. 2019, Alg. 1):

        L = ||D(T(x)) - D(x)||^2 + ||D(T(G(z))) - D(G(z))||^2   (mean squared errors)

    with T = :func:`augment`. Pass ``real_logits`` / ``fake_logits`` to reuse D(x), D(G(z)).
    """
    real_logits = discriminator(real) if real_logits is None else real_logits
    fake_logits = discriminator(fake) if fake_logits is None else fake_logits
    return F.mse_loss(discriminator(augment(real, generator)).float(), real_logits.float()) + F.mse_loss(
        discriminator(augment(fake, generator)).float(), fake_logits.float()
    )


def adaptive_weight(nll: Tensor, g_loss: Tensor, last_layer: Tensor, max_weight: float = 1e4) -> Tensor:
    """VQGAN's adaptive weight (Esser et al. 2021, eq. 7): ||grad_W L_rec|| / (||grad_W L_GAN|| + 1e-4),

    W the decoder's last layer, clamped to [0, max_weight] and detached. With several processes the two
    gradients are those of the global batch (averaged over the ranks' equal shards, as DDP averages the
    parameters' gradients), so every rank weighs the terms alike and the step does not depend on the
    number of processes (every rank reaches this at the same steps).
    """
    nll_grad = distributed.mean_over_ranks(torch.autograd.grad(nll, last_layer, retain_graph=True)[0])
    g_grad = distributed.mean_over_ranks(torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0])
    weight = nll_grad.float().norm() / (g_grad.float().norm() + 1e-4)
    return weight.clamp(0.0, max_weight).detach()


# ---------------------------------------------------------------------------------------------
# What a tokenizer holds


def check_values(options: Mapping[str, Any], where: str) -> None:
    """The values of an ``adversarial`` mapping that need no image size: known kind and loss,
    non-negative weights and start, positive widths and depths."""
    for name, value in options.items():
        if name == "kind" and value not in KINDS:
            raise ConfigError(f"{where}.kind: unknown discriminator '{value}'; choose from {', '.join(KINDS)}")
        if name == "loss" and value not in LOSSES:
            raise ConfigError(f"{where}.loss: unknown GAN loss '{value}'; choose from {', '.join(LOSSES)}")
        if name in ("weight", "start", "lecam_weight", "consistency_weight") and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0
        ):
            raise ConfigError(f"{where}.{name}: must be a number >= 0, got {value!r}")
        if name in ("width", "num_layers") and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{where}.{name}: must be an integer >= 1, got {value!r}")
        if name == "lecam_decay" and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1
        ):
            raise ConfigError(f"{where}.{name}: must be a number >= 0 and < 1, got {value!r}")


def check_adversarial(spec: Mapping[str, Any], where: str) -> None:
    """A tokenizer's ``adversarial`` mapping: keys and types of :class:`Adversary`'s options and
    :func:`check_values` (what depends on the image size is checked when the tokenizer is built)."""
    check_options(spec, init_params(Adversary, {"image_size"}), where, "the adversary")
    check_values(spec, where)


class Adversary(nn.Module):
    """Everything a tokenizer needs for adversarial training: a discriminator, the GAN losses and the
    LeCAM / consistency regularisers.

    The tokenizer holds it as a child module, so ``discriminator`` is saved with the tokenizer; its
    weights are trained by the trainer's separate discriminator optimiser on the sum of
    :meth:`discriminator_loss`. Nothing happens before step ``start`` (taming's ``disc_start``).
    Images are in [0, 1]; they are mapped to [-1, 1] before the discriminator.
    """

    def __init__(
        self,
        *,
        kind: str = "patchgan",
        image_size: int,
        weight: float = 0.1,
        start: int = 0,
        adaptive: bool = True,
        loss: str = "hinge",
        lecam_weight: float = 0.0,
        lecam_decay: float = 0.99,
        consistency_weight: float = 0.0,
        width: int = 64,
        num_layers: int = 3,
    ) -> None:
        """``lecam_decay``: the decay of LeCAM's averages (its authors' 0.99; TiTok's and SoftVQ's training
        code use 0.999)."""
        super().__init__()
        key = "tokenizer.adversarial"
        check_values(
            {
                "kind": kind,
                "loss": loss,
                "weight": weight,
                "start": start,
                "lecam_weight": lecam_weight,
                "lecam_decay": lecam_decay,
                "consistency_weight": consistency_weight,
                "width": width,
                "num_layers": num_layers,
            },
            key,
        )
        if kind == "patchgan" and PatchGANDiscriminator.output_size(image_size, num_layers) < 1:
            raise ConfigError(
                f"{key}.num_layers: a {num_layers}-layer PatchGAN leaves no patch of a "
                f"{image_size} px image; use num_layers <= {max(1, int(math.log2(image_size / 3)))}"
            )
        if kind == "stylegan" and (image_size < 8 or image_size & (image_size - 1)):
            raise ConfigError(
                f"{key}.kind: the stylegan discriminator needs a power-of-two image size "
                f">= 8, got {image_size} px; use kind: patchgan"
            )
        self.kind, self.loss_name, self.adaptive = kind, loss, adaptive
        self.weight, self.start = float(weight), int(start)
        self.lecam_weight, self.consistency_weight = float(lecam_weight), float(consistency_weight)
        self.discriminator: nn.Module = (
            PatchGANDiscriminator(3, width, num_layers)
            if kind == "patchgan"
            else StyleGANDiscriminator(image_size, width)
        )
        self.lecam = LeCAM(lecam_decay)
        self.d_loss, self.g_loss = D_LOSSES[loss], G_LOSSES[loss]

    def active(self, step: int) -> bool:
        """Whether the adversarial losses are on at this step (weight > 0 and step >= start)."""
        return self.weight > 0 and step >= self.start

    def logits(self, images: Tensor) -> Tensor:
        """D(2x - 1) for images x in [0, 1]."""
        return self.discriminator(images * 2 - 1)

    def generator_loss(self, fake: Tensor, nll: Tensor, last_layer: Tensor | None, step: int) -> Tensor:
        """The generator's adversarial term: weight * w * L_G(D(fake)), a float32 scalar.

        w is :func:`adaptive_weight` (nll against L_G at ``last_layer``) when ``adaptive``, a last layer
        is given and gradients are being recorded; otherwise 1. Zero before ``start`` or at weight 0.

        Contract with the trainer: the backward of a loss holding this term also accumulates gradients
        into the discriminator's parameters; the trainer zeroes the discriminator optimiser's gradients
        before the backward of :meth:`discriminator_loss`, so those never reach a discriminator step.
        """
        if not self.active(step):
            return torch.zeros((), device=fake.device, dtype=torch.float32)
        g_loss = self.g_loss(self.logits(fake)).float()
        w = torch.ones((), device=fake.device)
        if (
            self.adaptive
            and last_layer is not None
            and torch.is_grad_enabled()
            and nll.requires_grad
            and g_loss.requires_grad
        ):
            w = adaptive_weight(nll, g_loss, last_layer)
        return self.weight * w * g_loss

    def discriminator_loss(self, real: Tensor, fake: Tensor, step: int) -> dict[str, Tensor]:
        """The discriminator's terms, already weighted; the trainer minimises their sum.

        ``disc``: the GAN loss on D(real), D(fake); ``lecam``: lecam_weight * LeCAM; ``consistency``:
        consistency_weight * bCR. ``fake`` must come detached from the generator (it is detached here
        too). All three are float32 zeros before ``start``, and each is zero when its weight is 0.
        """
        zero = torch.zeros((), device=real.device, dtype=torch.float32)
        out = {"disc": zero, "lecam": zero, "consistency": zero}
        if not self.active(step):
            return out
        real, fake = real * 2 - 1, fake.detach() * 2 - 1
        real_logits, fake_logits = self.discriminator(real), self.discriminator(fake)
        out["disc"] = self.d_loss(real_logits, fake_logits).float()
        if self.lecam_weight > 0:
            out["lecam"] = self.lecam_weight * self.lecam.loss(real_logits, fake_logits)
        if self.consistency_weight > 0:
            out["consistency"] = self.consistency_weight * consistency_loss(
                self.discriminator, real, fake, real_logits=real_logits, fake_logits=fake_logits
            )
        return out


AdversarialOptions = nested(check_adversarial)

"""VQGAN (Esser et al. 2021, "Taming Transformers"): the 2D baseline of the thesis (Sec. 3.1).

    Z_2D  = Enc(I)          in R^{H/f x W/f x D}      (convolutional encoder, f = 2^(len(ch_mult) - 1))
    Ẑ_2D  = Quant(Z_2D)     nearest code of C = {c_1, ..., c_N} per position (straight-through)
    Î     = Dec(Ẑ_2D)

    L = L_rec + L_quant + L_percep + L_entropy (+ L_adv, added by the trainer)      (thesis Sec. 3.1)
    L_entropy = E_r[H(p(q(z)))] - H(E_r[p(q(z))])

Encoder and decoder follow taming-transformers' ``Encoder`` / ``Decoder``: ResNet blocks with GroupNorm
and SiLU, strided-conv downsampling, nearest + conv upsampling, single-head self-attention at the
lowest resolution and in the middle block. ``size: base`` is taming's f16 model (ch 128, ch_mult
(1, 1, 2, 2, 4), 2 blocks per level: 256 px -> 16 x 16 = 256 tokens, codebook 1024 of dim 256);
``size: tiny`` is the smoke-scale model (ch 16, ch_mult (1, 2, 2), 1 block per level, GroupNorm groups of
4 channels: 32 px -> 8 x 8 tokens; about 0.3 M parameters, a training step on a CPU core in well under a
second).

``bottleneck: kl`` swaps the vector quantiser for a diagonal Gaussian posterior (the KL-VAE of latent
diffusion, Rombach et al. 2022): continuous latents, a weighted KL term, no codebook. Either variant
exposes its continuous 2D latents through :meth:`VQGAN.latent_grid` (SelfBootTok's OT targets).
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.base import Tokenizer, TokenizerOutput, TokenSpec
from benchmark.errors import ConfigError
from benchmark.objectives import AdversarialOptions, PerceptualOptions, PixelObjective, build_adversary
from benchmark.options import NonNegativeFloat, PositiveFloat, PositiveInt
from benchmark.quantizers import DiagonalGaussian, VectorQuantizer, scale_vq_losses
from benchmark.registry import register_tokenizer

# size -> (ch, ch_mult, num_res_blocks, embed_dim of "vq", embed_dim of "kl", channels per GroupNorm group at
# least: taming's GroupNorm(32, C) for base, and for the widths a converted release gives; 4 for tiny's 16-32)
SIZES: dict[str, tuple[int, tuple[int, ...], int, int, int, int]] = {
    "tiny": (16, (1, 2, 2), 1, 32, 8, 4),
    "base": (128, (1, 1, 2, 2, 4), 2, 256, 16, 1),  # taming's f16 VQGAN; LDM's KL-f16 has 16 channels
}
BOTTLENECKS = ("vq", "kl")

# taming's VQLPIPSWithDiscriminator (custom_vqgan.yaml): PatchGAN, hinge loss, adaptive weight,
# disc_weight 0.8, disc_start 10000. The `adversarial` option overrides any of these keys.
VQGAN_ADVERSARIAL: dict = {"kind": "patchgan", "loss": "hinge", "weight": 0.8, "start": 10000, "adaptive": True}


def normalize(channels: int, min_group_channels: int = 1) -> nn.GroupNorm:
    """taming's ``Normalize``: GroupNorm(32, C), eps 1e-6; a width that 32 does not divide gets gcd(32, C)
    groups. ``min_group_channels``: the most groups, up to 32, that keep at least that many channels each
    (the tiny preset's 4, as taming's narrowest layer: 128 channels in 32 groups). With one channel per
    group GroupNorm is instance norm: it removes each feature map's per-image mean, and with it the
    image's colour (measured on the built-in data, tiny KL VQGAN, 300 steps: a colour error of 0.011 per
    pixel with gcd(32, C) groups against 0.038 with 4 channels per group, the originals' being 0.077;
    PSNR 15.9 -> 18.4 dB)."""
    if min_group_channels == 1:
        return nn.GroupNorm(math.gcd(32, channels), channels, eps=1e-6)
    fits = [g for g in range(1, 33) if channels % g == 0 and channels // g >= min_group_channels]
    return nn.GroupNorm(max(fits, default=1), channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """h = conv(SiLU(GN(conv(SiLU(GN(x)))))); out = shortcut(x) + h (1x1 shortcut when widths differ)."""

    def __init__(self, in_channels: int, out_channels: int, group_channels: int) -> None:
        super().__init__()
        self.norm1 = normalize(in_channels, group_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = normalize(out_channels, group_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H x W positions: x + proj(softmax(QK^T / sqrt(C)) V), via SDPA."""

    def __init__(self, channels: int, group_channels: int) -> None:
        super().__init__()
        self.norm = normalize(channels, group_channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, 1, c, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, 1, HW, C)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Stride-2 3x3 conv with taming's asymmetric (0, 1, 0, 1) padding: H -> H / 2."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv: H -> 2H."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def level(in_channels: int, out_channels: int, num_blocks: int, attention: bool, group_channels: int) -> nn.Sequential:
    """``num_blocks`` ResNet blocks at one resolution, each followed by attention when ``attention``."""
    layers: list[nn.Module] = []
    for i in range(num_blocks):
        layers.append(ResnetBlock(in_channels if i == 0 else out_channels, out_channels, group_channels))
        if attention:
            layers.append(AttnBlock(out_channels, group_channels))
    return nn.Sequential(*layers)


def middle(channels: int, group_channels: int) -> nn.Sequential:
    """taming's mid block: ResNet, attention, ResNet."""
    return nn.Sequential(
        ResnetBlock(channels, channels, group_channels),
        AttnBlock(channels, group_channels),
        ResnetBlock(channels, channels, group_channels),
    )


class Encoder(nn.Module):
    """Z_2D = Enc(I): conv_in, per level ResNet blocks then Downsample (all but the last), mid block,
    GN + SiLU + conv_out to ``out_channels``. Attention in the blocks of the lowest resolution.
    ``group_channels``: :func:`normalize`'s ``min_group_channels``."""

    def __init__(
        self, ch: int, ch_mult: tuple[int, ...], num_res_blocks: int, out_channels: int, group_channels: int
    ) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        widths = [ch * m for m in (1, *ch_mult)]
        last = len(ch_mult) - 1
        self.down = nn.Sequential()
        for i in range(len(ch_mult)):
            self.down.append(level(widths[i], widths[i + 1], num_res_blocks, i == last, group_channels))
            if i != last:
                self.down.append(Downsample(widths[i + 1]))
        self.mid = middle(widths[-1], group_channels)
        self.norm_out = normalize(widths[-1], group_channels)
        self.conv_out = nn.Conv2d(widths[-1], out_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.mid(self.down(self.conv_in(x)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Î = Dec(Ẑ_2D): conv_in, mid block, per level (lowest resolution first) num_res_blocks + 1 ResNet
    blocks then Upsample (all but the last), GN + SiLU + conv_out to RGB in [-1, 1]. ``group_channels``:
    :func:`normalize`'s ``min_group_channels``."""

    def __init__(
        self, ch: int, ch_mult: tuple[int, ...], num_res_blocks: int, in_channels: int, group_channels: int
    ) -> None:
        super().__init__()
        widths = [ch * m for m in ch_mult]
        self.conv_in = nn.Conv2d(in_channels, widths[-1], 3, padding=1)
        self.mid = middle(widths[-1], group_channels)
        self.up = nn.Sequential()
        prev = widths[-1]
        for i in reversed(range(len(ch_mult))):
            self.up.append(level(prev, widths[i], num_res_blocks + 1, i == len(ch_mult) - 1, group_channels))
            if i != 0:
                self.up.append(Upsample(widths[i]))
            prev = widths[i]
        self.norm_out = normalize(widths[0], group_channels)
        self.conv_out = nn.Conv2d(widths[0], 3, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.up(self.mid(self.conv_in(z)))
        return self.conv_out(F.silu(self.norm_out(h)))


@register_tokenizer("vqgan")
class VQGAN(Tokenizer):
    """VQGAN 2D tokenizer: conv encoder, a vector-quantised (or KL) latent grid, conv decoder, PatchGAN."""

    # 2: the tiny preset keeps 4+ channels per GroupNorm group, not 1 (benchmark/method_versions.py: stages
    # trained before are not reused; the base preset and converted releases are unchanged)
    version = 2

    tiny = {
        "image_size": 32,
        "size": "tiny",
        "codebook_size": 32,
        "entropy_weight": 0.01,
        "perceptual": {"weight": 1.0, "net": "alex", "weights": "random"},
        "adversarial": {"kind": "patchgan", "start": 0, "width": 8, "num_layers": 1},
    }

    def __init__(
        self,
        *,
        image_size: int = 256,
        size: str = "base",
        bottleneck: str = "vq",
        codebook_size: PositiveInt = 1024,
        embed_dim: PositiveInt | None = None,
        commitment: NonNegativeFloat = 0.25,
        l2_norm: bool = False,
        entropy_weight: NonNegativeFloat = 0.0,
        entropy_temperature: PositiveFloat = 0.01,
        kl_weight: NonNegativeFloat = 1e-6,
        recon_loss: str = "l2",
        recon_weight: NonNegativeFloat = 1.0,
        quantizer_weight: NonNegativeFloat = 1.0,
        perceptual: PerceptualOptions | None = None,
        adversarial: AdversarialOptions | None = VQGAN_ADVERSARIAL,
        ch: PositiveInt | None = None,
        ch_mult: list[int] | None = None,
        num_res_blocks: PositiveInt | None = None,
        vq_norms_first: bool = False,
    ) -> None:
        """``size``: tiny or base (see the module docstring). ``bottleneck``: ``vq`` (hard VQ with the
        codebook + beta-commitment loss, ``commitment`` = beta, and the thesis's entropy term when
        ``entropy_weight`` > 0, on softmax(-||z - c||^2 / entropy_temperature)) or ``kl`` (diagonal
        Gaussian, ``kl_weight`` * KL(q || N(0, I)), LDM's 1e-6). ``embed_dim``: the latent channels D
        (default: the preset's, 256 / 16 for vq / kl at base). ``l2_norm``: codes and latents on the
        unit sphere (ViT-VQGAN) instead of taming's plain Euclidean codebook. ``recon_loss``: l2 as the
        thesis's TiTok (its VQGAN "employs the same reconstruction and generation losses as TiTok",
        Sec. 6.3) or taming's l1. ``perceptual``: ``{weight, net, weights}`` of benchmark.perceptual
        (taming: weight 1.0, vgg). ``adversarial``: overrides of :data:`VQGAN_ADVERSARIAL` (options of
        benchmark.gan.Adversary); None for no discriminator.

        ``ch``, ``ch_mult``, ``num_res_blocks`` override the preset's base width, per-level width
        multipliers and ResNet blocks per level (taming's ``ddconfig``; attention stays at the lowest
        resolution, as in every released f16 model). ``vq_norms_first``: taming's summation order of the
        VQ distances (benchmark.quantizers.VectorQuantizer), for the released models' exact ids."""
        super().__init__()
        if size not in SIZES:
            raise ConfigError(f"tokenizer.size: unknown size '{size}'; choose from {', '.join(SIZES)}")
        if bottleneck not in BOTTLENECKS:
            raise ConfigError(
                f"tokenizer.bottleneck: unknown bottleneck '{bottleneck}'; choose from {', '.join(BOTTLENECKS)}"
            )
        preset_ch, preset_mult, preset_blocks, vq_dim, kl_dim, group_channels = SIZES[size]
        ch = preset_ch if ch is None else ch
        ch_mult = preset_mult if ch_mult is None else tuple(ch_mult)
        num_res_blocks = preset_blocks if num_res_blocks is None else num_res_blocks
        for name, value in (("ch", ch), ("num_res_blocks", num_res_blocks)):
            if value < 1:
                raise ConfigError(f"tokenizer.{name}: must be >= 1, got {value}")
        if not ch_mult or min(ch_mult) < 1:
            raise ConfigError(f"tokenizer.ch_mult: must be a non-empty list of positive ints, got {list(ch_mult)}")
        factor = 2 ** (len(ch_mult) - 1)
        if image_size % factor:
            raise ConfigError(
                f"tokenizer.size: this {size} VQGAN downsamples by {factor}, which does not "
                f"divide the image size {image_size}"
            )
        if embed_dim is None:
            embed_dim = vq_dim if bottleneck == "vq" else kl_dim
        for name, value in (("codebook_size", codebook_size), ("embed_dim", embed_dim)):
            if value < 1:
                raise ConfigError(f"tokenizer.{name}: must be >= 1, got {value}")
        for name, value in (
            ("commitment", commitment),
            ("entropy_weight", entropy_weight),
            ("kl_weight", kl_weight),
            ("recon_weight", recon_weight),
            ("quantizer_weight", quantizer_weight),
        ):
            if value < 0:
                raise ConfigError(f"tokenizer.{name}: must be >= 0, got {value}")
        self.bottleneck, self.embed_dim = bottleneck, embed_dim
        self.grid = image_size // factor
        moments = 2 if bottleneck == "kl" else 1  # the KL posterior needs a mean and a log-variance
        self.encoder = Encoder(ch, ch_mult, num_res_blocks, moments * embed_dim, group_channels)
        self.quant_conv = nn.Conv2d(moments * embed_dim, moments * embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, embed_dim, 1)
        self.decoder = Decoder(ch, ch_mult, num_res_blocks, embed_dim, group_channels)
        self.quantizer = (
            VectorQuantizer(
                codebook_size, embed_dim, commitment, l2_norm, entropy_weight, entropy_temperature, vq_norms_first
            )
            if bottleneck == "vq"
            else None
        )
        self.quantizer_weight, self.kl_weight = quantizer_weight, kl_weight
        self.pixel = PixelObjective(recon_loss, recon_weight, perceptual)
        self.adversary = (
            None if adversarial is None else build_adversary({**VQGAN_ADVERSARIAL, **adversarial}, image_size)
        )
        if bottleneck == "vq":
            self.token_spec = TokenSpec("discrete", (self.grid, self.grid), vocab_size=codebook_size)
        else:
            self.token_spec = TokenSpec("continuous", (self.grid**2,), dim=embed_dim)

    # -- encoder side -------------------------------------------------------------------------------

    def _moments(self, images: Tensor) -> Tensor:
        """quant_conv(Enc(2I - 1)): (B, D, h, w) latents for vq, (B, 2D, h, w) posterior moments for kl."""
        return self.quant_conv(self.encoder(images * 2 - 1))

    def _grid(self, images: Tensor) -> Tensor:
        """The continuous latent grid Z_2D as (B, h, w, D): pre-quantisation latents or the posterior mean."""
        moments = self._moments(images)
        if self.bottleneck == "kl":
            moments = DiagonalGaussian(moments.float(), dim=1).mean
        return moments.permute(0, 2, 3, 1)

    def latent_grid(self, images: Tensor) -> Tensor:
        """Images (B, 3, H, W) in [0, 1] -> Z_2D (B, h*w, D) in raster order (after quant_conv, before
        quantisation; the posterior mean for kl): SelfBootTok's 2D OT targets."""
        return self._grid(images).flatten(1, 2)

    def encode(self, images: Tensor) -> Tensor:
        """vq: code ids (B, h, w); kl: posterior means (B, h*w, D)."""
        if self.quantizer is not None:
            return self.quantizer.indices(self._grid(images))
        return self.latent_grid(images)

    def encode_with_codes(self, images: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """vq: the ids (B, h, w) and {"codes": ids}; a kl VQGAN has no codebook: {}."""
        tokens = self.encode(images)
        return tokens, ({"codes": tokens} if self.quantizer is not None else {})

    def codebook_sizes(self) -> dict[str, int]:
        return {"codes": self.quantizer.codebook_size} if self.quantizer is not None else {}

    # -- decoder side -------------------------------------------------------------------------------

    def _decode_latents(self, z: Tensor) -> Tensor:
        """Ẑ_2D (B, h, w, D) -> Dec(post_quant_conv(Ẑ_2D)) mapped to [0, 1] (not clamped)."""
        return (self.decoder(self.post_quant_conv(z.permute(0, 3, 1, 2))) + 1) / 2

    def decode(self, tokens: Tensor) -> Tensor:
        """Tokens as ``encode`` gives them (vq ids may also come flattened, (B, h*w)) -> images in [0, 1]."""
        b = tokens.shape[0]
        if self.quantizer is not None:
            z = self.quantizer.lookup(tokens.reshape(b, self.grid, self.grid))
        else:
            z = tokens.reshape(b, self.grid, self.grid, self.embed_dim)
        return self._decode_latents(z).clamp(0, 1)

    def last_layer(self) -> Tensor:
        """The decoder's final conv weight, for the adaptive adversarial weight (Esser et al. 2021, eq. 7)."""
        return self.decoder.conv_out.weight

    # -- training -----------------------------------------------------------------------------------

    def forward(self, images: Tensor) -> TokenizerOutput:
        """recon + perceptual, and codebook + commitment (+ entropy) for vq or kl for kl; weighted."""
        moments = self._moments(images)
        if self.quantizer is not None:
            zq, ids, q_losses = self.quantizer(moments.permute(0, 2, 3, 1))
            recon = self._decode_latents(zq)
            losses = self.pixel(images, recon)
            losses.update(scale_vq_losses(q_losses, self.quantizer_weight))
            return TokenizerOutput(recon=recon, losses=losses, tokens=ids)
        posterior = DiagonalGaussian(moments.float(), dim=1)  # float32: the KL sums every latent
        recon = self._decode_latents(posterior.sample().permute(0, 2, 3, 1))
        losses = self.pixel(images, recon)
        losses["kl"] = self.kl_weight * posterior.kl()
        return TokenizerOutput(
            recon=recon, losses=losses, tokens=posterior.mean.detach().permute(0, 2, 3, 1).flatten(1, 2)
        )

"""MaskGIT-VQGAN (Chang et al. 2022, "MaskGIT"): the f16 VQGAN that MaskGIT tokenizes ImageNet with, and
whose decoder renders the code logits of TiTok's released two-stage models (tokenizers/titok.py, ``legacy``).

    Z_2D  = Enc(I)                                  (B, D, H/f, W/f), f = 2^(len(ch_mult) - 1)
    k     = argmin_j |z|^2 + |e_j|^2 - 2 z.e_j      per position (plain Euclidean codebook, 1024 x 256)
    Î     = Dec(e_k)

Google's JAX model as ported to PyTorch by open-muse (``modeling_maskgit_vqgan.py``, shipped by TiTok as
``maskgit-vqgan-imagenet-f16-256.bin``). It differs from taming's VQGAN (tokenizers/vqgan.py) in every
block, so it is its own module; parameter names follow the release:

- no attention anywhere ("the non-local layers are removed from VQGAN for faster speed");
- the 3x3 convs of the ResNet blocks and the encoder's ``conv_in`` have no bias;
- a width-changing block returns h + nin_shortcut(h): its bias-free 1x1 shortcut reads the block's
  *output* h (``residual = self.nin_shortcut(hidden_states)`` upstream), not its input;
- downsampling is 2x2 average pooling; upsampling nearest x2 then a 3x3 conv;
- ``num_res_blocks`` ResNet blocks per level, in the middle and per decoder level;
- the encoder's ``conv_out`` is 1x1 straight to the codebook dimension (no quant_conv / post_quant_conv);
- images in [0, 1] in and out (no rescaling).

``size: base`` is the release (ch 128, ch_mult (1, 1, 2, 2, 4), 2 blocks, 1024 codes of dim 256: 256 px ->
16 x 16 = 256 tokens, 54.5 M parameters); ``size: tiny`` is the smoke-scale model. Token ids come in raster
order, (B, h * w), as the release returns them.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.base import Tokenizer, TokenizerOutput, TokenSpec
from benchmark.errors import ConfigError
from benchmark.objectives import AdversarialOptions, PerceptualOptions, PixelObjective, build_adversary
from benchmark.options import NonNegativeFloat, PositiveInt, check_options, init_params, nested
from benchmark.quantizers import VectorQuantizer, scale_vq_losses
from benchmark.registry import register_tokenizer

from .vqgan import normalize

# size -> (ch, ch_mult, num_res_blocks, embed_dim)
SIZES: dict[str, tuple[int, tuple[int, ...], int, int]] = {
    "tiny": (32, (1, 2, 2), 1, 32),
    "base": (128, (1, 1, 2, 2, 4), 2, 256),
}
GEOMETRY = ("size", "ch", "ch_mult", "num_res_blocks", "embed_dim", "codebook_size")


class ResnetBlock(nn.Module):
    """h = conv2(SiLU(GN(conv1(SiLU(GN(x)))))), bias-free 3x3 convs; out = h + nin_shortcut(h) when the
    width changes (the release's quirk: the shortcut reads h), else h + x."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1 = normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = normalize(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.nin_shortcut = (
            nn.Conv2d(out_channels, out_channels, 1, bias=False) if in_channels != out_channels else None
        )

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h + (x if self.nin_shortcut is None else self.nin_shortcut(h))


def res_blocks(in_channels: int, out_channels: int, count: int) -> nn.ModuleList:
    """``count`` ResNet blocks, the first one changing the width."""
    return nn.ModuleList(ResnetBlock(in_channels if i == 0 else out_channels, out_channels) for i in range(count))


class DownLevel(nn.Module):
    """One encoder resolution: ResNet blocks, then 2x2 average pooling unless it is the lowest."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, downsample: bool) -> None:
        super().__init__()
        self.block = res_blocks(in_channels, out_channels, num_blocks)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        for block in self.block:
            x = block(x)
        return F.avg_pool2d(x, 2, 2) if self.downsample else x


class UpLevel(nn.Module):
    """One decoder resolution: ResNet blocks, then nearest x2 + ``upsample_conv`` unless it is the highest."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, upsample: bool) -> None:
        super().__init__()
        self.block = res_blocks(in_channels, out_channels, num_blocks)
        self.upsample_conv = nn.Conv2d(out_channels, out_channels, 3, padding=1) if upsample else None

    def forward(self, x: Tensor) -> Tensor:
        for block in self.block:
            x = block(x)
        if self.upsample_conv is not None:
            x = self.upsample_conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return x


class Encoder(nn.Module):
    """Z_2D = Enc(I): bias-free conv_in; per level ResNet blocks (+ average pooling); mid ResNet blocks;
    GN + SiLU + 1x1 conv_out to the codebook dimension."""

    def __init__(self, ch: int, ch_mult: tuple[int, ...], num_res_blocks: int, embed_dim: int) -> None:
        super().__init__()
        widths = [ch * m for m in (1, *ch_mult)]
        last = len(ch_mult) - 1
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1, bias=False)
        self.down = nn.ModuleList(
            DownLevel(widths[i], widths[i + 1], num_res_blocks, downsample=i != last) for i in range(len(ch_mult))
        )
        self.mid = res_blocks(widths[-1], widths[-1], num_res_blocks)
        self.norm_out = normalize(widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], embed_dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for module in (*self.down, *self.mid):
            h = module(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Î = Dec(Ẑ_2D): conv_in; mid ResNet blocks; levels from the lowest resolution up (``up[i]`` is
    level i, run from the last to the first), each ResNet blocks (+ upsampling); GN + SiLU + conv_out."""

    def __init__(self, ch: int, ch_mult: tuple[int, ...], num_res_blocks: int, embed_dim: int) -> None:
        super().__init__()
        widths = [ch * m for m in ch_mult]
        self.conv_in = nn.Conv2d(embed_dim, widths[-1], 3, padding=1)
        self.mid = res_blocks(widths[-1], widths[-1], num_res_blocks)
        self.up = nn.ModuleList(
            UpLevel(widths[min(i + 1, len(widths) - 1)], widths[i], num_res_blocks, upsample=i != 0)
            for i in range(len(ch_mult))
        )
        self.norm_out = normalize(widths[0])
        self.conv_out = nn.Conv2d(widths[0], 3, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.conv_in(z)
        for module in (*self.mid, *reversed(self.up)):
            h = module(h)
        return self.conv_out(F.silu(self.norm_out(h)))


def geometry(
    size: str = "base",
    ch: int | None = None,
    ch_mult: list[int] | None = None,
    num_res_blocks: int | None = None,
    embed_dim: int | None = None,
    where: str = "tokenizer",
) -> tuple[int, tuple[int, ...], int, int]:
    """(ch, ch_mult, num_res_blocks, embed_dim) of a size preset, each overridable; bad values name ``where``."""
    if size not in SIZES:
        raise ConfigError(f"{where}.size: unknown size '{size}'; choose from {', '.join(SIZES)}")
    preset = SIZES[size]
    out = (
        preset[0] if ch is None else ch,
        preset[1] if ch_mult is None else tuple(ch_mult),
        preset[2] if num_res_blocks is None else num_res_blocks,
        preset[3] if embed_dim is None else embed_dim,
    )
    for name, value in zip(("ch", "num_res_blocks", "embed_dim"), (out[0], out[2], out[3]), strict=True):
        if value < 1:
            raise ConfigError(f"{where}.{name}: must be >= 1, got {value}")
    if not out[1] or any(m < 1 for m in out[1]):
        raise ConfigError(f"{where}.ch_mult: must be a non-empty list of positive ints, got {list(out[1])}")
    return out


def check_pixel_vqgan(value: Any, where: str) -> None:
    """A mapping of MaskGIT-VQGAN geometry options (``size``, ``ch``, ``ch_mult``, ``num_res_blocks``,
    ``embed_dim``, ``codebook_size``), e.g. TiTok's ``pixel_vqgan``."""
    params = {k: v for k, v in init_params(MaskGITVQGAN, frozenset({"image_size"})).items() if k in GEOMETRY}
    check_options(value, params, where, "the MaskGIT-VQGAN geometry")


PixelVQGANOptions = nested(check_pixel_vqgan)


@register_tokenizer("maskgit_vqgan")
class MaskGITVQGAN(Tokenizer):
    """MaskGIT-VQGAN 2D tokenizer: attention-free conv encoder / decoder, plain Euclidean VQ, [0, 1] pixels."""

    tiny = {
        "image_size": 32,
        "size": "tiny",
        "codebook_size": 32,
        "perceptual": {"weight": 1.0, "net": "alex", "weights": "random"},
        "adversarial": {"kind": "patchgan", "start": 0, "width": 8, "num_layers": 1},
    }

    def __init__(
        self,
        *,
        image_size: int = 256,
        size: str = "base",
        ch: PositiveInt | None = None,
        ch_mult: list[int] | None = None,
        num_res_blocks: PositiveInt | None = None,
        embed_dim: PositiveInt | None = None,
        codebook_size: PositiveInt = 1024,
        commitment: NonNegativeFloat = 0.25,
        recon_loss: str = "l2",
        recon_weight: NonNegativeFloat = 1.0,
        quantizer_weight: NonNegativeFloat = 1.0,
        perceptual: PerceptualOptions | None = None,
        adversarial: AdversarialOptions | None = None,
    ) -> None:
        """``size``: base (the release) or tiny; ``ch``, ``ch_mult``, ``num_res_blocks``, ``embed_dim``
        override the preset's base width, per-level multipliers, ResNet blocks per level and code
        dimension. ``commitment``: the VQ-VAE beta. ``recon_loss`` (l2 / l1, ``recon_weight``),
        ``perceptual`` and ``adversarial`` (options of benchmark.gan.Adversary, None for none) are the
        training objective; converted releases are used as they are."""
        super().__init__()
        ch, mult, blocks, dim = geometry(size, ch, ch_mult, num_res_blocks, embed_dim)
        factor = 2 ** (len(mult) - 1)
        if image_size % factor:
            raise ConfigError(
                f"tokenizer.ch_mult: downsampling by {factor} does not divide the image size {image_size}"
            )
        if codebook_size < 1:
            raise ConfigError(f"tokenizer.codebook_size: must be >= 1, got {codebook_size}")
        for name, value in (
            ("commitment", commitment),
            ("recon_weight", recon_weight),
            ("quantizer_weight", quantizer_weight),
        ):
            if value < 0:
                raise ConfigError(f"tokenizer.{name}: must be >= 0, got {value}")
        self.grid = image_size // factor
        self.encoder = Encoder(ch, mult, blocks, dim)
        self.quantizer = VectorQuantizer(codebook_size, dim, commitment, l2_norm=False, norms_first=True)
        self.decoder = Decoder(ch, mult, blocks, dim)
        self.quantizer_weight = quantizer_weight
        self.pixel = PixelObjective(recon_loss, recon_weight, perceptual)
        self.adversary = build_adversary(adversarial, image_size)
        self.token_spec = TokenSpec("discrete", (self.grid**2,), vocab_size=codebook_size)

    def _latents(self, images: Tensor) -> Tensor:
        """Enc(I) as (B, h * w, D) in raster order."""
        return self.encoder(images).flatten(2).transpose(1, 2)

    def _decode_latents(self, z: Tensor) -> Tensor:
        """(B, h * w, D) -> Dec(z), not clamped."""
        b, _, d = z.shape
        return self.decoder(z.transpose(1, 2).reshape(b, d, self.grid, self.grid))

    def encode(self, images: Tensor) -> Tensor:
        """Images (B, 3, H, W) in [0, 1] -> code ids (B, h * w), raster order."""
        return self.quantizer.indices(self._latents(images))

    def decode(self, tokens: Tensor) -> Tensor:
        """Ids (B, h * w) or (B, h, w) -> images in [0, 1] (clamped, as the release's ``decode``)."""
        return self._decode_latents(self.quantizer.lookup(tokens.reshape(tokens.shape[0], -1))).clamp(0, 1)

    def encode_with_codes(self, images: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        ids = self.encode(images)
        return ids, {"codes": ids}

    def codebook_sizes(self) -> dict[str, int]:
        return {"codes": self.quantizer.codebook_size}

    def last_layer(self) -> Tensor:
        """The decoder's final conv weight, for the adaptive adversarial weight."""
        return self.decoder.conv_out.weight

    def forward(self, images: Tensor) -> TokenizerOutput:
        """recon (+ perceptual) and quantizer_weight * (codebook + commitment); weighted."""
        zq, ids, q_losses = self.quantizer(self._latents(images))
        recon = self._decode_latents(zq)
        losses = self.pixel(images, recon)
        losses.update(scale_vq_losses(q_losses, self.quantizer_weight))
        return TokenizerOutput(recon=recon, losses=losses, tokens=ids)

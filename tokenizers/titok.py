"""TiTok: a Transformer-based 1-Dimensional Tokenizer (Yu et al. 2024), as the thesis describes it.

    P      = PatchEmbed(I)                 (H/f x W/f patches of width D)
    Z_1D   = Enc(P ⊕ L)[latent part]       (K learnable latent tokens L, thesis Sec. 3.2.1)
    Î      = Dec(Quant(Z_1D) ⊕ M)          (M: one learned mask token replicated H/f x W/f times)

The latent outputs are projected to ``token_size`` and vector-quantised on the unit sphere; the
decoder reads the quantised tokens back up to its width and predicts every patch's pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.base import Tokenizer, TokenizerOutput, TokenSpec
from benchmark.errors import ConfigError
from benchmark.layers import Transformer, init_vit_weights, unpatchify
from benchmark.quantizers import VectorQuantizer
from benchmark.registry import register_tokenizer

# (width, depth, heads) of each ViT; S/B/L follow TiTok, "tiny" is the smoke-scale model.
SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (64, 2, 4),
    "S": (512, 8, 8),
    "B": (768, 12, 12),
    "L": (1024, 24, 16),
}


def vit_size(size: str) -> tuple[int, int, int]:
    if size not in SIZES:
        raise ConfigError(f"tokenizer.size: unknown size '{size}'; choose from {', '.join(SIZES)}")
    return SIZES[size]


class TiTokEncoder(nn.Module):
    """ViT over [cls; patches + pos] ⊕ [latents + latent pos]; returns the K latent outputs."""

    def __init__(self, image_size: int, patch_size: int, width: int, depth: int, heads: int,
                 num_latent_tokens: int, token_size: int) -> None:
        super().__init__()
        self.grid = image_size // patch_size
        scale = width**-0.5
        self.patch_embed = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size)
        self.class_embedding = nn.Parameter(scale * torch.randn(1, 1, width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(1, self.grid**2 + 1, width))
        self.latent_tokens = nn.Parameter(scale * torch.randn(1, num_latent_tokens, width))
        self.latent_positional_embedding = nn.Parameter(scale * torch.randn(1, num_latent_tokens, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, depth, heads)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Linear(width, token_size)

    def forward(self, images: Tensor) -> Tensor:
        b = images.shape[0]
        x = self.patch_embed(images).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_embedding.expand(b, -1, -1), x], dim=1) + self.positional_embedding
        latents = (self.latent_tokens + self.latent_positional_embedding).expand(b, -1, -1)
        x = self.transformer(self.ln_pre(torch.cat([x, latents], dim=1)))
        return self.proj(self.ln_post(x[:, -latents.shape[1]:]))


class TiTokDecoder(nn.Module):
    """ViT over [cls; mask tokens + pos] ⊕ [quantised latents + latent pos]; predicts patch pixels."""

    def __init__(self, image_size: int, patch_size: int, width: int, depth: int, heads: int,
                 num_latent_tokens: int, token_size: int) -> None:
        super().__init__()
        self.grid, self.patch_size = image_size // patch_size, patch_size
        scale = width**-0.5
        self.embed = nn.Linear(token_size, width)
        self.class_embedding = nn.Parameter(scale * torch.randn(1, 1, width))
        self.mask_token = nn.Parameter(scale * torch.randn(1, 1, width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(1, self.grid**2 + 1, width))
        self.latent_positional_embedding = nn.Parameter(scale * torch.randn(1, num_latent_tokens, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, depth, heads)
        self.ln_post = nn.LayerNorm(width)
        self.head = nn.Linear(width, patch_size * patch_size * 3)

    def forward(self, tokens: Tensor) -> Tensor:
        b = tokens.shape[0]
        masks = self.mask_token.expand(b, self.grid**2, -1)
        x = torch.cat([self.class_embedding.expand(b, -1, -1), masks], dim=1) + self.positional_embedding
        x = torch.cat([x, self.embed(tokens) + self.latent_positional_embedding], dim=1)
        x = self.ln_post(self.transformer(self.ln_pre(x)))
        patches = self.head(x[:, 1 : 1 + self.grid**2])
        return unpatchify(patches, self.patch_size, self.grid)


@register_tokenizer("titok")
class TiTok(Tokenizer):
    """TiTok 1D tokenizer: ViT encoder with K latent tokens, VQ codebook, ViT decoder from mask tokens."""

    def __init__(self, *, image_size: int = 256, size: str = "B", patch_size: int = 16,
                 num_latent_tokens: int = 32, codebook_size: int = 4096, token_size: int = 12,
                 l2_norm: bool = True, commitment: float = 0.25, recon_weight: float = 1.0,
                 quantizer_weight: float = 1.0, encoder: dict | None = None) -> None:
        """``encoder``: a pretrained initialisation of the ViT encoder, ``{init: mae, size: B, ...}``
        (benchmark/encoders.py); the train stage copies it in before the first step."""
        super().__init__()
        if image_size % patch_size:
            raise ConfigError(f"tokenizer.patch_size {patch_size} does not divide the image size {image_size}")
        width, depth, heads = vit_size(size)
        shape = dict(image_size=image_size, patch_size=patch_size, width=width, depth=depth, heads=heads,
                     num_latent_tokens=num_latent_tokens, token_size=token_size)
        self.encoder = TiTokEncoder(**shape)
        self.quantizer = VectorQuantizer(codebook_size, token_size, commitment, l2_norm)
        self.decoder = TiTokDecoder(**shape)
        self.recon_weight, self.quantizer_weight = recon_weight, quantizer_weight
        self.encoder_init = encoder
        self.token_spec = TokenSpec("discrete", (num_latent_tokens,), vocab_size=codebook_size)
        self.encoder.apply(init_vit_weights)
        self.decoder.apply(init_vit_weights)

    @staticmethod
    def _to_model_range(images: Tensor) -> Tensor:
        return images * 2 - 1

    def encode(self, images: Tensor) -> Tensor:
        return self.quantizer.indices(self.encoder(self._to_model_range(images)))

    def decode(self, tokens: Tensor) -> Tensor:
        return self._decode_latents(self.quantizer.lookup(tokens)).clamp(0, 1)

    def _decode_latents(self, z: Tensor) -> Tensor:
        return (self.decoder(z) + 1) / 2

    def forward(self, images: Tensor) -> TokenizerOutput:
        zq, ids, q_losses = self.quantizer(self.encoder(self._to_model_range(images)))
        recon = self._decode_latents(zq)
        losses = {"recon": self.recon_weight * F.mse_loss(recon, images)}
        losses.update({k: self.quantizer_weight * v for k, v in q_losses.items()})
        return TokenizerOutput(recon=recon, losses=losses, tokens=ids)

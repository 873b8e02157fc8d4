"""ViT encoder and decoder of the 1D tokenizers (TiTok, Yu et al. 2024; thesis Sec. 3.2.1).

    P      = PatchEmbed(I)                 (H/f x W/f patches of width D)
    Z_1D   = Enc(P ⊕ L)[latent part]       (K learnable latent tokens L)
    Î      = Dec(Z ⊕ M)                    (M: one learned mask token replicated H/f x W/f times)

Shared by TiTok, SoftVQ-VAE and SelfBootTok; SDPA attention through benchmark.layers.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from benchmark.errors import ConfigError
from benchmark.layers import Transformer, unpatchify

# (width, depth, heads) of each ViT; S/B/L follow TiTok, "tiny" is the smoke-scale model.
SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (64, 2, 4),
    "S": (512, 8, 8),
    "B": (768, 12, 12),
    "L": (1024, 24, 16),
}


def vit_size(size: str, key: str = "tokenizer.size") -> tuple[int, int, int]:
    """(width, depth, heads) of a size preset; an unknown size is a ConfigError naming ``key``."""
    if size not in SIZES:
        raise ConfigError(f"{key}: unknown size '{size}'; choose from {', '.join(SIZES)}")
    return SIZES[size]


class LatentViTEncoder(nn.Module):
    """The 1D encoder: ViT over [cls; patches + pos] ⊕ [K latents + latent pos]; returns the K latent
    outputs projected to ``token_size``. Parameter names follow OpenAI CLIP / TiTok: the layout the
    pretrained initialisations of benchmark/encoders.py copy into."""

    def __init__(
        self,
        image_size: int,
        patch_size: int,
        width: int,
        depth: int,
        heads: int,
        num_latent_tokens: int,
        token_size: int,
    ) -> None:
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
        return self.proj(self.ln_post(x[:, -latents.shape[1] :]))


class MaskTokenViTDecoder(nn.Module):
    """The 1D decoder: ViT over [cls; mask tokens + pos] ⊕ [latents + latent pos]; predicts patch pixels."""

    def __init__(
        self,
        image_size: int,
        patch_size: int,
        width: int,
        depth: int,
        heads: int,
        num_latent_tokens: int,
        token_size: int,
    ) -> None:
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

"""ViT encoder and decoder of the 1D tokenizers (TiTok, Yu et al. 2024; thesis Sec. 3.2.1).

    P      = PatchEmbed(I)                 (H/f x W/f patches of width D)
    Z_1D   = Enc(P ⊕ L)[latent part]       (K learnable latent tokens L)
    Î      = Dec(Z ⊕ M)                    (M: one learned mask token replicated H/f x W/f times)

Shared by TiTok, SoftVQ-VAE and SelfBootTok; SDPA attention through benchmark.layers. The options the
released checkpoints need (benchmark/convert.py) default to TiTok's layout: ``ln_pre`` (SoftVQ's timm ViTs
have none), ``norm_eps`` (theirs is 1e-6), ``layer_scale`` (their per-channel residual scales), the
encoder's ``legacy_token_reshape`` and the decoder's ``conv_out`` (TiTok's releases) and ``pixel_head``.
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
    pretrained initialisations of benchmark/encoders.py copy into.

    ``legacy_token_reshape``: TiTok's released two-stage encoders (``is_legacy``) reinterpret the
    contiguous (B, K, W) output of ``ln_post`` as (B, W, K) before the per-token projection, a raw
    ``reshape``, not a transpose (``latent_tokens.reshape(batch_size, self.width, self.num_latent_tokens, 1)``
    in bytedance/1d-tokenizer's ``TiTokEncoder``); their weights were trained through it.
    """

    def __init__(
        self,
        image_size: int,
        patch_size: int,
        width: int,
        depth: int,
        heads: int,
        num_latent_tokens: int,
        token_size: int,
        ln_pre: bool = True,
        norm_eps: float = 1e-5,
        layer_scale: float | None = None,
        legacy_token_reshape: bool = False,
    ) -> None:
        super().__init__()
        self.grid = image_size // patch_size
        self.legacy_token_reshape = legacy_token_reshape
        scale = width**-0.5
        self.patch_embed = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size)
        self.class_embedding = nn.Parameter(scale * torch.randn(1, 1, width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(1, self.grid**2 + 1, width))
        self.latent_tokens = nn.Parameter(scale * torch.randn(1, num_latent_tokens, width))
        self.latent_positional_embedding = nn.Parameter(scale * torch.randn(1, num_latent_tokens, width))
        self.ln_pre = nn.LayerNorm(width, eps=norm_eps) if ln_pre else nn.Identity()
        self.transformer = Transformer(width, depth, heads, norm_eps=norm_eps, layer_scale=layer_scale)
        self.ln_post = nn.LayerNorm(width, eps=norm_eps)
        self.proj = nn.Linear(width, token_size)

    def forward(self, images: Tensor) -> Tensor:
        b = images.shape[0]
        x = self.patch_embed(images).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_embedding.expand(b, -1, -1), x], dim=1) + self.positional_embedding
        latents = (self.latent_tokens + self.latent_positional_embedding).expand(b, -1, -1)
        x = self.transformer(self.ln_pre(torch.cat([x, latents], dim=1)))
        x = self.ln_post(x[:, -latents.shape[1] :])
        if self.legacy_token_reshape:
            x = x.reshape(b, x.shape[2], x.shape[1]).transpose(1, 2)
        return self.proj(x)


class MaskTokenViTDecoder(nn.Module):
    """The 1D decoder: ViT over [cls; mask tokens + pos] ⊕ [latents + latent pos]; predicts patch pixels.

    ``conv_out``: a 3x3 RGB -> RGB convolution on the unpatchified image, the last layer of TiTok's
    single-stage releases (``self.conv_out = nn.Conv2d(3, 3, 3, padding=1, bias=True)``).
    ``pixel_head=False`` leaves out the pixel head: the owner reads :meth:`features` (TiTok's legacy
    two-stage decoder predicts code logits from them).
    """

    def __init__(
        self,
        image_size: int,
        patch_size: int,
        width: int,
        depth: int,
        heads: int,
        num_latent_tokens: int,
        token_size: int,
        ln_pre: bool = True,
        norm_eps: float = 1e-5,
        layer_scale: float | None = None,
        conv_out: bool = False,
        pixel_head: bool = True,
    ) -> None:
        super().__init__()
        self.grid, self.patch_size = image_size // patch_size, patch_size
        scale = width**-0.5
        self.embed = nn.Linear(token_size, width)
        self.class_embedding = nn.Parameter(scale * torch.randn(1, 1, width))
        self.mask_token = nn.Parameter(scale * torch.randn(1, 1, width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(1, self.grid**2 + 1, width))
        self.latent_positional_embedding = nn.Parameter(scale * torch.randn(1, num_latent_tokens, width))
        self.ln_pre = nn.LayerNorm(width, eps=norm_eps) if ln_pre else nn.Identity()
        self.transformer = Transformer(width, depth, heads, norm_eps=norm_eps, layer_scale=layer_scale)
        self.ln_post = nn.LayerNorm(width, eps=norm_eps)
        if pixel_head:
            self.head = nn.Linear(width, patch_size * patch_size * 3)
        self.conv_out = nn.Conv2d(3, 3, 3, padding=1) if conv_out else nn.Identity()

    def features(self, tokens: Tensor) -> Tensor:
        """Tokens (B, K, token_size) -> the ``ln_post`` outputs at the H/f x W/f mask positions, (B, g^2, width)."""
        b = tokens.shape[0]
        masks = self.mask_token.expand(b, self.grid**2, -1)
        x = torch.cat([self.class_embedding.expand(b, -1, -1), masks], dim=1) + self.positional_embedding
        x = torch.cat([x, self.embed(tokens) + self.latent_positional_embedding], dim=1)
        x = self.ln_post(self.transformer(self.ln_pre(x)))
        return x[:, 1 : 1 + self.grid**2]

    def forward(self, tokens: Tensor) -> Tensor:
        patches = self.head(self.features(tokens))
        return self.conv_out(unpatchify(patches, self.patch_size, self.grid))

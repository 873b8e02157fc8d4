"""TiTok: a Transformer-based 1-Dimensional Tokenizer (Yu et al. 2024), as the thesis describes it.

    P      = PatchEmbed(I)                 (H/f x W/f patches of width D)
    Z_1D   = Enc(P ⊕ L)[latent part]       (K learnable latent tokens L, thesis Sec. 3.2.1)
    Î      = Dec(Quant(Z_1D) ⊕ M)          (M: one learned mask token replicated H/f x W/f times)

The latent outputs are projected to ``token_size`` and vector-quantised on the unit sphere; the
decoder reads the quantised tokens back up to its width and predicts every patch's pixels.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from benchmark.base import Tokenizer, TokenizerOutput, TokenSpec
from benchmark.errors import ConfigError
from benchmark.layers import init_vit_weights
from benchmark.quantizers import VectorQuantizer
from benchmark.registry import register_tokenizer
from benchmark.vit import LatentViTEncoder, MaskTokenViTDecoder, vit_size


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
        self.encoder = LatentViTEncoder(**shape)
        self.quantizer = VectorQuantizer(codebook_size, token_size, commitment, l2_norm)
        self.decoder = MaskTokenViTDecoder(**shape)
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

"""TiTok: a Transformer-based 1-Dimensional Tokenizer (Yu et al. 2024), as the thesis describes it.

    P      = PatchEmbed(I)                 (H/f x W/f patches of width D)
    Z_1D   = Enc(P ⊕ L)[latent part]       (K learnable latent tokens L, thesis Sec. 3.2.1)
    Î      = Dec(Quant(Z_1D) ⊕ M)          (M: one learned mask token replicated H/f x W/f times)

The latent outputs are projected to ``token_size`` and vector-quantised on the unit sphere; the
decoder reads the quantised tokens back up to its width and predicts every patch's pixels.

    L = L_rec + L_quant + L_percep + L_entropy (+ L_adv, added by the trainer)      (thesis Sec. 3.2.1)
    L_entropy = E_r[H(p(q(z)))] - H(E_r[p(q(z))])                                    (thesis Sec. 3.1)

Thesis setup (Sec. 4.3): width 768 (size B), token size 16, codebook 4096 with the entropy term.
Perceptual, entropy and adversarial terms are opt-in (``perceptual``, ``entropy_weight``,
``adversarial``): a study sets them.
"""

from __future__ import annotations

from torch import Tensor

from benchmark.base import Tokenizer, TokenizerOutput, TokenSpec
from benchmark.encoders import EncoderOptions
from benchmark.errors import ConfigError
from benchmark.layers import init_vit_weights
from benchmark.objectives import AdversarialOptions, PerceptualOptions, PixelObjective, build_adversary
from benchmark.quantizers import VectorQuantizer, scale_vq_losses
from benchmark.registry import register_tokenizer
from benchmark.vit import LatentViTEncoder, MaskTokenViTDecoder, vit_size


@register_tokenizer("titok")
class TiTok(Tokenizer):
    """TiTok 1D tokenizer: ViT encoder with K latent tokens, VQ codebook, ViT decoder from mask tokens."""

    def __init__(
        self,
        *,
        image_size: int = 256,
        size: str = "B",
        patch_size: int = 16,
        num_latent_tokens: int = 32,
        codebook_size: int = 4096,
        token_size: int = 12,
        l2_norm: bool = True,
        commitment: float = 0.25,
        recon_loss: str = "l2",
        recon_weight: float = 1.0,
        quantizer_weight: float = 1.0,
        perceptual: PerceptualOptions | None = None,
        entropy_weight: float = 0.0,
        entropy_temperature: float = 0.01,
        adversarial: AdversarialOptions | None = None,
        encoder: EncoderOptions | None = None,
    ) -> None:
        """``recon_loss``: l2 (TiTok) or l1, weighted by ``recon_weight``. ``quantizer_weight`` scales
        the codebook and commitment (beta = ``commitment``) terms. ``perceptual``: ``{weight, net,
        weights}`` of benchmark.perceptual. ``entropy_weight``: the thesis's entropy regulariser on
        softmax(-||z - c||^2 / entropy_temperature). ``adversarial``: options of benchmark.gan.Adversary
        (``{weight, kind, start, ...}``), None for no discriminator. ``encoder``: a pretrained
        initialisation of the ViT encoder, ``{init: mae, size: B, ...}`` (benchmark/encoders.py); the
        train stage copies it in before the first step."""
        super().__init__()
        if image_size % patch_size:
            raise ConfigError(f"tokenizer.patch_size {patch_size} does not divide the image size {image_size}")
        for name, value in (
            ("recon_weight", recon_weight),
            ("quantizer_weight", quantizer_weight),
            ("commitment", commitment),
            ("entropy_weight", entropy_weight),
        ):
            if value < 0:
                raise ConfigError(f"tokenizer.{name}: must be >= 0, got {value}")
        width, depth, heads = vit_size(size)
        shape = dict(
            image_size=image_size,
            patch_size=patch_size,
            width=width,
            depth=depth,
            heads=heads,
            num_latent_tokens=num_latent_tokens,
            token_size=token_size,
        )
        self.encoder = LatentViTEncoder(**shape)
        self.quantizer = VectorQuantizer(
            codebook_size, token_size, commitment, l2_norm, entropy_weight, entropy_temperature
        )
        self.decoder = MaskTokenViTDecoder(**shape)
        self.quantizer_weight = quantizer_weight
        self.pixel = PixelObjective(recon_loss, recon_weight, perceptual)
        self.adversary = build_adversary(adversarial, image_size)
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

    def encode_with_codes(self, images: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The ids (B, K) are the tokens and the codes: {"codes": ids}."""
        ids = self.encode(images)
        return ids, {"codes": ids}

    def codebook_sizes(self) -> dict[str, int]:
        return {"codes": self.quantizer.codebook_size}

    def last_layer(self) -> Tensor:
        """The decoder's pixel head, for the adaptive adversarial weight (Esser et al. 2021, eq. 7)."""
        return self.decoder.head.weight

    def forward(self, images: Tensor) -> TokenizerOutput:
        """recon (+ perceptual), quantizer_weight * (codebook + commitment) (+ entropy); all weighted."""
        zq, ids, q_losses = self.quantizer(self.encoder(self._to_model_range(images)))
        recon = self._decode_latents(zq)
        losses = self.pixel(images, recon)
        losses.update(scale_vq_losses(q_losses, self.quantizer_weight))
        return TokenizerOutput(recon=recon, losses=losses, tokens=ids)

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

The options below the thesis's reproduce bytedance/1d-tokenizer's released models exactly
(benchmark/convert.py loads them): images used in [0, 1] as they are (``pixel_range: [0, 1]``), a
larger decoder (``decoder_size``), a final 3x3 RGB conv (``conv_out``), a VAE bottleneck
(``bottleneck: kl``: TiTok-*-VAE, ``mean, logvar = chunk(z, 2)``, tokens = the posterior mean), and the
two-stage ``legacy`` models (TiTok-L-32 / B-64 / S-128):

    z      = proj(reshape_{(B,K,W) -> (B,W,K)}(ln_post(...))ᵀ)      (the encoder's raw legacy reshape)
    p      = softmax(MLP_tanh(Dec_features(Quant(z))))               (logits over the 1024 MaskGIT-VQGAN codes)
    Î      = MaskGIT-VQGAN-Dec(p @ C_pixel)                          (a soft mixture of the codes, no argmax)
"""

from __future__ import annotations

from torch import Tensor, nn

from benchmark.base import Tokenizer, TokenizerOutput, TokenSpec
from benchmark.encoders import EncoderOptions
from benchmark.errors import ConfigError
from benchmark.layers import init_vit_weights
from benchmark.objectives import AdversarialOptions, PerceptualOptions, PixelObjective, build_adversary
from benchmark.options import NonNegativeFloat, PositiveFloat, PositiveInt
from benchmark.quantizers import DiagonalGaussian, VectorQuantizer, scale_vq_losses
from benchmark.registry import register_tokenizer
from benchmark.vit import LatentViTEncoder, MaskTokenViTDecoder, vit_size

from .maskgit_vqgan import Decoder as PixelDecoder
from .maskgit_vqgan import PixelVQGANOptions, geometry

BOTTLENECKS = ("vq", "kl")


@register_tokenizer("titok")
class TiTok(Tokenizer):
    """TiTok 1D tokenizer: ViT encoder with K latent tokens, VQ codebook, ViT decoder from mask tokens."""

    tiny = {
        "image_size": 32,
        "size": "tiny",
        "patch_size": 8,
        "num_latent_tokens": 8,
        "token_size": 8,
        "codebook_size": 32,
        "l2_norm": False,
        "entropy_weight": 0.01,
        "perceptual": {"weight": 1.0, "net": "alex", "weights": "random"},
        "adversarial": {"kind": "patchgan", "start": 0, "width": 8, "num_layers": 1},
    }

    def __init__(
        self,
        *,
        image_size: int = 256,
        size: str = "B",
        decoder_size: str | None = None,
        patch_size: PositiveInt = 16,
        num_latent_tokens: PositiveInt = 32,
        codebook_size: PositiveInt = 4096,
        token_size: PositiveInt = 12,
        l2_norm: bool = True,
        commitment: NonNegativeFloat = 0.25,
        recon_loss: str = "l2",
        recon_weight: NonNegativeFloat = 1.0,
        quantizer_weight: NonNegativeFloat = 1.0,
        perceptual: PerceptualOptions | None = None,
        entropy_weight: NonNegativeFloat = 0.0,
        entropy_temperature: PositiveFloat = 0.01,
        adversarial: AdversarialOptions | None = None,
        encoder: EncoderOptions | None = None,
        pixel_range: tuple[float, float] = (-1.0, 1.0),
        conv_out: bool = False,
        bottleneck: str = "vq",
        kl_weight: NonNegativeFloat = 1e-6,
        sample_posterior: bool = False,
        legacy: bool = False,
        pixel_vqgan: PixelVQGANOptions | None = None,
        vq_norms_first: bool = False,
    ) -> None:
        """``recon_loss``: l2 (TiTok) or l1, weighted by ``recon_weight``. ``quantizer_weight`` scales
        the codebook and commitment (beta = ``commitment``) terms. ``perceptual``: ``{weight, net,
        weights}`` of benchmark.perceptual. ``entropy_weight``: the thesis's entropy regulariser on
        softmax(-||z - c||^2 / entropy_temperature). ``adversarial``: options of benchmark.gan.Adversary
        (``{weight, kind, start, ...}``), None for no discriminator. ``encoder``: a pretrained
        initialisation of the ViT encoder, ``{init: mae, size: B, ...}`` (benchmark/encoders.py); the
        train stage copies it in before the first step.

        Release options (defaults: tok1d's TiTok). ``decoder_size``: the decoder's ViT size (None: as
        the encoder). ``pixel_range``: the [lo, hi] range the model sees images in (the releases: [0, 1],
        images as given). ``conv_out``: a 3x3 RGB conv after the pixel head. ``bottleneck``: ``vq`` or
        ``kl`` (a diagonal Gaussian over ``token_size`` channels, ``kl_weight`` * KL(q || N(0, I)); tokens
        are the posterior mean, or a sample with ``sample_posterior``, as the official rFID evaluation
        reconstructs). ``legacy``: the two-stage releases' encoder reshape, code-logit head and
        MaskGIT-VQGAN pixel decoder, whose geometry ``pixel_vqgan`` gives (options of
        tokenizers/maskgit_vqgan.py: ``size``, ``ch``, ``ch_mult``, ``num_res_blocks``, ``embed_dim``,
        ``codebook_size``; default: the f16 release, 1024 codes of dim 256). ``vq_norms_first``: the
        releases' summation order of VQ distances (benchmark.quantizers.VectorQuantizer)."""
        super().__init__()
        if image_size % patch_size:
            raise ConfigError(f"tokenizer.patch_size {patch_size} does not divide the image size {image_size}")
        for name, value in (
            ("recon_weight", recon_weight),
            ("quantizer_weight", quantizer_weight),
            ("commitment", commitment),
            ("entropy_weight", entropy_weight),
            ("kl_weight", kl_weight),
        ):
            if value < 0:
                raise ConfigError(f"tokenizer.{name}: must be >= 0, got {value}")
        if len(pixel_range) != 2 or not pixel_range[0] < pixel_range[1]:
            raise ConfigError(f"tokenizer.pixel_range: must be [lo, hi] with lo < hi, got {list(pixel_range)}")
        if bottleneck not in BOTTLENECKS:
            raise ConfigError(
                f"tokenizer.bottleneck: unknown bottleneck '{bottleneck}'; choose from {', '.join(BOTTLENECKS)}"
            )
        if legacy and (bottleneck != "vq" or conv_out):
            raise ConfigError("tokenizer.legacy: the two-stage legacy TiTok has a vq bottleneck and no conv_out")
        if pixel_vqgan is not None and not legacy:
            raise ConfigError("tokenizer.pixel_vqgan: only the legacy TiTok (legacy: true) has a pixel decoder")
        enc_width, enc_depth, enc_heads = vit_size(size)
        dec_width, dec_depth, dec_heads = vit_size(decoder_size or size, "tokenizer.decoder_size")
        shape = dict(image_size=image_size, patch_size=patch_size, num_latent_tokens=num_latent_tokens)
        moments = 2 if bottleneck == "kl" else 1  # the KL posterior needs a mean and a log-variance
        self.encoder = LatentViTEncoder(
            width=enc_width,
            depth=enc_depth,
            heads=enc_heads,
            token_size=moments * token_size,
            legacy_token_reshape=legacy,
            **shape,
        )
        self.quantizer = (
            VectorQuantizer(
                codebook_size, token_size, commitment, l2_norm, entropy_weight, entropy_temperature, vq_norms_first
            )
            if bottleneck == "vq"
            else None
        )
        self.decoder = MaskTokenViTDecoder(
            width=dec_width,
            depth=dec_depth,
            heads=dec_heads,
            token_size=token_size,
            conv_out=conv_out,
            pixel_head=not legacy,
            **shape,
        )
        self.legacy = legacy
        if legacy:
            self._build_pixel_decoder(dict(pixel_vqgan or {}), dec_width, patch_size)
        self.pixel_range = (float(pixel_range[0]), float(pixel_range[1]))
        self.quantizer_weight, self.kl_weight, self.sample_posterior = quantizer_weight, kl_weight, sample_posterior
        self.pixel = PixelObjective(recon_loss, recon_weight, perceptual)
        self.adversary = build_adversary(adversarial, image_size)
        self.encoder_init = encoder
        if bottleneck == "vq":
            self.token_spec = TokenSpec("discrete", (num_latent_tokens,), vocab_size=codebook_size)
        else:
            self.token_spec = TokenSpec("continuous", (num_latent_tokens,), dim=token_size)
        self.encoder.apply(init_vit_weights)
        self.decoder.apply(init_vit_weights)

    def _build_pixel_decoder(self, options: dict, width: int, patch_size: int) -> None:
        """The legacy decoder's second stage: ``pixel_head`` (1x1 conv W -> 2W, tanh, 1x1 conv 2W -> N code
        logits per patch, as linear layers), the MaskGIT-VQGAN codebook ``pixel_codebook`` (N, D) and its
        decoder ``pixel_decoder`` (tokenizers/maskgit_vqgan.py), which must upsample a patch to its pixels."""
        codes = options.pop("codebook_size", 1024)
        ch, ch_mult, num_res_blocks, dim = geometry(**options, where="tokenizer.pixel_vqgan")
        if 2 ** (len(ch_mult) - 1) != patch_size:
            raise ConfigError(
                f"tokenizer.pixel_vqgan.ch_mult: the pixel decoder upsamples by {2 ** (len(ch_mult) - 1)}, "
                f"not by the patch size {patch_size}"
            )
        self.pixel_head = nn.Sequential(nn.Linear(width, 2 * width), nn.Tanh(), nn.Linear(2 * width, codes))
        self.pixel_codebook = nn.Embedding(codes, dim)
        self.pixel_decoder = PixelDecoder(ch, ch_mult, num_res_blocks, dim)

    def _to_model_range(self, images: Tensor) -> Tensor:
        lo, hi = self.pixel_range
        return lo + (hi - lo) * images

    def _from_model_range(self, images: Tensor) -> Tensor:
        lo, hi = self.pixel_range
        return (images - lo) / (hi - lo)

    def _posterior(self, images: Tensor) -> DiagonalGaussian:
        """The kl bottleneck's q(z | I): the encoder's 2 x token_size channels are (mean, log-variance)."""
        return DiagonalGaussian(self.encoder(self._to_model_range(images)).float(), dim=-1)

    def encode(self, images: Tensor) -> Tensor:
        """vq: code ids (B, K); kl: the posterior mean (a sample with ``sample_posterior``), (B, K, token_size)."""
        if self.quantizer is not None:
            return self.quantizer.indices(self.encoder(self._to_model_range(images)))
        posterior = self._posterior(images)
        return posterior.sample() if self.sample_posterior else posterior.mean

    def decode(self, tokens: Tensor) -> Tensor:
        z = self.quantizer.lookup(tokens) if self.quantizer is not None else tokens
        return self._decode_latents(z).clamp(0, 1)

    def _decode_latents(self, z: Tensor) -> Tensor:
        """Quantised (or kl) tokens (B, K, token_size) -> images in [0, 1] range, not clamped. Legacy: the
        softmax over the code logits mixes the pixel codebook, ``einsum('nchw,cd->ndhw', decoded.softmax(1),
        pixel_quantize.embedding.weight)`` upstream, and the MaskGIT-VQGAN decoder renders the mixture."""
        if not self.legacy:
            return self._from_model_range(self.decoder(z))
        logits = self.pixel_head(self.decoder.features(z))  # (B, g^2, N)
        mixture = logits.softmax(-1) @ self.pixel_codebook.weight  # (B, g^2, D)
        b, n, d = mixture.shape
        grid = self.decoder.grid
        return self._from_model_range(self.pixel_decoder(mixture.transpose(1, 2).reshape(b, d, grid, grid)))

    def encode_with_codes(self, images: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """vq: the ids (B, K) are the tokens and the codes, {"codes": ids}; kl: no codebook, {}."""
        tokens = self.encode(images)
        return tokens, ({"codes": tokens} if self.quantizer is not None else {})

    def codebook_sizes(self) -> dict[str, int]:
        return {"codes": self.quantizer.codebook_size} if self.quantizer is not None else {}

    def last_layer(self) -> Tensor:
        """The last pixel-producing layer, for the adaptive adversarial weight (Esser et al. 2021, eq. 7):
        the decoder's pixel head (its ``conv_out``; the legacy pixel decoder's ``conv_out``)."""
        if self.legacy:
            return self.pixel_decoder.conv_out.weight
        return (
            self.decoder.head.weight if isinstance(self.decoder.conv_out, nn.Identity) else self.decoder.conv_out.weight
        )

    def forward(self, images: Tensor) -> TokenizerOutput:
        """recon (+ perceptual) and, for vq, quantizer_weight * (codebook + commitment) (+ entropy), for
        kl, kl_weight * KL(q || N(0, I)) of a reconstruction from a posterior sample; all weighted."""
        if self.quantizer is None:
            posterior = self._posterior(images)
            recon = self._decode_latents(posterior.sample())
            losses = self.pixel(images, recon)
            losses["kl"] = self.kl_weight * posterior.kl()
            return TokenizerOutput(recon=recon, losses=losses, tokens=posterior.mean.detach())
        zq, ids, q_losses = self.quantizer(self.encoder(self._to_model_range(images)))
        recon = self._decode_latents(zq)
        losses = self.pixel(images, recon)
        losses.update(scale_vq_losses(q_losses, self.quantizer_weight))
        return TokenizerOutput(recon=recon, losses=losses, tokens=ids)

"""SoftVQ-VAE: Efficient 1-Dimensional Continuous Tokenizer (Chen et al. 2025), the SelfBootTok baseline.

    z      = Enc(P ⊕ L)[latent part]                    (K learnable latent tokens, projected to token_size)
    q(k|z) = softmax_k(-||z - c_k||_2 / tau)             (SelfBootTok Eq. 2)
    Z      = sum_k q(k|z) c_k                            (Eq. 3: continuous, fully differentiable)
    Î      = Dec(Z ⊕ M)                                  (M: one learned mask token per patch)

    L = L_recon + λ1 L_percep + λ2 L_adv + λ3 L_align + λ4 L_KL  (+ SoftVQ's entropy term)   (Eq. 4)

No straight-through estimator: the reconstruction loss trains the encoder and the codebook through
Eq. 3. The tokens a generator models are Z itself, (B, K, token_size).

Defaults follow SoftVQ's released training code (LlamaGen-style loss module): an L2 pixel loss and the
quantiser's entropy term with weight 0.01 (its ``entropy_loss_ratio``) on the code logits at temperature
0.01 (its ``compute_entropy_loss``); no separate KL term; the pixel loss taken on images in [-1, 1], as
its training code normalises them (4x the MSE on [0, 1], against the same perceptual term). The paper
recipe adds ``perceptual: {weight: 1.0, net: vgg}``, ``align: {init: dinov2, size: B}`` with
``align_weight: 0.1`` (SoftVQ's REPA weight) and ``adversarial: {}`` (:data:`SOFTVQ_ADVERSARIAL`).
Those need pretrained weights or cost a discriminator, so a study turns them on.

SoftVQ-VAE's released models (loaded by benchmark/convert.py) compute q(k|z) = softmax_k(ẑ · ê_k / tau)
on L2-normalised vectors (``similarity: cosine``) with timm DINOv2 ViTs: no pre-norm, LayerNorm eps 1e-6,
LayerScale in every block (``ln_pre: false``, ``norm_eps: 1e-6``, ``layer_scale: 1e-5``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from benchmark.align import Projector, TeacherOptions, build_teacher, patchwise_similarity_loss
from benchmark.base import Tokenizer, TokenizerOutput, TokenSpec
from benchmark.encoders import EncoderOptions
from benchmark.errors import ConfigError
from benchmark.layers import init_vit_weights
from benchmark.objectives import AdversarialOptions, PerceptualOptions, PixelObjective, build_adversary
from benchmark.options import NonNegativeFloat, PositiveFloat, PositiveInt
from benchmark.quantizers import SIMILARITIES, SoftVectorQuantizer, entropy_regularizer, kl_to_uniform
from benchmark.registry import register_tokenizer
from benchmark.vit import SIZES, LatentViTEncoder, MaskTokenViTDecoder, vit_size

# SoftVQ's discriminator setup (SelfBootTok Sec. 4.1): a StyleGAN-like discriminator with LeCAM and
# consistency regularisation; hinge loss, a fixed GAN weight 0.2 (its train_tokenizer.py's
# --disc-adaptive-weight defaults to False), LeCAM 0.001 (averages decaying 0.999) and consistency 4.0 as in SoftVQ's
# configs/softvq-l-64.yaml (whose disc_start is 20000: a study sets `start`). `adversarial` overrides any key.
SOFTVQ_ADVERSARIAL: dict = {
    "kind": "stylegan",
    "weight": 0.2,
    "loss": "hinge",
    "adaptive": False,
    "lecam_weight": 0.001,
    "lecam_decay": 0.999,  # its LeCAM_EMA(decay=0.999)
    "consistency_weight": 4.0,
}


@register_tokenizer("softvq")
class SoftVQVAE(Tokenizer):
    """SoftVQ-VAE: 1D ViT encoder, soft vector quantisation of the K latent tokens, 1D ViT decoder."""

    # 2: the pixel loss on [-1, 1], the entropy at temperature 0.01, a fixed GAN weight and LeCAM's 0.999, as SoftVQ's
    # training code (benchmark/method_versions.py: stages trained before are not reused)
    version = 2

    tiny = {
        "image_size": 32,
        "size": "tiny",
        "patch_size": 8,
        "num_latent_tokens": 8,
        "token_size": 8,
        "codebook_size": 32,
        "kl_weight": 0.01,
        "perceptual": {"weight": 1.0, "net": "alex", "weights": "random"},
        "align": {
            "init": "dinov2",
            "stand_in": {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2},
        },
        "adversarial": {"kind": "stylegan", "start": 0, "width": 8, "lecam_weight": 0.001, "consistency_weight": 1.0},
    }

    def __init__(
        self,
        *,
        image_size: int = 256,
        size: str = "B",
        decoder_size: str | None = None,
        patch_size: PositiveInt = 16,
        num_latent_tokens: PositiveInt = 64,
        token_size: PositiveInt = 32,
        codebook_size: PositiveInt = 8192,
        num_codebooks: PositiveInt = 1,
        tau: PositiveFloat = 0.07,
        l2_norm: bool = True,
        recon_loss: str = "l2",
        recon_weight: NonNegativeFloat = 1.0,
        perceptual: PerceptualOptions | None = None,
        kl_weight: NonNegativeFloat = 0.0,
        entropy_weight: NonNegativeFloat = 0.01,
        entropy_temperature: PositiveFloat = 0.01,
        align: TeacherOptions | None = None,
        align_weight: NonNegativeFloat = 0.1,
        adversarial: AdversarialOptions | None = None,
        encoder: EncoderOptions | None = None,
        similarity: str = "distance",
        ln_pre: bool = True,
        norm_eps: float = 1e-5,
        layer_scale: float | None = None,
    ) -> None:
        """``size`` / ``decoder_size``: ViT sizes of encoder and decoder (the decoder follows the
        encoder when None). ``num_codebooks`` splits the K tokens into that many consecutive groups,
        each with its own codebook. ``kl_weight`` (λ4): KL of Eq. 2's posterior to a uniform prior;
        off by default because SoftVQ's released quantiser regularises q only through the entropy
        term (``entropy_weight``, its ``entropy_loss_ratio`` 0.01), taken on the code logits sharpened by
        ``entropy_temperature`` (its ``compute_entropy_loss``: 0.01), not on q. ``align``: a frozen teacher for the
        REPA term, an encoder spec of benchmark/encoders.py (``{init: dinov2, size: B}``, or with
        ``stand_in`` at smoke scale). ``adversarial``: None for no GAN, else overrides of
        :data:`SOFTVQ_ADVERSARIAL` (options of benchmark.gan.Adversary). ``encoder``: a pretrained
        initialisation of the ViT encoder, copied in by the train stage before the first step.

        Release options (defaults: tok1d's SoftVQ; the official releases, benchmark/convert.py:
        ``cosine``, False, 1e-6, 1e-5). ``similarity``: Eq. 2's ``distance`` or the released quantiser's
        ``cosine`` logits (benchmark.quantizers.SoftVectorQuantizer). ``ln_pre``: a LayerNorm before the
        first block of encoder and decoder (timm's DINOv2 ViTs have none). ``norm_eps``: every LayerNorm's
        epsilon. ``layer_scale``: per-channel residual scales initialised to this value (timm's
        ``init_values``), None for none."""
        super().__init__()
        if image_size % patch_size:
            raise ConfigError(f"tokenizer.patch_size {patch_size} does not divide the image size {image_size}")
        if decoder_size is not None and decoder_size not in SIZES:
            raise ConfigError(f"tokenizer.decoder_size: unknown size '{decoder_size}'; choose from {', '.join(SIZES)}")
        if codebook_size < 2:
            raise ConfigError(f"tokenizer.codebook_size: {codebook_size} codes; soft VQ needs at least 2")
        if num_codebooks < 1 or num_latent_tokens % num_codebooks:
            raise ConfigError(
                f"tokenizer.num_codebooks: {num_codebooks} does not split the "
                f"{num_latent_tokens} latent tokens into equal groups"
            )
        if similarity not in SIMILARITIES:
            raise ConfigError(
                f"tokenizer.similarity: unknown similarity '{similarity}'; choose from {', '.join(SIMILARITIES)}"
            )
        if tau <= 0:
            raise ConfigError(f"tokenizer.tau: the soft-VQ temperature must be > 0, got {tau}")
        for name, value in (
            ("recon_weight", recon_weight),
            ("kl_weight", kl_weight),
            ("entropy_weight", entropy_weight),
            ("align_weight", align_weight),
        ):
            if value < 0:
                raise ConfigError(f"tokenizer.{name}: must be >= 0, got {value}")
        shape = {
            "image_size": image_size,
            "patch_size": patch_size,
            "num_latent_tokens": num_latent_tokens,
            "token_size": token_size,
            "ln_pre": ln_pre,
            "norm_eps": norm_eps,
            "layer_scale": layer_scale,
        }
        enc_width, enc_depth, enc_heads = vit_size(size)
        dec_width, dec_depth, dec_heads = vit_size(decoder_size or size)
        self.encoder = LatentViTEncoder(width=enc_width, depth=enc_depth, heads=enc_heads, **shape)
        self.quantizer = SoftVectorQuantizer(codebook_size, token_size, tau, l2_norm, num_codebooks, similarity)
        self.decoder = MaskTokenViTDecoder(width=dec_width, depth=dec_depth, heads=dec_heads, **shape)
        self.encoder.apply(init_vit_weights)
        self.decoder.apply(init_vit_weights)
        # SoftVQ's train_tokenizer.py normalises images to [-1, 1] and takes its pixel loss there
        self.pixel = PixelObjective(recon_loss, recon_weight, perceptual, pixel_range=(-1.0, 1.0))
        self.kl_weight, self.entropy_weight, self.entropy_temperature = kl_weight, entropy_weight, entropy_temperature
        self.teacher, self.projector, self.align_weight = None, None, align_weight
        if align is not None and align_weight > 0:
            self.teacher, dim = build_teacher(align, "tokenizer.align")
            self.projector = Projector(token_size, dim)
        self.adversary = (
            None if adversarial is None else build_adversary({**SOFTVQ_ADVERSARIAL, **adversarial}, image_size)
        )
        self.encoder_init = encoder
        self.token_spec = TokenSpec("continuous", (num_latent_tokens,), dim=token_size)

    @staticmethod
    def _to_model_range(images: Tensor) -> Tensor:
        return images * 2 - 1

    def _quantize(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Eq. 2-3 on the encoder's latent tokens: (soft-quantised tokens Z, code probabilities q)."""
        return self.quantizer(self.encoder(self._to_model_range(images)))

    def _decode_latents(self, tokens: Tensor) -> Tensor:
        return (self.decoder(tokens) + 1) / 2

    def encode(self, images: Tensor) -> Tensor:
        """Images (B, 3, H, W) in [0, 1] -> soft-quantised tokens Z (B, K, token_size)."""
        return self._quantize(images)[0]

    def decode(self, tokens: Tensor) -> Tensor:
        return self._decode_latents(tokens).clamp(0, 1)

    def encode_with_codes(self, images: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The soft-quantised tokens Z and the most probable code of each token, argmax_k q(k|z):
        {"codes": (B, K)}. With G codebooks the ids index their concatenation (group g's code k is
        g * codebook_size + k), so usage statistics never merge codes of different groups."""
        tokens, q = self._quantize(images)
        ids = q.argmax(-1)
        groups = self.quantizer.num_codebooks
        group = torch.arange(groups, device=ids.device).repeat_interleave(ids.shape[1] // groups)
        return tokens, {"codes": ids + group * self.quantizer.codebook_size}

    def codebook_sizes(self) -> dict[str, int]:
        """The id range of each entry of :meth:`encode_with_codes`' codes."""
        return {"codes": self.quantizer.num_codebooks * self.quantizer.codebook_size}

    def last_layer(self) -> Tensor:
        return self.decoder.head.weight

    def codebook_entropy(self, probs: Tensor) -> Tensor:
        """SoftVQ's codebook-usage term on code distributions ``probs``, per codebook group, averaged over
        groups: E[H(p)] - H(E[p]) (benchmark.quantizers.entropy_regularizer)."""
        b, _, k = probs.shape
        groups = probs.reshape(b, self.quantizer.num_codebooks, -1, k).transpose(0, 1)
        return torch.stack([entropy_regularizer(g) for g in groups]).mean()

    def forward(self, images: Tensor) -> TokenizerOutput:
        """Eq. 4 without the adversarial term (the trainer adds it): recon, perceptual, kl, entropy, repa."""
        z = self.encoder(self._to_model_range(images))
        logits = self.quantizer.logits(z)
        tokens, probs = self.quantizer.from_logits(logits, z.dtype)  # Eq. 2-3
        recon = self._decode_latents(tokens)
        losses = self.pixel(images, recon)
        if self.kl_weight > 0:
            losses["kl"] = self.kl_weight * kl_to_uniform(probs)
        if self.entropy_weight > 0:  # SoftVQ's compute_entropy_loss: the logits at its own temperature
            sharp = torch.softmax(logits / self.entropy_temperature, dim=-1)
            losses["entropy"] = self.entropy_weight * self.codebook_entropy(sharp)
        if self.teacher is not None:
            features = self.teacher.teacher_features(images)
            losses["repa"] = self.align_weight * patchwise_similarity_loss(self.projector(tokens), features)
        return TokenizerOutput(recon=recon, losses=losses, tokens=tokens.detach())

"""TiTok's MaskGIT generators (Yu et al. 2024; bytedance/1d-tokenizer ``modeling/maskgit.py``), as released
for TiTok-L-32 / B-64 (``ImageBert``) and TiTok-S-128 (``UViTBert``); ``python -m benchmark.convert
1d-tokenizer-generator`` loads those releases into these classes with exact parity.

Token space: one embedding table of V + C + 2 rows, as the releases hold it. Ids 0 .. V-1 are the
tokenizer's codes, V is [MASK], V + 1 + y is class y and V + C + 1 the null class (label dropout, the
unconditional branch of guidance). The class token is prepended; logits = head(h[:, 1:]) over the V codes.

- ``imagebert``: a post-norm BERT (HF ``BertModel``): h = LN(E[ids] + P), then per layer
  h = LN_1(h + Attn(h)), h = LN_2(h + MLP(h)); LayerNorm eps 1e-12; no final norm. P is BERT's position
  table plus its token-type row 0 (the only type the official forward uses).
- ``uvitbert``: U-ViT (Bao et al. 2023): h = E[ids] + P; pre-norm blocks without qkv bias; ``depth / 2``
  in-blocks push their outputs, a mid-block, then ``depth / 2`` out-blocks, each first fusing the last
  pushed output, h = Linear([h, skip]); final LN (eps 1e-5).

Training (``MLMLoss`` and ``masking_input_tokens`` of the official train_maskgit.py): r ~ U(0, 1),
n = max(1, round(N * arccos(r) / (pi / 2))) random positions masked; label-smoothed cross-entropy on every
position, weighted 1 on masked and ``unmasked_weight`` on visible tokens, normalised by the weights' sum;
classes dropped to the null class with probability ``label_dropout``. BERT's dropout (0.1, training only)
is not modelled; weights start from the ViT initialisation (truncated normal 0.02).

Sampling: the official ``ImageBert.generate`` (see :meth:`TiTokMaskGIT.sample`). Unlike ``maskgit``'s
sampler, its confidence is the sampled id's raw logit, not its log-probability, noised with the same
annealed temperature that samples the ids. The releases' ImageNet evaluation (sample_imagenet_titok.py),
which a converted folder's stage.json records as ``config.sample``, in a study's terms:

    sample: {cfg_scale: 5.5, steps: 8, options: {guidance_decay: linear, randomize_temperature: 9.5,
             softmax_temperature_annealing: true}}       # TiTok-L-32; B-64: cfg_scale 4.0, temperature 11.0
    sample: {cfg_scale: 6.9, steps: 64, options: {guidance_decay: power-cosine, randomize_temperature: 2.8,
             softmax_temperature_annealing: true}}       # TiTok-S-128
"""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.base import TokenSpec
from benchmark.errors import ConfigError
from benchmark.layers import Block, Transformer, init_vit_weights
from benchmark.options import NonNegativeFloat, UnitInterval
from benchmark.registry import register_generator

from .maskgit import MaskedIdGenerator, gumbel_noise

GUIDANCE_DECAYS = ("constant", "linear", "power-cosine")


class TiTokMaskGIT(MaskedIdGenerator):
    """The shared part of ImageBert and UViTBert: token space, training loss and the official sampler."""

    tiny_token_spec = TokenSpec("discrete", (8,), vocab_size=16)

    def __init__(
        self,
        *,
        token_spec: TokenSpec,
        num_classes: int,
        width: int,
        heads: int,
        label_dropout: UnitInterval = 0.1,
        label_smoothing: UnitInterval = 0.1,
        unmasked_weight: NonNegativeFloat = 0.1,
    ) -> None:
        super().__init__()
        self.init_ids("TiTok's MaskGIT", token_spec, num_classes, label_dropout, label_smoothing)
        if width % heads:
            raise ConfigError(f"generator.heads: width {width} is not divisible by {heads} heads")
        self.unmasked_weight = unmasked_weight
        self.embed = nn.Embedding(self.vocab_size + num_classes + 2, width)  # codes, [MASK], classes, null class
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens + 1, width))  # class prefix + N
        self.head = nn.Linear(width, self.vocab_size)

    def init_weights(self) -> None:
        """ViT initialisation: truncated-normal(0.02) linear weights and embeddings, zero biases, unit norms."""
        self.apply(init_vit_weights)
        for weight in (self.embed.weight, self.pos_embed):
            nn.init.trunc_normal_(weight, std=0.02)

    @abstractmethod
    def hidden(self, x: Tensor) -> Tensor:
        """The network between the embedded sequence (B, 1 + N, W) and the head."""

    def forward(self, tokens: Tensor, labels: Tensor) -> Tensor:
        """Logits (B, N, V) of tokens (B, N) with [MASK] ids, for labels (B,) in [0, C] (C: the null class)."""
        ids = torch.cat([labels[:, None] + self.vocab_size + 1, tokens], dim=1)
        return self.head(self.hidden(self.embed(ids) + self.pos_embed)[:, 1:])

    def loss(self, tokens: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """The official MLM loss: arccos-many random positions masked, weighted label-smoothed cross-entropy
        (random draws in the official order: r, the positions, the class drop)."""
        b, n = tokens.shape
        r = torch.rand(b, device=tokens.device)
        ratio = (torch.acos(r) / (math.pi * 0.5)).clamp(1e-6, 1.0)
        num_masked = (n * ratio).round().clamp(min=1)
        masked = torch.rand(b, n, device=tokens.device).argsort(dim=-1) < num_masked[:, None]
        if self.training and self.label_dropout > 0:
            drop = torch.rand(b, device=labels.device) < self.label_dropout
            labels = torch.where(drop, torch.full_like(labels, self.null_class), labels)
        logits = self(torch.where(masked, self.mask_id, tokens), labels)
        ce = F.cross_entropy(
            logits.float().transpose(1, 2), tokens, label_smoothing=self.label_smoothing, reduction="none"
        )
        weights = masked.float() + (~masked).float() * self.unmasked_weight
        return {"mlm": (ce * weights).sum() / (weights.sum() + 1e-8)}

    def _logits(self, tokens: Tensor, labels: Tensor, branches: int, generator: torch.Generator | None) -> Tensor:
        """Conditional logits (``branches`` 1) or conditional and null-class logits stacked (2), in one
        forward; each branch first draws the B uniforms of the official forward's class-drop test (unused)."""
        for _ in range(branches):
            torch.rand(labels.shape, generator=generator, device=labels.device)
        if branches == 1:
            return self(tokens, labels).float()
        null = torch.full_like(labels, self.null_class)
        return self(tokens.repeat(2, 1), torch.cat([labels, null])).float()

    @torch.no_grad()
    def sample(
        self,
        labels: Tensor,
        cfg_scale: float = 1.0,
        steps: int | None = None,
        generator: torch.Generator | None = None,
        *,
        guidance_decay: str = "constant",
        guidance_scale_pow: float = 3.0,
        randomize_temperature: float = 4.5,
        softmax_temperature_annealing: bool = False,
    ) -> Tensor:
        """Token ids (B, N): the official ``ImageBert.generate`` in T = ``steps`` (default 8) steps.

        At step t = 0 .. T-1, with r = (t + 1) / T and tau = ``randomize_temperature`` * (1 - r):

        1. guidance, c / u the conditional / null-class logits, s = ``cfg_scale`` (1: none, as every tok1d
           generator): ``constant``: l = c + (s - 1)(c - u); ``linear``: the same with s - 1 scaled by t / T
           (step 0 runs the conditional branch alone); ``power-cosine`` (MDT): l = u + s_t (c - u),
           s_t = (s - 1)(1 - cos(pi (t / T)^p)) / 2 + 1, p = ``guidance_scale_pow``. The official
           ``guidance_scale`` is s - 1 for constant / linear and s for power-cosine; a branch runs only
           when the official scale is not 0;
        2. ``softmax_temperature_annealing``: l = l / (0.5 + 0.8 (1 - r));
        3. masked positions draw x = argmax(l + tau * Gumbel); confidence = l[x] + tau * Gumbel (the raw
           logit, not a log-probability), +inf at known positions;
        4. n = clamp(floor(N arccos(r) / (pi / 2)), 1, m - 1), m the masked count of the batch's first row;
           positions with confidence <= the n-th lowest are masked again; the last step keeps every id.

        The draws come from ``generator`` in the official order (per network branch B uniforms, the
        official forward's class-drop test; then (B, N, V) and (B, N) for the two Gumbel draws), so that
        on the CPU a generator seeded s gives the tokens of ``generate`` after ``torch.manual_seed(s)``.
        """
        steps = 8 if steps is None else steps
        if steps < 1:
            raise ConfigError(f"steps: TiTok's MaskGIT needs at least one decoding step, got {steps}")
        if guidance_decay not in GUIDANCE_DECAYS:
            raise ConfigError(f"guidance_decay: unknown '{guidance_decay}'; choose from {', '.join(GUIDANCE_DECAYS)}")
        device = labels.device
        tokens = torch.full((labels.shape[0], self.num_tokens), self.mask_id, dtype=torch.long, device=device)
        for step in range(steps):
            ratio = 1.0 * (step + 1) / steps
            tau = randomize_temperature * (1.0 - ratio)
            is_mask = tokens == self.mask_id
            if guidance_decay == "power-cosine":  # float32 on the device, as the official computes it
                power = torch.ones(1, device=device) * guidance_scale_pow
                scale = (cfg_scale - 1) * ((1 - torch.cos(((step / steps) ** power) * torch.pi)) * 1 / 2) + 1
                cond, uncond = self._logits(tokens, labels, 2, generator).chunk(2)
                logits = uncond + (cond - uncond) * scale
            else:
                extra = (cfg_scale - 1) * (1.0 * step / steps if guidance_decay == "linear" else 1.0)
                if extra != 0:
                    cond, uncond = self._logits(tokens, labels, 2, generator).chunk(2)
                    logits = cond + (cond - uncond) * extra
                else:
                    logits = self._logits(tokens, labels, 1, generator)
            if softmax_temperature_annealing:
                logits = logits / (0.5 + 0.8 * (1 - ratio))
            sampled = (logits + tau * gumbel_noise(logits.shape, generator, device)).argmax(dim=-1)
            confidence = logits.gather(-1, sampled[..., None]).squeeze(-1)
            sampled = torch.where(is_mask, sampled, tokens)
            confidence = torch.where(is_mask, confidence, torch.inf)
            confidence = confidence + tau * gumbel_noise(confidence.shape, generator, device)
            if step == steps - 1:
                tokens = sampled
            else:
                keep_masked = math.floor(self.num_tokens * (math.acos(ratio) / (math.pi * 0.5)))
                keep_masked = max(1, min(int(is_mask[0].sum()) - 1, keep_masked))
                cut_off = confidence.sort(dim=-1).values[:, keep_masked - 1 : keep_masked]
                tokens = torch.where(confidence <= cut_off, self.mask_id, sampled)
        return tokens


@register_generator("imagebert")
class ImageBert(TiTokMaskGIT):
    """TiTok's MaskGIT as released for TiTok-L-32 / B-64: a post-norm BERT over [class; token ids]."""

    tiny = {"width": 32, "depth": 2, "heads": 2}

    def __init__(
        self, *, width: int = 768, depth: int = 24, heads: int = 16, mlp_ratio: float = 4.0, **options: Any
    ) -> None:
        super().__init__(width=width, heads=heads, **options)
        self.embed_norm = nn.LayerNorm(width, eps=1e-12)
        self.blocks = Transformer(width, depth, heads, mlp_ratio, norm_eps=1e-12, post_norm=True)
        self.init_weights()

    def hidden(self, x: Tensor) -> Tensor:
        return self.blocks(self.embed_norm(x))


@register_generator("uvitbert")
class UViTBert(TiTokMaskGIT):
    """TiTok's MaskGIT as released for TiTok-S-128: a U-ViT (long skips, no qkv bias) over [class; token ids]."""

    tiny = {"width": 32, "depth": 2, "heads": 2}

    def __init__(
        self, *, width: int = 1024, depth: int = 20, heads: int = 16, mlp_ratio: float = 4.0, **options: Any
    ) -> None:
        super().__init__(width=width, heads=heads, **options)
        if depth % 2:
            raise ConfigError(f"generator.depth: U-ViT has depth / 2 in- and out-blocks; {depth} is odd")

        def block() -> Block:
            return Block(width, heads, mlp_ratio, qkv_bias=False)

        self.in_blocks = nn.ModuleList(block() for _ in range(depth // 2))
        self.mid_block = block()
        self.out_blocks = nn.ModuleList(block() for _ in range(depth // 2))
        self.skips = nn.ModuleList(nn.Linear(2 * width, width) for _ in range(depth // 2))
        self.norm = nn.LayerNorm(width)
        self.init_weights()

    def hidden(self, x: Tensor) -> Tensor:
        pushed = []
        for blk in self.in_blocks:
            x = blk(x)
            pushed.append(x)
        x = self.mid_block(x)
        for blk, skip in zip(self.out_blocks, self.skips, strict=True):
            x = blk(skip(torch.cat([x, pushed.pop()], dim=-1)))
        return self.norm(x)

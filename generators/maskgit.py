"""MaskGIT: Masked Generative Image Transformer (Chang et al. 2022), class-conditional.

A bidirectional transformer over discrete token ids, trained as a masked-token model:

    r ~ U(0, 1),   n = clamp(ceil(gamma(r) * N), 1, N)     (gamma: the mask schedule, Sec. 3.2)
    M = n random positions,   x_M <- [MASK]
    L = - E[ sum_{i in M} log p(x_i | x_{not M}, c) ]       (Eq. 1, with label smoothing)

and sampled by confidence-based iterative decoding (Sec. 3.2, as TiTok's generator runs it): start
from all [MASK]; at step i of T sample every masked id, score it by its log-probability plus
annealed Gumbel noise, and re-mask the max(1, floor(N * gamma((i+1)/T))) least confident ones (at
least one stays masked until the last step, which unmasks all; see ``masked_counts``). The class
enters as a prefix token; a "null" class serves label dropout and the unconditional branch of
classifier-free guidance, logits = l_uncond + s * (l_cond - l_uncond).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.base import Generator, TokenSpec
from benchmark.errors import ConfigError
from benchmark.layers import Transformer, init_vit_weights
from benchmark.options import UnitInterval
from benchmark.registry import register_generator
from benchmark.vit import vit_size

# gamma(r): the masked fraction at progress r in [0, 1]; gamma(0) = 1, gamma(1) = 0, decreasing.
MASK_SCHEDULES: dict[str, Callable[[Tensor], Tensor]] = {
    "arccos": lambda r: (2 / math.pi) * torch.arccos(r),
    "cosine": lambda r: torch.cos(math.pi * r / 2),
    "linear": lambda r: 1 - r,
    "square": lambda r: 1 - r**2,
}

CFG_SCHEDULES = ("constant", "linear")


def check_schedule(schedule: str, key: str = "generator.mask_schedule") -> str:
    if schedule not in MASK_SCHEDULES:
        raise ConfigError(f"{key}: unknown mask schedule '{schedule}'; choose from {', '.join(MASK_SCHEDULES)}")
    return schedule


def mask_ratio(schedule: str, r: Tensor) -> Tensor:
    """gamma(r), the masked fraction at progress r in [0, 1] (MaskGIT Sec. 3.2), clamped to [0, 1]."""
    return MASK_SCHEDULES[check_schedule(schedule)](r).clamp(0, 1)


def masked_counts(schedule: str, num_tokens: int, steps: int) -> list[int]:
    """How many tokens stay masked after each of ``steps`` decoding steps.

    n_i = max(1, min(n_{i-1} - 1, floor(N * gamma((i + 1) / T)))) with n_{-1} = N, and 0 after the last
    step: every step unmasks at least one token while more than one remain, and at least one token
    stays masked until the last step, which unmasks all. This is the original MaskGIT sampler's rule
    (maskgit/libml/parallel_decode.py: mask_len = maximum(1, minimum(unknown - 1, floor(N * ratio))),
    the last step's sampled ids kept whole), which TiTok's generator follows.
    """
    progress = torch.arange(1, steps + 1, dtype=torch.float64) / steps
    counts, prev = [], num_tokens
    for i, ratio in enumerate(mask_ratio(schedule, progress).tolist()):
        n = 0 if i == steps - 1 else max(1, min(math.floor(num_tokens * ratio), prev - 1))
        counts.append(n)
        prev = n
    return counts


def gumbel_noise(shape: torch.Size, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """-log(-log U), U ~ U(0, 1): standard Gumbel noise drawn from ``generator``."""
    u = torch.rand(shape, generator=generator, device=device)
    return -torch.log((-torch.log(u.clamp(min=1e-20))).clamp(min=1e-20))


class MaskedIdGenerator(Generator):
    """A class-conditional generator of a discrete tokenizer's ids by masked prediction: the token ids,
    the [MASK] id after the codebook, the null class after the classes (for CFG)."""

    def init_ids(
        self, name: str, token_spec: TokenSpec, num_classes: int, label_dropout: float, label_smoothing: float
    ) -> None:
        if token_spec.kind != "discrete":
            raise ConfigError(
                f"generator.name: {name} models discrete token ids, but the tokenizer's tokens are "
                f"'{token_spec.kind}'; use a discrete tokenizer or a continuous-token generator"
            )
        self.token_spec = token_spec
        self.num_tokens = token_spec.num_generated
        self.vocab_size = int(token_spec.vocab_size)
        self.mask_id = self.vocab_size
        self.num_classes = num_classes
        self.null_class = num_classes
        self.label_dropout = label_dropout
        self.label_smoothing = label_smoothing


@register_generator("maskgit")
class MaskGIT(MaskedIdGenerator):
    """MaskGIT: class-conditional bidirectional transformer over token ids, iterative masked decoding."""

    tiny = {"size": "tiny"}
    tiny_token_spec = TokenSpec("discrete", (4, 4), vocab_size=16)

    def __init__(
        self,
        *,
        token_spec: TokenSpec,
        num_classes: int,
        size: str = "B",
        label_dropout: UnitInterval = 0.1,
        mask_schedule: str = "arccos",
        label_smoothing: UnitInterval = 0.1,
    ) -> None:
        super().__init__()
        self.init_ids("MaskGIT", token_spec, num_classes, label_dropout, label_smoothing)
        width, depth, heads = vit_size(size, "generator.size")
        self.mask_schedule = check_schedule(mask_schedule)

        self.token_embed = nn.Embedding(self.vocab_size + 1, width)  # + the [MASK] id
        self.class_embed = nn.Embedding(num_classes + 1, width)  # + the null class
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens + 1, width))  # class prefix + N
        self.transformer = Transformer(width, depth, heads)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, self.vocab_size)

        self.apply(init_vit_weights)
        for weight in (self.token_embed.weight, self.class_embed.weight, self.pos_embed):
            nn.init.trunc_normal_(weight, std=0.02)

    def forward(self, tokens: Tensor, labels: Tensor) -> Tensor:
        """p(x_i | x_visible, c) as logits: tokens (B, N) with [MASK] ids, labels (B,) -> (B, N, V). The
        training loss and the sampler call the module itself, so ``compile()`` compiles what they run."""
        x = torch.cat([self.class_embed(labels)[:, None], self.token_embed(tokens)], dim=1) + self.pos_embed
        return self.head(self.norm(self.transformer(x))[:, 1:])

    def loss(self, tokens: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """Eq. 1: label-smoothed cross-entropy on n = clamp(ceil(gamma(r) N), 1, N) random masked positions."""
        b, n = tokens.shape
        if self.training and self.label_dropout > 0:
            drop = torch.rand(b, device=labels.device) < self.label_dropout
            labels = torch.where(drop, torch.full_like(labels, self.null_class), labels)
        r = torch.rand(b, device=tokens.device)
        num_masked = (mask_ratio(self.mask_schedule, r) * n).ceil().clamp(1, n).long()
        # The n lowest of N random scores are masked: each n-subset is equally likely.
        rank = torch.rand(b, n, device=tokens.device).argsort(dim=1).argsort(dim=1)
        masked = rank < num_masked[:, None]
        logits = self(torch.where(masked, self.mask_id, tokens), labels)
        # the mean over masked positions, without indexing by the mask (a host sync and dynamic shapes)
        ce = F.cross_entropy(
            logits.float().transpose(1, 2), tokens, label_smoothing=self.label_smoothing, reduction="none"
        )
        ce = (ce * masked).sum() / masked.sum()
        return {"ce": ce}

    def _guided_logits(self, tokens: Tensor, labels: Tensor, scale: float) -> Tensor:
        """l_uncond + s * (l_cond - l_uncond); both branches run as one batch of 2B (none at s = 1)."""
        if scale == 1.0:
            return self(tokens, labels).float()
        null = torch.full_like(labels, self.null_class)
        cond, uncond = self(tokens.repeat(2, 1), torch.cat([labels, null])).float().chunk(2)
        return uncond + scale * (cond - uncond)

    @torch.no_grad()
    def sample_steps(
        self,
        labels: Tensor,
        cfg_scale: float = 1.0,
        steps: int | None = None,
        generator: torch.Generator | None = None,
        *,
        temperature: float = 1.0,
        gumbel_temperature: float = 4.5,
        cfg_schedule: str = "constant",
        schedule: str | None = None,
    ) -> Iterator[Tensor]:
        """Confidence-based iterative decoding; yields the (B, N) token state after each of T steps.

        Step i (from 0): s_i = cfg_scale ("constant") or 1 + (cfg_scale - 1) i/T ("linear": no guidance at
        the first step, as TiTok's and MUSE's ``generate``, which raise the scale after each step); draw
        x ~ softmax(l / temperature) at masked positions (Gumbel-max); confidence = log p(x) +
        g_i * Gumbel with g_i = gumbel_temperature * (1 - (i + 1)/T), +inf where already known;
        the ``masked_counts`` n_i least confident positions (at least one before the last step) are
        masked again.
        """
        steps = 8 if steps is None else steps
        if steps < 1:
            raise ConfigError(f"steps: MaskGIT needs at least one decoding step, got {steps}")
        if cfg_schedule not in CFG_SCHEDULES:
            raise ConfigError(f"cfg_schedule: unknown '{cfg_schedule}'; choose from {', '.join(CFG_SCHEDULES)}")
        counts = masked_counts(check_schedule(schedule or self.mask_schedule, "schedule"), self.num_tokens, steps)
        device = labels.device
        tokens = torch.full((labels.shape[0], self.num_tokens), self.mask_id, dtype=torch.long, device=device)
        for i, keep_masked in enumerate(counts):
            progress = (i + 1) / steps
            scale = cfg_scale if cfg_schedule == "constant" else 1 + (cfg_scale - 1) * i / steps
            log_probs = F.log_softmax(self._guided_logits(tokens, labels, scale) / temperature, dim=-1)
            sampled = (log_probs + gumbel_noise(log_probs.shape, generator, device)).argmax(dim=-1)
            masked = tokens == self.mask_id
            sampled = torch.where(masked, sampled, tokens)
            g = gumbel_temperature * (1 - progress)
            confidence = log_probs.gather(-1, sampled[..., None]).squeeze(-1)
            confidence = confidence + g * gumbel_noise(confidence.shape, generator, device)
            confidence = torch.where(masked, confidence, torch.inf)
            lowest = confidence.topk(keep_masked, dim=1, largest=False).indices
            tokens = sampled.scatter(1, lowest, self.mask_id)
            yield tokens

    def sample(
        self,
        labels: Tensor,
        cfg_scale: float = 1.0,
        steps: int | None = None,
        generator: torch.Generator | None = None,
        *,
        temperature: float = 1.0,
        gumbel_temperature: float = 4.5,
        cfg_schedule: str = "constant",
        schedule: str | None = None,
    ) -> Tensor:
        """Token ids (B, N) for ``labels`` after T = ``steps`` decoding steps (see ``sample_steps``)."""
        *_, tokens = self.sample_steps(
            labels,
            cfg_scale,
            steps,
            generator,
            temperature=temperature,
            gumbel_temperature=gumbel_temperature,
            cfg_schedule=cfg_schedule,
            schedule=schedule,
        )
        return tokens

"""SiT: Scalable Interpolant Transformers (Ma et al. 2024) over continuous 1D token sequences.

The network is DiT (Peebles & Xie 2023) with adaLN-Zero blocks; the 2D patch embedding becomes a
linear embedding of each of the N tokens plus a fixed 1D sin-cos position embedding. Time runs from
data at t = 0 to noise at t = 1 (the SiT paper's convention, Sec. 2):

    x_t = alpha(t) x0 + sigma(t) eps,   eps ~ N(0, I)
    linear: alpha = 1 - t,          sigma = t
    GVP:    alpha = cos(pi t / 2),  sigma = sin(pi t / 2)
    v(x_t, t) = alpha'(t) x0 + sigma'(t) eps                 (the velocity, d/dt x_t)

The network predicts the velocity, the noise eps or the score -eps / sigma (``prediction``), and is
trained by regressing that target at t ~ U(0, 1). Sampling integrates from eps at t = 1 to t = 0
with the probability-flow ODE dx = v dt (Euler or Heun) or the reverse SDE

    dx = [v - w(t) s(x, t)] dt + sqrt(2 w(t)) dW,   w(t) = diffusion_norm * sigma(t)

(Euler-Maruyama; SiT's "sigma" diffusion form, written as in its code, where the paper's w_t is
2 w(t)). REPA (Yu et al. 2024) optionally aligns a projection of the hidden states after block
``repa_depth`` with a frozen teacher's features by cosine similarity.

REG (Wu et al. 2025, Representation Entanglement for Generation; the SiT of the SelfBootTok paper,
Sec. 4.1) entangles the REPA teacher's class token c (its final-normed [CLS] output, width D) with
the tokens, as one extra token denoised jointly (official code, Martinser/REG):

    c_t      = alpha(t) c + sigma(t) eps_c                 (same t as the tokens, its own noise)
    sequence = [LN(Linear(c_t)) + 0 ; Linear(x_t) + pos]   (the class slot has a zero position)
    L        = L_flow + reg_weight ||f_c(.) - target(c)||^2 + repa_weight L_repa(h, [c; y])

with f_c a zero-initialised linear read-out of the class slot after the final adaLN layer, and REPA
aligning all N + 1 hidden states (the class slot's with c itself). Sampling draws c from noise too
and integrates it jointly with the tokens; classifier-free guidance applies to it with its own scale
(``cls_cfg_scale``, the token scale by default) and the generated class token is discarded.

Where a formula divides by alpha(1) = 0 or sigma(0) = 0, the time range stops short as SiT does
(``EPS``, ``LAST_STEP``); velocity models on the linear and GVP paths need no truncation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from itertools import pairwise
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.align import Projector, TeacherOptions, build_teacher, patchwise_similarity_loss, resample_tokens
from benchmark.base import Generator, TokenSpec
from benchmark.errors import ConfigError
from benchmark.layers import Attention, Mlp
from benchmark.options import NonNegativeFloat, NonNegativeInt, UnitInterval
from benchmark.registry import register_generator

# (width, depth, heads) as in DiT / SiT; "tiny" is the smoke-scale model.
SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (64, 2, 4),
    "S": (384, 12, 6),
    "B": (768, 12, 12),
    "L": (1024, 24, 16),
    "XL": (1152, 28, 16),
}
PATHS = ("linear", "gvp")
PREDICTIONS = ("velocity", "noise", "score")
SAMPLERS = ("ode", "sde")
METHODS = ("euler", "heun")
DEFAULT_STEPS = {"ode": 50, "sde": 250}
# SiT's train_eps = sample_eps for noise and score models: they train and sample on [EPS, 1 - EPS],
# because velocity_from_noise / velocity_from_score divide by alpha(1) = 0, and a score network
# cannot give the velocity at sigma(0) = 0.
EPS = 1e-3
# SiT's last_step_size: the SDE stops its noisy steps at t = LAST_STEP (the score divides by
# sigma(0) = 0) and takes one deterministic Euler step from there to t = 0.
LAST_STEP = 0.04

VelocityFn = Callable[[Tensor, float], Tensor]


# --------------------------------------------------------------------------------------------------
# Interpolant and samplers
# --------------------------------------------------------------------------------------------------


def _time(t: float | Tensor, like: Tensor) -> Tensor:
    """t as a tensor that broadcasts against ``like``: a scalar, or one time per leading index."""
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    return t.reshape(-1, *([1] * (like.dim() - 1))) if t.dim() else t


class Interpolant:
    """The stochastic interpolant x_t = alpha(t) x0 + sigma(t) eps (SiT Sec. 2), data at t = 0."""

    def __init__(self, path_type: str = "linear") -> None:
        if path_type not in PATHS:
            raise ConfigError(f"generator.path_type: unknown path '{path_type}'; choose from {', '.join(PATHS)}")
        self.path_type = path_type

    def alpha(self, t: Tensor) -> Tensor:
        return 1 - t if self.path_type == "linear" else torch.cos(math.pi / 2 * t)

    def sigma(self, t: Tensor) -> Tensor:
        return t if self.path_type == "linear" else torch.sin(math.pi / 2 * t)

    def d_alpha(self, t: Tensor) -> Tensor:
        return -torch.ones_like(t) if self.path_type == "linear" else -math.pi / 2 * torch.sin(math.pi / 2 * t)

    def d_sigma(self, t: Tensor) -> Tensor:
        return torch.ones_like(t) if self.path_type == "linear" else math.pi / 2 * torch.cos(math.pi / 2 * t)

    def x_t(self, x0: Tensor, eps: Tensor, t: float | Tensor) -> Tensor:
        """x_t = alpha(t) x0 + sigma(t) eps."""
        t = _time(t, x0)
        return self.alpha(t) * x0 + self.sigma(t) * eps

    def velocity(self, x0: Tensor, eps: Tensor, t: float | Tensor) -> Tensor:
        """v = d/dt x_t = alpha'(t) x0 + sigma'(t) eps."""
        t = _time(t, x0)
        return self.d_alpha(t) * x0 + self.d_sigma(t) * eps

    def noise_from_velocity(self, v: Tensor, x: Tensor, t: float | Tensor) -> Tensor:
        """Solve x = alpha x0 + sigma eps, v = alpha' x0 + sigma' eps for eps:

        eps = (alpha v - alpha' x) / (alpha sigma' - alpha' sigma)   (the denominator is 1 on the linear
        path and pi/2 on GVP, so this holds on all of [0, 1]; SiT's form, divided through by alpha').
        """
        t = _time(t, x)
        a, s, da, ds = self.alpha(t), self.sigma(t), self.d_alpha(t), self.d_sigma(t)
        return (a * v - da * x) / (a * ds - da * s)

    def score_from_noise(self, eps: Tensor, x: Tensor, t: float | Tensor) -> Tensor:
        """s = grad log p_t(x) = -E[eps | x_t = x] / sigma(t)   (needs t > 0)."""
        return -eps / self.sigma(_time(t, x))

    def noise_from_score(self, score: Tensor, x: Tensor, t: float | Tensor) -> Tensor:
        """eps = -sigma(t) s."""
        return -self.sigma(_time(t, x)) * score

    def velocity_from_noise(self, eps: Tensor, x: Tensor, t: float | Tensor) -> Tensor:
        """v = alpha' x0 + sigma' eps with x0 = (x - sigma eps) / alpha   (needs t < 1)."""
        t = _time(t, x)
        x0 = (x - self.sigma(t) * eps) / self.alpha(t)
        return self.d_alpha(t) * x0 + self.d_sigma(t) * eps

    def score_from_velocity(self, v: Tensor, x: Tensor, t: float | Tensor) -> Tensor:
        """s = -eps(v) / sigma, i.e. SiT's s = (alpha/alpha' v - x) / (sigma^2 - alpha/alpha' sigma' sigma)."""
        return self.score_from_noise(self.noise_from_velocity(v, x, t), x, t)

    def velocity_from_score(self, score: Tensor, x: Tensor, t: float | Tensor) -> Tensor:
        """v = alpha'/alpha x + (alpha'/alpha sigma^2 - sigma sigma') s   (SiT's drift form, via eps = -sigma s)."""
        return self.velocity_from_noise(self.noise_from_score(score, x, t), x, t)


def ode_sample(
    velocity_fn: VelocityFn, x1: Tensor, steps: int, method: str = "heun", t_max: float = 1.0, t_min: float = 0.0
) -> Tensor:
    """Integrate the probability-flow ODE dx/dt = v(x, t) from x1 at t_max down to t_min.

    ``steps`` uniform steps of h = t_next - t < 0. Euler: x <- x + h v(x, t). Heun (2nd order):
    x' = x + h v(x, t), then x <- x + h/2 [v(x, t) + v(x', t_next)] (on every step, 2 NFE each).
    """
    if method not in METHODS:
        raise ConfigError(f"sample.options.method: unknown method '{method}'; choose from {', '.join(METHODS)}")
    times = torch.linspace(t_max, t_min, steps + 1, dtype=torch.float64).tolist()
    x = x1
    for t, t_next in pairwise(times):
        h = t_next - t
        v = velocity_fn(x, t)
        x_euler = x + h * v
        x = x + h / 2 * (v + velocity_fn(x_euler, t_next)) if method == "heun" else x_euler
    return x


def sde_sample(
    velocity_fn: VelocityFn,
    interpolant: Interpolant,
    x1: Tensor,
    steps: int,
    diffusion_norm: float = 1.0,
    generator: torch.Generator | None = None,
    t_max: float = 1.0,
    last_step: float = LAST_STEP,
) -> Tensor:
    """Euler-Maruyama on the reverse SDE dx = [v - w s] dt + sqrt(2 w) dW from x1 at t_max to 0.

    s = score_from_velocity(v) and w(t) = diffusion_norm * sigma(t). The ``steps`` times run
    uniformly from t_max to ``last_step``; the final step from ``last_step`` to 0 follows the drift
    only (no noise), as SiT's "Mean" last step and REPA's sampler do.
    """
    times = [*torch.linspace(t_max, last_step, steps, dtype=torch.float64).tolist(), 0.0]
    x = x1
    for i, (t, t_next) in enumerate(pairwise(times)):
        h = t_next - t
        v = velocity_fn(x, t)
        w = diffusion_norm * float(interpolant.sigma(torch.tensor(t)))
        x = x + h * (v - w * interpolant.score_from_velocity(v, x, t))
        if i < steps - 1:
            x = x + math.sqrt(2 * w * -h) * _randn(x.shape, x.device, generator).to(x.dtype)
    return x


def _randn(shape: tuple[int, ...] | torch.Size, device: torch.device, generator: torch.Generator | None) -> Tensor:
    """N(0, I) drawn with ``generator`` on its own device (same seed, same numbers on any device)."""
    source = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=source).to(device)


# --------------------------------------------------------------------------------------------------
# Embedding layers (DiT)
# --------------------------------------------------------------------------------------------------


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: LN(x) * (1 + scale(c)) + shift(c), one (shift, scale) per sample."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def sincos_pos_embed_1d(dim: int, length: int) -> Tensor:
    """Fixed 1D sin-cos position embedding (Vaswani et al.): [sin(p w_i), cos(p w_i)], w_i = 10000^(-2i/dim)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = torch.arange(length, dtype=torch.float64)[:, None] * omega[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


class TimestepEmbedder(nn.Module):
    """t -> MLP([cos(t f_i), sin(t f_i)]) with f_i = 10000^(-i/half) (DiT; SiT feeds t in [0, 1])."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256) -> None:
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )

    @staticmethod
    def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, t: Tensor) -> Tensor:
        freq = self.timestep_embedding(t, self.frequency_embedding_size)
        return self.mlp(freq.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class label -> vector; row ``num_classes`` is the null class of label dropout and CFG."""

    def __init__(self, num_classes: int, hidden_size: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)

    def drop(self, labels: Tensor, prob: float) -> Tensor:
        """Replace each label by the null class with probability ``prob`` (classifier-free training)."""
        dropped = torch.rand(labels.shape, device=labels.device) < prob
        return torch.where(dropped, torch.full_like(labels, self.num_classes), labels)

    def forward(self, labels: Tensor) -> Tensor:
        return self.embedding_table(labels)


# --------------------------------------------------------------------------------------------------
# Core SiT model (DiT blocks with adaLN-Zero)
# --------------------------------------------------------------------------------------------------


class SiTBlock(nn.Module):
    """DiT block with adaLN-Zero conditioning (DiT Sec. 3.2):

    x = x + gate_msa * Attn(modulate(LN(x), shift_msa, scale_msa))
    x = x + gate_mlp * MLP(modulate(LN(x), shift_mlp, scale_mlp))
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    """modulate(LN(x), shift, scale) -> Linear to the token dimension C; with ``class_dim`` (REG) the
    first position is the class slot, read out by its own Linear to the class token's width D."""

    def __init__(self, hidden_size: int, out_channels: int, class_dim: int = 0) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, out_channels)
        self.linear_cls = nn.Linear(hidden_size, class_dim) if class_dim else None
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: Tensor, c: Tensor) -> tuple[Tensor, Tensor | None]:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        x = modulate(self.norm_final(x), shift, scale)
        if self.linear_cls is None:
            return self.linear(x), None
        return self.linear(x[:, 1:]), self.linear_cls(x[:, 0])


@register_generator("sit")
class SiT(Generator):
    """SiT: a DiT with adaLN-Zero trained on a linear / GVP interpolant, ODE or SDE sampling, optional REPA / REG."""

    tiny = {"size": "tiny"}
    tiny_token_spec = TokenSpec("continuous", (12,), dim=4, generated=8)

    def __init__(
        self,
        *,
        token_spec: TokenSpec,
        num_classes: int,
        size: str = "B",
        label_dropout: UnitInterval = 0.1,
        path_type: str = "linear",
        prediction: str = "velocity",
        repa_depth: NonNegativeInt = 0,
        repa_dim: NonNegativeInt = 0,
        repa_weight: NonNegativeFloat = 0.5,
        repa_projector_dim: int = 2048,
        repa_teacher: TeacherOptions | None = None,
        reg: bool = False,
        reg_weight: NonNegativeFloat = 0.03,
    ) -> None:
        """``repa_depth`` (1-based) picks the block whose output REPA aligns with ``repa_dim``-dim
        teacher features, through a 3-layer SiLU MLP of hidden width ``repa_projector_dim`` (REPA's 2048).
        ``repa_teacher`` names the frozen encoder (benchmark/encoders.py, e.g. ``{init: dinov2, size: B}``)
        whose patch features of the training images the harness passes to :meth:`loss`.
        ``reg``: REG, the teacher's class token (width ``repa_dim``) entangled as an extra token, its
        denoising loss weighted by ``reg_weight`` (REG's ``--cls 0.03``); it needs REPA on (REG trains
        with REPA: ``--proj-coeff 0.5``, ``--encoder-depth 8`` for SiT-L / XL, 4 for SiT-B) and the
        teacher's class token of each training image in :meth:`loss`."""
        super().__init__()
        if token_spec.kind != "continuous":
            raise ConfigError(
                f"generator.name: sit models continuous tokens, but the tokenizer's token_spec.kind "
                f"is '{token_spec.kind}'; use a discrete-token generator (e.g. maskgit)"
            )
        if size not in SIZES:
            raise ConfigError(f"generator.size: unknown size '{size}'; choose from {', '.join(SIZES)}")
        if prediction not in PREDICTIONS:
            raise ConfigError(
                f"generator.prediction: unknown prediction '{prediction}'; choose from {', '.join(PREDICTIONS)}"
            )
        if not 0 <= label_dropout < 1:
            raise ConfigError(f"generator.label_dropout: {label_dropout} is not in [0, 1)")
        width, depth, heads = SIZES[size]
        if repa_dim > 0 and not 1 <= repa_depth <= depth:
            raise ConfigError(
                f"generator.repa_depth: {repa_depth} is not a block of SiT-{size} (1 to {depth}); "
                "REPA is on because generator.repa_dim > 0"
            )
        self.token_spec = token_spec
        self.num_classes = num_classes
        self.num_tokens, self.token_dim = token_spec.num_generated, int(token_spec.dim)
        self.label_dropout = label_dropout
        self.interpolant = Interpolant(path_type)
        self.prediction = prediction
        # The velocity of a noise or score prediction divides by alpha(t), down to alpha(1 - EPS) = 1e-3: in
        # bf16 (relative rounding 2^-9) a perfect eps-hat near t = 1 gives velocity errors of the velocity's
        # own size. Such models sample in float32 (SiT's sampler does), whatever ``sample.precision`` says.
        self.sample_precision = None if prediction == "velocity" else "fp32"
        self.sample_precision_why = f"generator.prediction {prediction}: its velocity divides by alpha(t) >= 1e-3"
        self.repa_depth, self.repa_dim, self.repa_weight = repa_depth, repa_dim, repa_weight
        if reg and repa_dim <= 0:
            raise ConfigError(
                "generator.reg: REG entangles the class token of the REPA teacher; set generator.repa_teacher, "
                "generator.repa_dim (its width) and generator.repa_depth"
            )
        if reg_weight < 0:
            raise ConfigError(f"generator.reg_weight: must be >= 0, got {reg_weight}")
        self.reg, self.reg_weight = reg, reg_weight
        if repa_teacher is not None and repa_dim <= 0:
            raise ConfigError(
                "generator.repa_teacher: set generator.repa_dim to the teacher's feature width "
                "(and generator.repa_depth) to align with it"
            )
        self.repa_teacher = None
        if repa_teacher is not None:
            self.repa_teacher, dim = build_teacher(repa_teacher, "generator.repa_teacher")
            if dim != repa_dim:
                raise ConfigError(
                    f"generator.repa_dim: {repa_dim}, but generator.repa_teacher gives {dim}-dim features"
                )
        # Noise and score models live on [EPS, 1 - EPS] (see EPS); velocity models on [0, 1].
        self.t_min, self.t_max = (0.0, 1.0) if prediction == "velocity" else (EPS, 1 - EPS)

        self.x_embedder = nn.Linear(self.token_dim, width)
        pos_embed = sincos_pos_embed_1d(width, self.num_tokens)
        if reg:  # REG: the class slot comes first, with a zero position embedding
            pos_embed = torch.cat([torch.zeros(1, width), pos_embed])
            self.cls_embedder = nn.Linear(repa_dim, width)
            self.cls_norm = nn.LayerNorm(width, eps=1e-6)
        self.register_buffer("pos_embed", pos_embed[None], persistent=False)
        self.t_embedder = TimestepEmbedder(width)
        self.y_embedder = LabelEmbedder(num_classes, width)
        self.blocks = nn.ModuleList(SiTBlock(width, heads) for _ in range(depth))
        self.final_layer = FinalLayer(width, self.token_dim, repa_dim if reg else 0)
        self.projector = Projector(width, repa_dim, repa_projector_dim) if repa_dim > 0 else None
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's initialisation: xavier linears, normal(0.02) embeddings, zero adaLN-Zero and output."""

        def _basic_init(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

        self.apply(_basic_init)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for layer in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear, self.final_layer.linear_cls):
            if layer is not None:
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    def forward(
        self, x: Tensor, t: Tensor, y: Tensor, cls: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        """x (B, N, C) at times t (B,) with labels y (B,) and, with REG, the noisy class token cls (B, D)
        -> (the prediction (B, N, C), the class token's prediction (B, D) or None, the hidden states
        after block ``repa_depth`` (B, N (+ 1 with REG), width))."""
        h = self.x_embedder(x)
        if self.reg:
            if cls is None:
                raise ValueError("sit: generator.reg is on: the class token is denoised with the tokens; give cls")
            h = torch.cat([self.cls_norm(self.cls_embedder(cls))[:, None], h], dim=1)
        h = h + self.pos_embed
        c = self.t_embedder(t) + self.y_embedder(y)
        hidden = h
        for depth, block in enumerate(self.blocks, start=1):
            h = block(h, c)
            if depth == self.repa_depth:
                hidden = h
        out, cls_out = self.final_layer(h, c)
        return out, cls_out, hidden

    def as_velocity(self, out: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """The network's prediction ``out`` at x as a velocity, whatever it was trained to predict."""
        if self.prediction == "noise":
            return self.interpolant.velocity_from_noise(out, x, t)
        if self.prediction == "score":
            return self.interpolant.velocity_from_score(out, x, t)
        return out

    def velocity(self, x: Tensor, t: Tensor, y: Tensor, cls: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """The velocities of the tokens and (REG) of the class token."""
        out, cls_out, _ = self(x, t, y, cls)
        return self.as_velocity(out, x, t), None if cls_out is None else self.as_velocity(cls_out, cls, t)

    def regression_loss(self, out: Tensor, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """||f - target||^2 for data x0 noised by eps at t. Targets: velocity alpha' x0 + sigma' eps;
        noise eps; score -eps / sigma, regressed as ||sigma s + eps||^2 (SiT's unweighted score loss,
        finite at sigma = 0)."""
        if self.prediction == "velocity":
            return F.mse_loss(out, self.interpolant.velocity(x0, eps, t))
        if self.prediction == "noise":
            return F.mse_loss(out, eps)
        return (_time(self.interpolant.sigma(t), out) * out + eps).pow(2).mean()

    def loss(
        self, tokens: Tensor, labels: Tensor, features: Tensor | None = None, class_token: Tensor | None = None
    ) -> dict[str, Tensor]:
        """{"flow": E_t,eps ||f(x_t, t, y) - target||^2}; with REG on, the teacher's ``class_token``
        (B, repa_dim) of each image is required and {"reg": reg_weight * the class token's own
        regression loss} is added; with REPA on and teacher ``features`` (B, M, repa_dim) given,
        {"repa": repa_weight * mean_n -cos(proj(h_n), feat_n)} (see :meth:`repa_loss`)."""
        b = tokens.shape[0]
        if tuple(tokens.shape[1:]) != (self.num_tokens, self.token_dim):
            raise ValueError(
                f"sit: tokens of shape {tuple(tokens.shape)}, expected (B, {self.num_tokens}, "
                f"{self.token_dim}) from the token_spec"
            )
        if self.reg and (class_token is None or tuple(class_token.shape) != (b, self.repa_dim)):
            got = None if class_token is None else tuple(class_token.shape)
            raise ValueError(
                f"sit: generator.reg is on, so loss() needs the REPA teacher's class token of each image, "
                f"shape ({b}, {self.repa_dim}); got {got}"
            )
        if self.training and self.label_dropout > 0:
            labels = self.y_embedder.drop(labels, self.label_dropout)
        t = torch.rand(b, device=tokens.device) * (self.t_max - self.t_min) + self.t_min
        eps = torch.randn_like(tokens)
        x_t = self.interpolant.x_t(tokens, eps, t)
        cls_t = None
        if self.reg:  # REG: the class token on the same interpolant, at the same t, with its own noise
            cls_eps = torch.randn_like(class_token)
            cls_t = self.interpolant.x_t(class_token, cls_eps, t)
        out, cls_out, hidden = self(x_t, t, labels, cls_t)
        losses = {"flow": self.regression_loss(out, tokens, eps, t)}
        if self.reg:
            losses["reg"] = self.reg_weight * self.regression_loss(cls_out, class_token, cls_eps, t)
        if self.projector is not None and features is not None:
            losses["repa"] = self.repa_weight * self.repa_loss(hidden, features, class_token)
        return losses

    def repa_loss(self, hidden: Tensor, features: Tensor, class_token: Tensor | None = None) -> Tensor:
        """REPA: mean over tokens and batch of -cos(MLP(h_n), y_n) against frozen teacher features.

        A teacher gives M features (e.g. its patches) and SiT has N tokens: when M != N the features
        are resampled along the sequence to N by 1D adaptive average pooling (an identity when
        M == N). A 1D token has no patch it belongs to, so pooling contiguous runs of the teacher's
        raster-ordered patches is the simplest order-preserving match. With REG the class slot's
        hidden state is aligned with the ``class_token`` itself (REG's targets [cls; patches]).
        """
        if features.shape[-1] != self.repa_dim:
            raise ValueError(
                f"sit: teacher features have dim {features.shape[-1]}, generator.repa_dim is {self.repa_dim}"
            )
        target = resample_tokens(features.detach(), self.num_tokens, grid=False)
        if self.reg:
            target = torch.cat([class_token.detach()[:, None].to(target.dtype), target], dim=1)
        return patchwise_similarity_loss(self.projector(hidden), target, grid=False)

    def split_state(self, state: Tensor) -> tuple[Tensor, Tensor | None]:
        """A sampler's state -> (tokens (B, N, C), class token (B, D) or None). With REG the state is
        [tokens flattened; class token] (B, N C + D), so that the samplers integrate both jointly."""
        if not self.reg:
            return state, None
        n = self.num_tokens * self.token_dim
        return state[:, :n].reshape(-1, self.num_tokens, self.token_dim), state[:, n:]

    def join_state(self, tokens: Tensor, cls: Tensor | None) -> Tensor:
        """Inverse of :meth:`split_state`."""
        return tokens if cls is None else torch.cat([tokens.flatten(1), cls], dim=1)

    def guided_velocity(
        self,
        labels: Tensor,
        cfg_scale: float,
        guidance_interval: tuple[float, float],
        cls_cfg_scale: float | None = None,
    ) -> VelocityFn:
        """v(state, t) with classifier-free guidance, v = v_uncond + s (v_cond - v_uncond) on all channels,
        when guidance_interval[0] <= t <= guidance_interval[1] and s != 1; the conditional v elsewhere.
        With REG the class token is guided inside the same interval with ``cls_cfg_scale`` (None: s),
        as REG's sampler does (its ``--cls-cfg-scale``, set equal to ``--cfg-scale`` in its eval.sh)."""
        null = torch.full_like(labels, self.num_classes)
        low, high = guidance_interval
        cls_scale = cfg_scale if cls_cfg_scale is None else cls_cfg_scale

        def velocity_fn(state: Tensor, t: float) -> Tensor:
            x, cls = self.split_state(state)
            tb = torch.full((x.shape[0],), t, device=x.device)
            if cfg_scale == 1.0 or not low <= t <= high:
                return self.join_state(*self.velocity(x, tb, labels, cls))
            cls2 = None if cls is None else torch.cat([cls, cls])
            v, v_cls = self.velocity(torch.cat([x, x]), torch.cat([tb, tb]), torch.cat([labels, null]), cls2)
            v_cond, v_uncond = v.chunk(2)
            v = v_uncond + cfg_scale * (v_cond - v_uncond)
            if v_cls is not None:
                cls_cond, cls_uncond = v_cls.chunk(2)
                v_cls = cls_uncond + cls_scale * (cls_cond - cls_uncond)
            return self.join_state(v, v_cls)

        return velocity_fn

    @staticmethod
    def check_sampler_choices(options: Mapping[str, Any], where: str = "config") -> None:
        """``sample.options``' sampler and method, checked at plan time (benchmark/config.py) and here: a
        known sampler, a known ODE method, and none for the SDE, which is Euler-Maruyama."""
        sampler, method = options.get("sampler", "ode"), options.get("method")
        if sampler not in SAMPLERS:
            raise ConfigError(
                f"{where}: sample.options.sampler: unknown sampler '{sampler}'; choose from {', '.join(SAMPLERS)}"
            )
        if method is not None and method not in METHODS:
            raise ConfigError(
                f"{where}: sample.options.method: unknown method '{method}'; choose from {', '.join(METHODS)}"
            )
        if sampler == "sde" and method not in (None, "euler"):
            raise ConfigError(
                f"{where}: sample.options.method: {method} is an ODE method; the SDE sampler is Euler-Maruyama "
                "(drop the method, or set it to euler)"
            )

    @torch.no_grad()
    def sample(
        self,
        labels: Tensor,
        cfg_scale: float = 1.0,
        steps: int | None = None,
        generator: torch.Generator | None = None,
        *,
        sampler: str = "ode",
        method: str | None = None,
        guidance_interval: tuple[float, float] = (0.0, 1.0),
        diffusion_norm: float = 1.0,
        cls_cfg_scale: float | None = None,
    ) -> Tensor:
        """Tokens (B, N, C) for ``labels`` (B,): eps ~ N(0, I) at t = 1 (drawn with ``generator``),
        integrated to t = 0 by the ODE (``method`` euler / heun, default heun, 50 steps by default) or the
        SDE (Euler-Maruyama, 250 steps by default; it takes no other ``method``). With REG a class token (B, D) is drawn from noise after
        the tokens' noise, integrated with them (guided by ``cls_cfg_scale``) and discarded."""
        self.check_sampler_choices({"sampler": sampler, "method": method})
        steps = steps or DEFAULT_STEPS[sampler]
        dtype = self.x_embedder.weight.dtype
        x1 = _randn((labels.shape[0], self.num_tokens, self.token_dim), labels.device, generator).to(dtype)
        cls1 = _randn((labels.shape[0], self.repa_dim), labels.device, generator).to(dtype) if self.reg else None
        state = self.join_state(x1, cls1)
        velocity_fn = self.guided_velocity(labels, cfg_scale, tuple(guidance_interval), cls_cfg_scale)
        if sampler == "ode":
            state = ode_sample(velocity_fn, state, steps, method or "heun", t_max=self.t_max, t_min=self.t_min)
        else:
            state = sde_sample(velocity_fn, self.interpolant, state, steps, diffusion_norm, generator, t_max=self.t_max)
        return self.split_state(state)[0]

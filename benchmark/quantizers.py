"""Latent bottlenecks shared by the tokenizers: hard VQ, soft VQ, diagonal Gaussian, and the
codebook regularisers (entropy, KL) of the seeds."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.precision import no_autocast

SIMILARITIES = ("distance", "cosine")


def entropy_regularizer(probs: Tensor, eps: float = 1e-8) -> Tensor:
    """Thesis Sec. 3.1: L_entropy = E_r[H(p(q(z)))] - H(E_r[p(q(z))]).

    ``probs`` (..., K) are per-token code distributions. Minimising the first term makes each token
    confident; maximising the entropy of the batch-mean distribution spreads usage over the codebook.
    """
    p = probs.reshape(-1, probs.shape[-1]).float()
    sample_entropy = -(p * (p + eps).log()).sum(-1).mean()
    mean = p.mean(0)
    return sample_entropy - (-(mean * (mean + eps).log()).sum())


def kl_to_uniform(probs: Tensor, eps: float = 1e-8) -> Tensor:
    """KL(q(k|x) || U(K)) = log K - H(q), averaged over tokens: the ELBO's KL term for a categorical
    soft-VQ posterior (Eq. 2) under a uniform prior over the codebook."""
    p = probs.reshape(-1, probs.shape[-1]).float()
    return math.log(p.shape[-1]) + (p * (p + eps).log()).sum(-1).mean()


def scale_vq_losses(losses: dict[str, Tensor], weight: float) -> dict[str, Tensor]:
    """A VQ's codebook and commitment terms scaled by the tokenizer's quantiser weight; the entropy
    term keeps its own weight."""
    return {k: v if k == "entropy" else weight * v for k, v in losses.items()}


class VectorQuantizer(nn.Module):
    """Hard vector quantisation with a straight-through estimator (VQ-VAE, van den Oord et al. 2017).

    q(z) = e_k with k = argmin_j ||z - e_j||^2 (on the unit sphere when ``l2_norm``, as TiTok does).
    Losses: codebook ||sg[z] - e_k||^2 and commitment beta * ||z - sg[e_k]||^2; the decoder sees
    z + sg[e_k - z], so gradients pass straight through to the encoder. With ``entropy_weight`` > 0
    the thesis's entropy regulariser is added on softmax(-||z - e||^2 / entropy_temperature).

    ``norms_first`` sums the squared distance as |z|^2 + |e|^2 - 2 z.e, the floating-point order of
    TiTok's, taming's and MaskGIT-VQGAN's quantisers (``torch.sum(z**2, dim=1, keepdim=True) +
    torch.sum(embedding**2, dim=1) - 2 * ...``): the same value up to rounding, but a near-tie can only
    give the released models' ids in their order. Default: |z|^2 - 2 z.e + |e|^2.
    """

    def __init__(
        self,
        codebook_size: int,
        dim: int,
        commitment: float = 0.25,
        l2_norm: bool = True,
        entropy_weight: float = 0.0,
        entropy_temperature: float = 0.01,
        norms_first: bool = False,
    ) -> None:
        super().__init__()
        self.codebook_size = codebook_size
        self.commitment = commitment
        self.l2_norm = l2_norm
        self.norms_first = norms_first
        self.entropy_weight, self.entropy_temperature = entropy_weight, entropy_temperature
        self.embedding = nn.Embedding(codebook_size, dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / codebook_size, 1.0 / codebook_size)

    def codebook(self) -> Tensor:
        w = self.embedding.weight
        return F.normalize(w, dim=-1) if self.l2_norm else w

    def distances(self, z: Tensor) -> Tensor:
        """Squared distances (N, K) from flattened vectors z (..., dim) to every code, in float32 under any
        autocast (as TiTok's quantiser: "Ensure quantization is performed using f32"): in bf16 the cross
        term keeps ~3 digits and changes a few percent of the nearest codes."""
        with no_autocast(z.device):
            flat = z.reshape(-1, z.shape[-1]).float()
            codes = self.codebook().float()
            if self.norms_first:
                return flat.pow(2).sum(1, keepdim=True) + codes.pow(2).sum(1)[None] - 2 * flat @ codes.t()
            return flat.pow(2).sum(1, keepdim=True) - 2 * flat @ codes.t() + codes.pow(2).sum(1)[None]

    def indices(self, z: Tensor) -> Tensor:
        """Nearest code ids for vectors z (..., dim)."""
        if self.l2_norm:
            z = F.normalize(z, dim=-1)
        return self.distances(z).argmin(1).view(z.shape[:-1])

    def lookup(self, ids: Tensor) -> Tensor:
        return F.embedding(ids, self.codebook())

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """z (..., dim) -> (straight-through quantised z, code ids, {codebook, commitment[, entropy]})."""
        if self.l2_norm:
            z = F.normalize(z, dim=-1)
        dist = self.distances(z)
        ids = dist.argmin(1).view(z.shape[:-1])
        zq = self.lookup(ids).to(z.dtype)
        losses = {
            "codebook": F.mse_loss(zq, z.detach()),
            "commitment": self.commitment * F.mse_loss(z, zq.detach()),
        }
        if self.entropy_weight > 0:
            probs = F.softmax(-dist / self.entropy_temperature, dim=-1)
            losses["entropy"] = self.entropy_weight * entropy_regularizer(probs)
        return z + (zq - z).detach(), ids, losses


class SoftVectorQuantizer(nn.Module):
    """Soft vector quantisation (SoftVQ-VAE; SelfBootTok Eq. 2-3), fully differentiable.

        q(k | z) = softmax_k(-||z - c_k||_2 / tau)        (Eq. 2)
        Z        = sum_k q(k | z) c_k                     (Eq. 3)

    With ``l2_norm`` both z and the codes lie on the unit sphere. As tau -> 0 q becomes one-hot on the
    nearest code and Z becomes hard VQ. ``num_codebooks`` > 1 splits the token sequence into that many
    consecutive segments, each with its own codebook (as SoftVQ does).

    ``similarity="cosine"`` is SoftVQ-VAE's released quantiser instead of Eq. 2's distance:

        q(k | z) = softmax_k(ẑ · sg[ê_k] / tau)          (ẑ, ê: L2-normalised; = softmax_k(-||ẑ - ê_k||^2 / 2 tau))

    (``logits = torch.einsum('nbe, nke -> nbk', z_flat, embedding.detach())`` in its ``SoftVectorQuantizer``;
    the codes still learn through Eq. 3).
    """

    def __init__(
        self,
        codebook_size: int,
        dim: int,
        tau: float = 0.07,
        l2_norm: bool = True,
        num_codebooks: int = 1,
        similarity: str = "distance",
    ) -> None:
        super().__init__()
        if similarity not in SIMILARITIES:
            raise ValueError(f"unknown soft-VQ similarity '{similarity}'; choose from {', '.join(SIMILARITIES)}")
        self.codebook_size, self.tau, self.l2_norm = codebook_size, tau, l2_norm
        self.num_codebooks, self.similarity = num_codebooks, similarity
        self.embedding = nn.Parameter(torch.empty(num_codebooks, codebook_size, dim))
        nn.init.normal_(self.embedding, std=dim**-0.5)

    def codebooks(self) -> Tensor:
        return F.normalize(self.embedding, dim=-1) if self.l2_norm else self.embedding

    def logits(self, z: Tensor) -> Tensor:
        """Eq. 2's logits before the temperature for tokens z (B, N, dim): -||z - c_k|| (or, ``cosine``,
        ẑ · sg[ê_k]), (B, N, K), each token against its segment's codebook."""
        b, n, d = z.shape
        if n % self.num_codebooks:
            raise ValueError(f"{n} tokens do not split evenly over {self.num_codebooks} codebooks")
        if self.l2_norm:
            z = F.normalize(z, dim=-1)
        seg = z.reshape(b, self.num_codebooks, n // self.num_codebooks, d).transpose(0, 1)
        if self.similarity == "cosine":
            logits = torch.einsum("gbnd,gkd->gbnk", seg.float(), self.codebooks().detach().float())
        else:
            codes = self.codebooks()[:, None].expand(-1, b, -1, -1)
            logits = -torch.cdist(seg.float(), codes.float())  # (G, B, N/G, K), Euclidean
        return logits.transpose(0, 1).reshape(b, n, self.codebook_size)

    def from_logits(self, logits: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """Eq. 2-3 from :meth:`logits`: (soft-quantised tokens Z in ``dtype``, code probabilities q)."""
        probs = F.softmax(logits / self.tau, dim=-1)
        return self.quantize(probs).to(dtype), probs

    def quantize(self, probs: Tensor) -> Tensor:
        """Eq. 3: the probability-weighted sum of each segment's codes."""
        b, n, k = probs.shape
        seg = probs.reshape(b, self.num_codebooks, n // self.num_codebooks, k)
        z = torch.einsum("bgnk,gkd->bgnd", seg, self.codebooks().to(probs.dtype))
        return z.reshape(b, n, -1)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Tokens z (B, N, dim) -> (soft-quantised tokens Z, code probabilities q)."""
        return self.from_logits(self.logits(z), z.dtype)


class DiagonalGaussian:
    """Posterior N(mean, diag(exp(logvar))) of a KL-VAE latent (Kingma & Welling 2014)."""

    def __init__(self, moments: Tensor, dim: int = -1) -> None:
        self.mean, logvar = moments.chunk(2, dim=dim)
        self.logvar = logvar.clamp(-30.0, 20.0)

    def sample(self) -> Tensor:
        """Reparameterised z = mean + std * eps."""
        return self.mean + (0.5 * self.logvar).exp() * torch.randn_like(self.mean)

    def kl(self) -> Tensor:
        """KL(q || N(0, I)) = 0.5 * sum(mean^2 + var - 1 - logvar), averaged over the batch."""
        terms = self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar
        return 0.5 * terms.flatten(1).sum(1).mean()

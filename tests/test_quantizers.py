"""Quantisers and codebook regularisers against their closed forms."""

import math

import pytest
import torch
import torch.nn.functional as F

from benchmark.quantizers import (
    DiagonalGaussian,
    SoftVectorQuantizer,
    VectorQuantizer,
    entropy_regularizer,
    kl_to_uniform,
)


def test_soft_vq_matches_closed_form_of_eq_2_3():
    torch.manual_seed(0)
    q = SoftVectorQuantizer(codebook_size=5, dim=3, tau=0.5, l2_norm=False)
    z = torch.randn(2, 4, 3)
    zq, probs = q(z)
    codes = q.embedding[0]
    for b in range(2):
        for n in range(4):
            logits = torch.stack([-(z[b, n] - codes[k]).norm() / 0.5 for k in range(5)])
            p = torch.softmax(logits, 0)
            torch.testing.assert_close(probs[b, n], p, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(zq[b, n], (p[:, None] * codes).sum(0), rtol=1e-5, atol=1e-6)


def test_soft_vq_tends_to_hard_vq_as_tau_goes_to_zero():
    torch.manual_seed(1)
    soft = SoftVectorQuantizer(codebook_size=16, dim=4, tau=1e-4, l2_norm=True)
    z = torch.randn(3, 8, 4)
    zq, probs = soft(z)
    hard = VectorQuantizer(16, 4, l2_norm=True)
    hard.embedding.weight.data.copy_(soft.embedding[0].data)
    hq, ids, _ = hard(z)
    assert torch.equal(probs.argmax(-1), ids)
    torch.testing.assert_close(zq, hq, atol=1e-4, rtol=0)
    gaps = []
    for tau in (1.0, 0.1, 0.01, 1e-4):
        soft.tau = tau
        gaps.append((soft(z)[0] - hq).abs().max().item())
    assert gaps == sorted(gaps, reverse=True) and gaps[0] > 100 * gaps[-1]


def test_soft_vq_is_differentiable_and_splits_codebooks_along_the_sequence():
    torch.manual_seed(2)
    q = SoftVectorQuantizer(codebook_size=8, dim=4, tau=0.1, num_codebooks=2)
    z = torch.randn(2, 6, 4, requires_grad=True)
    zq, probs = q(z)
    zq.pow(2).sum().backward()
    assert z.grad.abs().sum() > 0 and q.embedding.grad[0].abs().sum() > 0 and q.embedding.grad[1].abs().sum() > 0
    first = SoftVectorQuantizer(codebook_size=8, dim=4, tau=0.1)
    first.embedding.data.copy_(q.embedding.data[:1])
    torch.testing.assert_close(first(z[:, :3])[0], zq[:, :3])
    with pytest.raises(ValueError, match="codebooks"):
        q(torch.randn(1, 5, 4))


def test_entropy_regularizer_extremes():
    k = 8
    one_hot_spread = torch.eye(k)  # confident tokens, every code used once: the minimum, -log K
    assert entropy_regularizer(one_hot_spread).item() == pytest.approx(-math.log(k), abs=1e-5)
    collapsed = F.one_hot(torch.zeros(k, dtype=torch.long), k).float()  # confident, all on one code
    assert entropy_regularizer(collapsed).item() == pytest.approx(0.0, abs=1e-5)
    uniform = torch.full((k, k), 1.0 / k)  # unconfident tokens: sample entropy log K = mean entropy
    assert entropy_regularizer(uniform).item() == pytest.approx(0.0, abs=1e-5)


def test_kl_to_uniform():
    assert kl_to_uniform(torch.full((3, 4), 0.25)).item() == pytest.approx(0.0, abs=1e-6)
    assert kl_to_uniform(torch.eye(4)).item() == pytest.approx(math.log(4), abs=1e-5)


def test_hard_vq_entropy_term_is_optional_and_differentiable():
    torch.manual_seed(3)
    vq = VectorQuantizer(32, 4, l2_norm=False, entropy_weight=0.1)
    z = torch.randn(2, 10, 4, requires_grad=True)
    out, ids, losses = vq(z)
    assert set(losses) == {"codebook", "commitment", "entropy"}
    losses["entropy"].backward()
    assert z.grad.abs().sum() > 0
    assert "entropy" not in VectorQuantizer(32, 4)(z)[2]


def test_diagonal_gaussian_kl_and_sampling():
    mean, logvar = torch.zeros(2, 3), torch.zeros(2, 3)
    assert DiagonalGaussian(torch.cat([mean, logvar], -1)).kl().item() == pytest.approx(0.0)
    post = DiagonalGaussian(torch.cat([torch.ones(2, 3), torch.full((2, 3), math.log(4.0))], -1))
    expected = 0.5 * 3 * (1 + 4 - 1 - math.log(4.0))
    assert post.kl().item() == pytest.approx(expected, rel=1e-5)
    torch.manual_seed(0)
    big = DiagonalGaussian(torch.cat([torch.full((20000, 1), 2.0), torch.full((20000, 1), math.log(0.25))], -1))
    s = big.sample()
    assert s.mean().item() == pytest.approx(2.0, abs=0.02) and s.std().item() == pytest.approx(0.5, abs=0.02)


def test_norms_first_sums_the_same_distance_in_the_releases_order():
    """|z|^2 + |e|^2 - 2 z.e (TiTok, taming, MaskGIT-VQGAN) bit for bit; the default order agrees up to
    rounding, with the same nearest codes away from ties."""
    g = torch.Generator().manual_seed(0)
    z, codes = torch.randn(64, 8, generator=g), torch.randn(32, 8, generator=g)
    official, default = VectorQuantizer(32, 8, l2_norm=False, norms_first=True), VectorQuantizer(32, 8, l2_norm=False)
    official.embedding.weight.data.copy_(codes)
    default.embedding.weight.data.copy_(codes)
    expected = z.pow(2).sum(1, keepdim=True) + codes.pow(2).sum(1)[None] - 2 * z @ codes.t()
    assert torch.equal(official.distances(z), expected)
    assert torch.allclose(default.distances(z), expected, atol=1e-5)
    assert torch.equal(official.indices(z), torch.cdist(z, codes).argmin(1))


def test_cosine_soft_vq_is_softvq_releases_quantiser():
    """softmax(ẑ . sg[ê] / tau) = softmax(-|ẑ - ê|^2 / 2 tau) on the unit sphere; the codes learn only
    through Eq. 3, as in SoftVQ's quantiser (logits on ``embedding.detach()``)."""
    q = SoftVectorQuantizer(codebook_size=6, dim=4, tau=0.1, num_codebooks=2, similarity="cosine")
    z = torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(1), requires_grad=True)
    _, probs = q(z)
    codes = F.normalize(q.embedding, dim=-1)  # (2, 6, 4): codebook g for tokens 2g, 2g + 1
    zn = F.normalize(z, dim=-1).reshape(3, 2, 2, 4)
    cosine = torch.einsum("bgnd,gkd->bgnk", zn, codes).reshape(3, 4, 6)
    assert torch.allclose(probs, F.softmax(cosine / 0.1, -1), atol=1e-6)
    distance = (zn[:, :, :, None] - codes[None, :, None]).pow(2).sum(-1).reshape(3, 4, 6)
    assert torch.allclose(probs, F.softmax(-distance / 0.2, -1), atol=1e-5)
    probs[..., 0].sum().backward()
    assert q.embedding.grad is None and z.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="unknown soft-VQ similarity 'dot'"):
        SoftVectorQuantizer(6, 4, similarity="dot")


def test_hard_vq_picks_the_float32_nearest_code_under_bf16_autocast():
    """Under bf16 autocast (training and evaluation on GPUs; here the CPU's) the distances stay float32:
    the same code ids as without autocast. In bf16 the cross term keeps ~3 digits and moves ~1% of them."""
    torch.manual_seed(0)
    q = VectorQuantizer(codebook_size=1024, dim=256, l2_norm=False)
    q.embedding.weight.data.normal_()
    z = torch.randn(4096, 256)
    reference = q.indices(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert q.distances(z).dtype == torch.float32
        assert torch.equal(q(z)[1], reference)
        bf16 = (z @ q.codebook().t()).dtype == torch.bfloat16  # what the cross term was without the guard
    assert bf16

"""Discriminators, GAN losses, LeCAM, bCR, the adaptive weight and the Adversary a tokenizer holds."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.errors import ConfigError
from benchmark.gan import (
    Adversary,
    LeCAM,
    PatchGANDiscriminator,
    StyleGANDiscriminator,
    adaptive_weight,
    augment,
    consistency_loss,
    hinge_d_loss,
    hinge_g_loss,
    minibatch_std,
    non_saturating_d_loss,
    non_saturating_g_loss,
)

REAL = torch.tensor([2.0, 0.5, -1.0])
FAKE = torch.tensor([-2.0, 0.0, 1.5])


def images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# Losses


def test_hinge_losses_on_known_logits() -> None:
    # relu(1 - real) = [0, 0.5, 2], relu(1 + fake) = [0, 1, 2.5]: 1/2 (2.5/3 + 3.5/3) = 1
    assert hinge_d_loss(REAL, FAKE).item() == pytest.approx(1.0)
    assert hinge_g_loss(FAKE).item() == pytest.approx(-(-2.0 + 0.0 + 1.5) / 3)
    # a confident, correct discriminator pays nothing
    assert hinge_d_loss(torch.full((4,), 3.0), torch.full((4,), -3.0)).item() == 0.0


def test_non_saturating_losses_on_known_logits() -> None:
    def nll(p: float) -> float:
        return -math.log(p)

    sig = [1 / (1 + math.exp(-v)) for v in REAL.tolist()]
    sig_fake = [1 / (1 + math.exp(-v)) for v in FAKE.tolist()]
    expected_d = 0.5 * (sum(nll(s) for s in sig) / 3 + sum(nll(1 - s) for s in sig_fake) / 3)
    expected_g = sum(nll(s) for s in sig_fake) / 3
    assert non_saturating_d_loss(REAL, FAKE).item() == pytest.approx(expected_d, rel=1e-6)
    assert non_saturating_g_loss(FAKE).item() == pytest.approx(expected_g, rel=1e-6)


# ---------------------------------------------------------------------------------------------
# LeCAM


def test_lecam_matches_hand_computation_and_updates_its_emas() -> None:
    lecam = LeCAM(decay=0.9).train()
    r1, f1 = torch.tensor([1.0, 3.0]), torch.tensor([-1.0, 2.0])
    # first update: the anchors are the current means, a_R = 2, a_F = 0.5
    got = lecam.loss(r1, f1)
    expected = ((1 - 0.5) ** 2 + (3 - 0.5) ** 2) / 2 + ((2 - -1) ** 2 + 0.0) / 2
    assert got.item() == pytest.approx(expected)
    assert lecam.ema_real.item() == pytest.approx(2.0) and lecam.ema_fake.item() == pytest.approx(0.5)

    r2, f2 = torch.tensor([0.0, 0.0]), torch.tensor([4.0, 4.0])
    got = lecam.loss(r2, f2)
    a_r, a_f = 0.9 * 2.0 + 0.1 * 0.0, 0.9 * 0.5 + 0.1 * 4.0  # 1.8, 0.85
    expected = 0.0 + 0.0  # relu(0 - 0.85) = 0, relu(1.8 - 4) = 0
    assert got.item() == pytest.approx(expected)
    assert lecam.ema_real.item() == pytest.approx(a_r) and lecam.ema_fake.item() == pytest.approx(a_f)

    # eval mode regularises against the anchors without moving them
    lecam.eval()
    r3, f3 = torch.tensor([2.0]), torch.tensor([-1.0])
    assert lecam.loss(r3, f3).item() == pytest.approx((2.0 - a_f) ** 2 + (a_r + 1.0) ** 2)
    assert lecam.ema_real.item() == pytest.approx(a_r) and lecam.num_updates.item() == 2


def test_lecam_gradient_flows_to_logits_only() -> None:
    lecam = LeCAM().train()
    real = torch.tensor([1.0, 2.0], requires_grad=True)
    fake = torch.tensor([0.0, 1.0], requires_grad=True)
    lecam.loss(real, fake).backward()
    # a_F = 0.5: d/dr mean(relu(r - 0.5)^2) = (r - 0.5); a_R = 1.5: d/df mean(relu(1.5 - f)^2) = -(1.5 - f)
    assert torch.allclose(real.grad, torch.tensor([0.5, 1.5]))
    assert torch.allclose(fake.grad, torch.tensor([-1.5, -0.5]))
    assert not lecam.ema_real.requires_grad


# ---------------------------------------------------------------------------------------------
# Adaptive weight


def test_adaptive_weight_is_the_ratio_of_gradient_norms() -> None:
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(4, 5))
    x, target, v = torch.randn(8, 5), torch.randn(8, 4), torch.randn(8, 4)
    out = x @ w.t()
    nll = 0.5 * (out - target).pow(2).sum()  # dnll/dW = (out - target)^T x
    g_loss = -(out * v).sum()  # dg/dW = -v^T x
    grad_nll = (out - target).t() @ x
    grad_g = -v.t() @ x
    expected = grad_nll.norm() / (grad_g.norm() + 1e-4)

    weight = adaptive_weight(nll, g_loss, w)
    assert weight.item() == pytest.approx(expected.item(), rel=1e-5)
    assert not weight.requires_grad
    assert adaptive_weight(nll, g_loss, w, max_weight=0.01).item() == pytest.approx(0.01)
    # the graph is retained: the caller can still backward through both losses
    (nll + g_loss).backward()
    assert torch.allclose(w.grad, (grad_nll + grad_g).detach(), atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Augmentation and consistency regularisation


def test_augment_is_seeded_shape_preserving_and_differentiable() -> None:
    x = (images(6) * 2 - 1).requires_grad_(True)
    a = augment(x, torch.Generator().manual_seed(1))
    b = augment(x, torch.Generator().manual_seed(1))
    c = augment(x, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    # the cutout sets a square of at least (H/4)^2 pixels (a half-size square centred anywhere) to 0
    zeros = (a == 0).all(dim=1).flatten(1).sum(1)
    assert (zeros >= (32 // 4) ** 2).all()
    a.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_consistency_loss_zero_for_constant_discriminator_positive_otherwise() -> None:
    torch.manual_seed(0)
    real, fake = images(4, seed=1) * 2 - 1, images(4, seed=2) * 2 - 1

    def constant(x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], 1), 0.7)

    assert consistency_loss(constant, real, fake).item() == 0.0
    disc = PatchGANDiscriminator(width=8, num_layers=2)
    loss = consistency_loss(disc, real, fake, generator=torch.Generator().manual_seed(0))
    assert loss.item() > 0
    loss.backward()
    assert disc[0].weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------
# Discriminators


@pytest.mark.parametrize("size, side", [(32, 2), (64, 6)])
def test_patchgan_shape_init_and_gradients(size: int, side: int) -> None:
    torch.manual_seed(0)
    disc = PatchGANDiscriminator(width=16, num_layers=3)
    x = images(2, size).requires_grad_(True)
    out = disc(x)
    assert out.shape == (2, 1, side, side) == (2, 1, *[PatchGANDiscriminator.output_size(size, 3)] * 2)
    out.mean().backward()
    assert x.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in disc.parameters())
    convs = [m for m in disc if isinstance(m, nn.Conv2d)]
    norms = [m for m in disc if isinstance(m, nn.BatchNorm2d)]
    assert [m.stride[0] for m in convs] == [2, 2, 2, 1, 1] and len(norms) == 3
    assert [m.out_channels for m in convs] == [16, 32, 64, 128, 1]
    assert abs(convs[3].weight.std().item() - 0.02) < 0.002
    assert abs(norms[2].weight.mean().item() - 1.0) < 0.01 and norms[2].bias.abs().sum() == 0


@pytest.mark.parametrize("size", [8, 32, 64])
def test_stylegan_shape_and_gradients(size: int) -> None:
    torch.manual_seed(0)
    disc = StyleGANDiscriminator(size, width=8, max_width=32)
    x = images(4, size).requires_grad_(True)
    out = disc(x)
    assert out.shape == (4, 1)
    out.sum().backward()
    assert x.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in disc.parameters())
    assert len(disc.blocks) == int(math.log2(size)) - 2
    assert disc.conv.in_channels == min(8 * size // 4, 32) + 1


def test_stylegan_rejects_non_power_of_two() -> None:
    with pytest.raises(ValueError, match="power-of-two"):
        StyleGANDiscriminator(48)


def test_minibatch_std_matches_hand_computation() -> None:
    torch.manual_seed(0)
    x = torch.randn(6, 2, 3, 3)  # groups of 3 (the largest divisor of 6 that is <= 4)
    out = minibatch_std(x)
    assert out.shape == (6, 3, 3, 3) and torch.equal(out[:, :2], x)
    groups = [[0, 2, 4], [1, 3, 5]]  # sample i is in group i mod (B / G)
    for members in groups:
        std = (x[members].var(dim=0, unbiased=False) + 1e-8).sqrt().mean()
        for i in members:
            assert torch.allclose(out[i, 2], torch.full((3, 3), std.item()), atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Adversary


def test_adversary_generator_loss_zero_before_start_weighted_after() -> None:
    torch.manual_seed(0)
    adv = Adversary(image_size=32, weight=0.5, start=10, adaptive=False, width=8)
    fake = images(2).requires_grad_(True)
    nll = fake.abs().mean()
    zero = adv.generator_loss(fake, nll, None, step=9)
    assert zero.item() == 0.0 and zero.dtype == torch.float32 and not adv.active(9) and adv.active(10)
    got = adv.generator_loss(fake, nll, None, step=10)
    expected = 0.5 * -adv.discriminator(fake * 2 - 1).mean()
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    got.backward()
    assert fake.grad.abs().sum() > 0
    # weight 0 turns it off at every step
    assert Adversary(image_size=32, weight=0.0, width=8).generator_loss(fake, nll, None, 100).item() == 0.0


def test_adversary_adaptive_weight_uses_the_last_layer() -> None:
    torch.manual_seed(0)
    adv = Adversary(image_size=32, weight=0.1, loss="non_saturating", width=8)
    last = nn.Conv2d(4, 3, 1)
    z, target = torch.randn(2, 4, 32, 32), images(2)
    fake = torch.sigmoid(last(z))
    nll = (fake - target).abs().mean()
    got = adv.generator_loss(fake, nll, last.weight, step=0)
    g = F.softplus(-adv.discriminator(fake * 2 - 1)).mean()
    expected = 0.1 * adaptive_weight(nll, g, last.weight) * g
    assert got.item() == pytest.approx(expected.item(), rel=1e-4)
    assert got.item() != pytest.approx(0.1 * g.item(), rel=1e-3)
    # without recorded gradients (validation) the weight is 1
    with torch.no_grad():
        fake = torch.sigmoid(last(z))
        got = adv.generator_loss(fake, (fake - target).abs().mean(), last.weight, step=0)
    assert got.item() == pytest.approx(0.1 * g.item(), rel=1e-4)


def test_adversary_discriminator_loss_keys_and_weights() -> None:
    torch.manual_seed(0)
    adv = Adversary(kind="stylegan", image_size=32, start=5, lecam_weight=0.01, consistency_weight=10.0, width=8)
    real, fake = images(4, seed=1), images(4, seed=2)
    before = adv.discriminator_loss(real, fake, step=4)
    assert set(before) == {"disc", "lecam", "consistency"} and all(v.item() == 0.0 for v in before.values())
    after = adv.discriminator_loss(real, fake, step=5)
    assert set(after) == {"disc", "lecam", "consistency"}
    assert all(v.item() > 0 and v.dtype == torch.float32 for v in after.values())
    expected = hinge_d_loss(adv.discriminator(real * 2 - 1), adv.discriminator(fake * 2 - 1))
    assert after["disc"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert adv.lecam.num_updates.item() == 1
    sum(after.values()).backward()
    assert all(p.grad is not None for p in adv.discriminator.parameters())
    plain = Adversary(image_size=32, width=8).discriminator_loss(real, fake, step=0)
    assert plain["lecam"].item() == 0.0 and plain["consistency"].item() == 0.0 and plain["disc"].item() > 0


def test_adversary_is_a_trainable_saved_child() -> None:
    tokenizer = nn.Module()
    tokenizer.adversary = Adversary(image_size=32, width=8)
    keys = tokenizer.state_dict().keys()
    assert any(k.startswith("adversary.discriminator.") for k in keys)
    assert "adversary.lecam.ema_real" in keys
    assert all(p.requires_grad for p in tokenizer.adversary.discriminator.parameters())


def test_toy_discriminator_separates_real_from_fixed_fakes() -> None:
    """Hinge training on smooth 'real' images against fixed noise 'fakes': the loss falls, logits order."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    ramp = torch.linspace(0, 1, 32)
    base = (ramp[None, :] * ramp[:, None]).expand(3, 32, 32)

    def real_batch() -> torch.Tensor:
        shift = torch.rand(8, 3, 1, 1, generator=gen) * 0.5
        return (base * 0.5 + shift).clamp(0, 1)

    fake = torch.rand(8, 3, 32, 32, generator=gen)
    adv = Adversary(image_size=32, width=8)
    opt = torch.optim.Adam(adv.discriminator.parameters(), lr=2e-4, betas=(0.5, 0.9))
    losses = []
    for _ in range(50):
        loss = sum(adv.discriminator_loss(real_batch(), fake, step=0).values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 0.5 and sum(losses[-5:]) / 5 < 0.1 * losses[0]
    for mode in (True, False):  # batch statistics, then the running ones
        adv.train(mode)
        with torch.no_grad():
            real_logits, fake_logits = adv.logits(real_batch()), adv.logits(fake)
        assert real_logits.mean() > 0 > fake_logits.mean()
        assert real_logits.flatten(1).mean(1).min() > fake_logits.flatten(1).mean(1).max()


@pytest.mark.parametrize(
    "kwargs, option",
    [
        ({"kind": "biggan"}, "tokenizer.adversarial.kind"),
        ({"loss": "wasserstein"}, "tokenizer.adversarial.loss"),
        ({"weight": -1.0}, "tokenizer.adversarial.weight"),
        ({"lecam_weight": "a"}, "tokenizer.adversarial.lecam_weight"),
        ({"num_layers": 4, "image_size": 16}, "tokenizer.adversarial.num_layers"),
        ({"kind": "stylegan", "image_size": 48}, "tokenizer.adversarial.kind"),
    ],
)
def test_adversary_config_errors_name_the_option(kwargs: dict, option: str) -> None:
    with pytest.raises(ConfigError, match=option.replace(".", r"\.")):
        Adversary(**{"image_size": 32, **kwargs})


def test_empty_options_are_the_terms_at_their_defaults_and_none_is_no_term() -> None:
    """``adversarial: {}`` / ``perceptual: {}`` switch the term on with every default (as SoftVQ's docstring
    says); only an absent (None) mapping or weight 0 leaves it out."""
    from benchmark.objectives import PixelObjective, build_adversary

    assert isinstance(build_adversary({}, 32), Adversary)
    assert build_adversary(None, 32) is None and build_adversary({"weight": 0}, 32) is None
    pixel = PixelObjective("l2", 1.0, {"weights": "random"})
    assert pixel.perceptual is not None and pixel.perceptual_weight == 1.0
    assert PixelObjective("l2", 1.0, None).perceptual is None
    assert set(pixel(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32))) == {"recon", "perceptual"}


def test_lecam_decay_is_an_option_checked_by_range() -> None:
    """TiTok's and SoftVQ's training code let LeCAM's averages decay at 0.999; its authors' 0.99 is the default."""
    assert Adversary(image_size=32, width=8).lecam.decay == 0.99
    assert Adversary(image_size=32, width=8, lecam_decay=0.999).lecam.decay == 0.999
    with pytest.raises(ConfigError, match=r"tokenizer\.adversarial\.lecam_decay: must be a number >= 0 and < 1"):
        Adversary(image_size=32, width=8, lecam_decay=1.0)

"""SiT: the interpolant's algebra, the ODE / SDE samplers on an exact Gaussian velocity field, the
DiT network (adaLN-Zero, CFG, REPA, REG's entangled class token) and a tiny class-conditional
training run."""

from __future__ import annotations

import sys

import pytest
import torch

from benchmark.base import TokenSpec
from benchmark.errors import ConfigError
from benchmark.registry import GENERATORS, load_plugins

load_plugins()
SiT = GENERATORS.get("sit").obj
sit = sys.modules[SiT.__module__]
Interpolant, ode_sample, sde_sample = sit.Interpolant, sit.ode_sample, sit.sde_sample

PATHS = ["linear", "gvp"]
# 12 tokens of which the generator models the first 8, each of dim 4.
SPEC = TokenSpec("continuous", (12,), dim=4, generated=8)


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: one intra-op thread is fastest, and stays fast on a busy machine (with
    two threads every small op waits for both to be scheduled). The previous setting is restored."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_sit(**kw) -> SiT:
    torch.manual_seed(0)
    return GENERATORS.build("sit", **{"token_spec": SPEC, "num_classes": 3, "size": "tiny", **kw})


def randomise_zero_init(model: SiT) -> SiT:
    """Fill the adaLN-Zero / output layers with small noise so the prediction depends on x, t and y."""
    torch.manual_seed(1)
    with torch.no_grad():
        for module in [
            *(b.adaLN_modulation[-1] for b in model.blocks),
            model.final_layer.adaLN_modulation[-1],
            model.final_layer.linear,
        ]:
            module.weight.normal_(0, 0.1)
            module.bias.normal_(0, 0.1)
    return model


# --------------------------------------------------------------------------------------------------
# Interpolant
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
def test_interpolant_endpoints_are_data_and_noise(path):
    interp = Interpolant(path)
    x0, eps = torch.randn(2, 3, 5, dtype=torch.float64).unbind(0)
    assert torch.allclose(interp.x_t(x0, eps, 0.0), x0, atol=1e-12)
    assert torch.allclose(interp.x_t(x0, eps, 1.0), eps, atol=1e-12)
    # one time per sample broadcasts over the trailing dims
    t = torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64)
    xt = interp.x_t(x0, eps, t)
    assert torch.allclose(xt[0], x0[0]) and torch.allclose(xt[1], eps[1])


@pytest.mark.parametrize("path", PATHS)
def test_velocity_is_the_time_derivative_of_x_t(path):
    interp = Interpolant(path)
    torch.manual_seed(0)
    x0, eps = torch.randn(2, 6, 4, dtype=torch.float64).unbind(0)
    t = torch.rand(6, dtype=torch.float64) * 0.98 + 0.01
    h = 1e-6
    finite_difference = (interp.x_t(x0, eps, t + h) - interp.x_t(x0, eps, t - h)) / (2 * h)
    assert torch.allclose(interp.velocity(x0, eps, t), finite_difference, atol=1e-7)


@pytest.mark.parametrize("path", PATHS)
def test_velocity_noise_score_conversions_agree(path):
    interp = Interpolant(path)
    torch.manual_seed(0)
    x0, eps = torch.randn(2, 64, 3, dtype=torch.float64).unbind(0)
    t = torch.rand(64, dtype=torch.float64) * 0.98 + 0.01
    x, v = interp.x_t(x0, eps, t), interp.velocity(x0, eps, t)
    s = -eps / interp.sigma(t)[:, None]
    assert torch.allclose(interp.noise_from_velocity(v, x, t), eps)
    assert torch.allclose(interp.score_from_velocity(v, x, t), s)
    assert torch.allclose(interp.velocity_from_noise(eps, x, t), v)
    assert torch.allclose(interp.velocity_from_score(s, x, t), v)
    assert torch.allclose(interp.score_from_noise(eps, x, t), s)
    assert torch.allclose(interp.noise_from_score(s, x, t), eps)
    # SiT's own formula (transport/path.py, get_score_from_velocity), in this time convention.
    a, sg = interp.alpha(t)[:, None], interp.sigma(t)[:, None]
    da, ds = interp.d_alpha(t)[:, None], interp.d_sigma(t)[:, None]
    ratio = a / da
    assert torch.allclose((ratio * v - x) / (sg**2 - ratio * ds * sg), s)
    # A velocity model gives the noise at both ends too (the denominator never vanishes).
    for end in (0.0, 1.0):
        xe, ve = interp.x_t(x0, eps, end), interp.velocity(x0, eps, end)
        assert torch.allclose(interp.noise_from_velocity(ve, xe, end), eps)


# --------------------------------------------------------------------------------------------------
# Samplers on an exact velocity field: data N(m, var) in 1D
# --------------------------------------------------------------------------------------------------

MEAN, VAR = 2.0, 0.25


def gaussian_velocity(interp: Interpolant):
    """u(x, t) = alpha' E[x0 | x_t = x] + sigma' E[eps | x_t = x] for x0 ~ N(MEAN, VAR)."""

    def u(x: torch.Tensor, t: float) -> torch.Tensor:
        tt = torch.tensor(t, dtype=torch.float64)
        a, s, da, ds = interp.alpha(tt), interp.sigma(tt), interp.d_alpha(tt), interp.d_sigma(tt)
        var_t = a**2 * VAR + s**2
        x0_mean = MEAN + a * VAR * (x - a * MEAN) / var_t
        eps_mean = s * (x - a * MEAN) / var_t
        return da * x0_mean + ds * eps_mean

    return u


def noise_1d(n: int = 20000, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("path", PATHS)
def test_ode_recovers_the_gaussian_and_heun_beats_euler(path):
    interp = Interpolant(path)
    u, x1 = gaussian_velocity(interp), noise_1d()
    exact = MEAN + VAR**0.5 * x1  # the probability-flow map of a Gaussian is affine in x1
    x = ode_sample(u, x1, 20, "heun")
    assert abs(x.mean().item() - MEAN) < 0.03 and abs(x.var().item() - VAR) < 0.015
    assert (x - exact).abs().max() < 0.01
    errors = {m: (ode_sample(u, x1, 10, m) - exact).abs().max().item() for m in ("euler", "heun")}
    assert errors["heun"] < 0.25 * errors["euler"], errors


@pytest.mark.parametrize("path", PATHS)
def test_sde_recovers_the_gaussian(path):
    interp = Interpolant(path)
    u, x1 = gaussian_velocity(interp), noise_1d()
    x = sde_sample(u, interp, x1, 250, generator=torch.Generator().manual_seed(1))
    assert abs(x.mean().item() - MEAN) < 0.03 and abs(x.var().item() - VAR) < 0.015
    # The noise is really injected (a different sample from the ODE's), and reproducible by seed.
    assert (x - (MEAN + VAR**0.5 * x1)).abs().mean() > 0.05
    again = sde_sample(u, interp, x1, 250, generator=torch.Generator().manual_seed(1))
    assert torch.equal(x, again)


def test_sde_last_step_is_deterministic_and_stops_short_of_sigma_zero():
    """With one step the SDE is one noiseless Euler step of the drift v - w s at t = 1."""
    interp = Interpolant("linear")
    u, x1 = gaussian_velocity(interp), noise_1d(100)
    one = sde_sample(u, interp, x1, 1, diffusion_norm=1.0, generator=torch.Generator().manual_seed(0))
    v = u(x1, 1.0)
    assert torch.allclose(one, x1 - (v - 1.0 * interp.score_from_velocity(v, x1, 1.0)))
    # With many steps no velocity is ever asked for at t = 0, where the score divides by sigma(0) = 0.
    times = []
    sde_sample(lambda x, t: times.append(t) or u(x, t), interp, x1, 10)
    assert min(times) == pytest.approx(sit.LAST_STEP) and max(times) == 1.0 and len(times) == 10


# --------------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------------


def test_forward_is_zero_at_init_and_only_the_output_layer_gets_gradients():
    """adaLN-Zero: every block is the identity and the output layer is zero at init, so the first
    gradient of the flow loss reaches only the final linear layer."""
    model = tiny_sit()
    x, t, y = torch.randn(5, 8, 4), torch.rand(5), torch.randint(0, 3, (5,))
    out, cls_out, _ = model(x, t, y)
    assert out.shape == (5, 8, 4) and torch.equal(out, torch.zeros_like(out)) and cls_out is None
    losses = model.loss(torch.randn(5, 8, 4), y)
    assert set(losses) == {"flow"} and torch.isfinite(losses["flow"])
    losses["flow"].backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad == {"final_layer.linear.weight", "final_layer.linear.bias"}


def test_every_parameter_trains_after_two_steps():
    """After two optimiser steps the zero-initialised layers are non-zero and every parameter
    (REPA projector included, label table, time MLP, attention, MLPs) gets a gradient."""
    model = tiny_sit(repa_depth=1, repa_dim=6, repa_projector_dim=32)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    tokens, labels, feats = torch.randn(16, 8, 4), torch.arange(16) % 3, torch.randn(16, 5, 6)
    for _ in range(3):
        opt.zero_grad()
        losses = model.loss(tokens, labels, feats)
        assert all(torch.isfinite(v) for v in losses.values())
        sum(losses.values()).backward()
        grads = {n: p.grad is not None and p.grad.abs().sum().item() > 0 for n, p in model.named_parameters()}
        opt.step()
    assert all(grads.values()), [n for n, ok in grads.items() if not ok]
    assert "pos_embed" not in dict(model.named_parameters())  # fixed sin-cos, not trained


@pytest.mark.parametrize("prediction", ["velocity", "noise", "score"])
def test_each_prediction_converts_to_the_true_velocity(prediction):
    """A network that outputs the exact target of its ``prediction`` yields the exact velocity."""
    model = tiny_sit(prediction=prediction)
    interp = model.interpolant
    torch.manual_seed(0)
    x0, eps, t = torch.randn(4, 8, 4), torch.randn(4, 8, 4), torch.rand(4) * 0.9 + 0.05
    target = {"velocity": interp.velocity(x0, eps, t), "noise": eps, "score": -eps / interp.sigma(t)[:, None, None]}[
        prediction
    ]
    model.forward = lambda x, t, y, cls=None: (target, None, x)
    v, _ = model.velocity(interp.x_t(x0, eps, t), t, torch.zeros(4, dtype=torch.long))
    assert torch.allclose(v, interp.velocity(x0, eps, t), atol=1e-4)
    # Noise and score models keep away from t = 1 (division by alpha) when training and sampling.
    assert (model.t_min, model.t_max) == ((0.0, 1.0) if prediction == "velocity" else (sit.EPS, 1 - sit.EPS))


def test_score_loss_is_sigma_weighted():
    """SiT's score loss ||sigma s + eps||^2: a network outputting the true score -eps / sigma has zero
    loss, even near sigma = 0 where the score itself is large."""
    model = tiny_sit(prediction="score").eval()  # eval: no label dropout, so t and eps replay below
    tokens = torch.randn(4, 8, 4)
    torch.manual_seed(3)
    torch.rand(4)
    eps = torch.randn_like(tokens)  # the eps that loss() will draw after the same seed
    model.forward = lambda x, t, y, cls=None: (-eps / model.interpolant.sigma(t)[:, None, None], None, x)
    torch.manual_seed(3)
    assert model.loss(tokens, torch.zeros(4, dtype=torch.long))["flow"].item() < 1e-10
    model.forward = lambda x, t, y, cls=None: (torch.zeros_like(x), None, x)
    torch.manual_seed(3)
    zero_output_loss = model.loss(tokens, torch.zeros(4, dtype=torch.long))["flow"].item()
    assert zero_output_loss == pytest.approx(eps.pow(2).mean().item())


def test_cfg_scale_one_is_conditional_and_zero_is_unconditional():
    model = randomise_zero_init(tiny_sit()).eval()
    labels = torch.tensor([0, 1, 2, 1])
    null = torch.full_like(labels, model.num_classes)

    def draw(lab, **kw):
        return model.sample(lab, steps=4, generator=torch.Generator().manual_seed(0), **kw)

    cond = draw(labels, cfg_scale=1.0)
    # s = 1 is the conditional path; so is any s outside the guidance interval.
    assert torch.allclose(cond, draw(labels, cfg_scale=4.0, guidance_interval=(2.0, 3.0)), atol=1e-5)
    assert torch.allclose(draw(labels, cfg_scale=0.0), draw(null, cfg_scale=1.0), atol=1e-5)
    guided = draw(labels, cfg_scale=4.0)
    assert (guided - cond).abs().max() > 1e-2
    # Guidance on part of the interval only: between the conditional and the fully guided samples.
    partial = draw(labels, cfg_scale=4.0, guidance_interval=(0.0, 0.5))
    assert (partial - cond).abs().max() > 1e-3 and (partial - guided).abs().max() > 1e-3


@pytest.mark.parametrize("sampler", ["ode", "sde"])
def test_sample_shape_dtype_and_seed(sampler):
    model = randomise_zero_init(tiny_sit())
    labels = torch.tensor([0, 2, 1])
    kw = {"steps": 5, "sampler": sampler, "cfg_scale": 1.5}
    a = model.sample(labels, generator=torch.Generator().manual_seed(0), **kw)
    b = model.sample(labels, generator=torch.Generator().manual_seed(0), **kw)
    c = model.sample(labels, generator=torch.Generator().manual_seed(1), **kw)
    assert a.shape == (3, 8, 4) and a.dtype == torch.float32 and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert not a.requires_grad


def test_repa_loss_with_teacher_features_of_another_length():
    model = tiny_sit(repa_depth=2, repa_dim=6, repa_projector_dim=32, repa_weight=0.5)
    tokens, labels = torch.randn(4, 8, 4), torch.tensor([0, 1, 2, 0])
    assert set(model.loss(tokens, labels)) == {"flow"}  # no features: no REPA term
    feats = torch.randn(4, 13, 6)  # M = 13 teacher patches for N = 8 tokens
    opt = torch.optim.Adam(model.projector.parameters(), lr=1e-2)
    history = []
    for _ in range(30):
        torch.manual_seed(0)
        repa = model.loss(tokens, labels, feats)["repa"]
        opt.zero_grad()
        repa.backward()
        assert all(p.grad.abs().sum() > 0 for p in model.projector.parameters())
        opt.step()
        history.append(repa.item())
    assert -0.5 <= min(history) and max(history) <= 0.5
    assert history[-1] < history[0] - 0.1  # the projector learns to align with the pooled features
    with pytest.raises(ValueError, match="repa_dim"):
        model.loss(tokens, labels, torch.randn(4, 13, 5))


# REG: the teacher's class token entangled with the tokens (Wu et al. 2025)

REG = {"repa_depth": 1, "repa_dim": 6, "repa_projector_dim": 32, "reg": True}


def reg_batch(n: int = 4) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(7)
    tokens, feats, cls = (
        torch.randn(n, 8, 4, generator=g),
        torch.randn(n, 13, 6, generator=g),
        torch.randn(n, 6, generator=g),
    )
    return tokens, torch.arange(n) % 3, feats, cls


def test_reg_class_token_is_one_more_token_denoised_jointly():
    model = tiny_sit(**REG)
    tokens, labels, feats, cls = reg_batch()
    t = torch.rand(4)
    out, cls_out, hidden = model(tokens, t, labels, cls)
    # adaLN-Zero: both read-outs start at zero; the hidden states hold the class slot first.
    assert torch.equal(out, torch.zeros(4, 8, 4)) and torch.equal(cls_out, torch.zeros(4, 6))
    assert hidden.shape == (4, 9, 64) and torch.equal(model.pos_embed[0, 0], torch.zeros(64))
    randomise_zero_init(model)
    with torch.no_grad():
        model.final_layer.linear_cls.weight.normal_(0, 0.1)
    out, cls_out, _ = model(tokens, t, labels, cls)
    # Entangled: the tokens' prediction reads the class token and the class token's reads the tokens.
    assert not torch.allclose(model(tokens, t, labels, cls + 1)[0], out)
    assert not torch.allclose(model(tokens + 1, t, labels, cls)[1], cls_out)
    with pytest.raises(ValueError, match="generator.reg"):
        model(tokens, t, labels)


def test_reg_loss_noises_the_class_token_at_the_tokens_time_with_its_own_noise():
    model = randomise_zero_init(tiny_sit(**REG)).eval()  # eval: no label dropout, so the draws replay
    with torch.no_grad():
        model.final_layer.linear_cls.weight.normal_(0, 0.1)
    tokens, labels, feats, cls = reg_batch()
    torch.manual_seed(3)
    losses = model.loss(tokens, labels, feats, class_token=cls)
    assert set(losses) == {"flow", "reg", "repa"}
    torch.manual_seed(3)
    t, eps = torch.rand(4), torch.randn_like(tokens)
    cls_eps = torch.randn_like(cls)
    interp = model.interpolant
    out, cls_out, hidden = model(interp.x_t(tokens, eps, t), t, labels, interp.x_t(cls, cls_eps, t))
    flow = (out - interp.velocity(tokens, eps, t)).pow(2).mean()
    reg = 0.03 * (cls_out - interp.velocity(cls, cls_eps, t)).pow(2).mean()
    assert torch.allclose(losses["flow"], flow) and torch.allclose(losses["reg"], reg)
    # REPA aligns the class slot with the class token and the N token slots with the pooled patches.
    target = torch.cat([cls[:, None], sit.resample_tokens(feats, 8, grid=False)], dim=1)
    cos = torch.nn.functional.cosine_similarity(model.projector(hidden), target, dim=-1)
    assert torch.allclose(losses["repa"], 0.5 * -cos.mean())
    assert set(model.loss(tokens, labels, class_token=cls)) == {"flow", "reg"}
    with pytest.raises(ValueError, match="class token"):
        model.loss(tokens, labels, feats)


def test_reg_every_parameter_trains():
    model = tiny_sit(**REG)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    tokens, labels, feats, cls = reg_batch(16)
    for _ in range(3):
        opt.zero_grad()
        losses = model.loss(tokens, labels, feats, class_token=cls)
        sum(losses.values()).backward()
        grads = {n: p.grad is not None and p.grad.abs().sum().item() > 0 for n, p in model.named_parameters()}
        opt.step()
    assert all(grads.values()), [n for n, ok in grads.items() if not ok]
    assert {"cls_embedder.weight", "cls_norm.weight", "final_layer.linear_cls.weight"} <= set(grads)


def test_reg_sampling_integrates_tokens_and_class_token_jointly():
    """Two Euler steps by hand on the pair (tokens, class token), both drawn from the generator (tokens
    first), give the sampler's tokens; the generated class token is dropped."""
    model = randomise_zero_init(tiny_sit(**REG)).eval()
    with torch.no_grad():
        model.final_layer.linear_cls.weight.normal_(0, 0.1)
    labels = torch.tensor([0, 2, 1])
    sample = model.sample(labels, steps=2, method="euler", generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(3, 8, 4, generator=g), torch.randn(3, 6, generator=g)
    with torch.no_grad():
        for t in (1.0, 0.5):
            v, v_c = model.velocity(x, torch.full((3,), t), labels, c)
            x, c = x - 0.5 * v, c - 0.5 * v_c
    assert sample.shape == (3, 8, 4) and torch.allclose(sample, x, atol=1e-5)
    sde = model.sample(labels, steps=4, sampler="sde", generator=torch.Generator().manual_seed(0))
    assert sde.shape == (3, 8, 4) and torch.isfinite(sde).all()


def test_reg_guidance_of_the_class_token_has_its_own_scale():
    model = randomise_zero_init(tiny_sit(**REG)).eval()
    with torch.no_grad():
        model.final_layer.linear_cls.weight.normal_(0, 0.1)
    labels, null = torch.tensor([0, 2]), torch.full((2,), 3)
    x, c = torch.randn(2, 8, 4), torch.randn(2, 6)
    state, t = model.join_state(x, c), torch.full((2,), 0.5)
    with torch.no_grad():
        (v_cond, c_cond), (v_uncond, c_uncond) = model.velocity(x, t, labels, c), model.velocity(x, t, null, c)
        guided = model.guided_velocity(labels, 3.0, (0.0, 1.0), cls_cfg_scale=1.5)(state, 0.5)
        same = model.guided_velocity(labels, 3.0, (0.0, 1.0))(state, 0.5)
    v, v_c = model.split_state(guided)
    assert torch.allclose(v, v_uncond + 3.0 * (v_cond - v_uncond), atol=1e-5)
    assert torch.allclose(v_c, c_uncond + 1.5 * (c_cond - c_uncond), atol=1e-5)
    assert torch.allclose(model.split_state(same)[1], c_uncond + 3.0 * (c_cond - c_uncond), atol=1e-5)

    def draw(**kw):
        return model.sample(labels, steps=3, generator=torch.Generator().manual_seed(0), **kw)

    # The class token's guidance reaches the tokens through the joint integration.
    assert not torch.allclose(draw(cfg_scale=3.0), draw(cfg_scale=3.0, cls_cfg_scale=1.0), atol=1e-4)
    assert torch.equal(draw(cfg_scale=1.0), draw(cfg_scale=1.0, cls_cfg_scale=5.0))  # no guidance at s = 1


def test_label_dropout_only_in_training():
    model = tiny_sit(label_dropout=0.5)
    torch.manual_seed(0)
    dropped = model.y_embedder.drop(torch.zeros(4000, dtype=torch.long), 0.5)
    assert set(dropped.unique().tolist()) == {0, 3} and abs((dropped == 3).float().mean() - 0.5) < 0.03
    randomise_zero_init(model)
    tokens, labels = torch.randn(8, 8, 4), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    losses = []
    for mode in (True, False):
        model.train(mode)
        torch.manual_seed(5)
        losses.append(model.loss(tokens, labels)["flow"])
    assert not torch.allclose(losses[0], losses[1])  # same t and eps, but some labels were dropped


def test_tiny_sit_learns_two_classes():
    """Two classes of tokens around -1 and +1: the loss falls and each class samples near its mean."""
    spec = TokenSpec("continuous", (4,), dim=2)
    torch.manual_seed(0)
    model = GENERATORS.build("sit", token_spec=spec, num_classes=2, size="tiny", label_dropout=0.1)
    means = torch.tensor([-1.0, 1.0])
    labels = torch.arange(256) % 2
    data = means[labels][:, None, None] + 0.1 * torch.randn(256, 4, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    history = []
    for _ in range(150):
        idx = torch.randint(0, 256, (64,))
        loss = model.loss(data[idx], labels[idx])["flow"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    assert sum(history[-30:]) / 30 < 0.4 * sum(history[:30]) / 30
    model.eval()
    samples = model.sample(torch.tensor([0] * 32 + [1] * 32), steps=20, generator=torch.Generator().manual_seed(0))
    per_class = samples.view(2, 32, -1)
    # Each class lands near its own mean and stays a single mode (a mixture of both would have std ~1).
    assert (per_class.mean(dim=(1, 2)) - means).abs().max() < 0.3, per_class.mean(dim=(1, 2))
    assert per_class.std(dim=(1, 2)).max() < 0.4


# --------------------------------------------------------------------------------------------------
# Registry and configuration errors
# --------------------------------------------------------------------------------------------------


def test_registry_builds_sit_with_its_sizes():
    load_plugins()
    model = GENERATORS.build("sit", token_spec=SPEC, num_classes=10, size="tiny", path_type="gvp")
    assert type(model).__name__ == "SiT" and model.registry_name == "sit"
    assert len(model.blocks) == 2 and model.x_embedder.out_features == 64
    assert model.interpolant.path_type == "gvp" and model.y_embedder.embedding_table.num_embeddings == 11
    assert sit.SIZES["XL"] == (1152, 28, 16) and sit.SIZES["B"] == (768, 12, 12)


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"token_spec": TokenSpec("discrete", (8,), vocab_size=16)}, "token_spec.kind"),
        ({"size": "XXL"}, "generator.size"),
        ({"path_type": "cosine"}, "generator.path_type"),
        ({"prediction": "x0"}, "generator.prediction"),
        ({"repa_dim": 8}, "generator.repa_depth"),
        ({"label_dropout": 1.0}, "generator.label_dropout"),
        ({"reg": True}, "generator.reg"),
        ({"reg": True, "repa_dim": 6, "repa_depth": 1, "reg_weight": -1.0}, "generator.reg_weight"),
    ],
)
def test_bad_config_raises_config_error(kwargs, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        GENERATORS.build("sit", **{"token_spec": SPEC, "num_classes": 3, "size": "tiny", **kwargs})


def test_bad_sampler_raises_config_error():
    model = tiny_sit()
    with pytest.raises(ConfigError, match=r"sample\.options\.sampler"):
        model.sample(torch.tensor([0]), sampler="dpm")
    with pytest.raises(ConfigError, match=r"sample\.options\.method"):
        model.sample(torch.tensor([0]), steps=2, method="rk4")


@pytest.mark.parametrize("prediction", ["velocity", "noise", "score"])
def test_noise_and_score_models_sample_in_float32(prediction):
    """A noise model's velocity divides by alpha(t), down to 1e-3 near t = 1: a perfect eps-hat rounded to
    bf16 there gives velocity errors of the velocity's own size, so such models ask the sample stage
    for float32 (``sample_precision``); velocity models sample at ``sample.precision``."""
    model = tiny_sit(prediction=prediction)
    assert model.sample_precision == (None if prediction == "velocity" else "fp32")
    torch.manual_seed(0)
    x0, eps, t = torch.randn(4096), torch.randn(4096), torch.tensor(1 - 1e-3)
    path = model.interpolant
    x, v = path.x_t(x0, eps, t), path.velocity(x0, eps, t)
    error = (path.velocity_from_noise(eps.bfloat16().float(), x, t) - v).std()
    assert error > 0.3 * v.std()  # why: bf16's rounding alone breaks the conversion
    assert (path.velocity_from_noise(eps, x, t) - v).std() < 1e-3


@pytest.mark.parametrize(
    "overrides, pattern",
    [
        (["sample.options.sampler=sde"], r"command line: sample\.options\.method: heun is an ODE method"),
        (["sample.options.method=rk4"], r"command line: sample\.options\.method: unknown method 'rk4'"),
        (["sample.options.sampler=dpm"], r"command line: sample\.options\.sampler: unknown sampler 'dpm'"),
    ],
)
def test_sampler_choices_fail_the_plan(overrides, pattern):
    """Paper Table 3 samples with the Heun ODE: switching to the SDE without dropping the method, or an
    unknown sampler or method, is caught when the study is planned, not after the generator trained."""
    from benchmark.study import build_plan

    with pytest.raises(ConfigError, match=pattern):
        build_plan("studies/paper_table3_ablation.yaml", "smoke", overrides)
    build_plan(
        "studies/paper_table3_ablation.yaml", "smoke", ["sample.options.sampler=sde", "sample.options.method=euler"]
    )

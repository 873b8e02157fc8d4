"""MaskGIT: mask schedules, iterative decoding, classifier-free guidance, loss, learning, registry."""

from __future__ import annotations

import math
import sys

import pytest
import torch

from benchmark.base import TokenSpec
from benchmark.errors import ConfigError
from benchmark.registry import GENERATORS, load_plugins

load_plugins()
MASKGIT = GENERATORS.get("maskgit").obj
maskgit = sys.modules[MASKGIT.__module__]  # the plugin file, imported by path
mask_ratio, masked_counts, MASK_SCHEDULES = maskgit.mask_ratio, maskgit.masked_counts, maskgit.MASK_SCHEDULES

SPEC = TokenSpec("discrete", (16,), vocab_size=32)


def tiny_maskgit(spec: TokenSpec = SPEC, num_classes: int = 4, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return GENERATORS.build("maskgit", token_spec=spec, num_classes=num_classes, size="tiny", **kw)


@pytest.mark.parametrize("schedule", sorted(MASK_SCHEDULES))
def test_schedule_endpoints_and_monotone(schedule):
    r = torch.linspace(0, 1, 101, dtype=torch.float64)
    ratio = mask_ratio(schedule, r)
    assert ratio[0].item() == pytest.approx(1.0, abs=1e-12) and ratio[-1].item() == pytest.approx(0.0, abs=1e-12)
    assert (ratio.diff() < 0).all()
    assert ((0 <= ratio) & (ratio <= 1)).all()


def test_schedule_values():
    half = torch.tensor([0.5], dtype=torch.float64)
    assert mask_ratio("arccos", half).item() == pytest.approx(2 / 3)  # arccos(1/2) = pi/3
    assert mask_ratio("cosine", half).item() == pytest.approx(math.sqrt(0.5))
    assert mask_ratio("linear", half).item() == pytest.approx(0.5)
    assert mask_ratio("square", half).item() == pytest.approx(0.75)


def test_masked_counts_follow_floor_schedule_and_keep_one_masked_until_the_last_step():
    # N = 16, T = 4, linear: floor(16 * (1 - k/4)) = 12, 8, 4, 0.
    assert masked_counts("linear", 16, 4) == [12, 8, 4, 0]
    # arccos: floor(16 * 2/pi * arccos(k/4)) = 13, 10, 7, 0.
    assert masked_counts("arccos", 16, 4) == [13, 10, 7, 0]
    # More steps than tokens: one token per step while more than one remain; the last masked token
    # stays masked until the final step (MaskGIT's max(1, ...)), which unmasks it.
    assert masked_counts("cosine", 4, 6) == [3, 2, 1, 1, 1, 0]
    # The schedule itself reaches floor(N gamma) = 0 before the end (2 * 0.5 = 1, 2 * 0.25 = 0.5).
    assert masked_counts("linear", 2, 4) == [1, 1, 1, 0]
    assert masked_counts("square", 8, 1) == [0]
    for schedule in MASK_SCHEDULES:
        for n, steps in [(1, 3), (5, 12), (16, 8), (64, 64)]:
            counts = masked_counts(schedule, n, steps)
            assert min(counts[:-1], default=1) >= 1 and counts[-1] == 0, (schedule, n, steps)
            assert all(b < a or a == 1 for a, b in zip([n, *counts[:-1]], counts[:-1])), (schedule, n, steps)


@pytest.mark.parametrize(
    "schedule,steps,shape", [("arccos", 8, (16,)), ("linear", 5, (4, 4)), ("cosine", 20, (12,)), ("square", 3, (16,))]
)
def test_sampling_unmasks_the_scheduled_number_each_step(schedule, steps, shape):
    spec = TokenSpec("discrete", shape, vocab_size=32)
    model = tiny_maskgit(spec).eval()
    n = spec.num_generated
    labels = torch.tensor([0, 1, 2, 3, 0])
    gen = torch.Generator().manual_seed(1)
    states = list(model.sample_steps(labels, cfg_scale=2.0, steps=steps, generator=gen, schedule=schedule))
    assert len(states) == steps
    expected = masked_counts(schedule, n, steps)
    prev = torch.full((5, n), model.mask_id)
    for state, count in zip(states, expected):
        assert state.shape == (5, n) and state.dtype == torch.long
        still = state == model.mask_id
        assert (still.sum(1) == count).all() and (count >= 1 or state is states[-1])
        # Tokens fixed at an earlier step are kept; new ones are real ids below the vocabulary size.
        known = prev != model.mask_id
        assert torch.equal(state[known], prev[known])
        assert (state[~still] < spec.vocab_size).all()
        prev = state
    assert not (states[-1] == model.mask_id).any()
    final = model.sample(
        labels, cfg_scale=2.0, steps=steps, generator=torch.Generator().manual_seed(1), schedule=schedule
    )
    assert torch.equal(final, states[-1])


def test_sampling_is_seeded():
    model = tiny_maskgit().eval()
    labels = torch.arange(4)
    a = model.sample(labels, cfg_scale=1.5, generator=torch.Generator().manual_seed(3))
    b = model.sample(labels, cfg_scale=1.5, generator=torch.Generator().manual_seed(3))
    c = model.sample(labels, cfg_scale=1.5, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_cfg_scale_zero_is_unconditional_and_one_is_conditional():
    model = tiny_maskgit().eval()
    labels = torch.tensor([0, 1, 2, 3])
    null = torch.full_like(labels, model.null_class)
    tokens = torch.randint(0, 33, (4, 16), generator=torch.Generator().manual_seed(0))
    cond, uncond = model(tokens, labels), model(tokens, null)
    assert not torch.allclose(cond, uncond, atol=1e-4)  # the class embedding matters
    assert torch.allclose(model._guided_logits(tokens, labels, 0.0), uncond, atol=1e-5)
    assert torch.equal(model._guided_logits(tokens, labels, 1.0), cond)
    assert torch.allclose(model._guided_logits(tokens, labels, 3.0), uncond + 3 * (cond - uncond), atol=1e-5)

    def draw(lab, scale, **kw):
        return model.sample(lab, cfg_scale=scale, steps=6, generator=torch.Generator().manual_seed(7), **kw)

    assert torch.equal(draw(labels, 0.0), draw(null, 1.0))  # s = 0: the null-class path
    conditional = draw(labels, 1.0)
    assert torch.equal(draw(labels, 1.0, cfg_schedule="linear"), conditional)  # s_i = 1 throughout
    assert not torch.equal(draw(labels, 4.0), conditional)


def test_linear_guidance_starts_unguided_and_rises_each_step(monkeypatch):
    """cfg_schedule linear: s_i = 1 + (s - 1) i / T, as TiTok's generate (scale raised after each step)."""
    model = tiny_maskgit().eval()
    scales: list[float] = []
    guided = model._guided_logits
    monkeypatch.setattr(model, "_guided_logits", lambda t, y, scale: scales.append(scale) or guided(t, y, scale))
    model.sample(torch.tensor([0, 1]), cfg_scale=5.0, steps=8, cfg_schedule="linear")
    assert scales == pytest.approx([1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5])


def test_compile_compiles_what_the_loss_and_the_sampler_run():
    from torch._dynamo.testing import CompileCounter

    model, counter = tiny_maskgit().eval(), CompileCounter()
    model.compile(backend=counter)
    model.sample(torch.tensor([0, 1]), steps=2)
    assert counter.frame_count >= 1
    model.train().loss(torch.randint(0, 32, (2, 16)), torch.tensor([0, 1]))
    assert counter.op_count > 0


def test_loss_is_finite_and_reaches_every_parameter():
    model = tiny_maskgit(label_dropout=0.5).train()
    tokens = torch.randint(0, 32, (8, 16))
    losses = model.loss(tokens, torch.randint(0, 4, (8,)))
    assert set(losses) == {"ce"} and losses["ce"].ndim == 0 and torch.isfinite(losses["ce"])
    assert losses["ce"].item() == pytest.approx(math.log(32), rel=0.1)  # near-uniform at init
    losses["ce"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_loss_masks_random_positions_and_scores_only_those():
    model = tiny_maskgit(label_dropout=1.0)
    seen = {}

    def spy(module, args, out):
        tokens, labels = args
        seen["tokens"], seen["labels"] = tokens, labels
        # Garbage at unmasked positions must not change the loss.
        return torch.where((tokens == model.mask_id)[..., None], out, 1e3 * torch.randn_like(out))

    hook = model.register_forward_hook(spy)
    tokens = torch.randint(0, 32, (64, 16), generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 4, (64,))
    torch.manual_seed(1)
    ce = model.train().loss(tokens, labels)["ce"]
    masked = seen["tokens"] == model.mask_id
    assert ((masked.sum(1) >= 1) & (masked.sum(1) <= 16)).all()
    assert masked.sum(1).unique().numel() > 4  # r ~ U(0, 1) gives varied counts
    assert torch.equal(seen["tokens"][~masked], tokens[~masked])
    assert (seen["labels"] == model.null_class).all()  # label dropout 1.0 in training mode
    hook.remove()
    torch.manual_seed(1)
    assert torch.allclose(model.loss(tokens, labels)["ce"], ce)
    model.register_forward_hook(spy)
    model.eval().loss(tokens, labels)
    assert torch.equal(seen["labels"], labels)  # no label dropout in eval mode


@pytest.mark.slow
def test_training_learns_class_patterns():
    num_classes, n = 4, 16
    patterns = torch.randint(0, 32, (num_classes, n), generator=torch.Generator().manual_seed(0))
    model = tiny_maskgit(num_classes=num_classes, label_smoothing=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    torch.manual_seed(0)
    model.train()
    curve = []
    for _ in range(200):
        labels = torch.randint(0, num_classes, (32,))
        loss = model.loss(patterns[labels], labels)["ce"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        curve.append(loss.item())
    end = sum(curve[-10:]) / 10
    assert curve[0] > 3.0 and end < curve[0] / 20, (curve[0], end)  # from ~log 32 to near 0
    model.eval()
    labels = torch.arange(num_classes).repeat_interleave(4)

    def match(scale: float) -> torch.Tensor:
        samples = model.sample(labels, cfg_scale=scale, steps=8, generator=torch.Generator().manual_seed(0))
        return (samples == patterns[labels]).float().mean(1)

    for scale in (1.0, 3.0):
        assert (match(scale) >= 0.85).all(), (scale, match(scale))
    # s = 0 ignores the label: unconditional samples mostly follow some other class's pattern.
    assert match(0.0).mean() < 0.5


def test_registry_builds_and_rejects_bad_config():
    load_plugins()
    model = GENERATORS.build("maskgit", token_spec=SPEC, num_classes=10, size="tiny")
    assert isinstance(model, MASKGIT) and model.mask_id == 32 and model.null_class == 10
    assert model.class_embed.num_embeddings == 11 and model.token_embed.num_embeddings == 33
    assert model.pos_embed.shape == (1, 17, 64)
    grid = GENERATORS.build(
        "maskgit", token_spec=TokenSpec("discrete", (4, 4), vocab_size=8, generated=6), num_classes=2, size="tiny"
    )
    assert grid(torch.zeros(3, 6, dtype=torch.long), torch.zeros(3, dtype=torch.long)).shape == (3, 6, 8)
    with pytest.raises(ConfigError, match="discrete.*continuous"):
        GENERATORS.build("maskgit", token_spec=TokenSpec("continuous", (16,), dim=8), num_classes=10)
    with pytest.raises(ConfigError, match="generator.size"):
        GENERATORS.build("maskgit", token_spec=SPEC, num_classes=10, size="XXL")
    with pytest.raises(ConfigError, match="generator.mask_schedule"):
        GENERATORS.build("maskgit", token_spec=SPEC, num_classes=10, size="tiny", mask_schedule="cubic")
    with pytest.raises(ConfigError, match="cfg_schedule"):
        model.sample(torch.zeros(1, dtype=torch.long), cfg_schedule="exp")
    with pytest.raises(ConfigError, match="steps"):
        model.sample(torch.zeros(1, dtype=torch.long), steps=0)

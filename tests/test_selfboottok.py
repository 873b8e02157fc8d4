"""SelfBootTok: interface, every loss term's gradient path, the autoregressive (and query) local 2D
aligner with its KV-cached decoding, the wide local 1D tokens, two-stage scaling, aligner presets, the
Table 2 / 3 ablations, a smoke training that learns, config errors."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import grads_of
from safetensors.torch import save_file

from benchmark.data import build_dataset
from benchmark.errors import ConfigError, WeightsError
from benchmark.registry import TOKENIZERS

MODULE = sys.modules[TOKENIZERS.get("selfboottok").obj.__module__]

TINY = {
    "image_size": 32,
    "size": "tiny",
    "patch_size": 4,
    "num_latent_tokens": 16,
    "token_size": 8,
    "codebook_size": 64,
    "local2d_size": "tiny",
}
DINOV2 = {
    "init": "dinov2",
    "size": "S",
    "stand_in": {"img_size": 32, "patch_size": 4, "embed_dim": 48, "depth": 2, "num_heads": 2},
}
IJEPA = {
    "init": "ijepa",
    "stand_in": {
        "image_size": 32,
        "patch_size": 4,
        "hidden_size": 40,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 80,
    },
}
SIGLIP = {"init": "siglip", "stand_in": {"img_size": 32, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}}
VQGAN = {"tokenizer": "vqgan", "size": "tiny", "bottleneck": "kl", "checkpoint": None}


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: one intra-op thread is faster than two and immune to a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(**kw):
    torch.manual_seed(0)
    return TOKENIZERS.build("selfboottok", **{**TINY, **kw})


def images(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_encode_decode_match_token_spec_and_the_training_pass():
    model = tiny().eval()
    spec = model.token_spec
    assert spec.kind == "continuous" and spec.shape == (16,) and spec.dim == 8 and spec.num_generated == 16
    x = images(3)
    tokens = model.encode(x)
    assert tokens.shape == (3, 16, 8) and tokens.dtype == torch.float32
    out = model.decode(tokens)
    assert out.shape == x.shape and out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1
    fwd = model(x)
    # decode(Z_G) predicts the locals from Z_G exactly as the training pass does.
    assert torch.equal(fwd.recon.clamp(0, 1), out)
    assert torch.equal(fwd.tokens, tokens)
    ids = model.code_ids(x)
    assert set(ids) == {"global", "local1d", "local2d"} and model.codebook_sizes() == dict.fromkeys(ids, 64)
    for v in ids.values():
        assert v.shape == (3, 16) and v.dtype == torch.long and 0 <= int(v.min()) and int(v.max()) < 64
    # Soft VQ (Eq. 3): Z_G is a convex combination of the global codebook's (unit-norm) codes.
    assert bool((tokens.norm(dim=-1) <= 1 + 1e-5).all())


def test_every_loss_is_finite_and_reaches_its_parameters():
    model = tiny(
        perceptual={"weight": 1.0, "net": "alex", "weights": "random"},
        adversarial={"width": 8, "start": 0},
        align_global=DINOV2,
        align_local=IJEPA,
        latent_2d=VQGAN,
    )
    x = images(4)
    out = model(x)
    assert set(out.losses) == {"recon", "perceptual", "kl", "repa_global", "repa_local", "ot"}
    grads = {}
    for name, loss in out.losses.items():
        assert loss.ndim == 0 and torch.isfinite(loss), name
        grads[name] = grads_of(model, loss)

    def reaches(name: str, prefix: str) -> bool:
        return any(p.startswith(prefix) for p in grads[name])

    for term in ("recon", "perceptual"):
        for part in (
            "encoder.",
            "local1d.",
            "local1d_fuse.",
            "local2d.feedback.",
            "local2d.queries",
            "decoder.head",
            "decoder.transformer.0.cross",
            "decoder.context_embed.local2d",
            "quantizers.global",
            "quantizers.local1d",
            "quantizers.local2d",
        ):
            assert reaches(term, part), (term, part)
    assert not reaches("recon", "adversary.") and not reaches("recon", "projector_")
    # KL to a uniform prior: the encoder, the locals' predictors and every codebook; not the decoder.
    assert all(
        reaches("kl", p)
        for p in ("encoder.", "local1d.", "local2d.", "quantizers.global", "quantizers.local1d", "quantizers.local2d")
    )
    assert not reaches("kl", "decoder.")
    # Eq. 6 on z_G: the encoder and its projector only.
    assert reaches("repa_global", "encoder.") and reaches("repa_global", "projector_global.")
    assert not any(reaches("repa_global", p) for p in ("local1d.", "local2d.", "decoder.", "quantizers.local"))
    # Eq. 7 on z_L1 = MLP(Z_G): the MLP, through Z_G the encoder and global codebook, and its projector.
    assert all(reaches("repa_local", p) for p in ("local1d.", "encoder.", "quantizers.global", "projector_local."))
    assert not any(reaches("repa_local", p) for p in ("local2d.", "decoder.", "projector_global."))
    # Eq. 13 on z_L2: the local 2D aligner (and through Z_G the encoder), plus the width map to C.
    assert all(reaches("ot", p) for p in ("local2d.queries", "local2d.feedback.", "local2d.blocks.", "encoder."))
    assert not any(reaches("ot", p) for p in ("local1d.", "decoder.", "quantizers.local"))
    if model.ot_proj is not None:
        assert reaches("ot", "ot_proj.")
    # Frozen networks are no parameters and no state of the tokenizer.
    assert not any(k.startswith(("latent_2d", "pixel", "teacher")) for k in model.state_dict())

    # The adversarial term through the trainer's loop (tokenizer contract).
    nll = out.losses["recon"] + out.losses["perceptual"]
    adv = model.adversary.generator_loss(out.recon, nll, model.last_layer(), step=0)
    assert torch.isfinite(adv) and adv.requires_grad
    assert "decoder.head.weight" in (g := grads_of(model, adv)) and "encoder.patch_embed.weight" in g
    d_losses = model.adversary.discriminator_loss(x, out.recon.detach(), step=0)
    assert set(d_losses) == {"disc", "lecam", "consistency"} and model.adversary.kind == "stylegan"
    d_total = sum(d_losses.values())
    assert torch.isfinite(d_total) and d_losses["consistency"].item() > 0
    g = grads_of(model, d_total)
    assert g and all(n.startswith("adversary.discriminator.") for n in g)


def aligner(**kw):
    """A local 2D aligner over K_g = 12 global tokens of width 8, N_l = 16 local tokens."""
    torch.manual_seed(1)
    return MODULE.Local2DAligner(8, 12, 16, 32, 2, 2, **kw)


@pytest.mark.parametrize("j", [0, 5, 14])
def test_autoregressive_token_i_reads_the_previous_tokens_and_never_the_later_ones(j: int):
    """Eq. 9: t_i = f(z_G, t_<i). Changing t_j of the teacher-forcing prefix leaves t_0..t_j exactly as
    they were and changes every t_i with i > j."""
    model = aligner()
    zq, prefix = torch.randn(2, 12, 8), torch.randn(2, 16, 8)
    changed = prefix.clone()
    changed[:, j] += torch.randn(2, 8)
    before, after = model(zq, prefix), model(zq, changed)
    assert before.shape == (2, 16, 8)
    assert torch.equal(before[:, : j + 1], after[:, : j + 1])
    assert all(not torch.allclose(before[:, i], after[:, i]) for i in range(j + 1, 16))
    # The last token is never read: it has no position after it.
    changed = prefix.clone()
    changed[:, -1] += 1.0
    assert torch.equal(model(zq, changed), before)


def test_kv_cached_decoding_equals_the_teacher_forced_pass_on_its_own_prefix():
    model = aligner()
    zq = torch.randn(3, 12, 8)
    decoded = model.generate(zq)
    assert decoded.shape == (3, 16, 8) and not decoded.requires_grad
    # One parallel pass fed the decoded tokens as t_<i reproduces them: the cache changes nothing.
    assert torch.allclose(model(zq, decoded), decoded, atol=1e-5)
    # Each decoded token depends on the ones before it: feeding other tokens changes what follows.
    assert not torch.allclose(model(zq, torch.zeros_like(decoded))[:, 1:], decoded[:, 1:], atol=1e-3)
    # predict: the decoded tokens; with gradients on, the same values from the teacher-forced pass.
    with torch.no_grad():
        assert torch.equal(model.predict(zq), decoded)
    trained = model.predict(zq)
    assert trained.requires_grad and torch.allclose(trained, decoded, atol=1e-5)
    trained.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_encode_and_decode_use_the_kv_cached_decoder():
    model = tiny().eval()
    calls = {"generate": 0, "parallel": 0}
    generate = model.local2d.generate

    def counting_generate(zq):
        calls["generate"] += 1
        return generate(zq)

    model.local2d.generate = counting_generate
    model.local2d.register_forward_hook(lambda *_: calls.__setitem__("parallel", calls["parallel"] + 1))
    x = images(2)
    with torch.no_grad():
        tokens = model.encode(x)
        out = model.decode(tokens)
        model.code_ids(x)
    assert calls == {"generate": 2, "parallel": 0}
    zq_local = model.local_tokens(tokens)[1]  # with gradients on: decoded, then the teacher-forced pass
    assert calls == {"generate": 3, "parallel": 1}
    assert torch.allclose(model.reconstruct_from(tokens, zq_local).clamp(0, 1), out, atol=1e-5)


@pytest.mark.parametrize("i", [0, 5, 14])
def test_query_aligner_is_causal_over_its_queries(i: int):
    outputs = {}
    for causal in (True, False):
        model = aligner(form="queries", causal=causal)
        zq = torch.randn(2, 12, 8)
        before = model(zq)
        with torch.no_grad():
            model.queries[:, i + 1 :] += torch.randn_like(model.queries[:, i + 1 :])
        outputs[causal] = before, model(zq)
    before, after = outputs[True]
    assert before.shape == (2, 16, 8)
    # Token i (and every earlier one) ignores the queries after it; later tokens see the change.
    assert torch.equal(before[:, : i + 1], after[:, : i + 1])
    assert not torch.allclose(before[:, i + 1 :], after[:, i + 1 :])
    # Without the mask every token reads every query.
    before, after = outputs[False]
    assert not torch.allclose(before[:, : i + 1], after[:, : i + 1])
    with pytest.raises(ValueError, match="causal by construction"):
        aligner(causal=False)


@pytest.mark.parametrize("form", ["autoregressive", "queries"])
def test_local2d_aligner_reads_every_global_token(form: str):
    model = aligner(form=form)
    zq = torch.randn(1, 12, 8)
    perturbed = zq.clone()
    perturbed[:, -1] += 1.0  # the last global token
    assert not torch.allclose(model.predict(zq)[:, 0], model.predict(perturbed)[:, 0])
    mask = MODULE.aligner_mask(3, 4)
    assert mask[:3, :3].all() and not mask[:3, 3:].any() and mask[3:, :3].all()
    assert torch.equal(mask[3:, 3:], torch.ones(4, 4, dtype=torch.bool).tril())


def test_local1d_tokens_live_in_a_wider_token_space():
    """Eq. 8: z_L1 = MLP(z_G) of width 2 d by default, with its own codebook of that width, read by the
    decoder's cross-attention at that width and mapped to d for Eq. 11's fusion."""
    model = tiny(align_local=DINOV2)
    tokens = model.encode(images(2))
    z, zq, q = model.local_tokens(tokens)
    assert z["local1d"].shape == zq["local1d"].shape == (2, 16, 16) and z["local2d"].shape == (2, 16, 8)
    assert q["local1d"].shape == (2, 16, 64)
    assert model.quantizers["local1d"].embedding.shape[-1] == 16
    assert model.decoder.context_embed["local1d"].in_features == 16
    assert (model.local1d_fuse.in_features, model.local1d_fuse.out_features) == (16, 8)
    assert model.projector_local[0].in_features == 16
    assert model.fuse({"global": tokens, **zq}).shape == (2, 16, 8)
    # Another width on request; the token width needs no map; a shared codebook shares its width.
    assert tiny(local1d_dim=40).quantizers["local1d"].embedding.shape[-1] == 40
    assert tiny(local1d_dim=8).local1d_fuse is None
    shared = tiny(shared_codebook=True)
    assert shared.local1d[-1].out_features == 8 and shared.local1d_fuse is None


def test_stage2_trains_only_the_local2d_aligner():
    stage1 = tiny()
    state = {k: v.clone() for k, v in stage1.state_dict().items()}
    x = images(2, seed=9)
    with torch.no_grad():
        tokens = stage1.encode(x)
    model = tiny(stage=2, local2d_size="10M")
    assert not any(p.requires_grad for n, p in model.named_parameters() if not n.startswith("local2d."))
    assert tiny(stage=2).load_stage1(state) == []  # same aligner: every tensor copied
    missing = model.load_stage1(state)
    assert missing and all(k.startswith("local2d.") for k in missing)
    assert "local2d.embed.weight" in missing and "local2d.blocks.7.mlp.0.weight" in missing  # resized / new
    model.freeze_for_stage2()
    for name, value in model.state_dict().items():
        if not name.startswith("local2d."):
            assert torch.equal(value, state[name]), name
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(any(p is q for q in model.local2d.parameters()) for p in trainable)
    aligner_before = {n: p.detach().clone() for n, p in model.local2d.named_parameters()}
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    for step in range(3):
        optimizer.zero_grad(set_to_none=True)
        sum(model(images(4, seed=step)).losses.values()).backward()
        optimizer.step()
    for name, p in model.named_parameters():
        if name.startswith("local2d."):
            continue
        assert p.grad is None, name
        assert torch.equal(p.detach(), state[name]), name
    changed = [n for n, p in model.local2d.named_parameters() if not torch.equal(p.detach(), aligner_before[n])]
    assert len(changed) == len(aligner_before)
    # The generator's tokens are those of stage 1: one latent cache serves every aligner size.
    with torch.no_grad():
        assert torch.equal(model.encode(x), tokens)
        assert model.decode(tokens).shape == x.shape


TEACHERS = {"align_global": DINOV2, "align_local": IJEPA, "latent_2d": VQGAN}


@pytest.mark.parametrize("stage2_train", ["aligner", "all_but_encoder"])
def test_stage2_runs_the_trainer_step_with_its_gan_term_and_only_the_terms_that_train(stage2_train):
    """Stage 2 with the discriminator active: the adaptive GAN weight is measured at the last trained layer
    (the aligner's output when the decoder is frozen; before, autograd failed on the frozen decoder head),
    and the REPA terms whose inputs are all frozen are constants, left out with their teachers."""
    from benchmark.tokenizer_stages import tokenizer_step

    options = {**TEACHERS, "adversarial": {"kind": "stylegan", "start": 0, "width": 8}}
    model = tiny(stage=2, stage2_train=stage2_train, **options)
    trained_head = model.local2d.head if stage2_train == "aligner" else model.decoder.head
    assert model.last_layer() is trained_head.weight
    assert tiny(**options).last_layer() is not None and tiny(**options).last_layer().requires_grad
    losses, pair = tokenizer_step(model)((images(4, seed=1),), 0)
    assert pair is not None and losses["adversarial"].requires_grad
    assert "repa_global" not in losses  # the encoder and the global projector are frozen
    assert ("repa_local" in losses) == (stage2_train == "all_but_encoder")  # L1 and its projector train or not
    assert "ot" in losses and "recon" in losses
    sum(losses.values()).backward()
    assert trained_head.weight.grad is not None and trained_head.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.encoder.parameters())
    assert {"repa_global", "repa_local", "ot"} <= tiny(**TEACHERS)(images(2)).losses.keys()  # stage 1: all
    assert "repa_global" not in tiny(**TEACHERS, repa_global_weight=0.0)(images(2)).losses  # weight 0


def test_stage2_refuses_a_stage1_checkpoint_that_differs_beyond_the_aligner():
    state = tiny().state_dict()  # z_L1 of width 2 d = 16
    with pytest.raises(WeightsError, match=r"beyond its local 2D aligner: .*'local1d\.2\.weight'"):
        tiny(stage=2, local2d_size="10M", local1d_dim=24).load_stage1(state)


@pytest.mark.parametrize("shared_codebook", [False, True])
def test_stage2_all_but_encoder_trains_what_reads_the_global_tokens_and_keeps_them(shared_codebook):
    """Sec. 4.1's reading of stage 2: the decoder, the local branches and their codebooks train; the
    encoder and the codebook of Z_G (the shared one, when there is one) do not, so Z_G is stage 1's."""
    stage1 = tiny(shared_codebook=shared_codebook)
    state = {k: v.clone() for k, v in stage1.state_dict().items()}
    x = images(2, seed=9)
    with torch.no_grad():
        tokens = stage1.encode(x)
    model = tiny(stage=2, local2d_size="10M", stage2_train="all_but_encoder", shared_codebook=shared_codebook)
    model.load_stage1(state)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    frozen_prefixes = ("encoder.", "quantizers.global.", "quantizers.shared.", "projector_global.")
    assert not any(n.startswith(frozen_prefixes) for n in trainable)
    for prefix in ("local2d.", "local1d.", "decoder."):
        assert any(n.startswith(prefix) for n in trainable), prefix
    assert any(n.startswith("quantizers.local") for n in trainable) != shared_codebook
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for step in range(2):
        optimizer.zero_grad(set_to_none=True)
        sum(model(images(4, seed=step)).losses.values()).backward()
        optimizer.step()
    for name, p in model.named_parameters():
        if name.startswith(frozen_prefixes):
            assert torch.equal(p.detach(), state[name]), name
    assert not torch.equal(model.decoder.head.weight.detach(), state["decoder.head.weight"])
    with torch.no_grad():
        assert torch.equal(model.encode(x), tokens)


@pytest.mark.parametrize("form", ["autoregressive", "queries"])
@pytest.mark.parametrize("preset", ["10M", "100M", "200M", "400M", "600M"])
def test_local2d_presets_have_their_parameter_count(preset: str, form: str):
    width, depth, heads = MODULE.LOCAL2D_SIZES[preset]
    with torch.device("meta"):  # shapes only: no memory for the 600M weights
        model = MODULE.Local2DAligner(32, 64, 64, width, depth, heads, form)
    count = sum(p.numel() for p in model.parameters())
    target = float(preset.rstrip("M")) * 1e6
    assert abs(count - target) <= 0.1 * target, (preset, count)


@pytest.mark.parametrize(
    "options, check",
    [
        (
            {"branches": "G"},
            lambda m: (
                m.local1d is None
                and m.local2d is None
                and set(m.quantizers) == {"global"}
                and not m.decoder.context_embed
                and set(m.code_ids(images(1))) == {"global"}
            ),
        ),
        (
            {"branches": "G+L1", "alpha": 0.5, "beta": 0.25},
            lambda m: (
                m.local2d is None
                and m.fusion_weights == pytest.approx({"global": 2 / 3, "local1d": 1 / 3})
                and set(m.decoder.context_embed) == {"local1d"}
            ),
        ),
        (
            {"branches": "G+L1+L2"},
            lambda m: (
                m.fusion_weights == {"global": 0.5, "local1d": 0.25, "local2d": 0.25}
                and m.local2d.mask is not None
                and m.local2d.feedback is not None
            ),
        ),
        ({"local2d_form": "queries"}, lambda m: m.local2d.feedback is None and m.local2d.mask is not None),
        ({"local2d_form": "queries", "causal": False}, lambda m: m.local2d.mask is None),
        ({"shared_codebook": True}, lambda m: set(m.quantizers) == {"shared"}),
        (
            {"fusion": "concat", "num_local_tokens": 8},
            lambda m: m.decoder.latent_positional_embedding.shape[1] == 16 + 16 + 8 and m.local2d.queries.shape[1] == 8,
        ),
        ({"align_local": SIGLIP, "local_align_tokens": "l2"}, lambda m: m.projector_local[-1].out_features == 32),
        ({"align_local": DINOV2}, lambda m: m.projector_local[-1].out_features == 48),
    ],
    ids=[
        "G",
        "G+L1",
        "G+L1+L2",
        "queries",
        "non-causal-queries",
        "shared-codebook",
        "concat",
        "siglip-on-l2",
        "dinov2-on-l1",
    ],
)
def test_ablations_build_and_train_a_step(options, check):
    model = tiny(**options)
    assert check(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = model(images(4)).losses
    assert all(torch.isfinite(v) for v in losses.values())
    assert ("repa_local" in losses) == ("align_local" in options)
    sum(losses.values()).backward()
    optimizer.step()
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p.detach(), before[n])]
    assert not unchanged, unchanged
    assert model.decode(model.encode(images(2))).shape == (2, 3, 32, 32)


def test_absent_branches_turn_their_alignment_terms_off():
    model = tiny(branches="G+L1", align_local=DINOV2, local_align_tokens="l2", latent_2d=VQGAN)
    assert model.teacher_local is None and model.latent_2d is None
    assert set(model(images(2)).losses) == {"recon", "kl"}


def test_latent_2d_checkpoint_is_loaded_frozen_and_projected(tmp_path):
    torch.manual_seed(3)
    spec = {k: v for k, v in VQGAN.items() if k != "checkpoint"}
    source = TOKENIZERS.build("vqgan", image_size=32, **{k: v for k, v in spec.items() if k != "tokenizer"})
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "model.safetensors"))
    model = tiny(latent_2d={**spec, "checkpoint": str(tmp_path / "model.safetensors")})
    x = images(2)
    with torch.no_grad():
        assert torch.equal(model.latent_2d.net.latent_grid(x), source.eval().latent_grid(x))
    channels = source.latent_grid(x).shape[-1]
    assert (model.ot_proj is None) == (channels == 8)
    if model.ot_proj is not None:
        assert model.ot_proj.out_features == channels
    assert not any(n.startswith("latent_2d") for n, _ in model.named_parameters())
    with pytest.raises(WeightsError, match="latent_2d.checkpoint"):
        tiny(latent_2d={**spec, "checkpoint": str(tmp_path / "missing.safetensors")})
    with pytest.raises(ConfigError, match="latent_2d.tokenizer"):
        tiny(latent_2d={"tokenizer": "titok"})


@pytest.mark.slow
def test_smoke_training_lowers_the_reconstruction_loss():
    data = build_dataset({"name": "procedural", "resolution": 32, "train_size": 256}, "train")
    batch = torch.stack([data[i][0] for i in range(len(data))])
    model = tiny(codebook_size=128, l2_norm=False)  # the smoke profile's plain (not unit-sphere) codes
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    recon = []
    for _ in range(120):
        x = batch[torch.randint(0, len(batch), (16,), generator=gen)]
        losses = model(x).losses
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()
        recon.append(losses["recon"].item())
    first, last = sum(recon[:5]) / 5, sum(recon[-10:]) / 10
    assert last < 0.8 * first, (first, last)
    # Decoding Z_G alone (locals predicted from it) beats the best constant image, the training mean.
    model.eval()
    evals = build_dataset({"name": "procedural", "resolution": 32, "eval_size": 64}, "eval")
    held_out = torch.stack([evals[i][0] for i in range(len(evals))])
    err_model = F.mse_loss(model.reconstruct(held_out), held_out)
    err_mean = F.mse_loss(batch.mean(0, keepdim=True).expand_as(held_out), held_out)
    assert err_model < 0.9 * err_mean, (float(err_model), float(err_mean))


@pytest.mark.parametrize(
    "options, key",
    [
        ({"branches": "G+L2"}, "tokenizer.branches"),
        ({"fusion": "sum"}, "tokenizer.fusion"),
        ({"local2d_size": "50M"}, "tokenizer.local2d_size"),
        ({"local_align_tokens": "l3"}, "tokenizer.local_align_tokens"),
        ({"local2d_form": "parallel"}, "tokenizer.local2d_form"),
        ({"causal": False}, "tokenizer.causal"),
        ({"local1d_dim": 0}, "tokenizer.local1d_dim"),
        ({"shared_codebook": True, "local1d_dim": 16}, "tokenizer.local1d_dim"),
        ({"alpha": 0.8, "beta": 0.4}, "tokenizer.alpha"),
        ({"num_local_tokens": 8}, "tokenizer.num_local_tokens"),
        ({"stage": 3}, "tokenizer.stage"),
        ({"stage": 2, "branches": "G+L1"}, "tokenizer.stage"),
        ({"stage2_train": "decoder"}, "tokenizer.stage2_train"),
        ({"align_global": {"init": "none"}}, "tokenizer.align_global.init"),
        ({"latent_2d": {"tokenizer": "vqgann"}}, "tokenizer.latent_2d.tokenizer"),
        ({"latent_2d": {"tokenizer": "vqgan", "no_such_option": 1}}, "tokenizer.latent_2d.no_such_option"),
    ],
)
def test_bad_config_raises_a_config_error_naming_the_key(options, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        tiny(**options)


def test_the_discriminator_is_softvqs_as_softvq_trains_it():
    """Sec. 4.1's "setup similar to SoftVQ": its StyleGAN-like D, LeCAM (decaying 0.999), consistency and a
    fixed GAN weight (SoftVQ's --disc-adaptive-weight defaults to False); the pixel loss on [-1, 1]."""
    model = tiny(adversarial={"start": 0})
    adversary = model.adversary
    assert not adversary.adaptive and adversary.lecam_weight == 0.001 and adversary.lecam.decay == 0.999
    assert type(adversary.discriminator).__name__ == "StyleGANDiscriminator"
    x = torch.rand(2, 3, 32, 32)
    out = model(x)
    torch.testing.assert_close(out.losses["recon"], 4 * F.mse_loss(out.recon, x))

"""SoftVQ-VAE: token spec, Eq. 2-3 soft quantisation, every loss term's gradients, the adversarial
step, pretrained encoder init, config errors and a short CPU training that learns."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import grads_of

from benchmark.data import build_dataset
from benchmark.encoders import initialize_encoder
from benchmark.errors import ConfigError
from benchmark.gan import StyleGANDiscriminator
from benchmark.registry import TOKENIZERS

IMAGE = 32
TEACHER = {"init": "dinov2", "stand_in": {"img_size": 32, "patch_size": 4, "embed_dim": 48, "depth": 2, "num_heads": 2}}
PERCEPTUAL = {"weight": 1.0, "net": "alex", "weights": "random"}


def tiny_softvq(**kw):
    torch.manual_seed(0)
    opts = {
        "image_size": IMAGE,
        "size": "tiny",
        "patch_size": 8,
        "num_latent_tokens": 8,
        "token_size": 8,
        "codebook_size": 64,
    }
    return TOKENIZERS.build("softvq", **{**opts, **kw})


def images(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(seed))


def test_the_entropy_term_is_softvqs_compute_entropy_loss_on_the_logits():
    """SoftVQ's compute_entropy_loss (its modelling/quantizers/softvq.py): on the code logits divided by
    0.01, the mean per-token entropy minus the entropy of the mean, per codebook group."""
    model = tiny_softvq(entropy_weight=1.0)
    x = images(3)
    z = model.encoder(x * 2 - 1)
    logits = model.quantizer.logits(z)
    b, n, k = logits.shape
    expected = []
    for group in logits.reshape(b, model.quantizer.num_codebooks, -1, k).transpose(0, 1):
        flat = group.reshape(-1, k) / 0.01
        probs, log_probs = F.softmax(flat, -1), F.log_softmax(flat, -1)
        avg = probs.mean(0)
        expected.append(-(probs * log_probs).sum(-1).mean() + (avg * torch.log(avg)).sum())
    torch.testing.assert_close(model(x).losses["entropy"], torch.stack(expected).mean(), rtol=1e-4, atol=1e-4)


def test_encode_decode_follow_the_continuous_token_spec():
    model = tiny_softvq()
    spec = model.token_spec
    assert (spec.kind, spec.shape, spec.dim, spec.vocab_size, spec.num_generated) == ("continuous", (8,), 8, None, 8)
    x = images(3)
    tokens = model.encode(x)
    assert tokens.shape == (3, *spec.shape, spec.dim) and tokens.dtype == torch.float32
    out = model.decode(tokens)
    assert out.shape == x.shape and out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1
    fwd = model(x)
    assert set(fwd.losses) == {"recon", "entropy"}  # defaults: L2 pixel loss + SoftVQ's entropy term
    assert torch.equal(fwd.tokens, tokens) and not fwd.tokens.requires_grad
    assert torch.allclose(fwd.recon.clamp(0, 1), out, atol=1e-6)
    # SoftVQ's training code takes its MSE on images in [-1, 1]: 4x the MSE on [0, 1]
    assert torch.allclose(fwd.losses["recon"], F.mse_loss(fwd.recon * 2 - 1, x * 2 - 1))
    assert torch.allclose(fwd.losses["recon"], 4 * F.mse_loss(fwd.recon, x))
    ids = model.code_ids(x)["codes"]
    assert ids.shape == (3, 8) and ids.dtype == torch.long and 0 <= ids.min() and ids.max() < 64
    assert model.codebook_sizes() == {"codes": 64}
    assert model.last_layer() is model.decoder.head.weight


def test_tokens_are_eq2_eq3_soft_quantisation_of_the_encoder_latents():
    model = tiny_softvq(tau=0.5)
    x = images(2)
    z = F.normalize(model.encoder(x * 2 - 1), dim=-1)
    codes = F.normalize(model.quantizer.embedding[0], dim=-1)
    q = torch.softmax(-torch.cdist(z, codes[None].expand(2, -1, -1)) / 0.5, dim=-1)  # Eq. 2
    assert torch.allclose(model.encode(x), q @ codes, atol=1e-5)  # Eq. 3
    assert torch.equal(model.code_ids(x)["codes"], q.argmax(-1))
    # A mixture of unit codes lies inside the sphere: the tokens are continuous, not codes.
    assert model.encode(x).norm(dim=-1).max() < 1 - 1e-3


def test_small_tau_puts_every_token_on_its_code():
    x = images(4)
    for tau, on_code in ((1e-4, True), (0.07, False)):
        model = tiny_softvq(tau=tau)
        tokens = model.encode(x)
        nearest = model.quantizer.codebooks()[0][model.code_ids(x)["codes"]]
        gap = (tokens - nearest).norm(dim=-1)
        if on_code:  # all but near-ties between two codes sit on their code
            assert (gap < 1e-3).float().mean() > 0.9 and gap.max() < 0.05
        else:
            assert gap.mean() > 0.1


def test_several_codebooks_split_the_sequence():
    model = tiny_softvq(num_codebooks=2, tau=1e-4)
    assert model.quantizer.embedding.shape == (2, 64, 8)
    x = images(3)
    tokens, ids = model.encode(x), model.code_ids(x)["codes"]
    assert model.codebook_sizes() == {"codes": 128}
    assert ids[:, :4].max() < 64 and ids[:, 4:].min() >= 64  # group g's code k is id g * 64 + k
    books = model.quantizer.codebooks().reshape(128, 8)
    near = (tokens - books[ids]).norm(dim=-1)
    assert (near < 1e-3).float().mean() > 0.9  # tau -> 0: each half sits on codes of its own codebook
    assert torch.isfinite(model(x).losses["entropy"])


def test_every_loss_is_finite_and_reaches_its_parameters():
    model = tiny_softvq(kl_weight=0.01, perceptual=PERCEPTUAL, align=TEACHER, align_weight=0.5)
    losses = model(images(4)).losses
    assert set(losses) == {"recon", "perceptual", "kl", "entropy", "repa"}
    grads = {}
    for name, loss in losses.items():
        assert loss.ndim == 0 and torch.isfinite(loss), name
        grads[name] = grads_of(model, loss)
    encoder, codebook = {"encoder.patch_embed.weight", "encoder.proj.weight"}, {"quantizer.embedding"}
    decoder, projector = {"decoder.head.weight", "decoder.embed.weight"}, {"projector.0.weight", "projector.4.weight"}
    # Fully differentiable (no straight-through): the pixel terms train encoder, codebook and decoder.
    for name in ("recon", "perceptual"):
        assert encoder | codebook | decoder <= grads[name] and not grads[name] & projector
    # The categorical posterior q (Eq. 2) depends on the encoder and the codebook only.
    for name in ("kl", "entropy"):
        assert encoder | codebook <= grads[name] and not grads[name] & (decoder | projector)
    assert encoder | projector <= grads["repa"] and not grads["repa"] & decoder
    # The teacher (and the LPIPS net) are not parameters and not in the checkpoint.
    plain = tiny_softvq()
    extra = {n for n, _ in model.named_parameters()} - {n for n, _ in plain.named_parameters()}
    assert extra and all(n.startswith("projector.") for n in extra)
    owners = ("encoder.", "quantizer.", "decoder.", "projector.")
    assert all(k.startswith(owners) for k in model.state_dict())
    teacher = model.teacher.model()
    assert not any(p.requires_grad for p in teacher.parameters())
    assert not {id(p) for p in teacher.parameters()} & {id(p) for p in model.parameters()}


def test_loss_weights_scale_their_terms():
    x = images(4)
    base = tiny_softvq(kl_weight=1.0, entropy_weight=1.0)(x).losses
    scaled = tiny_softvq(kl_weight=0.25, entropy_weight=0.5, recon_weight=2.0)(x).losses
    assert torch.allclose(scaled["kl"], 0.25 * base["kl"]) and torch.allclose(scaled["entropy"], 0.5 * base["entropy"])
    assert torch.allclose(scaled["recon"], 2.0 * base["recon"])
    assert 0 <= base["kl"] <= torch.log(torch.tensor(64.0))
    assert "entropy" not in tiny_softvq(entropy_weight=0.0)(x).losses
    l1 = tiny_softvq(recon_loss="l1")(x)
    assert torch.allclose(l1.losses["recon"], 2 * F.l1_loss(l1.recon, x))  # on [-1, 1], as SoftVQ trains


def test_adversarial_step_with_stylegan_lecam_and_consistency():
    model = tiny_softvq(adversarial={"start": 0})
    adv = model.adversary
    assert isinstance(adv.discriminator, StyleGANDiscriminator)
    # SoftVQ's recipe: a fixed GAN weight (its --disc-adaptive-weight defaults to False)
    assert adv.lecam_weight > 0 and adv.consistency_weight > 0 and not adv.adaptive and adv.weight == 0.2
    assert adv.lecam.decay == 0.999  # its LeCAM_EMA(decay=0.999)
    disc_ids = {id(p) for p in adv.parameters()}
    g_params = [p for p in model.parameters() if id(p) not in disc_ids]
    g_opt, d_opt = torch.optim.Adam(g_params, lr=1e-4), torch.optim.Adam(adv.parameters(), lr=1e-4)
    before = [p.detach().clone() for p in adv.discriminator.parameters()]
    x = images(4)
    for step in range(2):
        out = model(x)
        nll = out.losses["recon"]
        out.losses["adversarial"] = adv.generator_loss(out.recon, nll, model.last_layer(), step)
        assert torch.isfinite(out.losses["adversarial"]) and out.losses["adversarial"] != 0
        g_opt.zero_grad()
        sum(out.losses.values()).backward()
        assert model.decoder.head.weight.grad.abs().sum() > 0 and model.encoder.proj.weight.grad.abs().sum() > 0
        g_opt.step()
        d = adv.discriminator_loss(x, out.recon.detach(), step)
        assert set(d) == {"disc", "lecam", "consistency"}
        assert all(torch.isfinite(v) for v in d.values()) and d["consistency"] > 0
        d_opt.zero_grad()
        sum(d.values()).backward()
        d_opt.step()
    assert int(adv.lecam.num_updates) == 2
    assert any(not torch.equal(a, b) for a, b in zip(before, adv.discriminator.parameters()))
    assert "adversary.discriminator.from_rgb.weight" in model.state_dict()


def test_adversary_is_off_without_the_option_or_at_weight_zero():
    assert tiny_softvq().adversary is None
    assert tiny_softvq(adversarial={"weight": 0.0}).adversary is None
    custom = tiny_softvq(adversarial={"kind": "patchgan", "num_layers": 2, "lecam_weight": 0.0})
    assert custom.adversary.kind == "patchgan" and custom.adversary.lecam_weight == 0.0


def test_encoder_and_decoder_sizes_and_pretrained_encoder_init():
    model = tiny_softvq(
        decoder_size="S",
        encoder={
            "init": "dinov2",
            "stand_in": {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 4},
        },
    )
    assert model.encoder.patch_embed.out_channels == 64 and model.decoder.embed.out_features == 512
    assert len(model.encoder.transformer) == 2 and len(model.decoder.transformer) == 8
    assert model.decode(model.encode(images(2))).shape == (2, 3, IMAGE, IMAGE)
    before = model.encoder.transformer[0].attn.qkv.weight.detach().clone()
    report = initialize_encoder(model.encoder, model.encoder_init)
    assert report.counts()["copied"] > 0
    assert "transformer.0.attn.qkv.weight" in report.names("copied") + report.names("adapted")
    assert not torch.equal(before, model.encoder.transformer[0].attn.qkv.weight)


@pytest.mark.parametrize(
    "options, key",
    [
        ({"size": "huge"}, "tokenizer.size"),
        ({"decoder_size": "XL"}, "tokenizer.decoder_size"),
        ({"patch_size": 5}, "tokenizer.patch_size"),
        ({"num_codebooks": 3}, "tokenizer.num_codebooks"),
        ({"codebook_size": 1}, "tokenizer.codebook_size"),
        ({"tau": 0.0}, "tokenizer.tau"),
        ({"kl_weight": -1.0}, "tokenizer.kl_weight"),
        ({"recon_loss": "l3"}, "tokenizer.recon_loss"),
        ({"perceptual": {"weight": 1.0, "net": "resnet"}}, "tokenizer.perceptual.net"),
        ({"adversarial": {"kind": "bogus"}}, "tokenizer.adversarial.kind"),
        ({"adversarial": {"lecam": 0.1}}, "tokenizer.adversarial.lecam"),
        ({"align": {"init": "none"}}, "tokenizer.align.init"),
        ({"align": {"init": "dinov2", "sise": "B"}}, "tokenizer.align.sise"),
        ({"align": {"init": "dinov3"}}, "tokenizer.align.init"),
        ({"similarity": "dot"}, "tokenizer.similarity"),
    ],
)
def test_bad_options_raise_config_errors_naming_the_key(options, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        tiny_softvq(**options)


def test_release_options_build_softvqs_timm_vits():
    """SoftVQ's releases: no pre-norm, LayerNorm eps 1e-6, LayerScale (x + gamma * branch) in every block,
    cosine soft VQ; unset, the model is built exactly as before (same weights for a seed)."""
    model = tiny_softvq(ln_pre=False, norm_eps=1e-6, layer_scale=1e-5, similarity="cosine")
    for vit in (model.encoder, model.decoder):
        assert isinstance(vit.ln_pre, torch.nn.Identity) and vit.ln_post.eps == 1e-6
        block = vit.transformer[0]
        assert block.norm1.eps == 1e-6 and torch.equal(block.ls1.gamma, torch.full((64,), 1e-5))
    assert model.quantizer.similarity == "cosine"
    block, x = model.encoder.transformer[1], torch.randn(2, 5, 64)
    block.ls1.gamma.data.uniform_(-1, 1)
    block.ls2.gamma.data.uniform_(-1, 1)
    h = x + block.ls1.gamma * block.attn(block.norm1(x))
    assert torch.allclose(block(x), h + block.ls2.gamma * block.mlp(block.norm2(h)), atol=1e-6)
    default, explicit = tiny_softvq(), tiny_softvq(ln_pre=True, norm_eps=1e-5, similarity="distance")
    assert default.state_dict().keys() == explicit.state_dict().keys()
    assert not any(".ls" in k for k in default.state_dict())
    assert all(
        torch.equal(a, b) for a, b in zip(default.state_dict().values(), explicit.state_dict().values(), strict=True)
    )


@pytest.mark.slow
def test_short_cpu_training_lowers_the_reconstruction_loss():
    data = build_dataset({"name": "procedural", "resolution": IMAGE, "train_size": 256}, "train")
    pool = torch.stack([data[i][0] for i in range(len(data))])
    model = tiny_softvq()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    order = torch.Generator().manual_seed(0)
    recon = []
    for _ in range(200):
        out = model(pool[torch.randint(0, len(pool), (16,), generator=order)])
        optimizer.zero_grad()
        sum(out.losses.values()).backward()
        optimizer.step()
        recon.append(out.losses["recon"].item())
    assert sum(recon[-10:]) / 10 < 0.75 * sum(recon[:5]) / 5
    with torch.no_grad():
        mse = F.mse_loss(model.reconstruct(pool[:64]), pool[:64])
        mean_image = F.mse_loss(pool.mean(0, keepdim=True).expand(64, -1, -1, -1), pool[:64])
    assert mse < 0.9 * mean_image

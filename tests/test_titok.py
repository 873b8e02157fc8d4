"""TiTok: interface shapes, the thesis's loss set and its gradients, the adversarial step, and a
smoke training that learns."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import check_adversarial_steps, grads_of

from benchmark.config import TrainConfig
from benchmark.data import build_dataset
from benchmark.errors import ConfigError
from benchmark.gan import PatchGANDiscriminator
from benchmark.layers import unpatchify
from benchmark.metrics import PSNR, EvalBatch
from benchmark.registry import TOKENIZERS
from benchmark.tokenizer_stages import tokenizer_step
from benchmark.train import fit

LPIPS = {"weight": 1.0, "net": "alex", "weights": "random"}  # random backbone: offline, and cheap at 32 px


def tiny_titok(**kw):
    torch.manual_seed(0)
    opts = dict(image_size=16, size="tiny", patch_size=4, num_latent_tokens=8, codebook_size=32, token_size=6)
    return TOKENIZERS.build("titok", **{**opts, **kw})


def test_shapes_dtypes_and_token_spec():
    model = tiny_titok()
    spec = model.token_spec
    assert spec.kind == "discrete" and spec.shape == (8,) and spec.vocab_size == 32 and spec.num_generated == 8
    images = torch.rand(3, 3, 16, 16)
    ids = model.encode(images)
    assert ids.shape == (3, 8) and ids.dtype == torch.long and int(ids.max()) < 32
    out = model.decode(ids)
    assert out.shape == images.shape and out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1
    fwd = model(images)
    assert set(fwd.losses) == {"recon", "codebook", "commitment"}
    assert torch.equal(fwd.tokens, ids)
    # The training pass decodes exactly what encode -> decode gives (up to the output clamp).
    assert torch.allclose(fwd.recon.clamp(0, 1), out, atol=1e-5)


def test_every_loss_is_finite_and_reaches_its_parameters():
    model = tiny_titok()
    losses = model(torch.rand(4, 3, 16, 16)).losses
    grads = {}
    for name, loss in losses.items():
        assert torch.isfinite(loss)
        model.zero_grad()
        loss.backward(retain_graph=True)
        grads[name] = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    # Straight-through: the reconstruction loss trains encoder and decoder, not the codebook.
    assert "encoder.patch_embed.weight" in grads["recon"] and "decoder.head.weight" in grads["recon"]
    assert "quantizer.embedding.weight" not in grads["recon"]
    assert grads["codebook"] == {"quantizer.embedding.weight"}
    assert "encoder.proj.weight" in grads["commitment"] and "quantizer.embedding.weight" not in grads["commitment"]


def test_l2_normalised_codes_live_on_the_unit_sphere():
    model = tiny_titok(l2_norm=True)
    assert torch.allclose(model.quantizer.codebook().norm(dim=-1), torch.ones(32))
    z = model.quantizer.lookup(model.encode(torch.rand(2, 3, 16, 16)))
    assert torch.allclose(z.norm(dim=-1), torch.ones(2, 8), atol=1e-5)


@pytest.mark.slow
def test_smoke_training_lowers_recon_loss_and_beats_the_mean_image(tmp_path):
    train = build_dataset({"name": "procedural", "resolution": 16, "train_size": 256}, "train")
    evals = build_dataset({"name": "procedural", "resolution": 16, "eval_size": 64}, "eval")
    model = tiny_titok(l2_norm=False, codebook_size=64)
    cfg = TrainConfig(steps=240, batch_size=32, lr=1e-3, warmup_steps=10, log_every=10, checkpoint_every=240)
    fit(model, tokenizer_step(model), train, cfg, 0, tmp_path, torch.device("cpu"))
    log = [line.split(",") for line in (tmp_path / "losses.csv").read_text().splitlines()]
    recon = [float(r[log[0].index("recon")]) for r in log[1:]]
    assert sum(recon[-5:]) / 5 < 0.8 * sum(recon[:2]) / 2

    images = torch.stack([evals[i][0] for i in range(len(evals))])
    mean_image = torch.stack([train[i][0] for i in range(len(train))]).mean(0, keepdim=True)
    model.eval()
    psnr_model, psnr_mean = PSNR(model.token_spec), PSNR(model.token_spec)
    labels = torch.zeros(len(images))
    psnr_model.update(EvalBatch(images, model.reconstruct(images), model.encode(images), labels))
    psnr_mean.update(EvalBatch(images, mean_image.expand_as(images), model.encode(images), labels))
    assert psnr_model.compute()["psnr"] > psnr_mean.compute()["psnr"] + 0.5


def test_thesis_loss_set_reaches_its_parameters():
    """Perceptual and entropy terms (thesis Sec. 3.2.1) next to recon and the quantiser terms."""
    opts = dict(image_size=32, patch_size=8, entropy_weight=0.1, l2_norm=True)
    model = tiny_titok(perceptual=LPIPS, **opts)
    plain = tiny_titok(**opts)
    # The frozen LPIPS network adds no parameters and no checkpoint entries.
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in plain.parameters())
    assert set(model.state_dict()) == set(plain.state_dict())
    losses = model(torch.rand(4, 3, 32, 32)).losses
    assert set(losses) == {"recon", "perceptual", "codebook", "commitment", "entropy"}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    grads = {name: grads_of(model, loss) for name, loss in losses.items()}
    enc, dec, codes = "encoder.proj.weight", "decoder.head.weight", "quantizer.embedding.weight"
    assert {enc, dec} <= grads["perceptual"] and codes not in grads["perceptual"]
    assert {enc, codes} <= grads["entropy"] and not any(n.startswith("decoder.") for n in grads["entropy"])


def test_recon_loss_options_and_weights():
    images = torch.rand(2, 3, 16, 16)
    model = tiny_titok(recon_loss="l1", recon_weight=2.0, quantizer_weight=0.5)
    out = model(images)
    assert torch.allclose(out.losses["recon"], 2.0 * F.l1_loss(out.recon, images))
    _, _, q = model.quantizer(model.encoder(images * 2 - 1))
    assert torch.allclose(out.losses["codebook"], 0.5 * q["codebook"])
    assert torch.allclose(out.losses["commitment"], 0.5 * q["commitment"])


def test_code_ids_and_any_token_count():
    model = tiny_titok(num_latent_tokens=5, codebook_size=4096, token_size=16)
    images = torch.rand(2, 3, 16, 16)
    assert model.token_spec.shape == (5,) and model.token_spec.vocab_size == 4096
    assert torch.equal(model.code_ids(images)["codes"], model.encode(images))
    assert model.code_ids(images)["codes"].shape == (2, 5) and model.codebook_sizes() == {"codes": 4096}
    assert model.adversary is None and model.last_layer() is model.decoder.head.weight


@pytest.mark.parametrize(
    "opts, key",
    [
        ({"size": "XL"}, "tokenizer.size"),
        ({"recon_loss": "l3"}, "tokenizer.recon_loss"),
        ({"patch_size": 5}, "tokenizer.patch_size"),
        ({"entropy_weight": -1.0}, "tokenizer.entropy_weight"),
        ({"adversarial": {"kind": "mlp"}}, "tokenizer.adversarial.kind"),
        ({"decoder_size": "XL"}, "tokenizer.decoder_size"),
        ({"pixel_range": [1.0, 0.0]}, "tokenizer.pixel_range"),
        ({"bottleneck": "fsq"}, "tokenizer.bottleneck"),
        ({"legacy": True, "bottleneck": "kl"}, "tokenizer.legacy"),
        ({"pixel_vqgan": {"ch": 32}}, "tokenizer.pixel_vqgan"),
        ({"legacy": True, "pixel_vqgan": {"ch_mult": [1, 2]}}, "tokenizer.pixel_vqgan.ch_mult"),
    ],
)
def test_bad_config_names_its_key(opts, key):
    with pytest.raises(ConfigError, match=key):
        tiny_titok(**opts)


def test_release_options_default_to_the_thesis_model():
    """Unset, the release options build exactly the model they built before: same weights for a seed,
    no new tensors, images mapped to [-1, 1]."""
    default, explicit = tiny_titok(), tiny_titok(decoder_size="tiny", pixel_range=[-1.0, 1.0], bottleneck="vq")
    assert default.state_dict().keys() == explicit.state_dict().keys()
    assert all(
        torch.equal(a, b) for a, b in zip(default.state_dict().values(), explicit.state_dict().values(), strict=True)
    )
    assert not any(k.startswith(("pixel_", "decoder.conv_out")) or ".ls" in k for k in default.state_dict())
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(default.encode(x), default.quantizer.indices(default.encoder(x * 2 - 1)))


def test_release_options_pixel_range_decoder_size_and_conv_out():
    """TiTok's releases see [0, 1] images as they are, decode with a larger ViT, end with a 3x3 RGB conv."""
    model = tiny_titok(pixel_range=[0.0, 1.0], size="tiny", decoder_size="S", conv_out=True)
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(model.encode(x), model.quantizer.indices(model.encoder(x)))
    assert model.decoder.embed.out_features == 512 and model.encoder.proj.in_features == 64
    z = model.quantizer.lookup(model.encode(x))
    pixels = model.decoder.conv_out(unpatchify(model.decoder.head(model.decoder.features(z)), 4, 4))
    assert torch.allclose(model._decode_latents(z), pixels, atol=1e-6)
    assert model.last_layer() is model.decoder.conv_out.weight


def test_kl_bottleneck_tokens_are_the_posterior_mean():
    """bottleneck: kl (TiTok-*-VAE): the encoder's first token_size channels are the mean, the rest the
    log-variance; tokens are the mean (or a sample), the loss adds the weighted KL."""
    model = tiny_titok(bottleneck="kl", token_size=6, kl_weight=0.5)
    x = torch.rand(2, 3, 16, 16)
    moments = model.encoder(x * 2 - 1)
    assert moments.shape == (2, 8, 12) and model.quantizer is None
    spec = model.token_spec
    assert spec.kind == "continuous" and spec.shape == (8,) and spec.dim == 6
    assert torch.equal(model.encode(x), moments[..., :6]) and model.encode_with_codes(x)[1] == {}
    assert model.decode(model.encode(x)).shape == x.shape
    out = model(x)
    mean, logvar = moments[..., :6], moments[..., 6:].clamp(-30, 20)
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).flatten(1).sum(1).mean()
    assert set(out.losses) == {"recon", "kl"} and torch.allclose(out.losses["kl"], 0.5 * kl)
    model.sample_posterior = True
    assert not torch.equal(model.encode(x), moments[..., :6])


def test_legacy_decoder_renders_code_logits_through_the_pixel_decoder():
    """legacy: per patch, softmax over the pixel codebook's logits mixes its codes; the MaskGIT-VQGAN
    decoder renders the mixture (one patch -> patch_size^2 pixels)."""
    model = tiny_titok(legacy=True, pixel_vqgan={"size": "tiny", "ch_mult": [1, 1, 2], "codebook_size": 16})
    x = torch.rand(2, 3, 16, 16)
    ids = model.encode(x)
    z = model.quantizer.lookup(ids)
    probs = model.pixel_head(model.decoder.features(z)).softmax(-1)  # (2, 16 patches, 16 codes)
    mixture = torch.einsum("bnk,kd->bdn", probs, model.pixel_codebook.weight).reshape(2, 32, 4, 4)
    recon = (model.pixel_decoder(mixture) + 1) / 2
    assert torch.allclose(model._decode_latents(z), recon, atol=1e-6)
    assert not hasattr(model.decoder, "head") and model.last_layer() is model.pixel_decoder.conv_out.weight


def test_adversarial_generator_and_discriminator_steps():
    """The trainer's step (tokenizer contract): G on the weighted losses + adversarial, then D."""
    model = tiny_titok(
        image_size=32, patch_size=8, adversarial={"start": 0, "weight": 0.5, "num_layers": 2, "width": 16}
    )
    adversary = model.adversary
    assert isinstance(adversary.discriminator, PatchGANDiscriminator) and adversary.loss_name == "hinge"
    check_adversarial_steps(model, torch.rand(4, 3, 32, 32), {"decoder.head.weight", "encoder.patch_embed.weight"})

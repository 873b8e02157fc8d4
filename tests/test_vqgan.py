"""VQGAN (the thesis's 2D baseline): shapes, the loss set and its gradients, the KL variant, the
adversarial step, and a short CPU training that learns."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import check_adversarial_steps, grads_of

from benchmark.data import build_dataset
from benchmark.errors import ConfigError
from benchmark.gan import PatchGANDiscriminator
from benchmark.quantizers import DiagonalGaussian
from benchmark.registry import TOKENIZERS

LPIPS = {"weight": 1.0, "net": "alex", "weights": "random"}  # random backbone: offline, and cheap at 32 px


def tiny_vqgan(**kw):
    torch.manual_seed(0)
    opts = dict(image_size=32, size="tiny", codebook_size=64, adversarial=None)
    return TOKENIZERS.build("vqgan", **{**opts, **kw})


def test_vq_shapes_dtypes_token_spec_and_latent_grid():
    model = tiny_vqgan()
    spec = model.token_spec
    assert spec.kind == "discrete" and spec.shape == (8, 8) and spec.vocab_size == 64 and spec.num_tokens == 64
    images = torch.rand(3, 3, 32, 32)
    ids = model.encode(images)
    assert ids.shape == (3, 8, 8) and ids.dtype == torch.long and 0 <= int(ids.min()) and int(ids.max()) < 64
    out = model.decode(ids)
    assert out.shape == images.shape and out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1
    assert torch.equal(model.decode(ids.flatten(1)), out)  # a generator's flat (B, h*w) ids decode the same
    fwd = model(images)
    assert set(fwd.losses) == {"recon", "codebook", "commitment"}
    assert torch.equal(fwd.tokens, ids)
    assert torch.allclose(fwd.recon.clamp(0, 1), out, atol=1e-5)
    # The thesis's pixel loss is L2 (TiTok's); taming's L1 is an option.
    assert torch.allclose(fwd.losses["recon"], F.mse_loss(fwd.recon, images))
    l1 = tiny_vqgan(recon_loss="l1", recon_weight=2.0)(images)
    assert torch.allclose(l1.losses["recon"], 2.0 * F.l1_loss(l1.recon, images))

    grid = model.latent_grid(images)
    assert grid.shape == (3, 64, 32)
    expected = model.quant_conv(model.encoder(images * 2 - 1)).flatten(2).transpose(1, 2)
    assert torch.allclose(grid, expected, atol=1e-6)
    # The ids are the nearest codes of exactly these latents.
    assert torch.equal(model.quantizer.indices(grid).view(3, 8, 8), ids)
    assert torch.equal(model.code_ids(images)["codes"], ids) and model.codebook_sizes() == {"codes": 64}


def test_base_preset_is_tamings_f16_model():
    torch.manual_seed(0)
    model = TOKENIZERS.build("vqgan", image_size=256, size="base", adversarial=None)
    spec = model.token_spec  # 256 px / 16 = 16 x 16 = 256 tokens, codebook 1024 of dim 256
    assert spec.kind == "discrete" and spec.shape == (16, 16) and spec.vocab_size == 1024
    assert model.quantizer.embedding.weight.shape == (1024, 256)
    assert model.encoder.conv_in.out_channels == 128 and model.decoder.conv_out.in_channels == 128
    assert sum(type(m).__name__ == "Downsample" for m in model.encoder.modules()) == 4
    assert sum(type(m).__name__ == "Upsample" for m in model.decoder.modules()) == 4
    # Attention only at the lowest resolution: 2 blocks + mid in the encoder, 3 blocks + mid in the decoder.
    assert sum(type(m).__name__ == "AttnBlock" for m in model.encoder.modules()) == 3
    assert sum(type(m).__name__ == "AttnBlock" for m in model.decoder.modules()) == 4
    with torch.no_grad():  # fully convolutional: a 32 px image gives a 2 x 2 grid
        assert model.latent_grid(torch.rand(1, 3, 32, 32)).shape == (1, 4, 256)


def group_norms(model: torch.nn.Module) -> set[tuple[int, int]]:
    """(groups, channels) of every GroupNorm of ``model``."""
    return {(m.num_groups, m.num_channels) for m in model.modules() if isinstance(m, torch.nn.GroupNorm)}


def test_group_norm_keeps_colour_at_the_tiny_width_and_tamings_groups_elsewhere():
    """One channel per group is instance norm: a per-image colour offset of a feature map is normalised away.
    The tiny preset keeps 4 channels per group; the base preset and a converted release's narrow widths
    keep taming's GroupNorm(32, C)."""
    assert group_norms(tiny_vqgan()) == group_norms(tiny_vqgan(bottleneck="kl")) == {(4, 16), (8, 32)}
    base = TOKENIZERS.build("vqgan", size="base", adversarial=None)
    assert group_norms(base) == {(32, c) for c in (128, 256, 512)}
    release = TOKENIZERS.build("vqgan", image_size=32, size="base", ch=32, ch_mult=[1, 2, 2], adversarial=None)
    assert group_norms(release) == {(32, 32), (32, 64)}  # taming_stand_in's widths, as taming builds them

    torch.manual_seed(0)
    pattern = torch.randn(1, 16, 8, 8)
    pink, teal = (pattern + torch.randn(1, 16, 1, 1) for _ in range(2))  # the same map in two colours
    per_channel = tiny_vqgan(size="base", ch=16).decoder.norm_out  # gcd(32, 16): 16 groups of one channel
    grouped = tiny_vqgan().decoder.norm_out
    assert (per_channel.num_groups, grouped.num_groups) == (16, 4)
    with torch.no_grad():
        assert torch.allclose(per_channel(pink), per_channel(teal), atol=1e-4)  # the colour is gone
        assert (grouped(pink) - grouped(teal)).abs().mean() > 0.1  # it survives


def test_default_adversary_is_a_hinge_patchgan_and_overrides_merge():
    model = tiny_vqgan(adversarial={"weight": 0.3})
    adv = model.adversary
    assert isinstance(adv.discriminator, PatchGANDiscriminator) and adv.loss_name == "hinge"
    assert adv.weight == 0.3 and adv.start == 10000 and adv.adaptive
    torch.manual_seed(0)
    default = TOKENIZERS.build("vqgan", image_size=32, size="tiny")
    assert isinstance(default.adversary.discriminator, PatchGANDiscriminator) and default.adversary.weight == 0.8
    assert tiny_vqgan().adversary is None and tiny_vqgan(adversarial={"weight": 0}).adversary is None
    assert model.last_layer() is model.decoder.conv_out.weight


def test_every_loss_is_finite_and_reaches_its_parameters():
    model = tiny_vqgan(entropy_weight=0.1, perceptual=LPIPS)
    plain = tiny_vqgan()
    # The frozen LPIPS network adds no parameters and no checkpoint entries.
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in plain.parameters())
    assert set(model.state_dict()) == set(plain.state_dict())

    losses = model(torch.rand(4, 3, 32, 32)).losses
    assert set(losses) == {"recon", "perceptual", "codebook", "commitment", "entropy"}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    grads = {name: grads_of(model, loss) for name, loss in losses.items()}
    enc, dec, codes = "encoder.conv_in.weight", "decoder.conv_out.weight", "quantizer.embedding.weight"
    # Straight-through: pixel terms train encoder, both 1x1 convs and decoder, never the codebook.
    for term in ("recon", "perceptual"):
        assert {enc, dec, "quant_conv.weight", "post_quant_conv.weight"} <= grads[term]
        assert codes not in grads[term]
    assert grads["codebook"] == {codes}
    assert enc in grads["commitment"] and codes not in grads["commitment"] and dec not in grads["commitment"]
    # The entropy regulariser moves the encoder's latents and the codes, not the decoder.
    assert {enc, codes} <= grads["entropy"] and dec not in grads["entropy"]


def test_kl_bottleneck_has_continuous_tokens_and_a_weighted_kl_term():
    model = tiny_vqgan(bottleneck="kl", kl_weight=1e-3)
    spec = model.token_spec
    assert spec.kind == "continuous" and spec.shape == (64,) and spec.dim == 8 and model.quantizer is None
    images = torch.rand(2, 3, 32, 32)
    tokens = model.encode(images)
    assert tokens.shape == (2, 64, 8) and tokens.dtype == torch.float32
    assert torch.equal(tokens, model.encode(images))  # deterministic: the posterior mean
    assert torch.equal(model.latent_grid(images), tokens)
    recon = model.decode(tokens)
    assert recon.shape == images.shape and 0 <= recon.min() and recon.max() <= 1
    assert model.code_ids(images) == {} and model.codebook_sizes() == {}

    torch.manual_seed(1)
    out = model(images)
    assert set(out.losses) == {"recon", "kl"} and out.tokens.shape == (2, 64, 8)
    posterior = DiagonalGaussian(model.quant_conv(model.encoder(images * 2 - 1)), dim=1)
    assert torch.allclose(out.losses["kl"], 1e-3 * posterior.kl())
    assert out.losses["kl"].item() > 0
    kl_grads = grads_of(model, out.losses["kl"])
    assert {"encoder.conv_in.weight", "quant_conv.weight"} <= kl_grads
    assert not any(n.startswith(("decoder.", "post_quant_conv.")) for n in kl_grads)
    assert {"encoder.conv_in.weight", "decoder.conv_out.weight"} <= grads_of(model, out.losses["recon"])
    assert tiny_vqgan(bottleneck="kl", embed_dim=4).encode(images).shape == (2, 64, 4)


@pytest.mark.parametrize(
    "opts, key",
    [
        ({"size": "huge"}, "tokenizer.size"),
        ({"bottleneck": "fsq"}, "tokenizer.bottleneck"),
        ({"image_size": 34}, "tokenizer.size"),
        ({"recon_loss": "l3"}, "tokenizer.recon_loss"),
        ({"entropy_weight": -1.0}, "tokenizer.entropy_weight"),
        ({"adversarial": {"kind": "mlp"}}, "tokenizer.adversarial.kind"),
        ({"ch": 0}, "tokenizer.ch"),
        ({"ch_mult": []}, "tokenizer.ch_mult"),
        ({"num_res_blocks": 0}, "tokenizer.num_res_blocks"),
    ],
)
def test_bad_config_names_its_key(opts, key):
    with pytest.raises(ConfigError, match=key):
        tiny_vqgan(**opts)


def test_ddconfig_overrides_change_the_architecture_and_nothing_else():
    """ch / ch_mult / num_res_blocks replace the preset's (a taming model.yaml's ddconfig); attention stays
    at the lowest resolution; unset, the preset is built exactly as before (same weights for a seed)."""
    model = tiny_vqgan(ch=32, ch_mult=[1, 2, 2, 4], num_res_blocks=2, vq_norms_first=True)
    assert model.token_spec.shape == (4, 4) and model.encoder.conv_in.out_channels == 32
    assert len(model.encoder.down) == 7 and len(model.encoder.down[6]) == 4  # 2 x (ResNet, attention)
    assert len(model.decoder.up[0]) == 6 and len(model.decoder.up[2]) == 3  # num_res_blocks + 1 per level
    assert model.quantizer.norms_first and not tiny_vqgan().quantizer.norms_first
    preset, explicit = tiny_vqgan(), tiny_vqgan(ch=16, ch_mult=[1, 2, 2], num_res_blocks=1)
    assert all(
        torch.equal(a, b) for a, b in zip(preset.state_dict().values(), explicit.state_dict().values(), strict=True)
    )


def test_adversarial_generator_and_discriminator_steps():
    """The trainer's step (tokenizer contract): G on the weighted losses + adversarial, then D."""
    model = tiny_vqgan(adversarial={"start": 0, "weight": 0.5, "num_layers": 2, "width": 16})
    check_adversarial_steps(model, torch.rand(4, 3, 32, 32), {"decoder.conv_out.weight", "encoder.conv_in.weight"})


@pytest.mark.slow
def test_short_training_lowers_the_reconstruction_loss():
    data = build_dataset({"name": "procedural", "resolution": 32, "train_size": 128}, "train")
    images = torch.stack([data[i][0] for i in range(len(data))])
    model = tiny_vqgan(codebook_size=32)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    recon = []
    for _ in range(120):
        batch = images[torch.randint(len(images), (8,), generator=gen)]
        losses = model(batch).losses
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
        recon.append(losses["recon"].item())
    first, last = sum(recon[:5]) / 5, sum(recon[-10:]) / 10
    assert last < 0.6 * first, (first, last)
    model.eval()
    with torch.no_grad():
        mse = F.mse_loss(model.reconstruct(images), images)
        mean_mse = F.mse_loss(images.mean(0, keepdim=True).expand_as(images), images)
    assert mse < 0.8 * mean_mse, (mse, mean_mse)  # beats the mean image
    assert model.encode(images).unique().numel() > 4  # several codes in use

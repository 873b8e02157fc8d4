"""Pretrained encoders (benchmark/encoders.py): every entry's library path, loaded from files the
library itself saved (random weights, tiny shapes), into a tiny TiTok encoder; teachers; offline errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import open_clip
import pytest
import timm
import torch
import transformers
from timm.layers import resample_abs_pos_embed, resample_patch_embed
from torch import Tensor, nn

from benchmark.encoder_backends import PretrainedEncoder
from benchmark.encoders import build_encoder, initialize_encoder
from benchmark.errors import ConfigError, WeightsError
from benchmark.registry import ENCODERS, TOKENIZERS

WIDTH, DEPTH, HEADS = 64, 2, 4  # the "tiny" TiTok encoder


def titok_encoder(image_size: int = 32, patch_size: int = 16) -> nn.Module:
    return TOKENIZERS.build(
        "titok", image_size=image_size, size="tiny", patch_size=patch_size, num_latent_tokens=4
    ).encoder


def _randomize(model: nn.Module) -> nn.Module:
    """Non-trivial values everywhere (zero biases and 1e-5 LayerScales would hide mapping mistakes)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            scale = n.endswith("weight") and p.ndim == 1 and any(k in n for k in ("norm", "ln_"))
            p.copy_(torch.randn_like(p) * 0.2 + float(scale))
    return model


@dataclass
class Case:
    """A saved random-weight source model, its trunk, and how to run one of its blocks."""

    spec: dict
    trunk: nn.Module
    blocks: list[nn.Module]
    run_block: Callable[[nn.Module, Tensor], Tensor]


def timm_case(tmp: Path, name: str, arch: str, img: int, **kw) -> Case:
    model = _randomize(
        timm.create_model(arch, pretrained=False, img_size=img, embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS, **kw)
    )
    timm.models.save_for_hf(model, tmp / name, safe_serialization=True)
    spec = {"init": name, "weights": str(tmp / name), "size": next(iter(ENCODERS.get(name).obj.variants))}
    return Case(spec, model, list(model.blocks), lambda b, x: b(x))


def clip_case(tmp: Path) -> Case:
    cfg = {
        "embed_dim": 32,
        "quick_gelu": True,
        "vision_cfg": {
            "image_size": 32,
            "layers": DEPTH,
            "width": WIDTH,
            "head_width": WIDTH // HEADS,
            "patch_size": 16,
        },
        "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
    }
    (tmp / "tok1d-tiny-clip.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp / "tok1d-tiny-clip.json")
    model = _randomize(open_clip.create_model("tok1d-tiny-clip"))
    torch.save(model.state_dict(), tmp / "clip.pt")
    v = model.visual
    run = (lambda b, x: b(x)) if v.transformer.batch_first else (lambda b, x: b(x.transpose(0, 1)).transpose(0, 1))
    return Case(
        {"init": "clip", "model_id": "tok1d-tiny-clip", "weights": str(tmp / "clip.pt")},
        v,
        list(v.transformer.resblocks),
        run,
    )


def hf_case(tmp: Path, name: str, model: nn.Module, trunk: str | None, size: str) -> Case:
    model = _randomize(model)
    model.save_pretrained(tmp / name)
    t = getattr(model, trunk) if trunk else model
    layers = getattr(getattr(t, "encoder", t), "layer", None) or getattr(t, "encoder", t).layers

    def run(block: nn.Module, x: Tensor) -> Tensor:
        out = block(x, attention_mask=None) if "Siglip" in type(block).__name__ else block(x)
        return out[0] if isinstance(out, tuple) else out

    return Case({"init": name, "weights": str(tmp / name), "size": size}, t, list(layers), run)


def dinov2_config(**kw) -> transformers.Dinov2Config:
    return transformers.Dinov2Config(
        hidden_size=WIDTH,
        num_hidden_layers=DEPTH,
        num_attention_heads=HEADS,
        intermediate_size=4 * WIDTH,
        image_size=28,
        patch_size=14,
        **kw,
    )


CASES: dict[str, Callable[[Path], Case]] = {
    "mae": lambda t: timm_case(t, "mae", "vit_base_patch16_224", 32),
    "dino": lambda t: timm_case(t, "dino", "vit_small_patch16_224", 32),
    "dinov2": lambda t: timm_case(t, "dinov2", "vit_small_patch14_dinov2", 28),
    "siglip": lambda t: timm_case(t, "siglip", "vit_base_patch16_siglip_224", 32),
    "clip": clip_case,
    "depth_anything_v2": lambda t: hf_case(
        t,
        "depth_anything_v2",
        transformers.DepthAnythingForDepthEstimation(
            transformers.DepthAnythingConfig(
                backbone_config=dinov2_config(out_indices=[1, 2]),
                neck_hidden_sizes=[8, 16],
                fusion_hidden_size=8,
                reassemble_hidden_size=8,
                head_hidden_size=8,
            )
        ),
        "backbone",
        "S",
    ),
    "ijepa": lambda t: hf_case(
        t,
        "ijepa",
        transformers.IJepaModel(
            transformers.IJepaConfig(
                hidden_size=WIDTH,
                num_hidden_layers=DEPTH,
                num_attention_heads=HEADS,
                intermediate_size=4 * WIDTH,
                image_size=32,
                patch_size=16,
                layer_norm_eps=1e-6,
            )
        ),
        None,
        "H",
    ),
    "siglip2": lambda t: hf_case(
        t,
        "siglip2",
        transformers.SiglipModel(
            transformers.SiglipConfig(
                vision_config=dict(
                    hidden_size=WIDTH,
                    num_hidden_layers=DEPTH,
                    num_attention_heads=HEADS,
                    intermediate_size=4 * WIDTH,
                    image_size=32,
                    patch_size=16,
                ),
                text_config=dict(
                    hidden_size=32,
                    num_hidden_layers=1,
                    num_attention_heads=2,
                    intermediate_size=64,
                    vocab_size=64,
                    max_position_embeddings=8,
                ),
            )
        ),
        "vision_model",
        "B",
    ),
}


def test_every_pretrained_entry_has_a_case():
    assert set(ENCODERS.names()) == {*CASES, "none"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_entry_loads_every_block_and_matches_source_activations(name, tmp_path):
    case = CASES[name](tmp_path)
    encoder = titok_encoder(patch_size=16)
    report = initialize_encoder(encoder, case.spec)

    # Every source parameter of the trunk is accounted for; every block parameter was used.
    source_params = {n for n, _ in case.trunk.named_parameters()}
    assert report.accounted_sources() == source_params
    block_prefix = next(n for n, m in case.trunk.named_modules() if m is case.blocks[0])[:-1]
    block_params = {n for n in source_params if n.startswith(block_prefix)}
    used = {s for r in report.rows if r.status in ("copied", "adapted") for s in r.sources}
    assert block_params <= used
    # Every target parameter has a row; all block parameters were loaded, the latent ones are new.
    statuses = {r.target: r.status for r in report.rows if r.target}
    assert set(statuses) == {n for n, _ in encoder.named_parameters()}
    assert all(statuses[n] in ("copied", "adapted") for n in statuses if n.startswith("transformer."))
    assert statuses["latent_tokens"] == statuses["proj.weight"] == "new"
    json.loads(report.to_json())
    assert "transformer.0.attn.qkv.weight" in report.table()

    # The copied blocks compute the same function as the source's.
    torch.manual_seed(1)
    x = torch.randn(2, 5, WIDTH)
    with torch.no_grad():
        for ours, theirs in zip(encoder.transformer, case.blocks, strict=True):
            expected = case.run_block(theirs.eval(), x)
            torch.testing.assert_close(ours(x), expected, rtol=1e-4, atol=1e-4)
            x = expected


@pytest.mark.parametrize("name", ["dinov2", "mae"])
def test_a_target_with_layer_scale_computes_the_source_blocks(name, tmp_path):
    """SoftVQ's layout has LayerScale (initialised 1e-5): the copied blocks carry the source's own scale
    (DINOv2's folded in, MAE's none), so the target's gammas are set to 1, else each block is ~an identity."""
    case = CASES[name](tmp_path)
    encoder = TOKENIZERS.build(
        "softvq", image_size=32, size="tiny", patch_size=16, num_latent_tokens=4, layer_scale=1e-5
    ).encoder
    report = initialize_encoder(encoder, case.spec)
    statuses = {r.target: r.status for r in report.rows if r.target}
    assert statuses["transformer.0.ls1.gamma"] == "adapted"
    torch.manual_seed(1)
    x = torch.randn(2, 5, WIDTH)
    with torch.no_grad():
        for ours, theirs in zip(encoder.transformer, case.blocks, strict=True):
            expected = case.run_block(theirs.eval(), x)
            torch.testing.assert_close(ours(x), expected, rtol=1e-4, atol=1e-4)
            x = expected


def test_patch_resample_and_pos_interpolation_agree_with_timm(tmp_path):
    """DINOv2 14 px patches, grid 2 -> a 16 px / grid 4 tokenizer, against timm's own loader adaptation."""
    case = CASES["dinov2"](tmp_path)
    encoder = titok_encoder(image_size=64, patch_size=16)
    report = initialize_encoder(encoder, case.spec)
    src = case.trunk
    ref = timm.create_model(f"local-dir:{case.spec['weights']}", pretrained=True, img_size=64, patch_size=16)
    torch.testing.assert_close(encoder.patch_embed.weight, ref.patch_embed.proj.weight)
    torch.testing.assert_close(encoder.positional_embedding, ref.pos_embed)
    torch.testing.assert_close(
        encoder.patch_embed.weight, resample_patch_embed(src.patch_embed.proj.weight.detach(), [16, 16])
    )
    torch.testing.assert_close(
        encoder.positional_embedding, resample_abs_pos_embed(src.pos_embed.detach(), [4, 4], num_prefix_tokens=1)
    )
    statuses = {r.target: r.status for r in report.rows}
    assert statuses["patch_embed.weight"] == statuses["positional_embedding"] == "adapted"


def test_registers_are_reported_and_class_token_gets_no_position(tmp_path):
    case = timm_case(tmp_path, "dinov2", "vit_small_patch14_reg4_dinov2", 28)
    encoder = titok_encoder(patch_size=16)
    report = initialize_encoder(encoder, {**case.spec, "registers": True})
    ignored = {r.sources[0]: r.detail for r in report.rows if r.status == "ignored"}
    assert "register" in ignored["reg_token"]
    assert torch.equal(encoder.positional_embedding[0, 0], torch.zeros(WIDTH))
    torch.testing.assert_close(encoder.positional_embedding[:, 1:], case.trunk.pos_embed)


def test_width_or_depth_mismatch_refused_or_copied_with_report(tmp_path):
    model = timm.create_model(
        "vit_small_patch16_224", pretrained=False, img_size=32, embed_dim=WIDTH, depth=3, num_heads=HEADS
    )
    timm.models.save_for_hf(model, tmp_path / "deep", safe_serialization=True)
    spec = {"init": "dino", "size": "S", "weights": str(tmp_path / "deep")}
    with pytest.raises(ConfigError, match="depth: source 3, target 2"):
        initialize_encoder(titok_encoder(), spec)
    report = initialize_encoder(titok_encoder(), {**spec, "strict": False})
    ignored = [r.sources[0] for r in report.rows if r.status == "ignored"]
    assert {n for n in ignored if n.startswith("blocks.")} == {
        n for n, _ in model.blocks[2].named_parameters(prefix="blocks.2")
    }
    assert report.accounted_sources() == {n for n, _ in model.named_parameters()}
    narrow = timm.create_model(
        "vit_small_patch16_224", pretrained=False, img_size=32, embed_dim=32, depth=DEPTH, num_heads=HEADS
    )
    timm.models.save_for_hf(narrow, tmp_path / "narrow", safe_serialization=True)
    spec = {**spec, "weights": str(tmp_path / "narrow")}
    with pytest.raises(ConfigError, match="width: source 32, target 64"):
        initialize_encoder(titok_encoder(), spec)
    report = initialize_encoder(titok_encoder(), {**spec, "strict": False})
    assert report.counts()["copied"] == report.counts()["adapted"] == 0
    assert report.accounted_sources() == {n for n, _ in narrow.named_parameters()}


def test_none_leaves_everything_new():
    encoder = titok_encoder()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    report = initialize_encoder(encoder, {"init": "none"})
    assert report.counts()["new"] == len(list(encoder.parameters())) and report.counts()["copied"] == 0
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())


@pytest.mark.parametrize("name", ["dinov2", "clip", "siglip2"])
def test_teacher_features_shape_no_grad_deterministic(name, tmp_path):
    case = CASES[name](tmp_path)
    teacher = build_encoder({**case.spec, "layer": 1})
    final = build_encoder(case.spec)
    images = torch.rand(2, 3, 20, 20, requires_grad=True)
    feats = teacher.teacher_features(images)
    grid = teacher.resolution() // teacher.source().patch_size
    assert feats.shape == (2, grid * grid, WIDTH)
    assert not feats.requires_grad and feats.grad_fn is None
    assert torch.equal(feats, teacher.teacher_features(images))
    assert not torch.allclose(feats, final.teacher_features(images))


def test_teacher_features_match_library_forward(tmp_path):
    case = CASES["dinov2"](tmp_path)
    teacher = build_encoder(case.spec)
    images = torch.rand(2, 3, 28, 28)
    mean, std = torch.tensor(teacher.mean).view(1, 3, 1, 1), torch.tensor(teacher.std).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = case.trunk.eval().forward_features((images - mean) / std)[:, case.trunk.num_prefix_tokens :]
    torch.testing.assert_close(teacher.teacher_features(images), expected)


def test_missing_weights_offline_give_one_clear_error(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    for spec, model_id in (
        ({"init": "dino", "size": "S"}, "vit_small_patch16_224.dino"),
        ({"init": "ijepa", "model_id": "tok1d/no-such-model"}, "tok1d/no-such-model"),
    ):
        with pytest.raises(WeightsError, match="fetch_weights") as err:
            initialize_encoder(titok_encoder(), spec)
        assert model_id in str(err.value) and "weights: /path" in str(err.value)
    with pytest.raises(WeightsError, match="does not exist"):
        initialize_encoder(titok_encoder(), {"init": "mae", "weights": str(tmp_path / "missing.safetensors")})


def test_bad_encoder_config_names_the_key():
    with pytest.raises(ConfigError, match="Did you mean: dinov2"):
        build_encoder({"init": "dinov3"})
    with pytest.raises(ConfigError, match="not a size"):
        build_encoder({"init": "mae", "size": "S"})
    with pytest.raises(ConfigError, match="tokenizer.encoder.layers"):
        build_encoder({"init": "dinov2", "layers": 3})
    assert isinstance(build_encoder({"init": "dinov2", "size": "S"}), PretrainedEncoder)


def test_fetch_weights_lists_distinct_encoders_and_reports_offline_failures(monkeypatch, tmp_path, capsys):
    import huggingface_hub.constants
    import yaml

    from benchmark import fetch_weights
    from benchmark.study import build_plan

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    case = CASES["dino"](tmp_path)
    encoders = [
        {"init": "dinov2", "size": "S", "layer": 4},
        {"init": "dinov2", "size": "S", "layer": 8},
        case.spec,
        {"init": "none"},
        {"init": "mae", "stand_in": {"img_size": 32, "patch_size": 4}, "pretrain": {"steps": 2}},
    ]
    study = tmp_path / "study.yaml"
    study.write_text(
        yaml.safe_dump({"config": {"tokenizer": {"name": "titok"}}, "axes": {"grid": {"tokenizer.encoder": encoders}}})
    )
    plan = build_plan(study, "smoke")
    specs = fetch_weights.distinct_specs(plan)
    assert [s for s, _ in specs.values()][:3] == [{"init": "dinov2", "size": "S"}, case.spec, {"init": "none"}]
    assert len(specs[json.dumps({"init": "dinov2", "size": "S"}, sort_keys=True)][1]) == 2

    assert fetch_weights.main([str(study), "--profile", "smoke"]) == 1
    out = capsys.readouterr().out
    assert "could not fetch: cannot load the weights of dinov2 ViT-S (timm vit_small_patch14_dinov2.lvd142m)" in out
    assert "local weights" in out and "3 of 4 encoder weights available; 1 could not be fetched" in out
    assert "stand-in built here (pretrained offline by a stage of its study): nothing to fetch" in out


# ---------------------------------------------------------------------------------------------
# Random-weight stand-ins: every library's architecture, shrunk, through the same mapping and features


def stand_in(name: str, width: int, heads: int) -> dict:
    """Overrides for a 2-block, patch-4, 32 px stand-in of this entry, in its library's own names."""
    library = ENCODERS.get(name).obj.library
    if library == "timm":
        return {"img_size": 32, "patch_size": 4, "embed_dim": width, "depth": DEPTH, "num_heads": heads}
    if library == "open_clip":
        return {"image_size": 32, "patch_size": 4, "width": width, "layers": DEPTH, "head_width": width // heads}
    return {
        "image_size": 32,
        "patch_size": 4,
        "hidden_size": width,
        "num_hidden_layers": DEPTH,
        "num_attention_heads": heads,
        "intermediate_size": 4 * width,
    }


@pytest.mark.parametrize("name", sorted(CASES))
def test_stand_in_teacher_features(name):
    spec = {"init": name, "stand_in": stand_in(name, 48, 2)}
    final, first = build_encoder(spec), build_encoder({**spec, "layer": 1})
    for entry in (final, first):  # the same random stand-in, read after its last block or its first
        torch.manual_seed(0)
        entry.model()
    assert "random-weight stand-in" in final.describe() and final.resolution() == 32
    images = torch.rand(2, 3, 32, 32, requires_grad=True)
    feats, early = final.teacher_features(images), first.teacher_features(images)
    assert feats.shape == early.shape == (2, 8 * 8, 48)  # (B, (32 / 4)^2, stand-in width)
    assert torch.isfinite(feats).all() and feats.grad_fn is None
    assert not torch.allclose(feats, early) and not torch.allclose(feats[0], feats[1])
    if name in ("siglip", "siglip2", "ijepa"):  # no class token (pooled heads): REG cannot use them, and says so
        with pytest.raises(ConfigError, match="has no class token"):
            final.teacher_features(images, class_token=True)
    else:  # REG's class token comes from the same pass as the patch features, at the same depth
        patches, cls = final.teacher_features(images, class_token=True)
        assert torch.equal(patches, feats) and cls.shape == (2, 48) and torch.isfinite(cls).all()
        assert not torch.allclose(cls, first.teacher_features(images, class_token=True)[1])


@pytest.mark.parametrize("name", sorted(CASES))
def test_stand_in_initialises_a_tiny_titok_encoder(name):
    encoder = titok_encoder(patch_size=4)
    spec = {"init": name, "stand_in": stand_in(name, WIDTH, HEADS)}
    torch.manual_seed(0)
    report = initialize_encoder(encoder, spec)
    torch.manual_seed(0)
    src = build_encoder(spec).source()  # the same random stand-in, mapped
    statuses = {r.target: r.status for r in report.rows if r.target}
    assert set(statuses) == {n for n, _ in encoder.named_parameters()}
    blocks = [n for n in statuses if n.startswith("transformer.")]
    assert len(blocks) == DEPTH * 12 and all(statuses[n] in ("copied", "adapted") for n in blocks)
    assert report.names("copied") and statuses["patch_embed.weight"] == "copied"  # patch 4 -> 4
    assert statuses["positional_embedding"] in ("copied", "adapted")  # 8x8 -> 8x8; class row per source
    params = dict(encoder.named_parameters())
    for n in blocks + ["patch_embed.weight"]:
        assert torch.equal(params[n], src.params[n]), n
    assert report.accounted_sources() >= {s for n in blocks for s in src.sources[n]}
    assert report.activation == src.activation and report.norm_eps == src.eps


def test_stand_in_clip_keeps_quick_gelu():
    entry = build_encoder({"init": "clip", "stand_in": stand_in("clip", WIDTH, HEADS)})
    assert type(entry.model().transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    assert entry.source().activation == "quick_gelu" and entry.source().heads == HEADS


def test_stand_in_depth_anything_is_a_consistent_model_whose_backbone_is_the_teacher():
    entry = build_encoder({"init": "depth_anything_v2", "stand_in": stand_in("depth_anything_v2", WIDTH, HEADS)})
    config = entry.stand_in_config(stand_in("depth_anything_v2", WIDTH, HEADS))
    assert config.backbone_config.out_indices == [1, 2] and config.neck_hidden_sizes == [WIDTH // 2, WIDTH]
    torch.manual_seed(0)
    model = transformers.DepthAnythingForDepthEstimation(config).eval()
    images = torch.rand(2, 3, 32, 32)
    mean, std = torch.tensor(entry.mean).view(1, 3, 1, 1), torch.tensor(entry.std).view(1, 3, 1, 1)
    with torch.no_grad():
        assert model(pixel_values=images).predicted_depth.shape == (2, 32, 32)  # neck and head fit the trunk
        last = entry.model()(pixel_values=(images - mean) / std).feature_maps[-1]  # after the final norm
    assert type(entry.model()).__name__ == "Dinov2Backbone"
    torch.testing.assert_close(entry.teacher_features(images), last[:, 1:])
    deep = entry.stand_in_config({"num_hidden_layers": 12, "hidden_size": 32, "num_attention_heads": 2})
    assert deep.backbone_config.out_indices == [3, 6, 9, 12] and deep.neck_hidden_sizes == [4, 8, 16, 32]
    assert deep.reassemble_factors == [4, 2, 1, 0.5] and deep.reassemble_hidden_size == 32


def test_bad_stand_in_names_the_key():
    with pytest.raises(ConfigError, match=r"tokenizer.encoder.stand_in.depth: not a field of open_clip's vision_cfg"):
        build_encoder({"init": "clip", "stand_in": {"depth": 2}}).model()
    with pytest.raises(ConfigError, match="tokenizer.encoder.model_id: open_clip has no model config"):
        build_encoder({"init": "clip", "model_id": "tok1d-no-such-clip", "stand_in": {}}).model()
    with pytest.raises(ConfigError, match="stand_in.out_indices: Depth-Anything's neck fuses at most 4"):
        build_encoder(
            {"init": "depth_anything_v2", "stand_in": {"num_hidden_layers": 5, "out_indices": [1, 2, 3, 4, 5]}}
        ).model()
    with pytest.raises(ConfigError, match="tokenizer.encoder.stand_in: cannot build mae .*TypeError"):
        build_encoder({"init": "mae", "stand_in": {"img_size": 32, "layers": 2}}).model()


def test_feature_width_comes_from_the_variant_without_loading_weights():
    entry = build_encoder({"init": "dinov2", "size": "B"})
    assert entry.feature_dim() == 768 and entry._model is None  # offline: nothing was loaded
    stand_in = build_encoder(
        {"init": "dinov2", "stand_in": {"img_size": 32, "patch_size": 4, "embed_dim": 48, "depth": 1, "num_heads": 2}}
    )
    assert stand_in.feature_dim() == 48

"""``python -m benchmark.convert FORMAT SRC OUT [--config FILE]``: an official tokenizer (generator) release as a
tok1d tokenizer (generator) folder, computed by tok1d's own implementations with exact parity (the same token
ids and reconstructions within 1e-4 of the official code on the same inputs; a generator's logits within 1e-4).

    python -m benchmark.fetch_weights --release titok-l32            # online, once
    python -m benchmark.convert 1d-tokenizer titok-l32 runs/titok_l32
    python -m benchmark.evaluate runs/titok_l32 --data root=/data/imagenet

FORMAT         SRC (a path; a hub id or a release name of ``--list``, read offline from the caches)
1d-tokenizer   bytedance/1d-tokenizer's TiTok: a hub folder (config.json + model.safetensors or
               pytorch_model.bin) or a raw .bin with --config configs/infer/TiTok/<model>.yaml. The single-
               stage VQ and VAE models (pixel head + conv_out) and the two-stage legacy ones (L-32 / B-64 /
               S-128: legacy reshape, code logits rendered by the bundled MaskGIT-VQGAN pixel decoder).
softvq         SoftVQ-VAE (Hhhhhhao/continuous_tokenizer): a hub folder.
taming         taming-transformers' VQGAN: a log folder (checkpoints/last.ckpt + configs/model.yaml) or a
               .ckpt with --config model.yaml.
maskgit-vqgan  MaskGIT-VQGAN (TiTok's maskgit-vqgan-imagenet-f16-256.bin): the .bin; its architecture is
               fixed, --config (JSON ``{"conf": {...}, "num_embeddings": N}``) gives another geometry.
1d-tokenizer-  bytedance/1d-tokenizer's MaskGIT generators of TiTok-L-32 / B-64 (ImageBert) and S-128
  generator    (UViTBert): a hub folder (yucornetto/generator_titok_*), or a raw generator_titok_*.bin with
               --config configs/infer/TiTok/<model>.yaml. (A TiTok config.json holds both a tokenizer and a
               generator section: the format says which model the weights are.)

The release's config gives the tok1d tokenizer config (the release options of tokenizers/*.py) or generator
config (generators/titok_maskgit.py); every tensor of that model's state dict is then named in the release's
layout by the format's key map (renames, 1x1 convs read as linear layers, embeddings without their batch
dimension, taming's and BERT's separate q / k / v as one qkv, BERT's position and token-type tables as one).
The release must hold exactly those tensors with exactly those shapes, besides
the training-only ones each format lists (taming's ``loss.*``, SoftVQ's usage buffer and unused decoder
patch embedding), and the model loads them strictly. OUT is written to a temporary folder and renamed:
it exists only when the conversion is complete. Beside tokenizer.json and model.safetensors it holds
``release.json``: the format, the source, the release's config and the SHA-256 of its files. A generator
folder holds stage.json instead of tokenizer.json (see :func:`write_folder`), so that
``benchmark.checkpoints.load_generator(OUT, token_spec, num_classes)`` loads it; its ``config.sample`` is the
official evaluation's sampling (``cfg_scale``, ``steps``, sampler ``options``) as a study's ``sample``.

A study evaluates a release through the ``released`` tokenizer (tokenizers/released.py); at smoke scale
it stands in a random-weight checkpoint of the release's architecture, shrunk and written in the
release's own layout (:func:`write_stand_in`), so the whole path runs offline.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import hashlib
import json
import os
import pickle
import re
import shutil
import sys
import tempfile
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from benchmark.base import TokenSpec
from benchmark.checkpoints import build_generator, build_tokenizer, save_tokenizer, save_weights
from benchmark.errors import CheckpointError, ConfigError, Tok1dError, WeightsError
from benchmark.registry import load_plugins
from benchmark.store import write_json

# ---------------------------------------------------------------------------------------------------
# Tensor transforms: release tensors -> one tok1d tensor, and back (for stand-ins). Each key map names,
# for every tok1d key, the release keys it is made of and one of these transforms.

TRANSFORMS: dict[str, tuple[Callable[[list[Tensor]], Tensor], Callable[[Tensor], list[Tensor]]]] = {
    "copy": (lambda ts: ts[0], lambda t: [t]),
    "batch": (lambda ts: ts[0][None], lambda t: [t[0]]),  # a release parameter without the batch dim
    "conv1x1": (lambda ts: ts[0][:, :, 0, 0], lambda t: [t[:, :, None, None]]),  # a 1x1 conv as a linear layer
    "qkv": (lambda ts: torch.cat(ts), lambda t: list(t.chunk(3))),  # separate q, k, v convs as one qkv conv
    # BERT's position table plus its token-type row 0 (the only type used) as one position embedding
    "type0": (lambda ts: (ts[0] + ts[1][0])[None], lambda t: [t[0], torch.zeros(2, t.shape[-1])]),
}

KeyMap = Callable[[str, nn.Module], tuple[tuple[str, ...], str]]
StandIn = Callable[[int], Any]  # image size -> the official config of a release's tiny stand-in


def renamer(renames: list[tuple[str, str]], transforms: list[tuple[str, str]]) -> KeyMap:
    """A key map from regex substitutions applied in order to the tok1d key, and the transform of the
    first ``transforms`` pattern the tok1d key matches (default ``copy``)."""

    def key_map(key: str, model: nn.Module) -> tuple[tuple[str, ...], str]:
        name = key
        for pattern, replacement in renames:
            name = re.sub(pattern, replacement, name)
        transform = next((t for pattern, t in transforms if re.search(pattern, key)), "copy")
        return (name,), transform

    return key_map


# ---------------------------------------------------------------------------------------------------
# bytedance/1d-tokenizer: TiTok


def _get(config: Mapping[str, Any], dotted: str, where: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise ConfigError(f"{where}: missing key '{dotted}'")
        node = node[part]
    return node


def _choice(value: Any, table: Mapping[Any, Any], where: str, key: str) -> Any:
    if value not in table:
        raise ConfigError(f"{where}: {key} '{value}' is not supported; supported: {', '.join(map(str, table))}")
    return table[value]


def _require(ok: bool, where: str, what: str) -> None:
    if not ok:
        raise ConfigError(f"{where}: {what}: no tok1d implementation computes this release's forward")


TITOK_SIZES = {"tiny": "tiny", "small": "S", "base": "B", "large": "L"}  # "tiny": tok1d's smoke ViT (stand-ins)
MASKGIT_CONF = {"hidden_channels": 128, "channel_mult": [1, 1, 2, 2, 4], "num_res_blocks": 2, "z_channels": 256}


def maskgit_geometry(conf: Mapping[str, Any]) -> dict[str, Any]:
    """MaskGIT-VQGAN options (tokenizers/maskgit_vqgan.py) of an open-muse / TiTok ``conf`` mapping."""
    conf = {**MASKGIT_CONF, **conf}
    return {
        "ch": conf["hidden_channels"],
        "ch_mult": list(conf["channel_mult"]),
        "num_res_blocks": conf["num_res_blocks"],
        "embed_dim": conf["z_channels"],
    }


def parse_titok(config: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The TiTok options of a 1d-tokenizer config (``model.vq_model``, ``dataset.preprocessing.crop_size``).

    ``is_legacy`` and ``finetune_decoder`` default to True upstream (``config.model.vq_model.get("is_legacy",
    True)``): both true is a two-stage release, both false a single-stage one; the other combinations (the
    stage-1 logits model, ...) were never released."""
    vq = _get(config, "model.vq_model", where)
    mode = vq.get("quantize_mode", "vq")
    legacy, finetune = bool(vq.get("is_legacy", True)), bool(vq.get("finetune_decoder", True))
    _require(mode in ("vq", "vae"), where, f"model.vq_model.quantize_mode '{mode}'")
    _require(legacy == finetune, where, f"model.vq_model.is_legacy {legacy} with finetune_decoder {finetune}")
    _require(not legacy or mode == "vq", where, "a legacy two-stage model with a vae bottleneck")
    patch = _get(config, "model.vq_model.vit_enc_patch_size", where)
    _require(patch == _get(config, "model.vq_model.vit_dec_patch_size", where), where, "different patch sizes")
    sizes = [
        _choice(
            _get(config, f"model.vq_model.vit_{side}_model_size", where), TITOK_SIZES, where, f"vit_{side}_model_size"
        )
        for side in ("enc", "dec")
    ]
    tok: dict[str, Any] = {
        "name": "titok",
        "size": sizes[0],
        "patch_size": patch,
        "num_latent_tokens": _get(config, "model.vq_model.num_latent_tokens", where),
        "token_size": _get(config, "model.vq_model.token_size", where),
        "pixel_range": [0.0, 1.0],
    }
    if sizes[1] != sizes[0]:
        tok["decoder_size"] = sizes[1]
    if mode == "vq":
        tok["codebook_size"] = _get(config, "model.vq_model.codebook_size", where)
        tok["l2_norm"] = bool(_get(config, "model.vq_model.use_l2_norm", where))
        tok["commitment"] = float(vq.get("commitment_cost", 0.25))
        tok["vq_norms_first"] = True
    else:
        tok["bottleneck"] = "kl"
    if legacy:
        tok["legacy"] = True
        if vq.get("pixel_vqgan"):  # the MaskGIT-VQGAN geometry is hard-coded upstream; stand-ins shrink it
            tok["pixel_vqgan"] = maskgit_geometry(vq["pixel_vqgan"])
    else:
        tok["conv_out"] = True
    resolution = _get(config, "dataset.preprocessing.crop_size", where)
    return {"data": {"name": "imagefolder", "resolution": resolution}, "tokenizer": tok}


_BLOCK = r"(\.transformer\.\d+)"
titok_keys = renamer(
    [
        (r"^encoder\.latent_tokens$", "latent_tokens"),
        (r"latent_positional_embedding$", "latent_token_positional_embedding"),
        (_BLOCK + r"\.norm([12])\.", r"\1.ln_\2."),
        (_BLOCK + r"\.attn\.qkv\.(weight|bias)$", r"\1.attn.in_proj_\2"),
        (_BLOCK + r"\.attn\.proj\.", r"\1.attn.out_proj."),
        (_BLOCK + r"\.mlp\.0\.", r"\1.mlp.c_fc."),
        (_BLOCK + r"\.mlp\.2\.", r"\1.mlp.c_proj."),
        (r"^encoder\.proj\.", "encoder.conv_out."),
        (r"^quantizer\.", "quantize."),
        (r"^decoder\.embed\.", "decoder.decoder_embed."),
        (r"^decoder\.head\.", "decoder.ffn.0."),
        (r"^pixel_head\.", "decoder.ffn."),
        (r"^pixel_codebook\.", "pixel_quantize.embedding."),
    ],
    [
        (
            r"^(encoder|decoder)\.(latent_tokens|class_embedding|positional_embedding|latent_positional_embedding)$",
            "batch",
        ),
        (r"^(encoder\.proj|decoder\.head|pixel_head\.\d)\.weight$", "conv1x1"),
    ],
)


def write_hub_folder(folder: Path, config: Mapping[str, Any], state: dict[str, Tensor]) -> None:
    """A ``PyTorchModelHubMixin`` folder, as TiTok's and SoftVQ's hub releases ship: config.json + model.safetensors."""
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))


# ---------------------------------------------------------------------------------------------------
# SoftVQ-VAE

SOFTVQ_VITS = {"vit_base_patch14_dinov2.lvd142m": "B", "vit_large_patch14_dinov2.lvd142m": "L"}
SOFTVQ_TINY = {"embed_dim": 64, "depth": 2, "num_heads": 4}  # tok1d's "tiny" ViT (stand-ins, references)


def parse_softvq(config: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The SoftVQ-VAE options of a SoftVQ ``ModelArgs`` config.json (absent keys take its defaults). Its
    timm DINOv2 ViTs have LayerScale, LayerNorm eps 1e-6 and no pre-norm; the quantiser's logits are cosine
    similarities (``similarity: cosine``)."""
    parity = config.get("tok1d_parity_vit")
    if parity:
        vit = {k: parity.get(k) for k in SOFTVQ_TINY}
        _require(vit == SOFTVQ_TINY, where, f"tok1d_parity_vit {vit} (only {SOFTVQ_TINY}, tok1d's tiny ViT)")
        sizes = ["tiny", "tiny"]
    else:
        sizes = [
            _choice(_get(config, f"{side}_model", where), SOFTVQ_VITS, where, f"{side}_model")
            for side in ("encoder", "decoder")
        ]
    for key, default, expected in (  # defaults: SoftVQ's ModelArgs (modelling/tokenizer.py)
        ("enc_type", "cnn", "vit"),
        ("dec_type", "cnn", "vit"),
        ("use_rope", False, False),
        ("use_ape", True, True),
        ("dec_cls_token", True, True),
        ("to_pixel", "linear", "linear"),
    ):
        _require(config.get(key, default) == expected, where, f"{key} {config.get(key)!r}")
    patch = _get(config, "enc_patch_size", where)
    _require(patch == _get(config, "dec_patch_size", where), where, "different patch sizes")
    tok = {
        "name": "softvq",
        "size": sizes[0],
        "decoder_size": sizes[1],
        "patch_size": patch,
        "num_latent_tokens": _get(config, "num_latent_tokens", where),
        "token_size": _get(config, "codebook_embed_dim", where),
        "codebook_size": _get(config, "codebook_size", where),
        "num_codebooks": config.get("num_codebooks", 1),
        "tau": float(config.get("tau", 0.1)),  # ModelArgs' default (its configs set 0.07)
        "l2_norm": bool(config.get("codebook_l2_norm", True)),
        "similarity": "cosine",
        "ln_pre": False,
        "norm_eps": 1e-6,
        "layer_scale": 1e-5,
        "entropy_weight": float(config.get("entropy_loss_ratio", 0.0)),
    }
    return {"data": {"name": "imagefolder", "resolution": _get(config, "image_size", where)}, "tokenizer": tok}


softvq_keys = renamer(
    [
        (r"^(encoder|decoder)\.transformer\.(\d+)\.mlp\.0\.", r"\1.transformer.\2.mlp.fc1."),
        (r"^(encoder|decoder)\.transformer\.(\d+)\.mlp\.2\.", r"\1.transformer.\2.mlp.fc2."),
        (r"^(encoder|decoder)\.transformer\.", r"\1.model.blocks."),
        (r"^encoder\.patch_embed\.", "encoder.model.patch_embed.proj."),
        (r"^(encoder|decoder)\.class_embedding$", r"\1.model.cls_token"),
        (r"^(encoder|decoder)\.positional_embedding$", r"\1.model.pos_embed"),
        (r"^(encoder|decoder)\.latent_positional_embedding$", r"\1.latent_pos_embed"),
        (r"^(encoder|decoder)\.ln_post\.", r"\1.model.norm."),
        (r"^encoder\.proj\.", "quant_conv."),
        (r"^decoder\.embed\.", "post_quant_conv."),
        (r"^decoder\.head\.", "decoder.to_pixel.model."),
        (r"^quantizer\.", "quantize."),
    ],
    [],
)


def write_softvq(folder: Path, config: Mapping[str, Any], state: dict[str, Tensor]) -> None:
    """SoftVQ's hub folder, with the tensors its release holds but never uses: the usage buffer and the
    decoder ViT's patch embedding."""
    g, dim, p = config.get("num_codebooks", 1), state["decoder.model.pos_embed"].shape[-1], config["dec_patch_size"]
    extra = {
        "quantize.codebook_used": torch.zeros(g, 16),
        "decoder.model.patch_embed.proj.weight": torch.randn(dim, 3, p, p) * 0.02,
        "decoder.model.patch_embed.proj.bias": torch.zeros(dim),
    }
    write_hub_folder(folder, config, {**state, **extra})


# ---------------------------------------------------------------------------------------------------
# taming-transformers VQGAN


def parse_taming(config: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The VQGAN options of a taming ``model.yaml`` (``model.params``: embed_dim, n_embed, ddconfig). tok1d's
    VQGAN has attention at the lowest resolution only and z_channels == embed_dim, as every f16 release."""
    dd = _get(config, "model.params.ddconfig", where)
    ch_mult = list(_get(config, "model.params.ddconfig.ch_mult", where))
    resolution = _get(config, "model.params.ddconfig.resolution", where)
    lowest = resolution // 2 ** (len(ch_mult) - 1)
    embed_dim = _get(config, "model.params.embed_dim", where)
    _require(list(dd.get("attn_resolutions", [])) == [lowest], where, f"attn_resolutions {dd.get('attn_resolutions')}")
    _require(dd.get("z_channels") == embed_dim, where, f"z_channels {dd.get('z_channels')} != embed_dim {embed_dim}")
    _require(not dd.get("double_z", False), where, "double_z")
    _require(dd.get("in_channels", 3) == 3 and dd.get("out_ch", 3) == 3, where, "in_channels / out_ch other than 3")
    tok = {
        "name": "vqgan",
        "size": "base",
        "ch": _get(config, "model.params.ddconfig.ch", where),
        "ch_mult": ch_mult,
        "num_res_blocks": _get(config, "model.params.ddconfig.num_res_blocks", where),
        "embed_dim": embed_dim,
        "codebook_size": _get(config, "model.params.n_embed", where),
        "l2_norm": False,
        "vq_norms_first": True,
        "adversarial": None,  # the release's discriminator (loss.*) is training state, not the model
    }
    return {"data": {"name": "imagefolder", "resolution": resolution}, "tokenizer": tok}


def taming_keys(key: str, model: nn.Module) -> tuple[tuple[str, ...], str]:
    """tok1d's VQGAN flattens each level into one Sequential (its ResNet blocks, each followed by an
    attention block at the lowest resolution) followed by the level's Down/Upsample; taming keeps
    ``block`` / ``attn`` lists and a ``downsample`` / ``upsample`` per level, the decoder's ``up`` list
    indexed by level (run from the last), ``mid.block_1 / attn_1 / block_2``, separate q / k / v convs."""
    if key.startswith("quantizer."):
        return ("quantize." + key.removeprefix("quantizer."),), "copy"
    if mid := re.match(r"^(encoder|decoder)\.mid\.(\d)\.(.*)$", key):
        prefix, tail = f"{mid[1]}.mid.{('block_1', 'attn_1', 'block_2')[int(mid[2])]}", mid[3]
    elif level := re.match(r"^(encoder\.down|decoder\.up)\.(\d+)\.(.*)$", key):
        side, s, tail = level[1], int(level[2]), level[3]
        seq = model.get_submodule(side)
        i = s // 2 if side == "encoder.down" else (len(seq) - 1) // 2 - s // 2
        if s % 2:  # the level's Downsample / Upsample (``conv.*``)
            prefix = f"{side}.{i}.{'downsample' if side == 'encoder.down' else 'upsample'}"
        else:
            index, tail = tail.split(".", 1)
            members = list(seq[s])
            attn = hasattr(members[int(index)], "qkv")
            j = sum(hasattr(m, "qkv") == attn for m in members[: int(index)])
            prefix = f"{side}.{i}.{'attn' if attn else 'block'}.{j}"
    else:
        return (key,), "copy"
    if tail.startswith("qkv."):
        return tuple(f"{prefix}.{n}.{tail.removeprefix('qkv.')}" for n in "qkv"), "qkv"
    tail = re.sub(r"^shortcut\.", "nin_shortcut.", re.sub(r"^proj\.", "proj_out.", tail))
    return (f"{prefix}.{tail}",), "copy"


def write_taming(folder: Path, config: Mapping[str, Any], state: dict[str, Tensor]) -> None:
    """taming's log folder: a Lightning checkpoint whose state dict also holds the loss module (``loss.*``:
    LPIPS and the PatchGAN discriminator), and configs/model.yaml."""
    (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
    (folder / "configs").mkdir(parents=True, exist_ok=True)
    loss = {
        "loss.discriminator.main.0.weight": torch.randn(8, 3, 4, 4) * 0.02,
        "loss.discriminator.main.0.bias": torch.zeros(8),
    }
    checkpoint = {"epoch": 0, "global_step": 0, "pytorch-lightning_version": "1.0.8", "state_dict": {**state, **loss}}
    torch.save(checkpoint, folder / "checkpoints" / "last.ckpt")
    (folder / "configs" / "model.yaml").write_text(yaml.safe_dump(dict(config), sort_keys=False))


# ---------------------------------------------------------------------------------------------------
# MaskGIT-VQGAN


def parse_maskgit(config: Mapping[str, Any] | None, where: str) -> dict[str, Any]:
    """The MaskGIT-VQGAN options: the release's fixed architecture (``PretrainedTokenizer`` in 1d-tokenizer:
    f16, 128 channels, 1024 codes of dim 256, 256 px), or a sidecar ``{"conf": {...}, "num_embeddings": N}``."""
    conf = dict(_get(config, "conf", where)) if config is not None else {}
    tok = {"name": "maskgit_vqgan", "size": "base"}
    geometry = maskgit_geometry(conf)
    tok.update({k: v for k, v in geometry.items() if v != maskgit_geometry({})[k]})
    if config is not None and config.get("num_embeddings", 1024) != 1024:
        tok["codebook_size"] = config["num_embeddings"]
    return {"data": {"name": "imagefolder", "resolution": conf.get("resolution", 256)}, "tokenizer": tok}


maskgit_keys = renamer([(r"^quantizer\.", "quantize.")], [])


def write_maskgit(folder: Path, config: Mapping[str, Any] | None, state: dict[str, Tensor]) -> None:
    """The release: a bare ``torch.save(state_dict)``; its geometry, when not the release's, as a sidecar."""
    torch.save(state, folder / "maskgit-vqgan-imagenet-f16-256.bin")
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config, indent=2))


# ---------------------------------------------------------------------------------------------------
# bytedance/1d-tokenizer: TiTok's MaskGIT generators (generators/titok_maskgit.py)

TITOK_GENERATORS = {"ViT": "imagebert", "UViT": "uvitbert"}  # model.generator.model_type -> tok1d generator
SEQ_LEN = "${model.vq_model.num_latent_tokens}"  # image_seq_len as the releases' OmegaConf dumps hold it
# tok1d's cfg_scale (1: no guidance) is the official guidance_scale plus this, per guidance_decay: the
# official constant / linear guidance is c + g (c - u), its power-cosine one u + g (c - u).
GUIDANCE_OFFSET = {"constant": 1.0, "linear": 1.0, "power-cosine": 0.0}


def parse_titok_generator(config: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The generator folder config of a 1d-tokenizer generator release (``model.generator``, with V =
    ``model.vq_model.codebook_size``): the tok1d generator (``model_type`` ViT: ``imagebert``, UViT:
    ``uvitbert``), the token spec and class count it models, and ``sample``: the official ImageNet
    evaluation's settings (sample_imagenet_titok.py: the config's guidance / temperature / steps,
    softmax temperature annealing on) as a study's ``sample`` section."""
    model_type = _get(config, "model.generator.model_type", where)
    name = _choice(model_type, TITOK_GENERATORS, where, "model.generator.model_type")
    gen = _get(config, "model.generator", where)
    seq_len = gen.get("image_seq_len", SEQ_LEN)
    if seq_len == SEQ_LEN:
        seq_len = _get(config, "model.vq_model.num_latent_tokens", where)
    if not isinstance(seq_len, int):
        raise ConfigError(f"{where}: model.generator.image_seq_len {seq_len!r} is neither an integer nor {SEQ_LEN}")
    width = _get(config, "model.generator.hidden_size", where)
    inner = _get(config, "model.generator.intermediate_size", where)
    depth = _get(config, "model.generator.num_hidden_layers", where)
    decay = _get(config, "model.generator.guidance_decay", where)
    offset = _choice(decay, GUIDANCE_OFFSET, where, "model.generator.guidance_decay")
    spec = TokenSpec("discrete", (seq_len,), vocab_size=_get(config, "model.vq_model.codebook_size", where))
    return {
        "generator": {
            "name": name,
            "width": width,
            "depth": depth if name == "imagebert" else depth // 2 * 2,  # UViTBert: depth // 2 in- and out-blocks
            "heads": _get(config, "model.generator.num_attention_heads", where),
            "mlp_ratio": inner / width,
            "label_dropout": float(gen.get("class_label_dropout", 0.1)),
        },
        "token_spec": dataclasses.asdict(spec),
        "num_classes": _get(config, "model.generator.condition_num_classes", where),
        "sample": {
            "cfg_scale": float(_get(config, "model.generator.guidance_scale", where)) + offset,
            "steps": _get(config, "model.generator.num_steps", where),
            "options": {
                "guidance_decay": decay,
                "randomize_temperature": float(_get(config, "model.generator.randomize_temperature", where)),
                "softmax_temperature_annealing": True,
            },
        },
    }


_LAYER = r"^model\.encoder\.layer\.(\d+)\."
_imagebert_renames = renamer(
    [
        (r"^embed\.", "model.embeddings.word_embeddings."),
        (r"^embed_norm\.", "model.embeddings.LayerNorm."),
        (r"^blocks\.(\d+)\.", r"model.encoder.layer.\1."),
        (_LAYER + r"attn\.proj\.", r"model.encoder.layer.\1.attention.output.dense."),
        (_LAYER + r"norm1\.", r"model.encoder.layer.\1.attention.output.LayerNorm."),
        (_LAYER + r"mlp\.0\.", r"model.encoder.layer.\1.intermediate.dense."),
        (_LAYER + r"mlp\.2\.", r"model.encoder.layer.\1.output.dense."),
        (_LAYER + r"norm2\.", r"model.encoder.layer.\1.output.LayerNorm."),
        (r"^head\.", "model.lm_head."),
    ],
    [],
)
_uvitbert_keys = renamer(
    [
        (r"^embed\.", "embeddings."),
        (r"^skips\.(\d+)\.", r"out_blocks.\1.skip_linear."),
        (r"\.mlp\.0\.", ".mlp.fc1."),
        (r"\.mlp\.2\.", ".mlp.fc2."),
        (r"^head\.", "lm_head."),
    ],
    [],
)


def titok_generator_keys(key: str, model: nn.Module) -> tuple[tuple[str, ...], str]:
    """UViTBert keeps the official names (but ``skip_linear``, ``fc1`` / ``fc2``, ``embeddings``, ``lm_head``);
    ImageBert's are HF ``BertModel``'s under ``model.``: separate query / key / value (one qkv here), and the
    position table plus token-type row 0 folded into ``pos_embed``."""
    from benchmark.registry import GENERATORS

    if isinstance(model, GENERATORS.get("uvitbert").obj):
        return _uvitbert_keys(key, model)
    if key == "pos_embed":
        return ("model.embeddings.position_embeddings.weight", "model.embeddings.token_type_embeddings.weight"), "type0"
    if qkv := re.fullmatch(r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", key):
        prefix = f"model.encoder.layer.{qkv[1]}.attention.self"
        return tuple(f"{prefix}.{n}.{qkv[2]}" for n in ("query", "key", "value")), "qkv"
    return _imagebert_renames(key, model)


def titok_generator_stand_in(k: int, model_type: str) -> StandIn:
    """The config.json of a tiny generator of a release's kind (its K and model type; 64 codes, as the TiTok
    stand-ins; 1000 classes, as the release): width 64, 4 heads, 2 layers (UViT: 2 + the mid-block)."""

    def config(image_size: int) -> dict[str, Any]:
        gen = {
            "model_type": model_type,
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 256,
            "image_seq_len": SEQ_LEN,
            "condition_num_classes": 1000,
            "num_steps": 8,
            "guidance_scale": 3.0,
            "guidance_decay": "linear",
            "randomize_temperature": 9.5,
        }
        vq = {"codebook_size": 64, "num_latent_tokens": k}
        return {"model": {"vq_model": vq, "generator": gen}, "dataset": {"preprocessing": {"crop_size": image_size}}}

    return config


# ---------------------------------------------------------------------------------------------------
# Formats


@dataclass(frozen=True)
class Format:
    """One release format: where its files are, how its config reads as tok1d options, its key map, the
    training-only tensors it may hold (``dropped``: a regex of release keys), its writer (stand-ins), and
    what it holds (``model``: a tokenizer, or a generator)."""

    configs: tuple[str, ...]  # globs, relative to a release folder, of its config (first match)
    weights: tuple[str, ...]  # globs of its weights file
    config_required: bool
    parse: Callable[[Any, str], dict[str, Any]]
    keys: KeyMap
    write: Callable[[Path, Any, dict[str, Tensor]], None]
    dropped: str = "$^"
    model: str = "tokenizer"


FORMATS: dict[str, Format] = {
    "1d-tokenizer": Format(
        ("config.json",),
        ("model.safetensors", "pytorch_model.bin", "*.bin"),
        True,
        parse_titok,
        titok_keys,
        write_hub_folder,
    ),
    "softvq": Format(
        ("config.json",),
        ("model.safetensors", "pytorch_model.bin"),
        True,
        parse_softvq,
        softvq_keys,
        write_softvq,
        dropped=r"^quantize\.codebook_used$|^decoder\.model\.patch_embed\.|^repa_model\.|^projection\.",
    ),
    "taming": Format(
        ("configs/model.yaml", "configs/*-project.yaml", "*.yaml"),
        ("checkpoints/last.ckpt", "*.ckpt"),
        True,
        parse_taming,
        taming_keys,
        write_taming,
        dropped=r"^loss\.",
    ),
    "maskgit-vqgan": Format(
        ("config.json",),
        ("*.bin", "*.safetensors"),
        False,
        parse_maskgit,
        maskgit_keys,
        write_maskgit,
    ),
    "1d-tokenizer-generator": Format(
        ("config.json",),
        ("model.safetensors", "pytorch_model.bin", "*.bin"),
        True,
        parse_titok_generator,
        titok_generator_keys,
        write_hub_folder,
        dropped=r"^model\.embeddings\.(position_ids|token_type_ids)$",  # buffers older transformers versions saved
        model="generator",
    ),
}


def get_format(name: str) -> Format:
    if name not in FORMATS:
        close = difflib.get_close_matches(name, FORMATS, n=2, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown release format '{name}'.{hint} Formats: {', '.join(FORMATS)}")
    return FORMATS[name]


# ---------------------------------------------------------------------------------------------------
# Reading a release


class _Opaque:
    """Stands for any global of a Lightning checkpoint outside torch's weights-only allowlist (callback and
    optimiser state classes, ``getattr``, ...) and for what calling it builds: every operation unpickling
    applies to it (call, state, items) does nothing, so no code outside the allowlist runs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> _Opaque:
        return _Opaque()

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass


class _AllowlistUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        from torch._weights_only_unpickler import _get_allowed_globals

        return _get_allowed_globals().get(f"{module}.{name}", _Opaque)


class _AllowlistPickle:
    """A ``pickle_module`` for ``torch.load``: the allowlisted globals are real, every other one is inert."""

    Unpickler = _AllowlistUnpickler
    load = pickle.load


def read_weights(path: Path) -> dict[str, Tensor]:
    """The state dict of a .safetensors, a ``torch.save``d .bin / .pt, or a Lightning .ckpt (its ``state_dict``;
    read weights-only, or with inert stand-ins for the classes of its training metadata)."""
    try:
        if path.suffix == ".safetensors":
            return load_file(path)
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            if path.suffix != ".ckpt":
                raise
            data = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_AllowlistPickle)
    except Exception as exc:  # safetensors, zip and pickle errors alike: one line naming the file
        raise CheckpointError(
            f"{path}: unreadable weights: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        ) from None
    if isinstance(data, Mapping) and isinstance(data.get("state_dict"), Mapping):
        data = data["state_dict"]
    if not isinstance(data, Mapping) or not all(isinstance(v, Tensor) for v in data.values()):
        raise CheckpointError(f"{path}: not a state dict (a mapping of names to tensors)")
    return dict(data)


def read_config(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise CheckpointError(f"{path}: unreadable config: {str(exc).splitlines()[0][:200]}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a mapping, got {type(data).__name__}")
    return data


def _find(folder: Path, globs: tuple[str, ...]) -> Path | None:
    for pattern in globs:
        found = sorted(folder.glob(pattern))
        if len(found) > 1:
            raise CheckpointError(f"{folder}: several files match {pattern}: {', '.join(p.name for p in found)}")
        if found:
            return found[0]
    return None


def locate(fmt: Format, src: Path, config: Path | None) -> tuple[Path | None, Path]:
    """(config file or None, weights file) of a release folder or file."""
    if not src.exists():
        raise CheckpointError(f"{src}: no such file or folder")
    weights = _find(src, fmt.weights) if src.is_dir() else src
    if weights is None:
        raise CheckpointError(f"{src}: no weights file ({', '.join(fmt.weights)})")
    if config is None and src.is_dir():
        config = _find(src, fmt.configs)
    if config is None and fmt.config_required:
        raise CheckpointError(f"{src}: no config ({', '.join(fmt.configs)}); pass it with --config")
    if config is not None and not config.is_file():
        raise CheckpointError(f"{config}: no such config file")
    return config, weights


@dataclass
class Release:
    """What one release holds: its own config (None for a fixed architecture), the tok1d folder config it
    reads as, and (unless only the config was read) its state dict, all named after ``where``."""

    format: str
    where: str
    official_config: dict[str, Any] | None
    config: dict[str, Any]
    state: dict[str, Tensor] | None = None
    files: dict[str, Path] = field(default_factory=dict)


def read_release(format: str, src: Path, config: Path | None = None, weights: bool = True) -> Release:
    """A release's config (and with ``weights`` its state dict) from its folder or file."""
    fmt = get_format(format)
    config_path, weights_path = locate(fmt, Path(src).expanduser(), config)
    official = read_config(config_path) if config_path is not None else None
    where = f"{config_path or weights_path} (as a {format} release)"
    release = Release(format, where, official, fmt.parse(official, where))
    release.files = {"weights": weights_path, **({"config": config_path} if config_path else {})}
    if weights:
        release.state = read_weights(weights_path)
    return release


# ---------------------------------------------------------------------------------------------------
# The key map applied


def build_model(config: Mapping[str, Any]) -> nn.Module:
    """The tok1d model a folder config describes, fresh weights: a tokenizer (``data``, ``tokenizer``) or a
    generator (``generator`` with the ``token_spec`` and ``num_classes`` it models)."""
    if "generator" not in config:
        return build_tokenizer(config)
    spec = TokenSpec.from_dict(config["token_spec"])
    return build_generator(config, spec, config["num_classes"])


def model_section(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The ``generator`` or ``tokenizer`` section of a folder config (its registry name and options)."""
    return config["generator" if "generator" in config else "tokenizer"]


def layout(format: str, model: nn.Module) -> dict[str, tuple[tuple[str, ...], str]]:
    """tok1d key -> (the release keys it is made of, transform), for every tensor of ``model``'s state dict."""
    fmt = get_format(format)
    return {key: fmt.keys(key, model) for key in model.state_dict()}


def _listing(items: list[str], limit: int = 40) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def to_tok1d(release: Release, model: nn.Module) -> dict[str, Tensor]:
    """The release's state dict in tok1d's names and shapes for ``model`` (which may live on the meta
    device), checked: every release tensor used or dropped, every tok1d tensor found, every shape equal;
    all offending keys in one :class:`CheckpointError`."""
    assert release.state is not None
    official, expected = release.state, model.state_dict()
    plan = layout(release.format, model)
    wanted = {name: key for key, (names, _) in plan.items() for name in names}
    dropped = re.compile(get_format(release.format).dropped)
    missing = sorted(n for n in wanted if n not in official)
    extra = sorted(n for n in official if n not in wanted and not dropped.search(n))
    shapes = []
    for key, (names, transform) in plan.items():
        for name, want in zip(names, TRANSFORMS[transform][1](expected[key]), strict=True):
            if name in official and official[name].shape != want.shape:
                shapes.append(f"{name} {list(official[name].shape)} (expected {list(want.shape)})")
    problems = [
        f"missing keys: {_listing(missing)}" if missing else "",
        f"unexpected keys: {_listing(extra)}" if extra else "",
        f"shape mismatch: {_listing(shapes)}" if shapes else "",
    ]
    if any(problems):
        raise CheckpointError(
            f"{release.files.get('weights', release.where)}: the {release.format} release's weights do not fit "
            f"the model its config ({release.where}) describes ({model_section(release.config)['name']}): "
            + "; ".join(p for p in problems if p)
        )
    state = {
        key: TRANSFORMS[transform][0]([official[n] for n in names]).to(expected[key].dtype).contiguous()
        for key, (names, transform) in plan.items()
    }
    model.load_state_dict(state, strict=True, assign=True)
    return state


def convert(format: str, src: Path, config: Path | None = None) -> tuple[Release, dict[str, Tensor]]:
    """A release read and mapped onto its tok1d model: (the release, the tok1d state dict). The model is built
    on the meta device (shapes only) and loads the state strictly."""
    load_plugins()
    release = read_release(format, src, config)
    with torch.device("meta"):
        model = build_model(release.config)
    return release, to_tok1d(release, model)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def provenance(release: Release, source: str) -> dict[str, Any]:
    """What ``release.json`` records: format, source, the release's own config, its files' SHA-256."""
    return {
        "format": release.format,
        "source": source,
        "official_config": release.official_config,
        "files": {role: {"path": str(p), "sha256": sha256(p)} for role, p in release.files.items()},
    }


def write_folder(out: Path, config: Mapping[str, Any], state: Mapping[str, Tensor], record: Mapping[str, Any]) -> None:
    """A tok1d tokenizer or generator folder at ``out`` (which must not exist), written in a sibling temporary
    folder and renamed when complete.

    A generator folder holds ``stage.json`` (``{"config": <folder config>}``: ``generator``, the ``token_spec``
    and ``num_classes`` it models, and the release's ``sample`` settings), ``latents.json`` (that token space,
    as a latent cache records it), ``model.safetensors`` and ``release.json``: what
    ``benchmark.checkpoints.load_generator(out, token_spec, num_classes)`` rebuilds, as it rebuilds a
    train_generator stage's folder, and what ``benchmark.evaluate OUT --tokenizer T`` samples from."""
    out = Path(out).expanduser()
    if out.exists():
        raise CheckpointError(f"{out} exists; remove it or choose another output folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if "generator" in config:
            save_weights(tmp, state)
            write_json(tmp / "stage.json", {"config": dict(config)})
            space = {"token_spec": config["token_spec"], "num_classes": config["num_classes"], "num_items": 0}
            write_json(tmp / "latents.json", space)  # the token space it models (benchmark.latents.read_space)
        else:
            save_tokenizer(tmp, config, state)
        write_json(tmp / "release.json", record)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------
# The releases tok1d knows: where they are, what they published, and their smoke-scale stand-ins


def titok_stand_in(k: int, token_size: int, legacy: bool, vae: bool = False, l2: bool = True) -> StandIn:
    """The 1d-tokenizer config of a tiny TiTok of a release's kind (its K, token size, bottleneck, legacy or
    not): tiny ViTs, 8 x 8 patches, 64 codes (the legacy pixel decoder keeps the release's 1024)."""

    def config(image_size: int) -> dict[str, Any]:
        vq = {
            "token_size": token_size,
            "vit_enc_model_size": "tiny",
            "vit_dec_model_size": "tiny",
            "vit_enc_patch_size": image_size // 8,
            "vit_dec_patch_size": image_size // 8,
            "num_latent_tokens": k,
        }
        if vae:
            vq.update(quantize_mode="vae", finetune_decoder=False, is_legacy=False)
        else:
            vq.update(codebook_size=64, use_l2_norm=l2, commitment_cost=0.25)
            if not legacy:
                vq.update(finetune_decoder=False, is_legacy=False)
        if legacy:  # the pixel decoder upsamples a patch (image_size / 8 px) to its pixels
            levels = (image_size // 8).bit_length()
            vq["pixel_vqgan"] = {
                "hidden_channels": 32,
                "channel_mult": [1] * (levels - 1) + [2],
                "num_res_blocks": 1,
                "z_channels": 32,
            }
        return {"model": {"vq_model": vq}, "dataset": {"preprocessing": {"crop_size": image_size}}}

    return config


def softvq_stand_in(k: int, token_size: int = 32, groups: int = 4) -> StandIn:
    """The config.json of a tiny SoftVQ-VAE (tok1d's tiny ViTs through ``tok1d_parity_vit``, 64 codes)."""

    def config(image_size: int) -> dict[str, Any]:
        return {
            "codebook_embed_dim": token_size,
            "codebook_l2_norm": True,
            "codebook_size": 64,
            "num_codebooks": groups,
            "num_latent_tokens": k,
            "enc_patch_size": image_size // 8,
            "dec_patch_size": image_size // 8,
            "image_size": image_size,
            "tau": 0.07,
            "enc_type": "vit",
            "dec_type": "vit",
            "encoder_model": "vit_large_patch14_dinov2.lvd142m",
            "decoder_model": "vit_large_patch14_dinov2.lvd142m",
            "tok1d_parity_vit": SOFTVQ_TINY,
            "entropy_loss_ratio": 0.0,
        }

    return config


def taming_stand_in(image_size: int) -> dict[str, Any]:
    """The model.yaml of a tiny taming VQGAN (ch 32, f4, attention at the lowest resolution, 64 codes)."""
    dd = {
        "double_z": False,
        "z_channels": 32,
        "resolution": image_size,
        "in_channels": 3,
        "out_ch": 3,
        "ch": 32,
        "ch_mult": [1, 2, 2],
        "num_res_blocks": 1,
        "attn_resolutions": [image_size // 4],
        "dropout": 0.0,
    }
    params = {"embed_dim": 32, "n_embed": 64, "ddconfig": dd, "lossconfig": {"target": "torch.nn.Identity"}}
    return {"model": {"target": "taming.models.vqgan.VQModel", "params": params}}


def maskgit_stand_in(image_size: int) -> dict[str, Any]:
    """The sidecar config of a tiny MaskGIT-VQGAN (ch 32, f4, 64 codes)."""
    conf = {"hidden_channels": 32, "channel_mult": [1, 2, 2], "num_res_blocks": 1, "z_channels": 32}
    return {"conf": {**conf, "resolution": image_size}, "num_embeddings": 64}


TAMING = "https://heibox.uni-heidelberg.de/f/{}/?dl=1"


@dataclass(frozen=True)
class ReleaseInfo:
    """A release tok1d knows: its format, its published FID (ImageNet 256 px: a tokenizer's rFID on val, a
    generator's gFID with its own sampler), the official config of its smoke-scale stand-in at an image
    size, and where it is: a Hugging Face repo (``hub``, fetching ``files``; ``path`` is the release inside
    the fetched folder) or ``urls`` (file -> URL, off the hub)."""

    format: str
    fid: float
    stand_in: StandIn
    hub: str | None = None
    files: tuple[str, ...] = ("config.json", "model.safetensors")
    path: str = ""
    urls: Mapping[str, str] = field(default_factory=dict)


def _titok(name: str, rfid: float, stand_in: StandIn) -> ReleaseInfo:
    return ReleaseInfo("1d-tokenizer", rfid, stand_in, hub=f"yucornetto/tokenizer_titok_{name}_imagenet")


def _titok_generator(name: str, gfid: float, stand_in: StandIn) -> ReleaseInfo:
    return ReleaseInfo("1d-tokenizer-generator", gfid, stand_in, hub=f"yucornetto/generator_titok_{name}_imagenet")


def _softvq(name: str, rfid: float, stand_in: StandIn) -> ReleaseInfo:
    return ReleaseInfo("softvq", rfid, stand_in, hub=f"SoftVQVAE/softvq-{name}")


def _taming(codes: int, rfid: float, ckpt: str, yaml_: str) -> ReleaseInfo:
    urls = {"checkpoints/last.ckpt": TAMING.format(ckpt), "configs/model.yaml": TAMING.format(yaml_)}
    return ReleaseInfo("taming", rfid, taming_stand_in, files=tuple(urls), urls=urls)


# FIDs as published: TiTok's README_TiTok.md (rFIDs, and its generators' gFIDs), SoftVQ's README, taming's
# README ("Reconstruction-FIDs", val), MaskGIT's paper (as TiTok quotes it).
RELEASES: dict[str, ReleaseInfo] = {
    "titok-l32": _titok("l32", 2.21, titok_stand_in(32, 12, legacy=True)),
    "titok-b64": _titok("b64", 1.70, titok_stand_in(64, 12, legacy=True)),
    "titok-s128": _titok("s128", 1.71, titok_stand_in(128, 12, legacy=True)),
    "titok-bl64-vq": _titok("bl64_vq8k", 2.06, titok_stand_in(64, 64, legacy=False, l2=False)),
    "titok-bl128-vq": _titok("bl128_vq8k", 1.49, titok_stand_in(128, 64, legacy=False, l2=False)),
    "titok-sl256-vq": _titok("sl256_vq8k", 1.03, titok_stand_in(256, 64, legacy=False, l2=False)),
    "titok-ll32-vae": _titok("ll32_vae_c16", 1.61, titok_stand_in(32, 16, legacy=False, vae=True)),
    "titok-bl64-vae": _titok("bl64_vae_c16", 1.25, titok_stand_in(64, 16, legacy=False, vae=True)),
    "titok-bl128-vae": _titok("bl128_vae_c16", 0.84, titok_stand_in(128, 16, legacy=False, vae=True)),
    "softvq-l64": _softvq("l-64", 0.61, softvq_stand_in(64)),
    "softvq-bl64": _softvq("bl-64", 0.65, softvq_stand_in(64)),
    "softvq-b64": _softvq("b-64", 0.88, softvq_stand_in(64)),
    "softvq-l32": _softvq("l-32", 0.74, softvq_stand_in(32, token_size=64)),
    "softvq-bl32": _softvq("bl-32", 0.68, softvq_stand_in(32)),
    "softvq-b32": _softvq("b-32", 0.89, softvq_stand_in(32)),
    "vqgan-f16-16384": _taming(16384, 4.98, "867b05fc8c4841768640", "274fb24ed38341bfa753"),
    "vqgan-f16-1024": _taming(1024, 7.94, "140747ba53464f49b476", "6ecf2af6c658432c8298"),
    "maskgit-vqgan-f16": ReleaseInfo(
        "maskgit-vqgan",
        2.28,
        maskgit_stand_in,
        hub="fun-research/TiTok",
        files=("maskgit-vqgan-imagenet-f16-256.bin",),
        path="maskgit-vqgan-imagenet-f16-256.bin",
    ),
    "titok-l32-generator": _titok_generator("l32", 2.77, titok_generator_stand_in(32, "ViT")),
    "titok-b64-generator": _titok_generator("b64", 2.48, titok_generator_stand_in(64, "ViT")),
    "titok-s128-generator": _titok_generator("s128", 1.97, titok_generator_stand_in(128, "UViT")),
}


def release_info(name: str) -> ReleaseInfo:
    if name not in RELEASES:
        close = difflib.get_close_matches(name, RELEASES, n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown release '{name}'.{hint} Releases: {', '.join(RELEASES)}")
    return RELEASES[name]


def release_cache() -> Path:
    """Where releases off the Hugging Face hub are fetched to: ``$TOK1D_RELEASES`` or ~/.cache/tok1d/releases."""
    return Path(os.environ.get("TOK1D_RELEASES", "~/.cache/tok1d/releases")).expanduser()


def _release_folder(name: str, download: bool) -> Path:
    info = release_info(name)
    if info.hub is None:
        return release_cache() / name
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(info.hub, allow_patterns=list(info.files), local_files_only=not download))
    except Exception as exc:  # huggingface_hub's offline / network / not-found errors alike
        if download:
            raise WeightsError(f"release {name}: cannot download {info.hub}: {type(exc).__name__}") from None
        raise WeightsError(
            f"release {name}: {info.hub} is not in the Hugging Face cache ({type(exc).__name__})",
            f"fetch it with `python -m benchmark.fetch_weights --release {name}` on a machine online",
        ) from None


def local_release(name: str) -> Path:
    """The release's folder (or file) in the local caches, offline; a :class:`WeightsError` saying how
    to fetch it when it is not there."""
    folder = _release_folder(name, download=False)
    missing = [f for f in release_info(name).files if not (folder / f).is_file()]
    if missing:
        raise WeightsError(
            f"release {name}: {', '.join(missing)} not found in {folder}",
            f"fetch it with `python -m benchmark.fetch_weights --release {name}` on a machine online",
        )
    return folder / release_info(name).path


def fetch_release(name: str) -> Path:
    """Download a release into its cache (the Hugging Face cache, or :func:`release_cache` for the files
    off the hub); files already there are kept."""
    info = release_info(name)
    folder = _release_folder(name, download=True)
    for rel, url in info.urls.items():
        dest = folder / rel
        if dest.is_file():
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as f:
                shutil.copyfileobj(response, f, 1 << 24)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise WeightsError(f"release {name}: cannot download {url}: {exc}") from None
        tmp.rename(dest)
    return local_release(name)


def resolve_source(format: str, src: str) -> Path:
    """SRC as given: a path, a release name of :data:`RELEASES` or a Hugging Face repo id (from the caches)."""
    path = Path(src).expanduser()
    if path.exists():
        return path
    if src in RELEASES:
        if RELEASES[src].format != format:
            raise ConfigError(f"release {src} is in the {RELEASES[src].format} format, not {format}")
        return local_release(src)
    if re.fullmatch(r"[\w.-]+/[\w.-]+", src):
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(src, local_files_only=True))
        except Exception:  # not cached (or no such repo)
            known = next((name for name, info in RELEASES.items() if info.hub == src), None)
            how = f"python -m benchmark.fetch_weights --release {known}" if known else f"huggingface-cli download {src}"
            raise WeightsError(
                f"{src}: not a local path, and not in the Hugging Face cache", f"fetch it on a machine online: `{how}`"
            ) from None
    raise CheckpointError(f"{src}: no such file or folder (nor a release name: {', '.join(RELEASES)})")


def official_state(format: str, model: nn.Module) -> dict[str, Tensor]:
    """``model``'s weights named and shaped as the release format holds them (the key map inverted)."""
    fmt, out = get_format(format), {}
    for key, tensor in model.state_dict().items():
        names, transform = fmt.keys(key, model)
        out.update(zip(names, (t.clone() for t in TRANSFORMS[transform][1](tensor.detach())), strict=True))
    return out


def write_stand_in(name: str, image_size: int, folder: Path, seed: int = 0) -> Path:
    """A random-weight stand-in for release ``name``: its architecture shrunk to its stand-in config at
    ``image_size``, tok1d's initialisation (seeded), written in the release's own layout (training-only
    tensors included) into ``folder``; what a study converts at smoke scale."""
    info = release_info(name)
    fmt, official = get_format(info.format), info.stand_in(image_size)
    load_plugins()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(fmt.parse(official, f"stand-in for {name}"))
        folder.mkdir(parents=True, exist_ok=True)
        fmt.write(folder, official, official_state(info.format, model))
    return folder


# ---------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmark.convert",
        description="Convert an official tokenizer (generator) release into a tok1d tokenizer (generator) folder "
        "(exact parity).",
    )
    p.add_argument("format", nargs="?", help=f"release format: {', '.join(FORMATS)}")
    p.add_argument("src", nargs="?", help="the release: a folder or file, a hub id or a release name (--list)")
    p.add_argument("out", nargs="?", help="the tok1d tokenizer or generator folder to write (must not exist)")
    p.add_argument("--config", type=Path, help="the release's config when SRC is a bare weights file")
    p.add_argument("--list", action="store_true", help="list the releases tok1d knows and exit")
    args = p.parse_args(argv)
    if not args.list and not (args.format and args.src and args.out):
        p.error("FORMAT, SRC and OUT are required (or --list)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for name, info in RELEASES.items():
            where = info.hub or ", ".join(info.urls.values())
            metric = "gFID" if get_format(info.format).model == "generator" else "rFID"
            print(f"{name:20s} {info.format:22s} {metric} {info.fid:5.2f}  {where}")
        return 0
    try:
        get_format(args.format)
        release, state = convert(args.format, resolve_source(args.format, args.src), args.config)
        write_folder(Path(args.out), release.config, state, provenance(release, args.src))
    except Tok1dError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    model = model_section(release.config)
    print(f"{args.out}: {model['name']} ({', '.join(f'{k}={v}' for k, v in model.items() if k != 'name')})")
    if "sample" in release.config:
        print(f"  the official evaluation's sampling (a study section): {json.dumps(release.config['sample'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

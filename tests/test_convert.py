"""benchmark.convert: official releases into tok1d tokenizer folders.

The official code is not importable here, so each test builds a release the way it ships: state-dict keys
and shapes written out below from the official modules (bytedance/1d-tokenizer TiTok and its MaskGIT-VQGAN,
SoftVQ-VAE's timm ViTs, taming's VQGAN), random fan-in-scaled values, saved in the release's own files
(hub folder, bare .bin, Lightning .ckpt). The converted tokenizer must then compute what the official
forward computes, here an independent plain-torch transcription of it on the release's own key names
(the same ids, reconstructions within 1e-4). Parity with the official code itself was measured against
its outputs (recorded on issue 12).
"""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import save_file

from benchmark import convert
from benchmark.checkpoints import load_tokenizer
from benchmark.errors import CheckpointError, ConfigError, WeightsError
from benchmark.registry import TOKENIZERS, load_plugins
from benchmark.release_install import install_release

load_plugins()
SIZE = 32  # image side of every test release
VIT = (64, 2, 4)  # tok1d's tiny ViT: width, depth, heads


# ---------------------------------------------------------------------------------------------------
# Official layouts (keys and shapes of the official modules) with random values


def randomize(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    """Fan-in-scaled weights, norms near 1, small biases, unit-scale embeddings: every tensor matters."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shapes.items():
        x = torch.randn(shape, generator=g)
        last = key.rsplit(".", 1)[-1]
        if last == "bias":
            x = 0.1 * x
        elif last in ("gamma",) or (last == "weight" and len(shape) == 1):
            x = 1 + 0.1 * x
        elif last == "weight" and len(shape) >= 2 and "embedding" not in key:
            x = x / math.sqrt(math.prod(shape[1:]))
        else:
            x = x * shape[-1] ** -0.5
        out[key] = x
    return out


def clip_blocks(prefix: str, width: int, depth: int) -> dict[str, tuple[int, ...]]:
    """open_clip ResidualAttentionBlocks (TiTok)."""
    out = {}
    for i in range(depth):
        p = f"{prefix}.transformer.{i}"
        out.update({f"{p}.ln_1.weight": (width,), f"{p}.ln_1.bias": (width,)})
        out.update({f"{p}.attn.in_proj_weight": (3 * width, width), f"{p}.attn.in_proj_bias": (3 * width,)})
        out.update({f"{p}.attn.out_proj.weight": (width, width), f"{p}.attn.out_proj.bias": (width,)})
        out.update({f"{p}.ln_2.weight": (width,), f"{p}.ln_2.bias": (width,)})
        out.update({f"{p}.mlp.c_fc.weight": (4 * width, width), f"{p}.mlp.c_fc.bias": (4 * width,)})
        out.update({f"{p}.mlp.c_proj.weight": (width, 4 * width), f"{p}.mlp.c_proj.bias": (width,)})
    return out


def maskgit_res(p: str, cin: int, cout: int) -> dict[str, tuple[int, ...]]:
    out = {f"{p}.norm1.weight": (cin,), f"{p}.norm1.bias": (cin,), f"{p}.conv1.weight": (cout, cin, 3, 3)}
    out.update({f"{p}.norm2.weight": (cout,), f"{p}.norm2.bias": (cout,), f"{p}.conv2.weight": (cout, cout, 3, 3)})
    if cin != cout:
        out[f"{p}.nin_shortcut.weight"] = (cout, cout, 1, 1)
    return out


def maskgit_decoder_shapes(p: str, ch: int, mult: list[int], blocks: int, z: int) -> dict[str, tuple[int, ...]]:
    w = [ch * m for m in mult]
    out = {f"{p}.conv_in.weight": (w[-1], z, 3, 3), f"{p}.conv_in.bias": (w[-1],)}
    for j in range(blocks):
        out.update(maskgit_res(f"{p}.mid.{j}", w[-1], w[-1]))
    for i in range(len(mult)):
        cin = w[min(i + 1, len(w) - 1)]
        for j in range(blocks):
            out.update(maskgit_res(f"{p}.up.{i}.block.{j}", cin if j == 0 else w[i], w[i]))
        if i:
            out.update(
                {f"{p}.up.{i}.upsample_conv.weight": (w[i], w[i], 3, 3), f"{p}.up.{i}.upsample_conv.bias": (w[i],)}
            )
    out.update({f"{p}.norm_out.weight": (w[0],), f"{p}.norm_out.bias": (w[0],)})
    return out | {f"{p}.conv_out.weight": (3, w[0], 3, 3), f"{p}.conv_out.bias": (3,)}


PIXEL = {"hidden_channels": 32, "channel_mult": [1, 1, 2], "num_res_blocks": 1, "z_channels": 32}


def titok_release(kind: str) -> tuple[dict, dict[str, tuple[int, ...]]]:
    """(config.json, state shapes) of a tiny TiTok: ``vq`` (BL-64-like, no l2), ``vae`` or ``legacy``."""
    width, depth, _ = VIT
    p, k, c = 4, 8, {"vq": 16, "vae": 16, "legacy": 12}[kind]
    vq = {"token_size": c, "vit_enc_model_size": "tiny", "vit_dec_model_size": "tiny", "num_latent_tokens": k}
    vq.update(vit_enc_patch_size=p, vit_dec_patch_size=p)
    if kind == "vae":
        vq.update(quantize_mode="vae", finetune_decoder=False, is_legacy=False)
    else:
        vq.update(codebook_size=64, use_l2_norm=kind == "legacy", commitment_cost=0.25)
    if kind == "vq":
        vq.update(finetune_decoder=False, is_legacy=False)
    if kind == "legacy":
        vq["pixel_vqgan"] = PIXEL
    config = {"model": {"vq_model": vq}, "dataset": {"preprocessing": {"crop_size": SIZE}}}
    g = SIZE // p
    s = {"latent_tokens": (k, width), "encoder.class_embedding": (1, width)}
    s.update(
        {"encoder.positional_embedding": (g * g + 1, width), "encoder.latent_token_positional_embedding": (k, width)}
    )
    s.update({"encoder.patch_embed.weight": (width, 3, p, p), "encoder.patch_embed.bias": (width,)})
    s.update({"encoder.ln_pre.weight": (width,), "encoder.ln_pre.bias": (width,)})
    s.update(clip_blocks("encoder", width, depth))
    s.update({"encoder.ln_post.weight": (width,), "encoder.ln_post.bias": (width,)})
    out = 2 * c if kind == "vae" else c
    s.update({"encoder.conv_out.weight": (out, width, 1, 1), "encoder.conv_out.bias": (out,)})
    if kind != "vae":
        s["quantize.embedding.weight"] = (64, c)
    s.update({"decoder.class_embedding": (1, width), "decoder.positional_embedding": (g * g + 1, width)})
    s.update({"decoder.mask_token": (1, 1, width), "decoder.latent_token_positional_embedding": (k, width)})
    s.update({"decoder.decoder_embed.weight": (width, c), "decoder.decoder_embed.bias": (width,)})
    s.update({"decoder.ln_pre.weight": (width,), "decoder.ln_pre.bias": (width,)})
    s.update(clip_blocks("decoder", width, depth))
    s.update({"decoder.ln_post.weight": (width,), "decoder.ln_post.bias": (width,)})
    if kind == "legacy":
        s.update({"decoder.ffn.0.weight": (2 * width, width, 1, 1), "decoder.ffn.0.bias": (2 * width,)})
        s.update({"decoder.ffn.2.weight": (1024, 2 * width, 1, 1), "decoder.ffn.2.bias": (1024,)})
        s["pixel_quantize.embedding.weight"] = (1024, PIXEL["z_channels"])
        s.update(maskgit_decoder_shapes("pixel_decoder", 32, PIXEL["channel_mult"], 1, PIXEL["z_channels"]))
    else:
        s.update({"decoder.ffn.0.weight": (p * p * 3, width, 1, 1), "decoder.ffn.0.bias": (p * p * 3,)})
        s.update({"decoder.conv_out.weight": (3, 3, 3, 3), "decoder.conv_out.bias": (3,)})
    return config, s


def softvq_release() -> tuple[dict, dict[str, tuple[int, ...]]]:
    """A tiny SoftVQ-VAE: timm ViTs with LayerScale, 4 codebooks, plus its unused tensors."""
    d, depth, _ = VIT
    p, k, e, groups, n = 4, 8, 16, 4, 32
    config = {"codebook_embed_dim": e, "codebook_l2_norm": True, "codebook_size": n, "num_codebooks": groups}
    config.update(num_latent_tokens=k, enc_patch_size=p, dec_patch_size=p, image_size=SIZE, tau=0.07)
    config.update(enc_type="vit", dec_type="vit")  # ModelArgs' default is a CNN: a release names its ViTs
    config.update(encoder_model="vit_small_patch14_dinov2.lvd142m", decoder_model="vit_small_patch14_dinov2.lvd142m")
    config.update(tok1d_parity_vit={"embed_dim": d, "depth": depth, "num_heads": VIT[2]}, repa_layer_indices=[8])
    g = SIZE // p
    s: dict[str, tuple[int, ...]] = {}
    for side in ("encoder", "decoder"):
        m = f"{side}.model"
        s.update({f"{m}.cls_token": (1, 1, d), f"{m}.pos_embed": (1, g * g + 1, d)})
        if side == "encoder":  # the decoder ViT's patch embedding exists too, unused (written as an extra)
            s.update({f"{m}.patch_embed.proj.weight": (d, 3, p, p), f"{m}.patch_embed.proj.bias": (d,)})
        for i in range(depth):
            b = f"{m}.blocks.{i}"
            s.update({f"{b}.norm1.weight": (d,), f"{b}.norm1.bias": (d,), f"{b}.ls1.gamma": (d,)})
            s.update({f"{b}.attn.qkv.weight": (3 * d, d), f"{b}.attn.qkv.bias": (3 * d,)})
            s.update({f"{b}.attn.proj.weight": (d, d), f"{b}.attn.proj.bias": (d,)})
            s.update({f"{b}.norm2.weight": (d,), f"{b}.norm2.bias": (d,), f"{b}.ls2.gamma": (d,)})
            s.update({f"{b}.mlp.fc1.weight": (4 * d, d), f"{b}.mlp.fc1.bias": (4 * d,)})
            s.update({f"{b}.mlp.fc2.weight": (d, 4 * d), f"{b}.mlp.fc2.bias": (d,)})
        s.update({f"{m}.norm.weight": (d,), f"{m}.norm.bias": (d,), f"{side}.latent_pos_embed": (1, k, d)})
    s.update({"encoder.latent_tokens": (1, k, d), "decoder.mask_token": (1, 1, d)})
    s.update({"quant_conv.weight": (e, d), "quant_conv.bias": (e,), "quantize.embedding": (groups, n, e)})
    s.update({"post_quant_conv.weight": (d, e), "post_quant_conv.bias": (d,)})
    s.update({"decoder.to_pixel.model.weight": (p * p * 3, d), "decoder.to_pixel.model.bias": (p * p * 3,)})
    return config, s


def taming_res(p: str, cin: int, cout: int) -> dict[str, tuple[int, ...]]:
    out = {f"{p}.norm1.weight": (cin,), f"{p}.norm1.bias": (cin,), f"{p}.conv1.weight": (cout, cin, 3, 3)}
    out.update({f"{p}.conv1.bias": (cout,), f"{p}.norm2.weight": (cout,), f"{p}.norm2.bias": (cout,)})
    out.update({f"{p}.conv2.weight": (cout, cout, 3, 3), f"{p}.conv2.bias": (cout,)})
    if cin != cout:
        out.update({f"{p}.nin_shortcut.weight": (cout, cin, 1, 1), f"{p}.nin_shortcut.bias": (cout,)})
    return out


def taming_attn(p: str, c: int) -> dict[str, tuple[int, ...]]:
    out = {f"{p}.norm.weight": (c,), f"{p}.norm.bias": (c,)}
    for name in ("q", "k", "v", "proj_out"):
        out.update({f"{p}.{name}.weight": (c, c, 1, 1), f"{p}.{name}.bias": (c,)})
    return out


TAMING = {"ch": 32, "ch_mult": [1, 2, 2], "num_res_blocks": 1, "z_channels": 16, "embed": 16, "codes": 64}


def taming_release() -> tuple[dict, dict[str, tuple[int, ...]]]:
    """A tiny taming VQGAN (f4, attention at the lowest resolution) as its model.yaml and Lightning state dict."""
    ch, mult, r, z = TAMING["ch"], TAMING["ch_mult"], TAMING["num_res_blocks"], TAMING["z_channels"]
    levels, w = len(mult), [ch * m for m in mult]
    dd = {"double_z": False, "z_channels": z, "resolution": SIZE, "in_channels": 3, "out_ch": 3, "ch": ch}
    dd.update(ch_mult=mult, num_res_blocks=r, attn_resolutions=[SIZE // 2 ** (levels - 1)], dropout=0.0)
    params = {"embed_dim": TAMING["embed"], "n_embed": TAMING["codes"], "ddconfig": dd}
    config = {"model": {"target": "taming.models.vqgan.VQModel", "params": params}}
    s = {"encoder.conv_in.weight": (ch, 3, 3, 3), "encoder.conv_in.bias": (ch,)}
    cin = ch
    for i in range(levels):
        for j in range(r):
            s.update(taming_res(f"encoder.down.{i}.block.{j}", cin, w[i]))
            cin = w[i]
            if i == levels - 1:
                s.update(taming_attn(f"encoder.down.{i}.attn.{j}", w[i]))
        if i != levels - 1:
            s.update({f"encoder.down.{i}.downsample.conv.weight": (w[i], w[i], 3, 3)})
            s[f"encoder.down.{i}.downsample.conv.bias"] = (w[i],)
    for side in ("encoder", "decoder"):
        s.update(taming_res(f"{side}.mid.block_1", w[-1], w[-1]) | taming_attn(f"{side}.mid.attn_1", w[-1]))
        s.update(taming_res(f"{side}.mid.block_2", w[-1], w[-1]))
    s.update({"encoder.norm_out.weight": (w[-1],), "encoder.norm_out.bias": (w[-1],)})
    s.update({"encoder.conv_out.weight": (z, w[-1], 3, 3), "encoder.conv_out.bias": (z,)})
    e = TAMING["embed"]
    s.update(
        {"quant_conv.weight": (e, z, 1, 1), "quant_conv.bias": (e,), "quantize.embedding.weight": (TAMING["codes"], e)}
    )
    s.update({"post_quant_conv.weight": (z, e, 1, 1), "post_quant_conv.bias": (z,)})
    s.update({"decoder.conv_in.weight": (w[-1], z, 3, 3), "decoder.conv_in.bias": (w[-1],)})
    cin = w[-1]
    for i in reversed(range(levels)):
        for j in range(r + 1):
            s.update(taming_res(f"decoder.up.{i}.block.{j}", cin, w[i]))
            cin = w[i]
            if i == levels - 1:
                s.update(taming_attn(f"decoder.up.{i}.attn.{j}", w[i]))
        if i:
            s.update(
                {
                    f"decoder.up.{i}.upsample.conv.weight": (w[i], w[i], 3, 3),
                    f"decoder.up.{i}.upsample.conv.bias": (w[i],),
                }
            )
    s.update({"decoder.norm_out.weight": (w[0],), "decoder.norm_out.bias": (w[0],)})
    s.update({"decoder.conv_out.weight": (3, w[0], 3, 3), "decoder.conv_out.bias": (3,)})
    return config, s


MASKGIT = {"hidden_channels": 32, "channel_mult": [1, 2, 2], "num_res_blocks": 1, "z_channels": 16}


def maskgit_release() -> tuple[dict, dict[str, tuple[int, ...]]]:
    """A tiny MaskGIT-VQGAN: its sidecar config and bare state dict."""
    ch, mult, r, z = (MASKGIT[k] for k in ("hidden_channels", "channel_mult", "num_res_blocks", "z_channels"))
    w, w_in = [ch * m for m in mult], [ch * m for m in (1, *mult)]
    s = {"encoder.conv_in.weight": (ch, 3, 3, 3)}
    for i in range(len(mult)):
        for j in range(r):
            s.update(maskgit_res(f"encoder.down.{i}.block.{j}", w_in[i] if j == 0 else w[i], w[i]))
    for j in range(r):
        s.update(maskgit_res(f"encoder.mid.{j}", w[-1], w[-1]))
    s.update({"encoder.norm_out.weight": (w[-1],), "encoder.norm_out.bias": (w[-1],)})
    s.update({"encoder.conv_out.weight": (z, w[-1], 1, 1), "encoder.conv_out.bias": (z,)})
    s.update(maskgit_decoder_shapes("decoder", ch, mult, r, z) | {"quantize.embedding.weight": (64, z)})
    return {"conf": {**MASKGIT, "resolution": SIZE}, "num_embeddings": 64}, s


# ---------------------------------------------------------------------------------------------------
# The official forwards, transcribed with plain torch on the release's key names


def lin(x, sd, p):
    return F.linear(x, sd[p + ".weight"], sd.get(p + ".bias"))


def ln(x, sd, p, eps):
    return F.layer_norm(x, x.shape[-1:], sd[p + ".weight"], sd[p + ".bias"], eps)


def gn(x, sd, p):
    return F.group_norm(x, 32, sd[p + ".weight"], sd[p + ".bias"], 1e-6)


def attend(q, k, v, heads):
    b, n, d = q.shape
    q, k, v = (t.reshape(b, n, heads, d // heads).transpose(1, 2) for t in (q, k, v))
    w = (q @ k.transpose(-1, -2) / math.sqrt(d // heads)).softmax(-1)
    return (w @ v).transpose(1, 2).reshape(b, n, d)


def clip_forward(x, sd, prefix, depth, heads):
    for i in range(depth):
        p = f"{prefix}.transformer.{i}"
        q, k, v = F.linear(
            ln(x, sd, p + ".ln_1", 1e-5), sd[p + ".attn.in_proj_weight"], sd[p + ".attn.in_proj_bias"]
        ).chunk(3, -1)
        x = x + lin(attend(q, k, v, heads), sd, p + ".attn.out_proj")
        x = x + lin(F.gelu(lin(ln(x, sd, p + ".ln_2", 1e-5), sd, p + ".mlp.c_fc")), sd, p + ".mlp.c_proj")
    return x


def nearest(z, codes, l2):
    """argmin_k |z|^2 + |e_k|^2 - 2 z.e_k (after L2 normalisation when ``l2``): (ids, codes[ids])."""
    if l2:
        z, codes = F.normalize(z, dim=-1), F.normalize(codes, dim=-1)
    flat = z.reshape(-1, z.shape[-1])
    ids = (flat.pow(2).sum(1, keepdim=True) + codes.pow(2).sum(1) - 2 * flat @ codes.t()).argmin(1)
    return ids.view(z.shape[:-1]), codes[ids].view(z.shape)


def maskgit_res_forward(x, sd, p):
    h = F.conv2d(F.silu(gn(x, sd, p + ".norm1")), sd[p + ".conv1.weight"], padding=1)
    h = F.conv2d(F.silu(gn(h, sd, p + ".norm2")), sd[p + ".conv2.weight"], padding=1)
    return h + (F.conv2d(h, sd[p + ".nin_shortcut.weight"]) if p + ".nin_shortcut.weight" in sd else x)


def maskgit_decode(z, sd, p, levels, blocks):
    h = F.conv2d(z, sd[p + ".conv_in.weight"], sd[p + ".conv_in.bias"], padding=1)
    for j in range(blocks):
        h = maskgit_res_forward(h, sd, f"{p}.mid.{j}")
    for i in reversed(range(levels)):
        for j in range(blocks):
            h = maskgit_res_forward(h, sd, f"{p}.up.{i}.block.{j}")
        if i:
            h = F.interpolate(h, scale_factor=2.0, mode="nearest")
            h = F.conv2d(h, sd[f"{p}.up.{i}.upsample_conv.weight"], sd[f"{p}.up.{i}.upsample_conv.bias"], padding=1)
    return F.conv2d(F.silu(gn(h, sd, p + ".norm_out")), sd[p + ".conv_out.weight"], sd[p + ".conv_out.bias"], padding=1)


def titok_official(sd, config, images):
    """TiTok.encode + decode_tokens on [0, 1] images: (ids or posterior mean, reconstruction in [0, 1] range)."""
    v = config["model"]["vq_model"]
    width, depth, heads = VIT
    p, b, legacy = v["vit_enc_patch_size"], images.shape[0], v.get("is_legacy", True)
    g = SIZE // p
    x = (
        F.conv2d(images, sd["encoder.patch_embed.weight"], sd["encoder.patch_embed.bias"], stride=p)
        .flatten(2)
        .transpose(1, 2)
    )
    x = torch.cat([sd["encoder.class_embedding"].expand(b, 1, width), x], 1) + sd["encoder.positional_embedding"]
    lat = (sd["latent_tokens"] + sd["encoder.latent_token_positional_embedding"]).expand(b, -1, -1)
    x = clip_forward(ln(torch.cat([x, lat], 1), sd, "encoder.ln_pre", 1e-5), sd, "encoder", depth, heads)
    k = lat.shape[1]
    lat = ln(x[:, -k:], sd, "encoder.ln_post", 1e-5)
    if legacy:  # latent_tokens.reshape(batch_size, self.width, self.num_latent_tokens, 1)
        lat = lat.reshape(b, width, k).transpose(1, 2)
    z = F.linear(lat, sd["encoder.conv_out.weight"][:, :, 0, 0], sd["encoder.conv_out.bias"])
    if v.get("quantize_mode", "vq") == "vae":
        tokens = zq = z.chunk(2, -1)[0]
    else:
        tokens, zq = nearest(z, sd["quantize.embedding.weight"], v["use_l2_norm"])
    y = lin(zq, sd, "decoder.decoder_embed") + sd["decoder.latent_token_positional_embedding"]
    m = torch.cat(
        [sd["decoder.class_embedding"].expand(b, 1, width), sd["decoder.mask_token"].expand(b, g * g, width)], 1
    )
    y = torch.cat([m + sd["decoder.positional_embedding"], y], 1)
    y = clip_forward(ln(y, sd, "decoder.ln_pre", 1e-5), sd, "decoder", depth, heads)
    y = ln(y[:, 1 : 1 + g * g], sd, "decoder.ln_post", 1e-5)
    if legacy:
        h = torch.tanh(F.linear(y, sd["decoder.ffn.0.weight"][:, :, 0, 0], sd["decoder.ffn.0.bias"]))
        logits = F.linear(h, sd["decoder.ffn.2.weight"][:, :, 0, 0], sd["decoder.ffn.2.bias"])
        mix = torch.einsum("nlc,cd->ndl", logits.softmax(-1), sd["pixel_quantize.embedding.weight"]).reshape(
            b, -1, g, g
        )
        return tokens, maskgit_decode(mix, sd, "pixel_decoder", len(PIXEL["channel_mult"]), 1)
    patches = F.linear(y, sd["decoder.ffn.0.weight"][:, :, 0, 0], sd["decoder.ffn.0.bias"])
    image = patches.reshape(b, g, g, p, p, 3).permute(0, 5, 1, 3, 2, 4).reshape(b, 3, SIZE, SIZE)
    return tokens, F.conv2d(image, sd["decoder.conv_out.weight"], sd["decoder.conv_out.bias"], padding=1)


def softvq_official(sd, config, images):
    """SoftVQModel: [-1, 1] in; (per-token argmax ids, soft tokens, reconstruction mapped to [0, 1])."""
    d, depth, heads = VIT
    p, k, b = config["enc_patch_size"], config["num_latent_tokens"], images.shape[0]
    g = SIZE // p

    def blocks(x, m):
        for i in range(depth):
            bp = f"{m}.blocks.{i}"
            q, kk, v = lin(ln(x, sd, bp + ".norm1", 1e-6), sd, bp + ".attn.qkv").chunk(3, -1)
            x = x + sd[bp + ".ls1.gamma"] * lin(attend(q, kk, v, heads), sd, bp + ".attn.proj")
            x = x + sd[bp + ".ls2.gamma"] * lin(
                F.gelu(lin(ln(x, sd, bp + ".norm2", 1e-6), sd, bp + ".mlp.fc1")), sd, bp + ".mlp.fc2"
            )
        return ln(x, sd, m + ".norm", 1e-6)

    x = F.conv2d(
        images * 2 - 1, sd["encoder.model.patch_embed.proj.weight"], sd["encoder.model.patch_embed.proj.bias"], stride=p
    )
    x = (
        torch.cat([sd["encoder.model.cls_token"].expand(b, 1, d), x.flatten(2).transpose(1, 2)], 1)
        + sd["encoder.model.pos_embed"]
    )
    x = blocks(
        torch.cat([x, (sd["encoder.latent_tokens"] + sd["encoder.latent_pos_embed"]).expand(b, -1, -1)], 1),
        "encoder.model",
    )
    z = lin(x[:, -k:], sd, "quant_conv")
    codes = F.normalize(sd["quantize.embedding"], dim=-1)
    groups = codes.shape[0]
    seg = F.normalize(z.reshape(b, groups, k // groups, -1), dim=-1)
    probs = (torch.einsum("bgke,gne->bgkn", seg, codes) / config["tau"]).softmax(-1)
    zq = torch.einsum("bgkn,gne->bgke", probs, codes).reshape(b, k, -1)
    y = lin(zq, sd, "post_quant_conv") + sd["decoder.latent_pos_embed"]
    m = torch.cat([sd["decoder.model.cls_token"].expand(b, 1, d), sd["decoder.mask_token"].expand(b, g * g, d)], 1)
    y = blocks(torch.cat([m + sd["decoder.model.pos_embed"], y], 1), "decoder.model")[:, 1 : 1 + g * g]
    patches = lin(y, sd, "decoder.to_pixel.model").reshape(b, g, g, p, p, 3)
    recon = torch.einsum("nhwpqc->nchpwq", patches).reshape(b, 3, SIZE, SIZE)
    return probs.argmax(-1).reshape(b, k), zq, (recon + 1) / 2


def taming_official(sd, config, images):
    """VQModel: [-1, 1] in; (ids (B, h, w), reconstruction mapped to [0, 1])."""
    levels, r = len(TAMING["ch_mult"]), TAMING["num_res_blocks"]

    def res(x, p):
        h = F.conv2d(F.silu(gn(x, sd, p + ".norm1")), sd[p + ".conv1.weight"], sd[p + ".conv1.bias"], padding=1)
        h = F.conv2d(F.silu(gn(h, sd, p + ".norm2")), sd[p + ".conv2.weight"], sd[p + ".conv2.bias"], padding=1)
        if p + ".nin_shortcut.weight" in sd:
            x = F.conv2d(x, sd[p + ".nin_shortcut.weight"], sd[p + ".nin_shortcut.bias"])
        return x + h

    def attn(x, p):
        b, c, hh, ww = x.shape
        h = gn(x, sd, p + ".norm")
        q, k, v = (F.conv2d(h, sd[f"{p}.{n}.weight"], sd[f"{p}.{n}.bias"]).reshape(b, c, hh * ww) for n in "qkv")
        w = (q.transpose(1, 2) @ k * c**-0.5).softmax(-1)  # (B, HW, HW)
        out = (v @ w.transpose(1, 2)).reshape(b, c, hh, ww)
        return x + F.conv2d(out, sd[p + ".proj_out.weight"], sd[p + ".proj_out.bias"])

    def mid(h, side):
        return res(attn(res(h, f"{side}.mid.block_1"), f"{side}.mid.attn_1"), f"{side}.mid.block_2")

    h = F.conv2d(images * 2 - 1, sd["encoder.conv_in.weight"], sd["encoder.conv_in.bias"], padding=1)
    for i in range(levels):
        for j in range(r):
            h = res(h, f"encoder.down.{i}.block.{j}")
            if f"encoder.down.{i}.attn.{j}.q.weight" in sd:
                h = attn(h, f"encoder.down.{i}.attn.{j}")
        if i != levels - 1:
            h = F.conv2d(
                F.pad(h, (0, 1, 0, 1)),
                sd[f"encoder.down.{i}.downsample.conv.weight"],
                sd[f"encoder.down.{i}.downsample.conv.bias"],
                stride=2,
            )
    h = mid(h, "encoder")
    h = F.conv2d(
        F.silu(gn(h, sd, "encoder.norm_out")), sd["encoder.conv_out.weight"], sd["encoder.conv_out.bias"], padding=1
    )
    h = F.conv2d(h, sd["quant_conv.weight"], sd["quant_conv.bias"])
    ids, zq = nearest(h.permute(0, 2, 3, 1), sd["quantize.embedding.weight"], False)
    y = F.conv2d(zq.permute(0, 3, 1, 2), sd["post_quant_conv.weight"], sd["post_quant_conv.bias"])
    y = mid(F.conv2d(y, sd["decoder.conv_in.weight"], sd["decoder.conv_in.bias"], padding=1), "decoder")
    for i in reversed(range(levels)):
        for j in range(r + 1):
            y = res(y, f"decoder.up.{i}.block.{j}")
            if f"decoder.up.{i}.attn.{j}.q.weight" in sd:
                y = attn(y, f"decoder.up.{i}.attn.{j}")
        if i:
            y = F.interpolate(y, scale_factor=2.0, mode="nearest")
            y = F.conv2d(
                y, sd[f"decoder.up.{i}.upsample.conv.weight"], sd[f"decoder.up.{i}.upsample.conv.bias"], padding=1
            )
    y = F.conv2d(
        F.silu(gn(y, sd, "decoder.norm_out")), sd["decoder.conv_out.weight"], sd["decoder.conv_out.bias"], padding=1
    )
    return ids, (y + 1) / 2


def maskgit_official(sd, config, images):
    """MaskGIT-VQGAN: [0, 1] in and out; (ids (B, h * w) raster, reconstruction)."""
    levels, r = len(MASKGIT["channel_mult"]), MASKGIT["num_res_blocks"]
    h = F.conv2d(images, sd["encoder.conv_in.weight"], padding=1)
    for i in range(levels):
        for j in range(r):
            h = maskgit_res_forward(h, sd, f"encoder.down.{i}.block.{j}")
        if i != levels - 1:
            h = F.avg_pool2d(h, 2, 2)
    for j in range(r):
        h = maskgit_res_forward(h, sd, f"encoder.mid.{j}")
    h = F.conv2d(F.silu(gn(h, sd, "encoder.norm_out")), sd["encoder.conv_out.weight"], sd["encoder.conv_out.bias"])
    ids, zq = nearest(h.permute(0, 2, 3, 1), sd["quantize.embedding.weight"], False)
    return ids.flatten(1), maskgit_decode(zq.permute(0, 3, 1, 2), sd, "decoder", levels, r)


# ---------------------------------------------------------------------------------------------------
# Releases written as they ship


def hub_folder(folder: Path, config: dict, state: dict) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    save_file(state, str(folder / "model.safetensors"))
    return folder


def write_release(kind: str, folder: Path, seed: int = 0, edit=None) -> tuple[str, Path, dict, dict]:
    """(format, SRC, official config, official state) of a test release; ``edit(state)`` tampers with it."""
    if kind in ("vq", "vae", "legacy"):
        config, shapes = titok_release(kind)
    else:
        config, shapes = {"softvq": softvq_release, "taming": taming_release, "maskgit": maskgit_release}[kind]()
    state = randomize(shapes, seed)
    extra = {}
    if kind == "softvq":  # in SoftVQ's releases, never used
        extra = {
            "quantize.codebook_used": torch.zeros(4, 16),
            "decoder.model.patch_embed.proj.weight": torch.randn(64, 3, 4, 4),
            "decoder.model.patch_embed.proj.bias": torch.zeros(64),
        }
    if kind == "taming":  # the loss module of the Lightning checkpoint
        extra = {"loss.discriminator.main.0.weight": torch.randn(8, 3, 4, 4), "loss.logvar": torch.zeros(())}
    written = {**state, **extra}
    if edit is not None:
        edit(written)
    if kind in ("vq", "vae", "legacy"):
        return "1d-tokenizer", hub_folder(folder, config, written), config, state
    if kind == "softvq":
        return "softvq", hub_folder(folder, config, written), config, state
    folder.mkdir(parents=True)
    if kind == "taming":
        (folder / "checkpoints").mkdir()
        (folder / "configs").mkdir()
        torch.save({"epoch": 3, "global_step": 10, "state_dict": written}, folder / "checkpoints" / "last.ckpt")
        (folder / "configs" / "model.yaml").write_text(yaml.safe_dump(config))
        return "taming", folder, config, state
    torch.save(written, folder / "maskgit-vqgan-imagenet-f16-256.bin")
    (folder / "config.json").write_text(json.dumps(config))
    return "maskgit-vqgan", folder, config, state


def images(n: int = 3) -> torch.Tensor:
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(7))


def converted(kind: str, tmp_path: Path):
    fmt, src, config, state = write_release(kind, tmp_path / "release")
    assert convert.main([fmt, str(src), str(tmp_path / "out")]) == 0
    return load_tokenizer(tmp_path / "out"), config, state


# ---------------------------------------------------------------------------------------------------
# Tests


@pytest.mark.parametrize("kind", ["vq", "vae", "legacy"])
def test_titok_releases_compute_the_official_forward(kind, tmp_path):
    model, config, state = converted(kind, tmp_path)
    x = images()
    tokens, official = titok_official(state, config, x)
    ours = model.encode(x)
    if kind == "vae":  # tokens: the posterior mean (B, K, 16)
        assert torch.allclose(ours, tokens, atol=1e-5)
    else:
        assert torch.equal(ours, tokens) and len(ours.unique()) > 4
    assert (
        model._decode_latents(model.quantizer.lookup(ours) if kind != "vae" else ours) - official
    ).abs().max() < 1e-4
    assert torch.allclose(model.decode(ours), official.clamp(0, 1), atol=1e-4)
    expected = {"vq": "conv_out", "vae": "bottleneck", "legacy": "legacy"}[kind]
    assert expected in json.loads((tmp_path / "out" / "tokenizer.json").read_text())["tokenizer"]


def test_the_legacy_reshape_is_not_a_transpose(tmp_path):
    """The released weights depend on the raw (B, K, W) -> (B, W, K) reinterpretation: a per-token
    projection of the same weights gives other tokens."""
    model, config, state = converted("legacy", tmp_path)
    model.encoder.legacy_token_reshape = False
    assert not torch.equal(model.encode(images()), titok_official(state, config, images())[0])


def test_softvq_release_computes_the_official_forward(tmp_path):
    model, config, state = converted("softvq", tmp_path)
    x = images()
    ids, zq, official = softvq_official(state, config, x)
    tokens, codes = model.encode_with_codes(x)
    assert torch.allclose(tokens, zq, atol=1e-5)
    group = torch.arange(4).repeat_interleave(2) * model.quantizer.codebook_size
    assert torch.equal(codes["codes"] - group, ids)
    assert (model._decode_latents(tokens) - official).abs().max() < 1e-4
    assert torch.allclose(model.decode(tokens), official.clamp(0, 1), atol=1e-4)


@pytest.mark.parametrize("kind", ["taming", "maskgit"])
def test_vqgan_releases_compute_the_official_forward(kind, tmp_path):
    model, config, state = converted(kind, tmp_path)
    x = images()
    ids, official = (taming_official if kind == "taming" else maskgit_official)(state, config, x)
    ours = model.encode(x)
    assert torch.equal(ours, ids) and len(ours.unique()) > 4
    z = model.quantizer.lookup(ours)
    if kind == "taming":
        z = z.reshape(*ours.shape, -1)
    assert (model._decode_latents(z) - official).abs().max() < 1e-4
    assert torch.allclose(model.decode(ours), official.clamp(0, 1), atol=1e-4)


@pytest.mark.parametrize("kind", ["vq", "vae", "legacy", "softvq", "taming", "maskgit"])
def test_every_tensor_is_mapped_one_to_one(kind, tmp_path):
    """The key map names each release tensor exactly once (training-only ones aside), with its shape:
    inverting it on the converted model gives back the release."""
    fmt, src, _, state = write_release(kind, tmp_path / "release")
    release, weights = convert.convert(fmt, src)
    model = TOKENIZERS.build(
        release.config["tokenizer"]["name"],
        image_size=SIZE,
        **{k: v for k, v in release.config["tokenizer"].items() if k != "name"},
    )
    model.load_state_dict(weights)
    back = convert.official_state(fmt, model)
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_unmatched_extra_and_misshaped_keys_are_one_error(tmp_path):
    def tamper(state):
        del state["encoder.ln_post.weight"], state["decoder.conv_out.bias"]
        state["encoder.conv_out.weight"] = torch.zeros(16, 64, 3, 3)
        state["decoder.extra_head.weight"] = torch.zeros(3)

    fmt, src, _, _ = write_release("vq", tmp_path / "release", edit=tamper)
    with pytest.raises(CheckpointError) as err:
        convert.convert(fmt, src)
    message = str(err.value)
    weights = next(p for p in src.iterdir() if p.suffix in (".safetensors", ".bin", ".pt"))
    assert message.startswith(f"{weights}: ") and str(src / "config.json") in message and "\n" not in message
    assert "missing keys: decoder.conv_out.bias, encoder.ln_post.weight" in message
    assert "unexpected keys: decoder.extra_head.weight" in message
    assert "encoder.conv_out.weight [16, 64, 3, 3] (expected [16, 64, 1, 1])" in message
    assert convert.main([fmt, str(src), str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["release"]


def test_bad_input_names_what_is_wrong(tmp_path, capsys):
    with pytest.raises(ConfigError, match="unknown release format 'softqv'. Did you mean: softvq"):
        convert.convert("softqv", tmp_path)
    fmt, src, _, _ = write_release("vq", tmp_path / "release")
    bare = tmp_path / "tokenizer_titok.bin"
    torch.save({"a": torch.zeros(1)}, bare)
    with pytest.raises(CheckpointError, match=r"tokenizer_titok.bin: no config .*pass it with --config"):
        convert.convert(fmt, bare)
    (src / "config.json").write_text(json.dumps({"model": {"vq_model": {"quantize_mode": "vq", "is_legacy": False}}}))
    with pytest.raises(ConfigError, match="is_legacy False with finetune_decoder True"):
        convert.convert(fmt, src)
    assert convert.main(["taming", str(tmp_path / "nowhere"), str(tmp_path / "out")]) == 2
    assert "nowhere: no such file or folder" in capsys.readouterr().err


def test_a_bare_bin_with_its_yaml_config_converts(tmp_path):
    """fun-research's raw .bin files come with configs/infer/TiTok/*.yaml."""
    fmt, src, config, state = write_release("legacy", tmp_path / "release")
    bare = tmp_path / "tokenizer_titok_tiny.bin"
    torch.save(state, bare)
    (tmp_path / "titok_tiny.yaml").write_text(yaml.safe_dump(config))
    assert convert.main([fmt, str(bare), str(tmp_path / "out"), "--config", str(tmp_path / "titok_tiny.yaml")]) == 0
    record = json.loads((tmp_path / "out" / "release.json").read_text())
    assert record["format"] == fmt and len(record["files"]["weights"]["sha256"]) == 64
    assert torch.equal(load_tokenizer(tmp_path / "out").encode(images()), titok_official(state, config, images())[0])
    assert convert.main([fmt, str(bare), str(tmp_path / "out"), "--config", str(tmp_path / "titok_tiny.yaml")]) == 2


class Callback:
    """A class a Lightning checkpoint pickles by reference (callback state): not allowlisted."""


class Payload:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_lightning_metadata_loads_inert(tmp_path):
    """Non-tensor objects of a .ckpt become inert stand-ins: the weights load, no pickled call runs."""
    fmt, src, config, state = write_release("taming", tmp_path / "release")
    ckpt = src / "checkpoints" / "last.ckpt"
    data = torch.load(ckpt, weights_only=True)
    data["callbacks"] = {Callback: {"best": 1.0}, "hook": Payload(tmp_path / "pwned")}
    torch.save(data, ckpt)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(ckpt, weights_only=True)
    release, _ = convert.convert(fmt, src)
    assert not (tmp_path / "pwned").exists() and release.config["tokenizer"]["codebook_size"] == TAMING["codes"]


@pytest.mark.parametrize(
    "name", ["titok-l32", "titok-bl64-vq", "titok-bl64-vae", "softvq-l64", "vqgan-f16-16384", "maskgit-vqgan-f16"]
)
def test_stand_ins_are_written_in_the_release_layout(name, tmp_path):
    """A study's smoke-scale stand-in is an official-layout release: the files its format reads, the key
    set of an independently written release of the same kind, training-only tensors included."""
    folder = convert.write_stand_in(name, SIZE, tmp_path / name)
    info = convert.RELEASES[name]
    release = convert.read_release(info.format, folder)
    kind = {"titok-l32": "legacy", "titok-bl64-vq": "vq", "titok-bl64-vae": "vae"}.get(name, name.split("-")[0])
    if kind in ("vq", "vae", "legacy"):  # the layout of a tiny TiTok of the same kind
        reference = titok_release(kind)[1]
        assert {k for k in release.state if not k.startswith("pixel_decoder.")} == {
            k for k in reference if not k.startswith("pixel_decoder.")
        }
    dropped = [k for k in release.state if __import__("re").search(convert.get_format(info.format).dropped, k)]
    assert bool(dropped) == (info.format in ("softvq", "taming"))
    again = convert.write_stand_in(name, SIZE, tmp_path / "again")
    assert all(torch.equal(release.state[k], convert.read_release(info.format, again).state[k]) for k in release.state)


def test_released_tokenizer_installs_the_converted_folder(tmp_path):
    """The ``released`` entry (a stand-in here) wraps the converted model; its train stage writes the
    plain tok1d folder, which loads as the converted class with the same outputs."""
    model = TOKENIZERS.build("released", image_size=SIZE, release="titok-s128", stand_in=True)
    x = images()
    result = install_release(model, tmp_path, {"name": "procedural", "resolution": SIZE}, torch.device("cpu"))
    loaded = load_tokenizer(tmp_path)
    assert type(loaded).__name__ == "TiTok" and loaded.legacy
    assert torch.equal(loaded.encode(x), model.encode(x)) and torch.equal(
        loaded.decode(model.encode(x)), model.decode(model.encode(x))
    )
    assert result["tokens"] == 128 and result["params"] == sum(p.numel() for p in loaded.parameters())
    assert result["cost"]["encode_gflops"] > 0 and result["images_per_s"] > 0
    assert json.loads((tmp_path / "release.json").read_text())["stand_in"] == "titok-s128"
    with torch.device("meta"):  # a dry run's estimate: the architecture from the config alone
        meta = TOKENIZERS.build("released", image_size=SIZE, release="titok-s128", stand_in=True)
    assert all(p.is_meta for p in meta.parameters())


def test_released_tokenizer_options_are_checked(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="name exactly one of checkpoint, release, or format with source"):
        TOKENIZERS.build("released", image_size=SIZE, release="titok-l32", checkpoint=str(tmp_path))
    with pytest.raises(ConfigError, match="unknown release 'titok-l33'. Did you mean: titok-l32"):
        TOKENIZERS.build("released", image_size=SIZE, release="titok-l33", stand_in=True)
    with pytest.raises(ConfigError, match="the release is a 32 px tokenizer; data.resolution is 64"):
        TOKENIZERS.build(
            "released", image_size=64, format="maskgit-vqgan", source=str(write_release("maskgit", tmp_path / "m")[1])
        )
    monkeypatch.setenv("TOK1D_RELEASES", str(tmp_path / "cache"))
    with pytest.raises(
        WeightsError,
        match=r"release vqgan-f16-1024: .*last.ckpt.* `python -m benchmark.fetch_weights --release vqgan-f16-1024`",
    ):
        TOKENIZERS.build("released", image_size=256, release="vqgan-f16-1024")


def test_a_release_in_the_cache_is_found_by_name(tmp_path, monkeypatch):
    """Releases off the hub live in $TOK1D_RELEASES/<name>, where fetch_weights puts them."""
    monkeypatch.setenv("TOK1D_RELEASES", str(tmp_path))
    _, src, config, state = write_release("taming", tmp_path / "vqgan-f16-1024")
    assert convert.local_release("vqgan-f16-1024") == src
    assert convert.main(["taming", "vqgan-f16-1024", str(tmp_path / "out")]) == 0
    assert torch.equal(load_tokenizer(tmp_path / "out").encode(images()), taming_official(state, config, images())[0])
    with pytest.raises(ConfigError, match="release vqgan-f16-1024 is in the taming format, not softvq"):
        convert.resolve_source("softvq", "vqgan-f16-1024")


def test_fetch_weights_fetches_the_releases_a_study_evaluates(tmp_path, monkeypatch, capsys):
    """The study's paper cells name releases (fetched once, online); its smoke cells stand them in."""
    from dataclasses import replace

    from benchmark import fetch_weights
    from benchmark.study import build_plan

    (tmp_path / "imagenet" / "val" / "n01").mkdir(parents=True)
    study = Path(__file__).resolve().parent.parent / "studies" / "released_tokenizers.yaml"
    plan = build_plan(study, "paper", [f"data.root={tmp_path / 'imagenet'}"])
    assert fetch_weights.release_names(plan) == {
        "titok-l32": ["TiTok-L-32"], "titok-b64": ["TiTok-B-64"], "titok-s128": ["TiTok-S-128"],
        "titok-bl64-vq": ["TiTok-BL-64 VQ"], "titok-bl64-vae": ["TiTok-BL-64 VAE"], "softvq-l64": ["SoftVQ-L-64"],
        "vqgan-f16-16384": ["VQGAN f16"], "maskgit-vqgan-f16": ["MaskGIT-VQGAN"],
    }  # fmt: skip
    assert fetch_weights.release_names(build_plan(study, "smoke")) == {}
    # a release off the hub is downloaded from its URLs into $TOK1D_RELEASES (file:// URLs here)
    _, src, config, state = write_release("taming", tmp_path / "served")
    urls = {rel: (src / rel).as_uri() for rel in ("checkpoints/last.ckpt", "configs/model.yaml")}
    monkeypatch.setitem(convert.RELEASES, "vqgan-f16-1024", replace(convert.RELEASES["vqgan-f16-1024"], urls=urls))
    monkeypatch.setenv("TOK1D_RELEASES", str(tmp_path / "cache"))
    assert fetch_weights.main(["--release", "vqgan-f16-1024"]) == 0
    assert "1 of 1 releases available" in capsys.readouterr().out
    model = TOKENIZERS.build("released", image_size=SIZE, release="vqgan-f16-1024")
    assert torch.equal(model.encode(images()), taming_official(state, config, images())[0])


def test_released_options_change_how_the_release_is_used(tmp_path):
    """``options`` reach the converted tokenizer (a TiTok VAE sampling its posterior, as TiTok's rFID
    evaluation does) and its installed folder; options that would change its tensors are refused."""
    kw = {"image_size": SIZE, "release": "titok-bl64-vae", "stand_in": True}
    mean, sampled = (
        TOKENIZERS.build("released", **kw),
        TOKENIZERS.build("released", **kw, options={"sample_posterior": True}),
    )
    x = images()
    torch.manual_seed(3)
    tokens = sampled.encode(x)
    posterior = sampled.model._posterior(x)
    torch.manual_seed(3)
    assert torch.allclose(tokens, posterior.mean + (0.5 * posterior.logvar).exp() * torch.randn_like(posterior.mean))
    assert torch.equal(mean.encode(x), posterior.mean) and not torch.equal(tokens, posterior.mean)
    install_release(sampled, tmp_path, {"name": "procedural", "resolution": SIZE}, torch.device("cpu"))
    assert json.loads((tmp_path / "tokenizer.json").read_text())["tokenizer"]["sample_posterior"] is True
    with pytest.raises(ConfigError, match=r"tokenizer\.options\.sample_posteriors: not an option of the titok"):
        TOKENIZERS.build("released", **kw, options={"sample_posteriors": True})
    with pytest.raises(ConfigError, match="change the released model's tensors"):
        TOKENIZERS.build("released", **kw, options={"conv_out": False})

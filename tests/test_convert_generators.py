"""benchmark.convert's ``1d-tokenizer-generator`` format and the generators it converts to
(generators/titok_maskgit.py): TiTok's released MaskGIT generators, ImageBert (L-32 / B-64) and UViTBert
(S-128).

As in test_convert.py, the official code is not importable: each test writes a release the way it ships
(config.json + model.safetensors, keys and shapes written out below from HF ``BertModel`` and the official
``UViTBert``, random values) and checks the converted generator against an independent plain-torch
transcription of the official forward, sampler (``ImageBert.generate``, with torch's global RNG) and
training loss (``masking_input_tokens`` + ``MLMLoss``) on the release's own key names. Parity with the
official code itself (logits and sampled ids on its own reference weights) is recorded on issue 12.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import random_inception_state, run_cli
from test_convert import randomize
from torch._dynamo.testing import CompileCounter

from benchmark import convert
from benchmark.base import TokenSpec
from benchmark.checkpoints import load_generator, load_tokenizer
from benchmark.errors import CheckpointError, ConfigError
from benchmark.registry import GENERATORS, TOKENIZERS, load_plugins

load_plugins()
FORMAT = "1d-tokenizer-generator"
V, C, N = 16, 5, 6  # codes, classes, tokens
WIDTH, HEADS, INNER = 32, 4, 64  # an MLP ratio of 2 (the releases: 4)
LAYERS = {"ViT": 2, "UViT": 4}  # num_hidden_layers (UViT: 2 in-blocks, the mid-block, 2 out-blocks)


# ---------------------------------------------------------------------------------------------------
# Official layouts and forwards


def generator_config(model_type: str, **sampling) -> dict:
    """A config.json of yucornetto/generator_titok_* (image_seq_len as its OmegaConf interpolation)."""
    gen = {
        "model_type": model_type,
        "hidden_size": WIDTH,
        "num_hidden_layers": LAYERS[model_type],
        "num_attention_heads": HEADS,
        "intermediate_size": INNER,
        "dropout": 0.1,
        "attn_drop": 0.1,
        "num_steps": 8,
        "mask_schedule_strategy": "arccos",
        "class_label_dropout": 0.1,
        "image_seq_len": "${model.vq_model.num_latent_tokens}",
        "condition_num_classes": C,
        "randomize_temperature": 9.5,
        "guidance_scale": 4.5,
        "guidance_decay": "linear",
        **sampling,
    }
    vq = {"codebook_size": V, "token_size": 12, "num_latent_tokens": N, "vit_enc_model_size": "large"}
    return {"model": {"vq_model": vq, "generator": gen}, "dataset": {"preprocessing": {"crop_size": 256}}}


def linear(p: str, cout: int, cin: int, bias: bool = True) -> dict[str, tuple[int, ...]]:
    return {f"{p}.weight": (cout, cin), **({f"{p}.bias": (cout,)} if bias else {})}


def norm(p: str) -> dict[str, tuple[int, ...]]:
    return {f"{p}.weight": (WIDTH,), f"{p}.bias": (WIDTH,)}


def imagebert_shapes() -> dict[str, tuple[int, ...]]:
    """HF ``BertModel(add_pooling_layer=False)`` with ``lm_head`` attached, under ``model.``."""
    e = "model.embeddings"
    s = {f"{e}.word_embeddings.weight": (V + C + 2, WIDTH), f"{e}.position_embeddings.weight": (N + 1, WIDTH)}
    s |= {f"{e}.token_type_embeddings.weight": (2, WIDTH), **norm(f"{e}.LayerNorm")}
    for i in range(LAYERS["ViT"]):
        p = f"model.encoder.layer.{i}"
        for name in ("query", "key", "value"):
            s |= linear(f"{p}.attention.self.{name}", WIDTH, WIDTH)
        s |= linear(f"{p}.attention.output.dense", WIDTH, WIDTH) | norm(f"{p}.attention.output.LayerNorm")
        s |= linear(f"{p}.intermediate.dense", INNER, WIDTH) | linear(f"{p}.output.dense", WIDTH, INNER)
        s |= norm(f"{p}.output.LayerNorm")
    return s | linear("model.lm_head", V, WIDTH)


def uvit_block(p: str, skip: bool) -> dict[str, tuple[int, ...]]:
    s = norm(f"{p}.norm1") | linear(f"{p}.attn.qkv", 3 * WIDTH, WIDTH, bias=False)
    s |= linear(f"{p}.attn.proj", WIDTH, WIDTH) | norm(f"{p}.norm2")
    s |= linear(f"{p}.mlp.fc1", INNER, WIDTH) | linear(f"{p}.mlp.fc2", WIDTH, INNER)
    return s | (linear(f"{p}.skip_linear", WIDTH, 2 * WIDTH) if skip else {})


def uvit_shapes() -> dict[str, tuple[int, ...]]:
    """The official ``UViTBert``."""
    s = {"pos_embed": (1, N + 1, WIDTH), "embeddings.weight": (V + C + 2, WIDTH)}
    half = LAYERS["UViT"] // 2
    for i in range(half):
        s |= uvit_block(f"in_blocks.{i}", skip=False)
    s |= uvit_block("mid_block", skip=False)
    for i in range(half):
        s |= uvit_block(f"out_blocks.{i}", skip=True)
    return s | norm("norm") | linear("lm_head", V, WIDTH)


SHAPES = {"ViT": imagebert_shapes, "UViT": uvit_shapes}


def write_release(folder, model_type: str, edit=None, **sampling) -> tuple[dict, dict[str, torch.Tensor]]:
    config = generator_config(model_type, **sampling)
    state = randomize(SHAPES[model_type](), seed=11)
    if edit is not None:
        edit(state)
    folder.mkdir(parents=True, exist_ok=True)
    convert.write_hub_folder(folder, config, state)
    return config, state


def lin(x, sd, p):
    return F.linear(x, sd[f"{p}.weight"], sd.get(f"{p}.bias"))


def ln(x, sd, p, eps):
    return F.layer_norm(x, x.shape[-1:], sd[f"{p}.weight"], sd[f"{p}.bias"], eps)


def attention(q, k, v):
    """softmax(q k^T / sqrt(d)) v per head, written out (heads contiguous along the width)."""
    b, n, w = q.shape
    q, k, v = (t.view(b, n, HEADS, w // HEADS).transpose(1, 2) for t in (q, k, v))
    a = (q @ k.transpose(-1, -2) / math.sqrt(w // HEADS)).softmax(-1) @ v
    return a.transpose(1, 2).reshape(b, n, w)


def official_ids(ids, labels, null: bool):
    """The official forward's input: [class token; ids], class y at V + 1 + y, the null class V + C + 1."""
    cond = torch.full_like(labels, V + C + 1) if null else labels + V + 1
    return torch.cat([cond[:, None], ids], 1)


def imagebert_official(sd, ids, labels, null: bool):
    """HF ``BertModel`` (post-LN, eps 1e-12, eval) + ``lm_head`` on the release's keys."""
    x = official_ids(ids, labels, null)
    e = "model.embeddings"
    h = sd[f"{e}.word_embeddings.weight"][x] + sd[f"{e}.token_type_embeddings.weight"][0]
    h = ln(h + sd[f"{e}.position_embeddings.weight"][: x.shape[1]], sd, f"{e}.LayerNorm", 1e-12)
    for i in range(LAYERS["ViT"]):
        p = f"model.encoder.layer.{i}"
        q, k, v = (lin(h, sd, f"{p}.attention.self.{n}") for n in ("query", "key", "value"))
        h = ln(
            lin(attention(q, k, v), sd, f"{p}.attention.output.dense") + h, sd, f"{p}.attention.output.LayerNorm", 1e-12
        )
        f = lin(F.gelu(lin(h, sd, f"{p}.intermediate.dense")), sd, f"{p}.output.dense")
        h = ln(f + h, sd, f"{p}.output.LayerNorm", 1e-12)
    return lin(h[:, 1:], sd, "model.lm_head")


def uvit_official_block(h, sd, p, skip=None):
    if skip is not None:
        h = lin(torch.cat([h, skip], -1), sd, f"{p}.skip_linear")
    q, k, v = lin(ln(h, sd, f"{p}.norm1", 1e-5), sd, f"{p}.attn.qkv").chunk(3, -1)
    h = h + lin(attention(q, k, v), sd, f"{p}.attn.proj")
    return h + lin(F.gelu(lin(ln(h, sd, f"{p}.norm2", 1e-5), sd, f"{p}.mlp.fc1")), sd, f"{p}.mlp.fc2")


def uvit_official(sd, ids, labels, null: bool):
    """The official ``UViTBert.forward`` on the release's keys."""
    x = official_ids(ids, labels, null)
    h = sd["embeddings.weight"][x] + sd["pos_embed"][:, : x.shape[1]]
    skips = []
    for i in range(LAYERS["UViT"] // 2):
        h = uvit_official_block(h, sd, f"in_blocks.{i}")
        skips.append(h)
    h = uvit_official_block(h, sd, "mid_block")
    for i in range(LAYERS["UViT"] // 2):
        h = uvit_official_block(h, sd, f"out_blocks.{i}", skips.pop())
    return lin(ln(h, sd, "norm", 1e-5)[:, 1:], sd, "lm_head")


OFFICIAL = {"ViT": imagebert_official, "UViT": uvit_official}


def official_generate(forward, labels, scale, decay, temperature, anneal, steps=8, power=3.0):
    """``ImageBert.generate`` (bytedance/1d-tokenizer modeling/maskgit.py) with torch's global RNG; ``forward(ids,
    labels, null)`` gives logits, after the class-drop draw every official forward makes."""

    def fwd(ids, null):
        torch.rand_like(labels, dtype=torch.float)
        return forward(ids, labels, null)

    def gumbel(t):
        u = torch.zeros_like(t).uniform_(0, 1)
        return -torch.log((-torch.log(u.clamp(min=1e-20))).clamp(min=1e-20))

    ids = torch.full((labels.shape[0], N), V)
    cfg = scale if decay == "constant" else 0.0
    for step in range(steps):
        ratio = 1.0 * (step + 1) / steps
        temp = temperature * (1.0 - ratio)
        is_mask = ids == V
        if decay == "power-cosine":
            cfg = (scale - 1) * ((1 - torch.cos(((step / steps) ** (torch.ones(1) * power)) * torch.pi)) * 1 / 2) + 1
        if decay == "power-cosine":
            cond, uncond = fwd(ids, False), fwd(ids, True)
            logits = uncond + (cond - uncond) * cfg
        elif cfg != 0:
            cond, uncond = fwd(ids, False), fwd(ids, True)
            logits = cond + (cond - uncond) * cfg
        else:
            logits = fwd(ids, False)
        if anneal:
            logits = logits / (0.5 + 0.8 * (1 - ratio))
        sampled = (logits + temp * gumbel(logits)).argmax(-1)
        chosen = torch.gather(logits, -1, sampled[..., None]).squeeze(-1)
        sampled = torch.where(is_mask, sampled, ids)
        chosen = torch.where(is_mask, chosen, math.inf).float()
        mask_len = torch.tensor([math.floor(N * (math.acos(ratio) / (math.pi * 0.5)))], dtype=torch.float)
        mask_len = torch.maximum(torch.ones(1), torch.minimum(is_mask.sum(-1, keepdim=True) - 1, mask_len))[0]
        confidence = chosen + temp * gumbel(chosen)
        cut_off = confidence.sort(-1).values[:, int(mask_len) - 1 : int(mask_len)]
        ids = sampled if step == steps - 1 else torch.where(confidence <= cut_off, V, sampled)
        if decay == "linear":
            cfg = ratio * scale
    return ids


def converted(tmp_path, model_type: str, **sampling):
    """(converted generator loaded from its folder, the release's state dict, stage.json's config)."""
    _, state = write_release(tmp_path / "release", model_type, **sampling)
    assert convert.main([FORMAT, str(tmp_path / "release"), str(tmp_path / "out")]) == 0
    config = json.loads((tmp_path / "out" / "stage.json").read_text())["config"]
    spec = TokenSpec(**{**config["token_spec"], "shape": tuple(config["token_spec"]["shape"])})
    return load_generator(tmp_path / "out", spec, config["num_classes"]), state, config


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids with 0 / some / most / all positions masked, and class labels."""
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, V, (4, N), generator=g)
    ids[torch.rand(4, N, generator=g) < torch.tensor([[0.0], [0.3], [0.7], [1.0]])] = V
    return ids, torch.tensor([0, 3, 4, 1])


# ---------------------------------------------------------------------------------------------------
# Tests


@pytest.mark.parametrize("model_type", ["ViT", "UViT"])
def test_the_converted_generator_computes_the_official_logits(model_type, tmp_path):
    model, state, config = converted(tmp_path, model_type)
    assert type(model).__name__ == {"ViT": "ImageBert", "UViT": "UViTBert"}[model_type]
    assert config["token_spec"]["shape"] == [N] and config["token_spec"]["vocab_size"] == V
    assert config["num_classes"] == C
    ids, labels = inputs()
    official = {null: OFFICIAL[model_type](state, ids, labels, null) for null in (False, True)}
    with torch.no_grad():
        for null in (False, True):
            ours = model(ids, torch.full_like(labels, C) if null else labels)  # C: the null class
            assert ours.shape == (4, N, V) and (ours - official[null]).abs().max() < 1e-5
    assert not torch.allclose(official[False], official[True], atol=1e-3)


@pytest.mark.parametrize("model_type", ["ViT", "UViT"])
def test_every_release_tensor_is_mapped(model_type, tmp_path):
    """Inverting the key map on the converted model gives back the release: UViTBert exactly; ImageBert up to
    BERT's position and token-type tables, which it holds as their sum (the only token type used is 0)."""
    model, state, _ = converted(tmp_path, model_type)
    back = convert.official_state(FORMAT, model)
    assert back.keys() == state.keys()
    folded = {"model.embeddings.position_embeddings.weight", "model.embeddings.token_type_embeddings.weight"}
    assert all(torch.equal(back[k], state[k]) for k in state if k not in folded)
    if model_type == "ViT":
        e = "model.embeddings"
        position = back[f"{e}.position_embeddings.weight"] + back[f"{e}.token_type_embeddings.weight"][0]
        expected = state[f"{e}.position_embeddings.weight"] + state[f"{e}.token_type_embeddings.weight"][0]
        assert torch.allclose(position, expected, atol=1e-6)


@pytest.mark.parametrize(
    ("model_type", "decay", "scale", "temperature", "anneal"),
    [
        ("ViT", "constant", 3.0, 1.0, False),
        ("ViT", "linear", 4.5, 9.5, True),
        ("UViT", "power-cosine", 6.9, 2.8, True),
        ("UViT", "constant", 0.0, 4.5, False),
    ],
)
def test_sampling_replays_the_official_sampler(model_type, decay, scale, temperature, anneal, tmp_path):
    """Seeded alike, ``sample`` gives the official ``generate``'s ids: its guidance schedules (the official
    guidance_scale is cfg_scale - 1 for constant / linear), temperatures, raw-logit confidence and re-masking
    rule, with the same random draws in the same order."""
    model, state, _ = converted(tmp_path, model_type)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    torch.manual_seed(7)
    official = official_generate(
        lambda ids, y, null: OFFICIAL[model_type](state, ids, y, null), labels, scale, decay, temperature, anneal
    )
    ours = model.sample(
        labels,
        cfg_scale=scale if decay == "power-cosine" else scale + 1,
        steps=8,
        generator=torch.Generator().manual_seed(7),
        guidance_decay=decay,
        randomize_temperature=temperature,
        softmax_temperature_annealing=anneal,
    )
    assert torch.equal(ours, official) and ours.dtype == torch.long and len(ours.unique()) > 3
    other = model.sample(labels, cfg_scale=2.0, generator=torch.Generator().manual_seed(7), guidance_decay=decay)
    assert not torch.equal(other, ours)


def test_each_step_leaves_the_official_number_masked(tmp_path):
    """floor(N arccos(r) / (pi / 2)) clamped to [1, masked - 1] until the last step, which unmasks all."""
    model, _, _ = converted(tmp_path, "ViT")
    steps, counts, calls = 4, [], []
    forward = model.forward

    def spy(tokens, labels):
        counts.append(int((tokens == V).sum(1)[0]))
        calls.append(len(tokens))
        return forward(tokens, labels)

    model.forward = spy
    out = model.sample(torch.tensor([1, 2]), cfg_scale=1.0, steps=steps, generator=torch.Generator().manual_seed(0))
    expected = [N]
    for step in range(steps - 1):
        expected.append(max(1, min(expected[-1] - 1, math.floor(N * (math.acos((step + 1) / steps) / (math.pi / 2))))))
    assert (out < V).all() and counts == expected and expected[-1] >= 1
    assert calls == [2] * steps  # cfg_scale 1: the conditional branch alone, one batch of B


def test_the_loss_is_the_official_mlm_loss(tmp_path):
    """The official masking (arccos count, random positions), class drop and weighted label-smoothed
    cross-entropy, with the same random draws."""
    model, state, _ = converted(tmp_path, "UViT")
    model.train()
    tokens, labels = torch.randint(0, V, (8, N), generator=torch.Generator().manual_seed(1)), torch.arange(8) % C
    model.label_dropout = 0.5
    torch.manual_seed(3)
    ours = model.loss(tokens, labels)["mlm"]
    torch.manual_seed(3)
    ratio = (torch.acos(torch.zeros(8).uniform_(0, 1)) / (math.pi * 0.5)).clamp(1e-6, 1.0)
    masks = torch.rand(8, N).argsort(-1) < (N * ratio).round().clamp(min=1)[:, None]
    drop = torch.rand_like(labels, dtype=torch.float) < 0.5
    logits = uvit_official(state, torch.where(masks, V, tokens), torch.where(drop, C, labels), False)  # C: null
    ce = F.cross_entropy(logits.transpose(1, 2), tokens, label_smoothing=0.1, reduction="none")
    weights = (1.0 - masks.float()) * 0.1 + masks.float()
    assert drop.any() and not drop.all() and masks.any() and not masks.all()
    assert torch.allclose(ours, (ce * weights).sum() / (weights.sum() + 1e-8), atol=1e-6)


def test_a_bad_release_is_one_error_and_writes_nothing(tmp_path):
    def tamper(state):
        del state["model.lm_head.bias"], state["model.encoder.layer.1.attention.self.key.weight"]
        state["model.encoder.layer.0.intermediate.dense.weight"] = torch.zeros(INNER, 2 * WIDTH)
        state["model.pooler.dense.weight"] = torch.zeros(WIDTH, WIDTH)

    write_release(tmp_path / "release", "ViT", edit=tamper)
    with pytest.raises(CheckpointError) as err:
        convert.convert(FORMAT, tmp_path / "release")
    message = str(err.value)
    assert "(as a 1d-tokenizer-generator release)" in message and "(imagebert)" in message and "\n" not in message
    assert "missing keys: model.encoder.layer.1.attention.self.key.weight, model.lm_head.bias" in message
    assert "unexpected keys: model.pooler.dense.weight" in message
    assert f"model.encoder.layer.0.intermediate.dense.weight [{INNER}, {2 * WIDTH}] (expected [{INNER}, {WIDTH}])" in (
        message
    )
    assert convert.main([FORMAT, str(tmp_path / "release"), str(tmp_path / "out")]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["release"]


def test_older_transformers_buffers_are_dropped(tmp_path):
    def old(state):
        state["model.embeddings.position_ids"] = torch.arange(N + 1)[None]
        state["model.embeddings.token_type_ids"] = torch.zeros(1, N + 1, dtype=torch.long)

    write_release(tmp_path / "release", "ViT", edit=old)
    release, weights = convert.convert(FORMAT, tmp_path / "release")
    buffers = {"model.embeddings.position_ids", "model.embeddings.token_type_ids"}
    assert buffers <= release.state.keys() and not any(k.endswith("_ids") for k in weights)


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"model_type": "DiT"}, "model.generator.model_type 'DiT' is not supported; supported: ViT, UViT"),
        ({"image_seq_len": "${model.vq_model.token_size}"}, "image_seq_len '.*' is neither an integer nor"),
        ({"guidance_decay": "cosine"}, "guidance_decay 'cosine' is not supported"),
        ({"num_attention_heads": 5}, r"generator\.heads: width 32 is not divisible by 5 heads"),
    ],
)
def test_a_config_tok1d_cannot_compute_is_named(change, error, tmp_path):
    config, _ = write_release(tmp_path / "release", "ViT")
    config["model"]["generator"].update(change)
    (tmp_path / "release" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=error):
        convert.convert(FORMAT, tmp_path / "release")
    config = generator_config("ViT")
    del config["model"]["generator"]["num_steps"]
    (tmp_path / "release" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="missing key 'model.generator.num_steps'"):
        convert.read_release(FORMAT, tmp_path / "release", weights=False)


def test_the_folder_records_the_official_evaluation_and_its_token_spec(tmp_path):
    """stage.json's ``sample`` is the official ImageNet evaluation in tok1d's terms; a latent cache of another
    token spec does not fit the folder."""
    model, _, config = converted(tmp_path, "UViT", guidance_decay="power-cosine", guidance_scale=6.9, num_steps=64)
    assert config["generator"] == {
        "name": "uvitbert", "width": WIDTH, "depth": 4, "heads": HEADS, "mlp_ratio": 2.0, "label_dropout": 0.1
    }  # fmt: skip
    assert config["sample"] == {
        "cfg_scale": 6.9,
        "steps": 64,
        "options": {
            "guidance_decay": "power-cosine",
            "randomize_temperature": 9.5,
            "softmax_temperature_annealing": True,
        },
    }
    release = json.loads((tmp_path / "out" / "release.json").read_text())
    assert release["format"] == FORMAT and release["official_config"]["model"]["generator"]["guidance_scale"] == 6.9
    with pytest.raises(CheckpointError, match="does not fit the model its config builds"):
        load_generator(tmp_path / "out", TokenSpec("discrete", (N,), vocab_size=2 * V), C)
    linear_cfg = convert.parse_titok_generator(generator_config("ViT"), "test")["sample"]
    assert linear_cfg["cfg_scale"] == 5.5  # the official linear guidance_scale 4.5 is c + 4.5 (c - u)


def test_bad_sampler_options_are_named(tmp_path):
    model = GENERATORS.build("imagebert", token_spec=TokenSpec("discrete", (N,), vocab_size=V), num_classes=C, **{
        "width": WIDTH, "depth": 1, "heads": HEADS
    })  # fmt: skip
    with pytest.raises(ConfigError, match="guidance_decay: unknown 'cosine'; choose from constant, linear, power-cos"):
        model.sample(torch.tensor([0]), guidance_decay="cosine")
    with pytest.raises(ConfigError, match="steps: TiTok's MaskGIT needs at least one decoding step, got 0"):
        model.sample(torch.tensor([0]), steps=0)
    with pytest.raises(ConfigError, match="generator.depth: U-ViT has depth / 2 in- and out-blocks; 3 is odd"):
        GENERATORS.build("uvitbert", token_spec=TokenSpec("discrete", (N,), vocab_size=V), num_classes=C, depth=3)
    with pytest.raises(ConfigError, match="TiTok's MaskGIT models discrete token ids"):
        GENERATORS.build("imagebert", token_spec=TokenSpec("continuous", (N,), dim=4), num_classes=C, depth=1)


@pytest.mark.parametrize("name", ["titok-l32-generator", "titok-s128-generator"])
def test_generator_stand_ins_are_official_layout_releases(name, tmp_path):
    """The releases' stand-ins are written in the release's layout (the keys of an independently written
    release of the same kind) and convert; the ``released`` tokenizer refuses a generator release."""
    folder = convert.write_stand_in(name, 32, tmp_path / name)
    release, weights = convert.convert(FORMAT, folder)
    kind = "UViT" if "s128" in name else "ViT"
    assert {re.sub(r"\.\d+\.", ".i.", k) for k in release.state} == {
        re.sub(r"\.\d+\.", ".i.", k) for k in SHAPES[kind]()
    }
    assert list(release.config["token_spec"]["shape"]) == [int(name.split("-")[1][1:])]
    assert weights["pos_embed"].shape[1] == release.config["token_spec"]["shape"][0] + 1
    with pytest.raises(ConfigError, match=f"tokenizer: {name} is a generator release, not a tokenizer"):
        TOKENIZERS.build("released", image_size=32, release=name, stand_in=True)


def test_fetch_weights_knows_the_generators_hub_ids(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    from benchmark import fetch_weights

    asked = []

    def snapshot_download(repo, allow_patterns, local_files_only):
        asked.append((repo, tuple(allow_patterns)))
        write_release(tmp_path / repo, "ViT")
        return str(tmp_path / repo)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    names = ["titok-l32-generator", "titok-b64-generator", "titok-s128-generator"]
    assert fetch_weights.main([f"--release={n}" for n in names]) == 0
    assert [repo for repo, _ in asked[::2]] == [
        f"yucornetto/generator_titok_{s}_imagenet" for s in ("l32", "b64", "s128")
    ]
    assert all(files == ("config.json", "model.safetensors") for _, files in asked)
    assert "3 of 3 releases available" in capsys.readouterr().out
    assert convert.main(["--list"]) == 0
    assert "titok-s128-generator 1d-tokenizer-generator gFID  1.97" in capsys.readouterr().out


def test_a_converted_generator_samples_for_the_converted_tokenizer(tmp_path):
    """TiTok-L-32's generator, loaded for the token spec of the converted TiTok-L-32 (stand-ins of both),
    samples ids with the release's own settings that the tokenizer decodes into images."""
    for name in ("titok-l32", "titok-l32-generator"):
        info = convert.RELEASES[name]
        source = convert.write_stand_in(name, 32, tmp_path / f"{name}-release")
        assert convert.main([info.format, str(source), str(tmp_path / name)]) == 0
    tokenizer = load_tokenizer(tmp_path / "titok-l32")
    config = json.loads((tmp_path / "titok-l32-generator" / "stage.json").read_text())["config"]
    generator = load_generator(tmp_path / "titok-l32-generator", tokenizer.token_spec, config["num_classes"])
    counter = CompileCounter()
    generator.compile(backend=counter)  # what the sample stage's runtime.compile does: the network is compiled
    sample = config["sample"]
    ids = generator.sample(
        torch.tensor([1, 999]),
        sample["cfg_scale"],
        sample["steps"],
        torch.Generator().manual_seed(0),
        **sample["options"],
    )
    assert ids.shape == (2, 32) and ids.max() < tokenizer.token_spec.vocab_size and counter.frame_count >= 1
    images = tokenizer.decode(ids)
    assert images.shape == (2, 3, 32, 32) and 0 <= images.min() and images.max() <= 1


# ---------------------------------------------------------------------------------------------------
# A released generator in a study (generators/released.py) and in benchmark.evaluate

L32_OPTIONS = {"guidance_decay": "linear", "randomize_temperature": 9.5, "softmax_temperature_annealing": True}
RELEASED_STUDY = """
title: A released generator on its released tokenizer
source: tests
cells:
  - label: L-32
    set:
      tokenizer: {name: released, release: titok-l32, stand_in: true}
      generator: {name: released, release: GENERATOR, stand_in: true}
      sample: {cfg_scale: 5.5, steps: 4, num_images: 10, batch_size: 5}
      sample.options: OPTIONS
stages: [sample]
report:
  tables:
    - {name: main, row_label: G, columns: {generator_params: Params, images_per_second: Images/s}}
"""


def released_study(write_study, generator: str = "titok-l32-generator", options: dict | None = None):
    text = RELEASED_STUDY.replace("GENERATOR", generator).replace("OPTIONS", json.dumps(options or L32_OPTIONS))
    return write_study(text, name="released.yaml")


def sampled_by_hand(generator, tokenizer, n: int = 10, batch: int = 5, classes: int = 8) -> torch.Tensor:
    """What the sample stage must write: batch b drawn with seed b, labels i mod C, decoded, as uint8."""
    out = []
    for b, start in enumerate(range(0, n, batch)):
        labels = torch.arange(start, min(start + batch, n)) % classes
        ids = generator.sample(labels, 5.5, 4, torch.Generator().manual_seed(b), **L32_OPTIONS)
        images = tokenizer.decode(ids)
        out.append((images.float().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1))
    return torch.cat(out)


@pytest.mark.slow
def test_released_generator_is_installed_not_trained_and_samples_as_released(tmp_path, write_study):
    """A study cell of a released tokenizer and its released generator (stand-ins): no latent cache and no
    training; the sample stage's images are the wrapped release's own samples decoded by the release's
    tokenizer; benchmark.evaluate samples a converted generator folder the same way."""
    from benchmark import evaluate

    study = released_study(write_study)
    assert run_cli(study, tmp_path, "data.resolution=32") == 0
    runs = tmp_path / "runs"
    assert not (runs / "cache_latents").exists()
    installed = next((runs / "train_generator").glob("*/"))
    assert not (installed / "checkpoints").exists() and not (installed / "losses.csv").exists()
    result = json.loads((installed / "result.json").read_text())
    assert result["release_sample"]["cfg_scale"] == 4.0 and result["release"]["stand_in"] == "titok-l32-generator"
    assert json.loads((installed / "latents.json").read_text())["num_classes"] == 8  # the data's classes

    with torch.no_grad():
        wrapped = GENERATORS.build(
            "released", token_spec=TokenSpec("discrete", (32,), vocab_size=64), num_classes=8, **{
                "release": "titok-l32-generator", "stand_in": True
            }
        ).eval()  # fmt: skip
        tokenizer = load_tokenizer(next((runs / "train_tokenizer").glob("*/")))
        expected = sampled_by_hand(wrapped, tokenizer)
    images = np.load(next((runs / "sample").glob("*/images.npy")))
    np.testing.assert_array_equal(images, expected.numpy())
    table = pd.read_csv(tmp_path / "results" / "released" / "_smoke" / "main.csv")
    assert table["Params"].tolist() == [sum(p.numel() for p in wrapped.model.parameters())]

    # The same release converted by benchmark.convert, sampled by benchmark.evaluate: the same images.
    src = convert.write_stand_in("titok-l32-generator", 32, tmp_path / "release")
    assert convert.main([FORMAT, str(src), str(tmp_path / "converted")]) == 0
    weights = tmp_path / "inception.pth"
    torch.save(random_inception_state(), weights)
    sampler = [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in L32_OPTIONS.items()]
    argv = [str(tmp_path / "converted"), "--tokenizer", str(next((runs / "train_tokenizer").glob("*/")))]
    argv += ["--num-images", "10", "--batch-size", "5", "--steps", "4", "--cfg-scale", "5.5", "--sampler", *sampler]
    argv += ["--metrics", "inception_score", "--inception-weights", str(weights), "--cache", str(tmp_path / "fid")]
    assert evaluate.main([*argv, "--device", "cpu", "--out", str(tmp_path / "eval")]) == 0
    sampled = np.load(tmp_path / "eval" / "images.npy")
    labels = np.load(tmp_path / "eval" / "labels.npy")
    assert labels.tolist() == [i % 1000 for i in range(10)]  # the release's classes: it has no data of its own
    with torch.no_grad():
        by_hand = sampled_by_hand(wrapped, tokenizer, classes=1000)
    np.testing.assert_array_equal(sampled, by_hand.numpy())


def test_released_generator_mismatches_fail_the_plan(tmp_path, write_study, capsys):
    """A release that models other tokens than the cell's tokenizer gives, or a sampler option its sampler
    does not have, is one line at plan time; a release with fewer classes than the data is refused, and one
    with more unless it is a stand-in."""
    study = released_study(write_study, generator="titok-b64-generator")
    assert run_cli(study, tmp_path, "data.resolution=32", "--dry-run") == 2
    err = capsys.readouterr().err
    assert "cell L-32: generator: the release models 64 discrete tokens over 64 codes; the cell's tokenizer" in err
    assert "gives 32 discrete tokens over 64 codes" in err
    study = released_study(write_study, options={"temperature": 2.0})
    assert run_cli(study, tmp_path, "data.resolution=32", "--dry-run") == 2
    assert "sample.options: temperature: not an option of the released imagebert sampler" in capsys.readouterr().err

    folder = tmp_path / "small"
    write_release(folder, "ViT")  # C = 5 classes
    spec = TokenSpec("discrete", (N,), vocab_size=V)
    with pytest.raises(ConfigError, match="the release is conditioned on 5 classes; the data has 8"):
        GENERATORS.build("released", token_spec=spec, num_classes=8, format=FORMAT, source=str(folder))
    with pytest.raises(ConfigError, match="conditioned on 5 classes; the data has 3 .*stand_in"):  # others' classes
        GENERATORS.build("released", token_spec=spec, num_classes=3, format=FORMAT, source=str(folder))
    assert (
        GENERATORS.build("released", token_spec=spec, num_classes=5, format=FORMAT, source=str(folder)).num_classes == 5
    )
    with pytest.raises(ConfigError, match="generator: titok-l32 is a tokenizer release, not a generator"):
        GENERATORS.build("released", token_spec=spec, num_classes=8, release="titok-l32", stand_in=True)
    with pytest.raises(CheckpointError, match="not a converted generator folder"):
        GENERATORS.build("released", token_spec=spec, num_classes=8, checkpoint=str(tmp_path))

"""Parity of ``benchmark.convert`` with the official code itself, imported from checkouts of the official
repositories (they are not packages, so the test suite cannot import them; tests/test_convert*.py check
the key maps against forwards written out from them instead).

    git clone https://github.com/bytedance/1d-tokenizer
    git clone https://github.com/Hhhhhhao/continuous_tokenizer
    git clone https://github.com/CompVis/taming-transformers
    pip install einops accelerate peft           # what the official modules import
    python scripts/parity_official.py --titok 1d-tokenizer --softvq continuous_tokenizer \\
        --taming taming-transformers [--out results/parity/official.json]

For each format: the official model is built by the official class from an official-style config, with the
official initialisation (norm and bias vectors then perturbed, so that a swapped affine cannot hide), saved
the way the release ships (``save_pretrained``, a Lightning checkpoint, a raw ``.bin``), converted by
``python -m benchmark.convert``, and both are run on the same random images: token ids (equal fraction),
continuous tokens and reconstructions (max abs difference), parameter counts; for TiTok's generators the
logits and the ids sampled with the same torch RNG stream. Prints one JSON object (and writes ``--out``).
taming's VQModel subclasses Lightning's module and builds its training loss from the config: both are
stubbed (``nn.Module``, an identity loss), its encode / decode run as written.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import types
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parent.parent
SIZE = 64  # TiTok's image side here (its ViTs take any multiple of the patch size)


def perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """The official initialisation, with every vector (norm weights and biases, LayerScale) moved off 1 / 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


def converted(fmt: str, src: Path, work: Path) -> Path:
    out = work / f"{src.name}-tok1d"
    done = subprocess.run(
        [sys.executable, "-m", "benchmark.convert", fmt, str(src), str(out)], cwd=REPO, capture_output=True, text=True
    )
    if done.returncode:
        raise SystemExit(f"benchmark.convert {fmt} {src}: {done.stderr.strip()}")
    return out


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def counts(official: torch.nn.Module, ours: torch.nn.Module) -> dict[str, int]:
    return {
        "params_official": sum(p.numel() for p in official.parameters()),
        "params_tok1d": sum(p.numel() for p in ours.parameters()),
    }


def titok_tokenizers(work: Path, load: Callable) -> dict[str, dict]:
    """1d-tokenizer: single-stage VQ (no L2, conv_out), VAE, and the legacy two-stage model with the
    MaskGIT-VQGAN pixel decoder; small ViTs, 32 tokens, 64 px."""
    from modeling.titok import TiTok

    kinds = {
        "vq": {"codebook_size": 512, "token_size": 64, "use_l2_norm": False, "finetune_decoder": False},
        "vae": {"token_size": 16, "quantize_mode": "vae", "finetune_decoder": False},
        "legacy": {"codebook_size": 512, "token_size": 12, "use_l2_norm": True, "finetune_decoder": True},
    }
    x = torch.rand(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    out = {}
    for kind, vq in kinds.items():
        torch.manual_seed(1)
        vq = {"commitment_cost": 0.25, "is_legacy": kind == "legacy", **vq}
        vit = {"vit_enc_model_size": "small", "vit_dec_model_size": "small", "num_latent_tokens": 32}
        vit |= {"vit_enc_patch_size": 16, "vit_dec_patch_size": 16}
        config = {"model": {"vq_model": {**vit, **vq}}, "dataset": {"preprocessing": {"crop_size": SIZE}}}
        official = perturbed(TiTok(config), 2)
        official.save_pretrained(work / f"titok-{kind}")
        ours = load(converted("1d-tokenizer", work / f"titok-{kind}", work))
        with torch.no_grad():
            tokens = ours.encode(x)
            if kind == "vae":  # tok1d's tokens are the posterior mean
                mean = official.quantize(official.encoder(pixel_values=x, latent_tokens=official.latent_tokens)).mode()
                row = {"tokens_max_abs_diff": max_diff(tokens, mean.reshape(4, -1, 32).transpose(1, 2))}
                reference = official.decode(mean)
            else:
                ids = official.encode(x)[1]["min_encoding_indices"].reshape(4, -1)
                row = {"ids_equal": float((tokens == ids).float().mean())}
                reference = official.decode_tokens(ids[:, None])
            row["recon_max_abs_diff"] = max_diff(ours.decode(tokens), reference.clamp(0, 1))
        out[f"1d-tokenizer {kind}"] = {**row, **counts(official, ours)}
    return out


def maskgit_vqgan(work: Path, load: Callable) -> dict[str, dict]:
    """1d-tokenizer's ``PretrainedTokenizer`` (MaskGIT-VQGAN), its weights saved as the release's .bin."""
    from modeling import titok
    from omegaconf import OmegaConf

    conf = {"channel_mult": [1, 1, 2, 2, 4], "num_resolutions": 5, "dropout": 0.0, "hidden_channels": 128}
    conf |= {"num_channels": 3, "num_res_blocks": 2, "resolution": 256, "z_channels": 256}
    torch.manual_seed(3)
    parts = torch.nn.Module()
    parts.encoder = titok.Pixel_Eecoder(OmegaConf.create(conf))
    parts.decoder = titok.Pixel_Decoder(OmegaConf.create(conf))
    parts.quantize = titok.Pixel_Quantizer(num_embeddings=1024, embedding_dim=256, commitment_cost=0.25)
    torch.save(perturbed(parts, 4).state_dict(), work / "maskgit-vqgan.bin")
    official = titok.PretrainedTokenizer(str(work / "maskgit-vqgan.bin"))
    ours = load(converted("maskgit-vqgan", work / "maskgit-vqgan.bin", work))
    x = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ids = official.encode(x)
        tokens = ours.encode(x)
        row = {"ids_equal": float((tokens.reshape(ids.shape) == ids).float().mean())}
        row["recon_max_abs_diff"] = max_diff(ours.decode(tokens), official.decode(ids))
    return {"maskgit-vqgan": {**row, **counts(official, ours)}}


def titok_generators(work: Path) -> dict[str, dict]:
    """1d-tokenizer's ImageBert and UViTBert: logits, and ids sampled with linear and power-cosine guidance.
    tok1d's ImageBert adds BERT's token-type row 0 (the only one the official forward uses) into its position
    table, so it has 2 x width fewer parameters."""
    from modeling.maskgit import ImageBert, UViTBert

    from benchmark.base import TokenSpec
    from benchmark.checkpoints import load_generator
    from benchmark.convert import GUIDANCE_OFFSET

    v, c, n = 512, 1000, 32
    out = {}
    for kind, cls in (("ViT", ImageBert), ("UViT", UViTBert)):
        gen = {"model_type": kind, "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 8}
        gen |= {"intermediate_size": 1024, "dropout": 0.1, "attn_drop": 0.1, "num_steps": 8, "image_seq_len": n}
        gen |= {"class_label_dropout": 0.1, "condition_num_classes": c, "randomize_temperature": 9.5}
        gen |= {"guidance_scale": 4.5, "guidance_decay": "linear", "mask_schedule_strategy": "arccos"}
        torch.manual_seed(5)
        official = perturbed(
            cls({"model": {"vq_model": {"codebook_size": v, "num_latent_tokens": n}, "generator": gen}}), 6
        )
        official.save_pretrained(work / f"generator-{kind}")
        ours = load_generator(
            converted("1d-tokenizer-generator", work / f"generator-{kind}", work), TokenSpec("discrete", (n,), v), c
        )
        ids = torch.randint(0, v + 1, (4, n), generator=torch.Generator().manual_seed(7))
        labels = torch.tensor([1, 7, 500, 999])
        with torch.no_grad():
            row = {
                "logits_max_abs_diff": max_diff(ours(ids, labels), official(ids, labels.clone(), cond_drop_prob=0.0))
            }
            for decay, scale in (("linear", 4.5), ("power-cosine", 6.9)):
                sampler = {"guidance_decay": decay, "randomize_temperature": 2.8, "softmax_temperature_annealing": True}
                torch.manual_seed(8)
                theirs = official.generate(labels.clone(), guidance_scale=scale, num_sample_steps=16, **sampler)
                torch.manual_seed(8)
                mine = ours.sample(labels, cfg_scale=scale + GUIDANCE_OFFSET[decay], steps=16, **sampler)
                row[f"sampled_ids_equal_{decay}"] = float((mine == theirs).float().mean())
        out[f"1d-tokenizer-generator {kind}"] = {**row, **counts(official, ours)}
    return out


def softvq(work: Path, load: Callable) -> dict[str, dict]:
    """SoftVQ-VAE-B (timm DINOv2-B encoder and decoder, not pretrained), 32 tokens, 4 codebooks, 256 px. The
    official model also holds the decoder ViT's unused patch embedding (3 x 16 x 16 x 768 + 768 parameters)."""
    from modelling.tokenizer import ModelArgs, SoftVQModel

    vit = "vit_base_patch14_dinov2.lvd142m"
    args = ModelArgs(
        image_size=256, codebook_size=1024, codebook_embed_dim=32, tau=0.07, num_codebooks=4, enc_type="vit",
        dec_type="vit", encoder_model=vit, decoder_model=vit, num_latent_tokens=32, enc_pretrained=False,
        dec_pretrained=False, enc_patch_size=16, dec_patch_size=16,
    )  # fmt: skip
    torch.manual_seed(9)
    official = perturbed(SoftVQModel(args), 10)
    official.save_pretrained(work / "softvq-b")
    ours = load(converted("softvq", work / "softvq-b", work))
    x = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        quant = official.encode(x * 2 - 1)[0]
        tokens = ours.encode(x)
        row = {"tokens_max_abs_diff": max_diff(tokens, quant)}
        row["recon_max_abs_diff"] = max_diff(ours.decode(tokens), ((official.decode(quant) + 1) / 2).clamp(0, 1))
    return {"softvq": {**row, **counts(official, ours)}}


def taming(work: Path, load: Callable) -> dict[str, dict]:
    """taming's VQGAN f16-16384 architecture (ch 128, ch_mult 1 1 2 2 4, attention at 16 px), 256 px."""
    sys.modules["pytorch_lightning"] = types.SimpleNamespace(LightningModule=torch.nn.Module)
    sys.modules["main"] = types.SimpleNamespace(instantiate_from_config=lambda config: torch.nn.Identity())
    from taming.models.vqgan import VQModel

    dd = {"double_z": False, "z_channels": 256, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128}
    dd |= {"ch_mult": [1, 1, 2, 2, 4], "num_res_blocks": 2, "attn_resolutions": [16], "dropout": 0.0}
    loss = {"target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator"}
    torch.manual_seed(11)
    official = perturbed(VQModel(ddconfig=dd, lossconfig=loss, n_embed=16384, embed_dim=256), 12)
    log = work / "taming"
    (log / "checkpoints").mkdir(parents=True)
    (log / "configs").mkdir()
    state = {**official.state_dict(), "loss.discriminator.main.0.weight": torch.randn(64, 3, 4, 4)}
    torch.save({"epoch": 0, "global_step": 0, "state_dict": state}, log / "checkpoints" / "last.ckpt")
    params = {"embed_dim": 256, "n_embed": 16384, "ddconfig": dd, "lossconfig": loss}
    config = {"model": {"target": "taming.models.vqgan.VQModel", "params": params}}
    (log / "configs" / "model.yaml").write_text(yaml.safe_dump(config))
    ours = load(converted("taming", log, work))
    x = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        quant, _, (_, _, ids) = official.encode(x * 2 - 1)
        tokens = ours.encode(x)
        row = {"ids_equal": float((tokens.reshape(-1) == ids.reshape(-1)).float().mean())}
        row["recon_max_abs_diff"] = max_diff(ours.decode(tokens), ((official.decode(quant) + 1) / 2).clamp(0, 1))
    return {"taming": {**row, **counts(official, ours)}}


def commit(path: Path) -> str:
    done = subprocess.run(["git", "-C", str(path), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python scripts/parity_official.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--titok", type=Path, help="a checkout of bytedance/1d-tokenizer")
    p.add_argument("--softvq", type=Path, help="a checkout of Hhhhhhao/continuous_tokenizer")
    p.add_argument("--taming", type=Path, help="a checkout of CompVis/taming-transformers")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    sys.path.insert(0, str(REPO))
    from benchmark.checkpoints import load_tokenizer
    from benchmark.registry import load_plugins

    load_plugins()
    torch.set_num_threads(min(torch.get_num_threads(), 4))
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for checkout, runs in (
            (args.titok, [lambda: titok_tokenizers(work, load_tokenizer), lambda: maskgit_vqgan(work, load_tokenizer),
                          lambda: titok_generators(work)]),
            (args.softvq, [lambda: softvq(work, load_tokenizer)]),
            (args.taming, [lambda: taming(work, load_tokenizer)]),
        ):  # fmt: skip
            if checkout is None:
                continue
            sys.path.insert(0, str(checkout.resolve()))
            for run in runs:
                for name, row in run().items():
                    results[name] = {**row, "official_commit": commit(checkout)}
    report = {"torch": torch.__version__, "python": platform.python_version(), "results": results}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

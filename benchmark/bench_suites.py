"""The fixed tables of ``python -m benchmark.bench --suite NAME``.

``paper`` (one H100 / H200, bf16, under 8 minutes: ops not started within ``--time-budget`` 400 s are
reported as skipped, and one still running 40 s later is stopped and reported as an error): train steps of TiTok-B-64 (thesis Table 4's losses) and SelfBootTok-B-64 (paper
Table 1's, frozen teachers as random-weight stand-ins of the same size) at 256 px, compile off and on;
SiT-XL train steps on 64 tokens of width 32 (SelfBootTok / SoftVQ latents) and 256 tokens of width 16
(SD-VAE latents patchified 2 x 2, the official SiT-XL/2 setting), compile off and on; 250-step SDE
sampling of SiT-XL on 64 tokens with CFG 1.75 (paper Table 1), compile off and on; the streamed
evaluation (rFID, PSNR, SSIM, codebook usage) of TiTok-B-64 on 5,000 procedural 256 px images.
Batches per device: 32 images for the tokenizers (256 x 8 GPUs for SelfBootTok's paper batch; the
thesis's 128 on 4), 128 x 64 tokens and 32 x 256 tokens for SiT-XL (the official SiT-XL/2 runs 32 per
GPU), 32 samples.

``smoke``: the same entries with tiny models at 32 px, a few calls each: what CI and a laptop can run to
check the suite's code paths and its JSON (tests/test_evaluate_bench.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from benchmark.base import TokenSpec


@dataclass(frozen=True)
class SuiteEntry:
    """One model of a suite and the ops timed on it; ``settings`` override the command line's
    (``batch_size``, ``compile``, ``image_size``, ``steps``, ...)."""

    label: str
    component: str  # tokenizer | generator
    config: dict[str, Any]  # the registry section: name and options
    ops: tuple[str, ...]
    settings: dict[str, Any] = field(default_factory=dict)
    ema_decay: float = 0.0
    tokens: TokenSpec | None = None  # generators: the token spec they model
    tokens_of: str = ""
    sampling: dict[str, Any] = field(default_factory=dict)  # sampler options (sample.options)


TITOK_B64 = {  # thesis Table 4 (studies/thesis_table4_initialization.yaml); LPIPS trunk with random weights
    "name": "titok",
    "size": "B",
    "patch_size": 16,
    "num_latent_tokens": 64,
    "codebook_size": 4096,
    "token_size": 16,
    "perceptual": {"weight": 1.0, "net": "vgg", "weights": "random"},
    "entropy_weight": 0.1,
    "adversarial": {"kind": "patchgan", "weight": 0.1, "start": 5000},
}
SELFBOOTTOK_B64 = {  # paper Table 1 (studies/paper_table1_generation.yaml), stand-ins for every pretrained network
    "name": "selfboottok",
    "size": "B",
    "patch_size": 16,
    "num_latent_tokens": 64,
    "token_size": 32,
    "local2d_size": "10M",
    "local2d_form": "autoregressive",
    "perceptual": {"weight": 1.0, "net": "vgg", "weights": "random"},
    "adversarial": {
        "kind": "stylegan",
        "weight": 0.1,
        "start": 20000,
        "lecam_weight": 0.001,
        "consistency_weight": 4.0,
    },
    "align_global": {"init": "dinov2", "size": "B", "stand_in": {}},
    "align_local": {"init": "ijepa", "size": "H", "stand_in": {}},
    "latent_2d": {"tokenizer": "vqgan", "size": "base", "bottleneck": "kl", "embed_dim": 32},
}
SIT_XL = {"name": "sit", "size": "XL"}
SIT_64 = TokenSpec("continuous", (64,), dim=32)
SIT_256 = TokenSpec("continuous", (256,), dim=16)
SDE_250 = {"steps": 250, "cfg_scale": 1.75}
PAPER_RUN = {"image_size": 256, "warmup": 3, "iters": 10, "min_time": 2.0}


def _paper(compile: bool) -> list[SuiteEntry]:
    on = {"compile": compile, **PAPER_RUN}
    return [
        SuiteEntry("TiTok-B-64", "tokenizer", TITOK_B64, ("train_step",), {"batch_size": 32, **on}, 0.9999),
        SuiteEntry(
            "SiT-XL", "generator", SIT_XL, ("train_step",), {"batch_size": 128, **on}, 0.9999, SIT_64, "64 x 32"
        ),
        SuiteEntry(
            "SiT-XL", "generator", SIT_XL, ("train_step",), {"batch_size": 32, **on}, 0.9999, SIT_256, "256 x 16"
        ),
        SuiteEntry(
            "SiT-XL",
            "generator",
            SIT_XL,
            ("sample",),
            {"batch_size": 32, "warmup": 1, "iters": 3, "min_time": 0.0, **SDE_250, **on},
            tokens=SIT_64,
            tokens_of="64 x 32",
            sampling={"sampler": "sde"},
        ),
        SuiteEntry("SelfBootTok-B-64", "tokenizer", SELFBOOTTOK_B64, ("train_step",), {"batch_size": 32, **on}, 0.9999),
    ]


PAPER = [
    *_paper(compile=False),
    SuiteEntry(
        "TiTok-B-64",
        "tokenizer",
        TITOK_B64,
        ("rfid",),
        {"batch_size": 250, "rfid_images": 5000, "workers": 8, **PAPER_RUN},
    ),
    *_paper(compile=True),
]

TITOK_TINY = {
    "name": "titok",
    "size": "tiny",
    "patch_size": 8,
    "num_latent_tokens": 8,
    "codebook_size": 64,
    "token_size": 6,
    "perceptual": {"weight": 1.0, "net": "squeeze", "weights": "random"},
    "entropy_weight": 0.1,
    "adversarial": {"kind": "patchgan", "start": 2, "width": 8, "num_layers": 1},
}
SELFBOOTTOK_TINY = {
    "name": "selfboottok",
    "size": "tiny",
    "patch_size": 8,
    "num_latent_tokens": 8,
    "token_size": 8,
    "codebook_size": 32,
    "local2d_size": "tiny",
    "perceptual": {"weight": 1.0, "net": "squeeze", "weights": "random"},
    "adversarial": {"kind": "stylegan", "start": 2, "width": 8},
    "align_global": {
        "init": "dinov2",
        "stand_in": {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2},
    },
    "align_local": {
        "init": "dinov2",
        "stand_in": {"img_size": 32, "patch_size": 8, "embed_dim": 24, "depth": 1, "num_heads": 2},
    },
    "latent_2d": {"tokenizer": "vqgan", "size": "tiny", "bottleneck": "kl", "embed_dim": 4},
}
SIT_TINY = {"name": "sit", "size": "tiny"}
SMOKE_SETTINGS = {"image_size": 32, "warmup": 2, "iters": 2, "min_time": 0.0, "num_classes": 10}


def _smoke(compile: bool) -> list[SuiteEntry]:
    on = {"compile": compile, **SMOKE_SETTINGS}
    tiny8, tiny16 = TokenSpec("continuous", (8,), dim=4), TokenSpec("continuous", (16,), dim=4)
    return [
        SuiteEntry("TiTok-tiny", "tokenizer", TITOK_TINY, ("train_step",), {"batch_size": 2, **on}, 0.999),
        SuiteEntry("SiT-tiny", "generator", SIT_TINY, ("train_step",), {"batch_size": 4, **on}, 0.999, tiny8, "8 x 4"),
        SuiteEntry(
            "SiT-tiny", "generator", SIT_TINY, ("train_step",), {"batch_size": 2, **on}, 0.999, tiny16, "16 x 4"
        ),
        SuiteEntry(
            "SiT-tiny",
            "generator",
            SIT_TINY,
            ("sample",),
            {"batch_size": 2, "steps": 4, "cfg_scale": 1.75, **on},
            tokens=tiny8,
            tokens_of="8 x 4",
            sampling={"sampler": "sde"},
        ),
        SuiteEntry("SelfBootTok-tiny", "tokenizer", SELFBOOTTOK_TINY, ("train_step",), {"batch_size": 2, **on}, 0.999),
    ]


SMOKE = [
    *_smoke(compile=False),
    SuiteEntry("TiTok-tiny", "tokenizer", TITOK_TINY, ("rfid",), {"batch_size": 4, "rfid_images": 8, **SMOKE_SETTINGS}),
    *_smoke(compile=True),
]

SUITES = {"paper": PAPER, "smoke": SMOKE}
# Settings of the whole run that a suite fills in where the command line left them unset (None / False)
SUITE_SETTINGS: dict[str, dict[str, Any]] = {"paper": {"bf16": True, "time_budget": 400.0}, "smoke": {}}

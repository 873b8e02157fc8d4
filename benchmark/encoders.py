"""The registered pretrained encoders (MAE, CLIP, DINO, DINOv2, Depth-Anything-V2, I-JEPA, SigLIP,
SigLIP 2): initialisations for a tokenizer's ViT encoder and frozen alignment teachers.

Each entry names its library backend (benchmark/encoder_backends.py), its model id per size and its
preprocessing. ``tokenizer.encoder: {init: dinov2, size: B}`` initialises a tokenizer's encoder
(:func:`initialize_encoder`, through benchmark/weight_transfer.py); ``align: {init: dinov2}`` and the
like name a frozen teacher. Both option mappings are checked at plan time (:data:`EncoderOptions`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from torch import Tensor, nn

from benchmark.encoder_backends import (
    SIGLIP_MEAN,
    SIGLIP_STD,
    OpenClipEncoder,
    PretrainedEncoder,
    TimmEncoder,
    TransformersEncoder,
    Variant,
)
from benchmark.errors import ConfigError
from benchmark.options import check_options, nested
from benchmark.pretraining_objectives import PretrainOptions
from benchmark.registry import ENCODERS, register_encoder
from benchmark.weight_transfer import LoadReport, Row, apply_source


@register_encoder("none")
class NoEncoder:
    """Random initialisation: the tokenizer's own init, no teacher."""

    def describe(self) -> str:
        return "none (random init)"

    def teacher_features(self, images: Tensor) -> Tensor:
        raise ConfigError("tokenizer.encoder.init: 'none' has no features to align to; choose a pretrained encoder")


@register_encoder("mae")
class MAE(TimmEncoder):
    """MAE (He et al. 2022) ViT-B/L/H pretrained on ImageNet-1k, from timm."""

    pretrain_objective = "mae"

    variants = {
        "B": Variant("vit_base_patch16_224.mae", 16, 768, 12, 12, 224),
        "L": Variant("vit_large_patch16_224.mae", 16, 1024, 24, 16, 224),
        "H": Variant("vit_huge_patch14_224.mae", 14, 1280, 32, 16, 224),
    }


@register_encoder("dino")
class DINO(TimmEncoder):
    """DINO (Caron et al. 2021) ViT-S/B (patch 16, or 8 for S8 / B8), from timm."""

    pretrain_objective = "dino"

    variants = {
        "S": Variant("vit_small_patch16_224.dino", 16, 384, 12, 6, 224),
        "B": Variant("vit_base_patch16_224.dino", 16, 768, 12, 12, 224),
        "S8": Variant("vit_small_patch8_224.dino", 8, 384, 12, 6, 224),
        "B8": Variant("vit_base_patch8_224.dino", 8, 768, 12, 12, 224),
    }


@register_encoder("dinov2")
class DINOv2(TimmEncoder):
    """DINOv2 (Oquab et al. 2024) ViT-S/B/L/g, patch 14, optionally with 4 registers, from timm.

    An offline stand-in is pretrained with DINO's image-level objective (DINOv2's iBOT and KoLeo terms
    are not implemented)."""

    pretrain_objective = "dino"

    variants = {
        "S": Variant("vit_small_patch14_dinov2.lvd142m", 14, 384, 12, 6, 518),
        "B": Variant("vit_base_patch14_dinov2.lvd142m", 14, 768, 12, 12, 518),
        "L": Variant("vit_large_patch14_dinov2.lvd142m", 14, 1024, 24, 16, 518),
        "g": Variant("vit_giant_patch14_dinov2.lvd142m", 14, 1536, 40, 24, 518),
    }

    def __init__(
        self,
        *,
        size: str | None = None,
        layer: int | None = None,
        weights: str | None = None,
        model_id: str | None = None,
        strict: bool = True,
        registers: bool = False,
        stand_in: dict | None = None,
        pretrain: PretrainOptions | None = None,
    ) -> None:
        super().__init__(
            size=size,
            layer=layer,
            weights=weights,
            model_id=model_id,
            strict=strict,
            stand_in=stand_in,
            pretrain=pretrain,
        )
        self.registers = registers
        if registers and model_id is None:
            self.model_id = self.variant.model_id.replace("_dinov2", "_reg4_dinov2")


@register_encoder("clip")
class CLIP(OpenClipEncoder):
    """OpenAI CLIP (Radford et al. 2021) image tower ViT-B/16, ViT-L/14, from open_clip (QuickGELU)."""

    quick_gelu = True
    pretrain_objective = "clip"  # its contrastive image-text loss, the class names as captions
    variants = {
        "B": Variant("ViT-B-16", 16, 768, 12, 12, 224, tag="openai"),
        "L": Variant("ViT-L-14", 14, 1024, 24, 16, 224, tag="openai"),
    }


@register_encoder("depth_anything_v2")
class DepthAnythingV2(TransformersEncoder):
    """Depth-Anything-V2 (Yang et al. 2024) DINOv2 backbone ViT-S/B/L, from transformers."""

    model_class, trunk = "DepthAnythingForDepthEstimation", "backbone"
    pretrain_objective = "depth"  # its relative-depth loss, on the built-in scenes' depth maps
    variants = {
        "S": Variant("depth-anything/Depth-Anything-V2-Small-hf", 14, 384, 12, 6, 518),
        "B": Variant("depth-anything/Depth-Anything-V2-Base-hf", 14, 768, 12, 12, 518),
        "L": Variant("depth-anything/Depth-Anything-V2-Large-hf", 14, 1024, 24, 16, 518),
    }
    reassemble_factors: ClassVar[tuple[float, ...]] = (4, 2, 1, 0.5)  # DPT's, one per fused feature map

    def stand_in_config(self, overrides: dict) -> Any:
        """A Depth-Anything config around a ``Dinov2Config(**overrides)`` backbone, its neck sized to fit.

        The backbone hands the neck one token map per output stage (default: the last block of each of
        min(4, depth) equal chunks, [3, 6, 9, 12] for 12 blocks as in ViT-S/B); the neck needs as many
        reassemble factors (DPT's coarsest ones) and widths (the backbone's width halved per finer map,
        ViT-S/B's 48, 96, 192, 384), a reassemble input width equal to the backbone's and its patch size.
        """
        import transformers

        backbone = transformers.Dinov2Config(**{"reshape_hidden_states": False, **overrides})
        if "out_indices" not in overrides and "out_features" not in overrides:
            depth = backbone.num_hidden_layers
            maps = min(len(self.reassemble_factors), depth)
            backbone.out_indices = [depth * (i + 1) // maps for i in range(maps)]
        maps, width = len(backbone.out_indices), backbone.hidden_size
        if maps > len(self.reassemble_factors):
            raise ConfigError(
                f"tokenizer.encoder.stand_in.out_indices: Depth-Anything's neck fuses at most "
                f"{len(self.reassemble_factors)} feature maps, got {backbone.out_indices}"
            )
        return transformers.DepthAnythingConfig(
            backbone_config=backbone,
            patch_size=backbone.patch_size,
            reassemble_hidden_size=width,
            reassemble_factors=list(self.reassemble_factors[-maps:]),
            neck_hidden_sizes=[max(1, width >> (maps - 1 - i)) for i in range(maps)],
        )


@register_encoder("ijepa")
class IJEPA(TransformersEncoder):
    """I-JEPA (Assran et al. 2023) ViT-H/14 (IN-1k or IN-22k), ViT-H/16-448, ViT-g/16, from transformers."""

    model_class, default_size = "IJepaModel", "H"
    pretrain_objective = "ijepa"
    variants = {
        "H": Variant("facebook/ijepa_vith14_1k", 14, 1280, 32, 16, 224),
        "H22k": Variant("facebook/ijepa_vith14_22k", 14, 1280, 32, 16, 224),
        "H16": Variant("facebook/ijepa_vith16_1k", 16, 1280, 32, 16, 448),
        "g": Variant("facebook/ijepa_vitg16_22k", 16, 1408, 40, 16, 224),
    }


@register_encoder("siglip")
class SigLIP(TimmEncoder):
    """SigLIP (Zhai et al. 2023) image tower ViT-B/16, ViT-L/16-256, So400m/14, from timm."""

    mean, std = SIGLIP_MEAN, SIGLIP_STD
    pretrain_objective = "siglip"  # its sigmoid image-text loss, the class names as captions
    variants = {
        "B": Variant("vit_base_patch16_siglip_224.webli", 16, 768, 12, 12, 224),
        "L": Variant("vit_large_patch16_siglip_256.webli", 16, 1024, 24, 16, 256),
        "So400m": Variant("vit_so400m_patch14_siglip_224.webli", 14, 1152, 27, 16, 224),
    }


@register_encoder("siglip2")
class SigLIP2(TransformersEncoder):
    """SigLIP 2 (Tschannen et al. 2025) fixed-resolution image tower B/16, L/16-256, So400m/14, from transformers."""

    mean, std = SIGLIP_MEAN, SIGLIP_STD
    pretrain_missing = "SigLIP 2 adds decoder and self-distillation losses; init siglip pretrains a SigLIP stand-in"
    model_class = "SiglipVisionModel"
    variants = {
        "B": Variant("google/siglip2-base-patch16-224", 16, 768, 12, 12, 224),
        "L": Variant("google/siglip2-large-patch16-256", 16, 1024, 24, 16, 256),
        "So400m": Variant("google/siglip2-so400m-patch14-224", 14, 1152, 27, 16, 224),
    }


# ---------------------------------------------------------------------------------------------
# Building entries from config and initialising a tokenizer encoder


def build_encoder(spec: Mapping[str, Any], where: str = "tokenizer.encoder") -> PretrainedEncoder | NoEncoder:
    """The entry for a config mapping ``{init: name, size: ..., ...}``; keys and types are checked."""
    if not isinstance(spec, Mapping) or "init" not in spec:
        raise ConfigError(
            f"{where}: expected a mapping with 'init' (one of {', '.join(ENCODERS.names())}), got {spec!r}"
        )
    name = spec["init"]
    ENCODERS.get(name, where=f"{where}.init")
    kwargs = {k: v for k, v in spec.items() if k != "init"}
    check_options(kwargs, ENCODERS.params(name), where, f"encoder '{name}'")
    entry = ENCODERS.build(name, **{k: v for k, v in kwargs.items() if k != "pretrain"})
    if kwargs.get("pretrain") is not None:
        entry.set_pretrain(kwargs["pretrain"], where)
    return entry


def initialize_encoder(encoder: nn.Module, spec: Mapping[str, Any]) -> LoadReport:
    """Initialise a TiTok-style encoder from ``spec`` (``{init: name, size, weights, strict, ...}``)."""
    entry = build_encoder(spec)
    if isinstance(entry, NoEncoder):
        report = LoadReport("none", entry.describe())
        report.rows = [Row("new", n, [], "random init") for n, _ in encoder.named_parameters()]
        return report
    return apply_source(encoder, entry.source(), entry.registry_name, entry.strict)


def check_encoder(spec: Any, where: str) -> None:
    """Plan-time check of an encoder mapping: a registered ``init`` and that entry's options (nothing loaded)."""
    build_encoder(spec, where=where)


EncoderOptions = nested(check_encoder)

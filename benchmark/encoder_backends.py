"""The library backends of the pretrained encoders: timm, open_clip and transformers.

A :class:`PretrainedEncoder` names a model id per size (:class:`Variant`) and its preprocessing; it
loads the library's model (from the hub cache, a local checkpoint or folder given as ``weights``, or a
random-weight ``stand_in`` of the same architecture), maps it into the canonical
:class:`~benchmark.weight_transfer.SourceViT`, and gives frozen patch features for REPA-style losses
(:meth:`PretrainedEncoder.teacher_features`). The registered entries are in benchmark/encoders.py.

Weights come from the library's hub download and cache by default; ``weights: /path`` loads a local
checkpoint (timm: a ``save_for_hf`` folder or a checkpoint file; open_clip: a checkpoint file or a
``local-dir`` folder; transformers: a ``save_pretrained`` folder). When they cannot be found the error
is a :class:`~benchmark.errors.WeightsError` naming the model id and how to fetch it ahead of time.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.errors import ConfigError, Tok1dError, WeightsError
from benchmark.layers import hf_layers
from benchmark.pretraining_objectives import OBJECTIVES, PretrainOptions, split_options
from benchmark.weight_transfer import (
    SourceViT,
    activation_name,
    finish_source,
    map_blocks,
    new_source,
    put_affine,
)
from benchmark.weights import find_weights

# Input normalisation of the libraries' models (timm.data's constants, written out so that registering
# the encoders does not import timm)
IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)
FETCH_HINT = (
    "Fetch them ahead of time on a machine with network access with "
    "`python -m benchmark.fetch_weights studies/<study>.yaml` (fills the library's cache), "
    "or set tokenizer.encoder.weights: /path/to/checkpoint"
)


@dataclass(frozen=True)
class Variant:
    """One size of an encoder: library model id (and open_clip pretrained tag) plus its ViT shape."""

    model_id: str
    patch_size: int
    width: int
    depth: int
    heads: int
    resolution: int
    tag: str | None = None


class PretrainedEncoder(ABC):
    """Base of the encoder entries: size / weights / layer options, model loading and teacher features.

    ``size`` picks a variant (``None``: the entry's default, ViT-B where it exists).
    ``layer`` selects the teacher's block (1-based; ``None``: the last block, after the final norm).
    ``model_id`` replaces the size's id by another of the same library. ``strict`` refuses a width,
    depth or head-count mismatch with the target; otherwise what fits is copied and the rest reported.
    ``stand_in`` builds the library's architecture with random weights, shrunk by these constructor
    overrides (timm ``create_model`` kwargs, open_clip ``vision_cfg`` fields, a transformers config's
    fields; Depth-Anything: its DINOv2 backbone config's), instead of loading weights: the smoke-scale
    alignment teacher or initialisation, through the same mapping and feature-extraction path.
    """

    library: ClassVar[str]
    variants: ClassVar[dict[str, Variant]]
    mean: ClassVar[tuple[float, float, float]] = IMAGENET_DEFAULT_MEAN
    std: ClassVar[tuple[float, float, float]] = IMAGENET_DEFAULT_STD
    default_size: ClassVar[str] = "B"
    registry_name: ClassVar[str]
    # the self-supervised objective the family was pretrained with, for an offline stand-in
    # (benchmark/encoder_pretraining.py); None where it needs what the built-in data lacks
    pretrain_objective: ClassVar[str | None] = None
    pretrain_missing: ClassVar[str] = "its objective is not implemented"

    def __init__(
        self,
        *,
        size: str | None = None,
        layer: int | None = None,
        weights: str | None = None,
        model_id: str | None = None,
        strict: bool = True,
        stand_in: dict | None = None,
        pretrain: PretrainOptions | None = None,
    ) -> None:
        size = size or self.default_size
        if size not in self.variants:
            raise ConfigError(
                f"tokenizer.encoder.size: '{size}' is not a size of encoder "
                f"'{self.registry_name}'; choose from {', '.join(self.variants)}"
            )
        self.size, self.layer, self.strict = size, layer, strict
        self.variant = self.variants[size]
        self.model_id = model_id or self.variant.model_id
        self.weights = weights
        self.stand_in, self.pretrain = stand_in, None
        if pretrain is not None:
            self.set_pretrain(pretrain)
        self._model: nn.Module | None = None

    def set_pretrain(self, pretrain: dict, encoder: str = "tokenizer.encoder") -> None:
        """``pretrain`` trains a stand-in (published weights are pretrained already) with the objective
        this family was pretrained with, on the library model that objective trains (a timm ViT, I-JEPA's
        transformers model: benchmark/encoder_pretraining.py); ``encoder``: where the config names this
        encoder, for the error messages."""
        where = f"{encoder}.pretrain"
        if self.stand_in is None:
            raise ConfigError(
                f"{where}: pretrains a random-weight stand-in; give this encoder a stand_in, or drop pretrain "
                f"to use {self.registry_name}'s published weights"
            )
        if self.pretrain_objective is None or self.library != OBJECTIVES[self.pretrain_objective].library:
            raise ConfigError(
                f"{where}: encoder '{self.registry_name}' has no offline pretraining objective "
                f"({self.pretrain_missing}); pretrain mae, dino, dinov2, ijepa, siglip, clip or depth_anything_v2 stand-ins"
            )
        wanted = pretrain.get("objective", self.pretrain_objective)
        if wanted != self.pretrain_objective:
            raise ConfigError(
                f"{where}.objective: '{wanted}' is not how {self.registry_name} was pretrained "
                f"('{self.pretrain_objective}')"
            )
        split_options(pretrain, self.pretrain_objective, where)
        self.pretrain = pretrain

    def describe(self) -> str:
        tag = f" pretrained={self.variant.tag}" if self.variant.tag and not self.weights else ""
        where = f" from {self.weights}" if self.weights else ""
        if self.stand_in is not None:
            kind = f"stand-in pretrained ({self.pretrain_objective})" if self.pretrain else "random-weight stand-in"
            tag, where = "", f" {kind} {self.stand_in}{where}"
        return f"{self.registry_name} ViT-{self.size} ({self.library} {self.model_id}{tag}){where}"

    # -- loading -----------------------------------------------------------------------------

    def model(self) -> nn.Module:
        """The pretrained vision trunk, loaded once, in eval mode with gradients off. A stand-in that its
        offline pretraining has not given weights yet is refused, except on the meta device (plan-time
        shapes and costs, where the architecture is all there is)."""
        if self._model is None:
            shapes_only = torch.empty(0).device.type == "meta"  # under `with torch.device("meta")`
            if self.stand_in is not None and self.pretrain is not None and self.weights is None and not shapes_only:
                raise ConfigError(
                    f"{self.describe()}: its offline pretraining (a pretrain_* stage) has not given it weights"
                )
            stand_in = self.stand_in is not None and self.weights is None
            model = self._build_stand_in() if stand_in else self._load_weights()
            self._model = model.eval().requires_grad_(False)
        return self._model

    def _load_weights(self) -> nn.Module:
        find_weights(self.describe(), self.weights, "tokenizer.encoder.weights")  # a local file must exist
        try:
            return self._load()
        except Tok1dError:
            raise
        except (OSError, RuntimeError, ValueError, _hub_error()) as exc:
            raise WeightsError(
                f"cannot load the weights of {self.describe()}: {type(exc).__name__}: {_first_line(exc)}", FETCH_HINT
            ) from None

    def _build_stand_in(self) -> nn.Module:
        from huggingface_hub.errors import StrictDataclassError

        try:
            return self._stand_in(dict(self.stand_in))
        except Tok1dError:
            raise
        except (TypeError, ValueError, StrictDataclassError) as exc:
            raise ConfigError(
                f"tokenizer.encoder.stand_in: cannot build {self.describe()}: {type(exc).__name__}: {_first_line(exc)}"
            ) from None

    @abstractmethod
    def _load(self) -> nn.Module:
        """Build the library model from the hub / cache or the local weights."""

    @abstractmethod
    def _stand_in(self, overrides: dict) -> nn.Module:
        """Build the library's architecture for ``model_id`` with random weights, shrunk by ``overrides``."""

    @abstractmethod
    def source(self) -> SourceViT:
        """The loaded trunk in canonical naming."""

    # -- teacher features --------------------------------------------------------------------

    @abstractmethod
    def resolution(self) -> int:
        """The input resolution the loaded model was built for."""

    @abstractmethod
    def _hidden(self, x: Tensor, block: int, final_norm: bool) -> tuple[Tensor, Tensor | None]:
        """Patch tokens (B, N, D) after ``block`` (0-based), prefix tokens removed, and the class token
        (B, D) at the same depth (None for a model without one)."""

    @torch.no_grad()
    def teacher_features(self, images: Tensor, class_token: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Frozen patch features (B, N, D), N = (resolution / patch)^2, for images in [0, 1] (B, 3, H, W);
        with ``class_token``, also the class token (B, D) of the same pass (REG's entangled token).

        Images are resized (bicubic, antialiased) to the model's input resolution and normalised with
        its mean / std; the model runs in eval mode without gradient. On meta images (a shapes-only
        model for plan-time estimates) the features are meta tensors of the right shape: nothing is
        loaded, and the teacher's own compute is not counted.
        """
        if images.device.type == "meta" and self.stand_in is None:
            v, b = self.variant, images.shape[0]
            patches = torch.zeros(b, (v.resolution // v.patch_size) ** 2, self.feature_dim(), device="meta")
            return (patches, torch.zeros(b, self.feature_dim(), device="meta")) if class_token else patches
        model = self.model()
        ref = next(model.parameters())
        if ref.device != images.device:
            model.to(images.device)
            ref = next(model.parameters())
        depth = self.source_depth()
        block = depth - 1 if self.layer is None else self.layer - 1
        if not 0 <= block < depth:
            raise ConfigError(f"tokenizer.encoder.layer: {self.layer} is outside 1..{depth} for {self.describe()}")
        res = self.resolution()
        x = images.to(ref.dtype)
        if x.shape[-2:] != (res, res):
            x = F.interpolate(x, size=(res, res), mode="bicubic", antialias=True, align_corners=False)
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        patches, cls = self._hidden((x - mean) / std, block, final_norm=self.layer is None)
        if not class_token:
            return patches
        if cls is None:
            raise ConfigError(
                f"{self.describe()} has no class token (needed by generator.reg); choose a teacher "
                "with one, e.g. dinov2"
            )
        return patches, cls

    @abstractmethod
    def source_depth(self) -> int:
        """Number of transformer blocks of the loaded trunk."""

    def feature_dim(self) -> int:
        """Width D of :meth:`teacher_features`: the variant's, without loading any weights, for the
        entry's own model id; otherwise (a stand-in, another model id) from one probe."""
        if self.stand_in is None and self.model_id == self.variant.model_id:
            return self.variant.width
        res = self.resolution()
        return self.teacher_features(torch.zeros(1, 3, res, res)).shape[-1]  # type: ignore[union-attr]


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:300].rstrip(". ")


def _hub_error() -> type[Exception]:
    from huggingface_hub.errors import HfHubHTTPError

    return HfHubHTTPError


class TimmEncoder(PretrainedEncoder):
    """An encoder held by timm (``timm.create_model``; local: ``save_for_hf`` folder or checkpoint file)."""

    library = "timm"

    def _load(self) -> nn.Module:
        import timm

        if self.weights is None:
            return timm.create_model(self.model_id, pretrained=True)
        path = Path(self.weights).expanduser()
        if path.is_dir():
            return timm.create_model(f"local-dir:{path}", pretrained=True)
        return timm.create_model(self.model_id, pretrained=True, pretrained_cfg_overlay={"file": str(path)})

    def _stand_in(self, overrides: dict) -> nn.Module:
        import timm

        return timm.create_model(self.model_id, pretrained=False, **overrides)

    def source(self) -> SourceViT:
        m = self.model()
        b0 = m.blocks[0]
        out = new_source(
            self.describe(),
            m,
            tuple(m.patch_embed.grid_size),
            m.patch_embed.patch_size[0],
            b0.attn.num_heads,
            b0.norm1.eps,
            activation_name(b0.mlp.act),
        )
        put_affine(out, "patch_embed", m.patch_embed.proj, "patch_embed.proj")
        prefix = 0 if m.no_embed_class else m.num_prefix_tokens
        pos = m.pos_embed.detach()
        out.pos_patches, out.pos_sources = pos[:, prefix:].clone(), ["pos_embed"]
        if m.cls_token is not None:
            out.has_class_token = True
            out.params["class_embedding"] = m.cls_token.detach().clone()
            out.sources["class_embedding"] = ["cls_token"]
            if prefix:
                out.pos_class = pos[:, :1].clone()
        if isinstance(m.norm_pre, nn.LayerNorm):
            put_affine(out, "ln_pre", m.norm_pre, "norm_pre")
        map_blocks(out, m.blocks, "blocks")
        if isinstance(m.norm, nn.LayerNorm):
            put_affine(out, "ln_post", m.norm, "norm")
        return finish_source(out, {"reg_token": "register tokens: the target has no register slots"})

    def resolution(self) -> int:
        return self.model().patch_embed.img_size[0]

    def source_depth(self) -> int:
        return len(self.model().blocks)

    def _hidden(self, x: Tensor, block: int, final_norm: bool) -> tuple[Tensor, Tensor | None]:
        model = self.model()
        prefixed = model.num_prefix_tokens > 0  # timm returns (patches, prefix) pairs only when there are some
        out = model.forward_intermediates(
            x,
            indices=[block],
            norm=final_norm,
            output_fmt="NLC",
            intermediates_only=True,
            return_prefix_tokens=prefixed,
        )[0]
        if not prefixed:
            return out, None
        patches, prefix = out
        return patches, (prefix[:, 0] if model.cls_token is not None else None)


TINY_TEXT_TOWER = {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}


class OpenClipEncoder(PretrainedEncoder):
    """An encoder held by open_clip (its image tower; local: checkpoint file or ``local-dir`` folder)."""

    library = "open_clip"
    mean, std = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    quick_gelu: ClassVar[bool] = False

    def _load(self) -> nn.Module:
        import open_clip

        path = Path(self.weights).expanduser() if self.weights else None
        if path is not None and path.is_dir():
            return open_clip.create_model(f"local-dir:{path}").visual
        pretrained = str(path) if path is not None else self.variant.tag
        return open_clip.create_model(
            self.model_id, pretrained=pretrained, force_quick_gelu=self.quick_gelu, require_pretrained=True
        ).visual

    def stand_in_config(self, overrides: Mapping[str, Any]) -> dict[str, Any]:
        """The open_clip model config of the stand-in: ``model_id``'s with ``overrides`` applied to its
        ``vision_cfg``, its text tower shrunk to :data:`TINY_TEXT_TOWER` (built with the CLIP model but
        never used as an encoder, so that the build stays fast)."""
        import open_clip

        cfg = open_clip.get_model_config(self.model_id)
        if cfg is None:
            raise ConfigError(
                f"tokenizer.encoder.model_id: open_clip has no model config '{self.model_id}' "
                f"to build a stand-in from; choose one of open_clip.list_models()"
            )
        known = [f.name for f in fields(open_clip.CLIPVisionCfg)]
        for key in overrides:
            if key not in known:
                raise ConfigError(
                    f"tokenizer.encoder.stand_in.{key}: not a field of open_clip's vision_cfg; "
                    f"fields: {', '.join(known)}"
                )
        return {
            **cfg,
            "vision_cfg": {**cfg["vision_cfg"], **overrides},
            "text_cfg": dict(TINY_TEXT_TOWER),
            **({"quick_gelu": True} if self.quick_gelu else {}),
        }

    def _stand_in(self, overrides: dict) -> nn.Module:
        """The image tower of :meth:`stand_in_config`'s CLIP model, on the default device (open_clip moves
        what it builds to ``device``: the meta device of a plan check stays there)."""
        import open_clip

        cfg = self.stand_in_config(overrides)
        previous = logging.root.manager.disable
        logging.disable(logging.WARNING)  # open_clip's root-logger warning that it has random weights: the point
        try:
            model = open_clip.create_model(
                self.model_id,
                pretrained=None,
                force_quick_gelu=self.quick_gelu,
                vision_cfg=cfg["vision_cfg"],
                text_cfg=cfg["text_cfg"],
                device=torch.get_default_device(),
            )
        finally:
            logging.disable(previous)
        return model.visual

    def source(self) -> SourceViT:
        v = self.model()
        b0 = v.transformer.resblocks[0]
        out = new_source(
            self.describe(),
            v,
            tuple(v.grid_size),
            v.patch_size[0],
            b0.attn.num_heads,
            b0.ln_1.eps,
            activation_name(b0.mlp.gelu),
        )
        put_affine(out, "patch_embed", v.conv1, "conv1")
        out.has_class_token = True
        out.params["class_embedding"] = v.class_embedding.detach().view(1, 1, -1).clone()
        out.sources["class_embedding"] = ["class_embedding"]
        pos = v.positional_embedding.detach().unsqueeze(0)
        out.pos_class, out.pos_patches = pos[:, :1].clone(), pos[:, 1:].clone()
        out.pos_sources = ["positional_embedding"]
        put_affine(out, "ln_pre", v.ln_pre, "ln_pre")
        map_blocks(out, v.transformer.resblocks, "transformer.resblocks")
        put_affine(out, "ln_post", v.ln_post, "ln_post")
        return finish_source(out, {"proj": "projection into the joint image-text space"})

    def resolution(self) -> int:
        return self.model().image_size[0]

    def source_depth(self) -> int:
        return len(self.model().transformer.resblocks)

    def _hidden(self, x: Tensor, block: int, final_norm: bool) -> tuple[Tensor, Tensor | None]:
        out = self.model().forward_intermediates(
            x,
            indices=[block],
            normalize_intermediates=final_norm,
            intermediates_only=True,
            output_fmt="NLC",
            output_extra_tokens=True,
        )
        prefix = out.get("image_intermediates_prefix")
        return out["image_intermediates"][0], (prefix[0][:, 0] if prefix else None)


class TransformersEncoder(PretrainedEncoder):
    """An encoder held by transformers (``from_pretrained`` of a hub id or a ``save_pretrained`` folder)."""

    library = "transformers"
    model_class: ClassVar[str]
    trunk: ClassVar[str | None] = None  # attribute holding the ViT inside the loaded model

    def _load(self) -> nn.Module:
        import transformers

        model = getattr(transformers, self.model_class).from_pretrained(
            str(Path(self.weights).expanduser()) if self.weights else self.model_id
        )
        return getattr(model, self.trunk) if self.trunk else model

    def stand_in_config(self, overrides: dict) -> Any:
        """The transformers config of the random-weight stand-in: the model class's config with ``overrides``."""
        import transformers

        return getattr(transformers, self.model_class).config_class(**overrides)

    def _stand_in(self, overrides: dict) -> nn.Module:
        import transformers

        model = getattr(transformers, self.model_class)(self.stand_in_config(overrides))
        return getattr(model, self.trunk) if self.trunk else model

    def _layers(self) -> nn.ModuleList:
        return hf_layers(self.model())

    def _final_norm(self) -> tuple[str, nn.LayerNorm]:
        m = self.model()
        return next((a, getattr(m, a)) for a in ("layernorm", "post_layernorm") if hasattr(m, a))

    def source(self) -> SourceViT:
        m, cfg = self.model(), self.model().config
        emb = m.embeddings
        conv_name, conv = next((n, c) for n, c in emb.named_modules() if isinstance(c, nn.Conv2d))
        grid = cfg.image_size // cfg.patch_size
        out = new_source(
            self.describe(),
            m,
            (grid, grid),
            cfg.patch_size,
            cfg.num_attention_heads,
            cfg.layer_norm_eps,
            activation_name(cfg.hidden_act),
        )
        put_affine(out, "patch_embed", conv, f"embeddings.{conv_name}")
        if isinstance(getattr(emb, "position_embedding", None), nn.Embedding):
            pos, pos_name = emb.position_embedding.weight.detach().unsqueeze(0), "embeddings.position_embedding.weight"
        else:
            pos, pos_name = emb.position_embeddings.detach(), "embeddings.position_embeddings"
        cls = getattr(emb, "cls_token", None)
        prefix = pos.shape[1] - grid * grid
        out.pos_patches, out.pos_sources = pos[:, prefix:].clone(), [pos_name]
        if cls is not None:
            out.has_class_token = True
            out.params["class_embedding"] = cls.detach().clone()
            out.sources["class_embedding"] = ["embeddings.cls_token"]
            if prefix:
                out.pos_class = pos[:, :1].clone()
        layers = self._layers()
        layers_prefix = next(n for n, mod in m.named_modules() if mod is layers)
        map_blocks(out, layers, layers_prefix)
        norm_name, norm = self._final_norm()
        put_affine(out, "ln_post", norm, norm_name)
        return finish_source(
            out,
            {
                "embeddings.mask_token": "mask token (masked-image modelling only)",
                "embeddings.register_tokens": "register tokens: the target has no register slots",
                "head.": "attention-pooling head",
            },
        )

    def resolution(self) -> int:
        return self.model().config.image_size

    def source_depth(self) -> int:
        return len(self._layers())

    def _hidden(self, x: Tensor, block: int, final_norm: bool) -> tuple[Tensor, Tensor | None]:
        m, grid = self.model(), self.resolution() // self.model().config.patch_size
        hidden = m(pixel_values=x, output_hidden_states=True).hidden_states[block + 1]
        if final_norm:
            hidden = self._final_norm()[1](hidden)
        prefix = hidden.shape[1] - grid * grid
        has_cls = getattr(m.embeddings, "cls_token", None) is not None and prefix > 0
        return hidden[:, prefix:], (hidden[:, 0] if has_cls else None)

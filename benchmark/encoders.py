"""Pretrained vision encoders: initialisations for a tokenizer's ViT encoder and frozen alignment teachers.

Each registry entry names the library that holds the model (timm, open_clip or transformers), its model
id per size and its preprocessing. An entry can

(a) load the pretrained ViT and map it into one canonical form, :class:`SourceViT`, whose tensors carry
    the parameter names of a TiTok-style encoder (``patch_embed``, ``class_embedding``,
    ``positional_embedding``, ``ln_pre``, ``transformer.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.0,mlp.2}``,
    ``ln_post``); :func:`initialize_encoder` then copies it into a tokenizer's encoder, adapting patch
    size (``timm.layers.resample_patch_embed``) and grid (``timm.layers.resample_abs_pos_embed``), and
    returns a :class:`LoadReport` that accounts for every source and every target parameter;
(b) give frozen patch features at a chosen block for REPA-style losses (:meth:`PretrainedEncoder.teacher_features`).

Two exact rewrites keep the copied blocks the same function as the source's:
separate q / k / v projections are concatenated into the fused ``qkv``, and LayerScale
(x + gamma * f(x), DINOv2) is folded into the output projection (gamma * (W x + b) = (gamma W) x + gamma b).
The target's LayerNorm eps and MLP activation are set to the source's (:func:`match_architecture`);
both are recorded in the report because they are not part of a state dict.

Weights come from the library's hub download and cache by default; ``weights: /path`` loads a local
checkpoint (timm: a ``save_for_hf`` folder or a checkpoint file; open_clip: a checkpoint file or a
``local-dir`` folder; transformers: a ``save_pretrained`` folder). When they cannot be found the error
is a :class:`WeightsError` naming the model id and how to fetch it ahead of time.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Mapping

import torch
import torch.nn.functional as F
from timm.data import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
)
from timm.layers import resample_abs_pos_embed, resample_patch_embed
from torch import Tensor, nn

from benchmark.errors import ConfigError, Tok1dError
from benchmark.registry import ENCODERS, register_encoder

SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)
FETCH_HINT = ("Fetch them ahead of time on a machine with network access with "
              "`python -m benchmark.fetch_weights studies/<study>.yaml` (fills the library's cache), "
              "or set tokenizer.encoder.weights: /path/to/checkpoint")


class WeightsError(Tok1dError, OSError):
    """Pretrained weights are missing (offline, unknown id, bad path) or do not fit the mapping.

    ``reason`` is the message without the how-to-fetch ``hint``.
    """

    def __init__(self, reason: str, hint: str = "") -> None:
        super().__init__(f"{reason}. {hint}" if hint else reason)
        self.reason = reason


# ---------------------------------------------------------------------------------------------
# Canonical form and load report


@dataclass
class SourceViT:
    """A pretrained ViT in canonical (TiTok encoder) naming, before adaptation to a target.

    ``params`` excludes the position embedding, which is kept split into its class row and its patch
    grid so that it can be interpolated. ``sources`` names the source parameters behind each canonical
    tensor, ``how`` says how a tensor was derived when it is not a plain copy, and ``unused`` names
    every source parameter that no canonical tensor uses, with the reason.
    """

    name: str
    params: dict[str, Tensor]
    sources: dict[str, list[str]]
    how: dict[str, str]
    unused: dict[str, str]
    all_params: list[str]
    pos_patches: Tensor
    pos_sources: list[str]
    pos_class: Tensor | None
    has_class_token: bool
    grid: tuple[int, int]
    patch_size: int
    depth: int
    heads: int
    eps: float
    activation: str


@dataclass
class Row:
    """One line of a load report: a target parameter (or an unused source one) and where it came from."""

    status: str  # copied | adapted | new | ignored
    target: str
    sources: list[str]
    detail: str = ""


@dataclass
class LoadReport:
    """What an initialisation did to each parameter. JSON-serialisable via :meth:`to_dict`."""

    encoder: str
    source: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    norm_eps: float | None = None
    activation: str | None = None

    def names(self, status: str) -> list[str]:
        """Target parameters (or, for ``ignored``, source parameters) with this status."""
        return [r.target or r.sources[0] for r in self.rows if r.status == status]

    def counts(self) -> dict[str, int]:
        return {s: len(self.names(s)) for s in ("copied", "adapted", "new", "ignored")}

    def accounted_sources(self) -> set[str]:
        return {s for r in self.rows for s in r.sources}

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "counts": self.counts()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def table(self) -> str:
        """A fixed-width table: one line per parameter, then the notes and the counts."""
        head = ("status", "target", "source", "detail")
        lines = [(r.status, r.target or "-", ", ".join(r.sources) or "-", r.detail) for r in self.rows]
        widths = [max(len(x[i]) for x in [head, *lines]) for i in range(3)]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths) + "  {}"
        out = [f"encoder init: {self.encoder} <- {self.source}", fmt.format(*head)]
        out += [fmt.format(*x).rstrip() for x in lines]
        out += [f"note: {n}" for n in self.notes]
        out.append("  ".join(f"{k}: {v}" for k, v in self.counts().items()))
        return "\n".join(out)

    def __str__(self) -> str:
        return self.table()


# ---------------------------------------------------------------------------------------------
# Activations and LayerNorm eps


ACTIVATIONS: dict[str, str] = {
    "gelu": "gelu", "geluactivation": "gelu",
    "gelu_tanh": "gelu_tanh", "gelutanh": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
    "pytorchgelutanh": "gelu_tanh", "gelu_new": "gelu_tanh", "newgeluactivation": "gelu_tanh",
    "quick_gelu": "quick_gelu", "quickgelu": "quick_gelu", "quickgeluactivation": "quick_gelu",
}


def activation_name(act: nn.Module | str) -> str:
    """The canonical name (gelu, gelu_tanh, quick_gelu) of a library's MLP activation module or name."""
    if isinstance(act, nn.GELU):
        return "gelu_tanh" if act.approximate == "tanh" else "gelu"
    key = act if isinstance(act, str) else type(act).__name__
    if key.lower() not in ACTIVATIONS:
        raise WeightsError(f"MLP activation {key!r} has no counterpart in the tokenizer's blocks; "
                           f"supported: {', '.join(sorted(set(ACTIVATIONS.values())))}")
    return ACTIVATIONS[key.lower()]


def make_activation(name: str) -> nn.Module:
    from timm.layers import QuickGELU

    return {"gelu": nn.GELU, "gelu_tanh": lambda: nn.GELU(approximate="tanh"), "quick_gelu": QuickGELU}[name]()


def match_architecture(encoder: nn.Module, eps: float | None, activation: str | None,
                       blocks: int | None = None) -> None:
    """Set the LayerNorm eps and MLP activation of an encoder to a source's (not part of a state dict).

    Call it again with the values of the :class:`LoadReport` when rebuilding a tokenizer from config.
    """
    if eps is not None:
        for module in encoder.modules():
            if isinstance(module, nn.LayerNorm):
                module.eps = eps
    if activation is not None:
        for block in list(encoder.transformer)[:blocks]:
            block.mlp[1] = make_activation(activation)


# ---------------------------------------------------------------------------------------------
# Mapping one transformer block (every library) into the canonical names


NORM1 = ("norm1", "ln_1", "layernorm_before", "layer_norm1")
NORM2 = ("norm2", "ln_2", "layernorm_after", "layer_norm2")
QKV = ("attn.qkv", "attn.in_proj")
QUERY, KEY, VALUE = (tuple(f"{a}.{p}_proj" for a in ("attention", "self_attn")) for p in "qkv")
PROJ = ("attn.proj", "attn.out_proj", "attention.o_proj", "self_attn.out_proj")
FC1 = ("mlp.fc1", "mlp.c_fc")
FC2 = ("mlp.fc2", "mlp.c_proj")
SCALE1 = ("ls1.gamma", "ls_1.gamma", "layer_scale1.lambda1")
SCALE2 = ("ls2.gamma", "ls_2.gamma", "layer_scale2.lambda1")


class _Taker:
    """Takes named parameters out of a module's parameter dict, remembering which were used."""

    def __init__(self, module: nn.Module, prefix: str) -> None:
        self.params = {k: v.detach() for k, v in module.named_parameters()}
        self.prefix, self.used = prefix, set()

    def affine(self, candidates: tuple[str, ...]) -> tuple[Tensor, Tensor | None, list[str]] | None:
        """(weight, bias or None, source names) of the first candidate present (``x.weight`` or ``x_weight``)."""
        for c in candidates:
            for w, b in ((f"{c}.weight", f"{c}.bias"), (f"{c}_weight", f"{c}_bias")):
                if w in self.params:
                    names = [w] + ([b] if b in self.params else [])
                    self.used.update(names)
                    return self.params[w], self.params.get(b), [self.prefix + n for n in names]
        return None

    def tensor(self, candidates: tuple[str, ...]) -> tuple[Tensor, str] | None:
        for c in candidates:
            if c in self.params:
                self.used.add(c)
                return self.params[c], self.prefix + c
        return None

    def left(self) -> list[str]:
        return sorted(set(self.params) - self.used)


def _block(block: nn.Module, prefix: str, index: int, out: SourceViT) -> None:
    """Map one pre-norm ViT block into ``transformer.{index}.*`` of ``out``; unknown parameters raise."""
    take, dst = _Taker(block, prefix), f"transformer.{index}."

    def put(name: str, weight: Tensor, bias: Tensor | None, sources: list[str], how: str = "") -> None:
        if bias is None:
            bias = weight.new_zeros(weight.shape[0])
            how = "; ".join(x for x in (how, "source has no bias: zeros") if x)
        for suffix, other, t in (("weight", "bias", weight), ("bias", "weight", bias)):
            out.params[dst + name + "." + suffix] = t.clone()
            out.sources[dst + name + "." + suffix] = [s for s in sources if not s.endswith(other)]
            if how:
                out.how[dst + name + "." + suffix] = how

    def need(found: Any, what: str) -> Any:
        if found is None:
            raise WeightsError(f"{out.name}: block {index} ({type(block).__name__}) has no {what} under any "
                               f"known name; its parameters: {', '.join(take.params)}")
        return found

    for name, cands in (("norm1", NORM1), ("norm2", NORM2), ("mlp.0", FC1)):
        put(name, *need(take.affine(cands), name))
    fused = take.affine(QKV)
    if fused is not None:
        put("attn.qkv", *fused)
    else:
        parts = [need(take.affine(c), c[0]) for c in (QUERY, KEY, VALUE)]
        weight = torch.cat([p[0] for p in parts])
        biases = [p[1] if p[1] is not None else p[0].new_zeros(p[0].shape[0]) for p in parts]
        put("attn.qkv", weight, torch.cat(biases), [s for p in parts for s in p[2]], "q, k, v concatenated")
    for name, cands, scale_cands in (("attn.proj", PROJ, SCALE1), ("mlp.2", FC2, SCALE2)):
        weight, bias, sources = need(take.affine(cands), name)
        scale = take.tensor(scale_cands)
        if scale is None:
            put(name, weight, bias, sources)
        else:
            gamma, scale_name = scale
            bias = bias if bias is not None else weight.new_zeros(weight.shape[0])
            put(name, weight * gamma[:, None], bias * gamma, [*sources, scale_name], "LayerScale folded in")
    if take.left():
        raise WeightsError(f"{out.name}: block {index} has parameters the block mapping does not know: "
                           f"{', '.join(prefix + n for n in take.left())}; refusing a partial load")


def _start(name: str, model: nn.Module, grid: tuple[int, int], patch_size: int, heads: int, eps: float,
           activation: str) -> SourceViT:
    return SourceViT(name=name, params={}, sources={}, how={}, unused={},
                     all_params=[n for n, _ in model.named_parameters()], pos_patches=torch.empty(0),
                     pos_sources=[], pos_class=None, has_class_token=False, grid=grid, patch_size=patch_size,
                     depth=0, heads=heads, eps=eps, activation=activation)


def _put_affine(out: SourceViT, dst: str, module: nn.Module, src: str) -> None:
    """Copy a Conv2d / LayerNorm's weight and bias (zeros when it has none) under ``dst``."""
    out.params[dst + ".weight"] = module.weight.detach().clone()
    out.sources[dst + ".weight"] = [src + ".weight"]
    if module.bias is not None:
        out.params[dst + ".bias"] = module.bias.detach().clone()
        out.sources[dst + ".bias"] = [src + ".bias"]
    else:
        out.params[dst + ".bias"] = module.weight.new_zeros(module.weight.shape[0])
        out.sources[dst + ".bias"] = []
        out.how[dst + ".bias"] = "source has no bias: zeros"


def _blocks(out: SourceViT, blocks: nn.ModuleList | nn.Sequential, prefix: str) -> None:
    for i, block in enumerate(blocks):
        _block(block, f"{prefix}.{i}.", i, out)
    out.depth = len(blocks)


def _finish(out: SourceViT, reasons: Mapping[str, str]) -> SourceViT:
    """Every source parameter not used is listed as unused, with the reason of its longest matching prefix."""
    used = {s for names in out.sources.values() for s in names} | set(out.pos_sources)
    for name in out.all_params:
        if name not in used and name not in out.unused:
            match = max((p for p in reasons if name.startswith(p)), key=len, default=None)
            out.unused[name] = reasons[match] if match else "outside the ViT trunk (pooling / head)"
    return out


# ---------------------------------------------------------------------------------------------
# Registry entries


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

    def __init__(self, *, size: str | None = None, layer: int | None = None, weights: str | None = None,
                 model_id: str | None = None, strict: bool = True, stand_in: dict | None = None) -> None:
        size = size or self.default_size
        if size not in self.variants:
            raise ConfigError(f"tokenizer.encoder.size: '{size}' is not a size of encoder "
                              f"'{self.registry_name}'; choose from {', '.join(self.variants)}")
        self.size, self.layer, self.strict = size, layer, strict
        self.variant = self.variants[size]
        self.model_id = model_id or self.variant.model_id
        self.weights = weights
        self.stand_in = stand_in
        self._model: nn.Module | None = None

    def describe(self) -> str:
        tag = f" pretrained={self.variant.tag}" if self.variant.tag and not self.weights else ""
        where = f" from {self.weights}" if self.weights else ""
        if self.stand_in is not None:
            tag, where = "", f" random-weight stand-in {self.stand_in}"
        return f"{self.registry_name} ViT-{self.size} ({self.library} {self.model_id}{tag}){where}"

    # -- loading -----------------------------------------------------------------------------

    def model(self) -> nn.Module:
        """The pretrained vision trunk, loaded once, in eval mode with gradients off."""
        if self._model is None:
            model = self._build_stand_in() if self.stand_in is not None else self._load_weights()
            self._model = model.eval().requires_grad_(False)
        return self._model

    def _load_weights(self) -> nn.Module:
        if self.weights is not None and not Path(self.weights).expanduser().exists():
            raise WeightsError(f"{self.describe()}: tokenizer.encoder.weights {self.weights} does not exist")
        try:
            return self._load()
        except Tok1dError:
            raise
        except (OSError, RuntimeError, ValueError, _hub_error()) as exc:
            raise WeightsError(f"cannot load the weights of {self.describe()}: "
                               f"{type(exc).__name__}: {_first_line(exc)}", FETCH_HINT) from None

    def _build_stand_in(self) -> nn.Module:
        from huggingface_hub.errors import StrictDataclassError

        try:
            return self._stand_in(dict(self.stand_in))
        except Tok1dError:
            raise
        except (TypeError, ValueError, StrictDataclassError) as exc:
            raise ConfigError(f"tokenizer.encoder.stand_in: cannot build {self.describe()}: "
                              f"{type(exc).__name__}: {_first_line(exc)}") from None

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
    def _hidden(self, x: Tensor, block: int, final_norm: bool) -> Tensor:
        """Patch tokens (B, N, D) after ``block`` (0-based), prefix tokens removed."""

    @torch.no_grad()
    def teacher_features(self, images: Tensor) -> Tensor:
        """Frozen patch features (B, N, D), N = (resolution / patch)^2, for images in [0, 1] (B, 3, H, W).

        Images are resized (bicubic, antialiased) to the model's input resolution and normalised with
        its mean / std; the model runs in eval mode without gradient.
        """
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
        return self._hidden((x - mean) / std, block, final_norm=self.layer is None)

    @abstractmethod
    def source_depth(self) -> int:
        """Number of transformer blocks of the loaded trunk."""

    def feature_dim(self) -> int:
        """Width D of :meth:`teacher_features`: the variant's, without loading any weights, for the
        entry's own model id; otherwise (a stand-in, another model id) from one probe."""
        if self.stand_in is None and self.model_id == self.variant.model_id:
            return self.variant.width
        res = self.resolution()
        return self.teacher_features(torch.zeros(1, 3, res, res)).shape[-1]


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
        out = _start(self.describe(), m, tuple(m.patch_embed.grid_size), m.patch_embed.patch_size[0],
                     b0.attn.num_heads, b0.norm1.eps, activation_name(b0.mlp.act))
        _put_affine(out, "patch_embed", m.patch_embed.proj, "patch_embed.proj")
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
            _put_affine(out, "ln_pre", m.norm_pre, "norm_pre")
        _blocks(out, m.blocks, "blocks")
        if isinstance(m.norm, nn.LayerNorm):
            _put_affine(out, "ln_post", m.norm, "norm")
        return _finish(out, {"reg_token": "register tokens: the target has no register slots"})

    def resolution(self) -> int:
        return self.model().patch_embed.img_size[0]

    def source_depth(self) -> int:
        return len(self.model().blocks)

    def _hidden(self, x: Tensor, block: int, final_norm: bool) -> Tensor:
        return self.model().forward_intermediates(x, indices=[block], norm=final_norm, output_fmt="NLC",
                                                  intermediates_only=True)[0]


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
        return open_clip.create_model(self.model_id, pretrained=pretrained, force_quick_gelu=self.quick_gelu,
                                      require_pretrained=True).visual

    def _stand_in(self, overrides: dict) -> nn.Module:
        """The image tower of ``model_id``'s open_clip config with ``overrides`` applied to its ``vision_cfg``.

        The text tower, built with the CLIP model but never used here, is shrunk to
        :data:`TINY_TEXT_TOWER` so that the build stays fast.
        """
        import open_clip

        cfg = open_clip.get_model_config(self.model_id)
        if cfg is None:
            raise ConfigError(f"tokenizer.encoder.model_id: open_clip has no model config '{self.model_id}' "
                              f"to build a stand-in from; choose one of open_clip.list_models()")
        known = [f.name for f in fields(open_clip.CLIPVisionCfg)]
        for key in overrides:
            if key not in known:
                raise ConfigError(f"tokenizer.encoder.stand_in.{key}: not a field of open_clip's vision_cfg; "
                                  f"fields: {', '.join(known)}")
        return open_clip.create_model(self.model_id, pretrained=None, force_quick_gelu=self.quick_gelu,
                                      vision_cfg={**cfg["vision_cfg"], **overrides},
                                      text_cfg=dict(TINY_TEXT_TOWER)).visual

    def source(self) -> SourceViT:
        v = self.model()
        b0 = v.transformer.resblocks[0]
        out = _start(self.describe(), v, tuple(v.grid_size), v.patch_size[0], b0.attn.num_heads, b0.ln_1.eps,
                     activation_name(b0.mlp.gelu))
        _put_affine(out, "patch_embed", v.conv1, "conv1")
        out.has_class_token = True
        out.params["class_embedding"] = v.class_embedding.detach().view(1, 1, -1).clone()
        out.sources["class_embedding"] = ["class_embedding"]
        pos = v.positional_embedding.detach().unsqueeze(0)
        out.pos_class, out.pos_patches = pos[:, :1].clone(), pos[:, 1:].clone()
        out.pos_sources = ["positional_embedding"]
        _put_affine(out, "ln_pre", v.ln_pre, "ln_pre")
        _blocks(out, v.transformer.resblocks, "transformer.resblocks")
        _put_affine(out, "ln_post", v.ln_post, "ln_post")
        return _finish(out, {"proj": "projection into the joint image-text space"})

    def resolution(self) -> int:
        return self.model().image_size[0]

    def source_depth(self) -> int:
        return len(self.model().transformer.resblocks)

    def _hidden(self, x: Tensor, block: int, final_norm: bool) -> Tensor:
        return self.model().forward_intermediates(x, indices=[block], normalize_intermediates=final_norm,
                                                  intermediates_only=True, output_fmt="NLC")["image_intermediates"][0]


class TransformersEncoder(PretrainedEncoder):
    """An encoder held by transformers (``from_pretrained`` of a hub id or a ``save_pretrained`` folder)."""

    library = "transformers"
    model_class: ClassVar[str]
    trunk: ClassVar[str | None] = None  # attribute holding the ViT inside the loaded model

    def _load(self) -> nn.Module:
        import transformers

        model = getattr(transformers, self.model_class).from_pretrained(
            str(Path(self.weights).expanduser()) if self.weights else self.model_id)
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
        m = self.model()
        encoder = getattr(m, "encoder", m)
        return next(getattr(encoder, a) for a in ("layer", "layers") if hasattr(encoder, a))

    def _final_norm(self) -> tuple[str, nn.LayerNorm]:
        m = self.model()
        return next((a, getattr(m, a)) for a in ("layernorm", "post_layernorm") if hasattr(m, a))

    def source(self) -> SourceViT:
        m, cfg = self.model(), self.model().config
        emb = m.embeddings
        conv_name, conv = next((n, c) for n, c in emb.named_modules() if isinstance(c, nn.Conv2d))
        grid = cfg.image_size // cfg.patch_size
        out = _start(self.describe(), m, (grid, grid), cfg.patch_size, cfg.num_attention_heads,
                     cfg.layer_norm_eps, activation_name(cfg.hidden_act))
        _put_affine(out, "patch_embed", conv, f"embeddings.{conv_name}")
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
        _blocks(out, layers, layers_prefix)
        norm_name, norm = self._final_norm()
        _put_affine(out, "ln_post", norm, norm_name)
        return _finish(out, {"embeddings.mask_token": "mask token (masked-image modelling only)",
                             "embeddings.register_tokens": "register tokens: the target has no register slots",
                             "head.": "attention-pooling head"})

    def resolution(self) -> int:
        return self.model().config.image_size

    def source_depth(self) -> int:
        return len(self._layers())

    def _hidden(self, x: Tensor, block: int, final_norm: bool) -> Tensor:
        m, grid = self.model(), self.resolution() // self.model().config.patch_size
        hidden = m(pixel_values=x, output_hidden_states=True).hidden_states[block + 1]
        if final_norm:
            hidden = self._final_norm()[1](hidden)
        return hidden[:, hidden.shape[1] - grid * grid:]


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

    variants = {"B": Variant("vit_base_patch16_224.mae", 16, 768, 12, 12, 224),
                "L": Variant("vit_large_patch16_224.mae", 16, 1024, 24, 16, 224),
                "H": Variant("vit_huge_patch14_224.mae", 14, 1280, 32, 16, 224)}


@register_encoder("dino")
class DINO(TimmEncoder):
    """DINO (Caron et al. 2021) ViT-S/B (patch 16, or 8 for S8 / B8), from timm."""

    variants = {"S": Variant("vit_small_patch16_224.dino", 16, 384, 12, 6, 224),
                "B": Variant("vit_base_patch16_224.dino", 16, 768, 12, 12, 224),
                "S8": Variant("vit_small_patch8_224.dino", 8, 384, 12, 6, 224),
                "B8": Variant("vit_base_patch8_224.dino", 8, 768, 12, 12, 224)}


@register_encoder("dinov2")
class DINOv2(TimmEncoder):
    """DINOv2 (Oquab et al. 2024) ViT-S/B/L/g, patch 14, optionally with 4 registers, from timm."""

    variants = {"S": Variant("vit_small_patch14_dinov2.lvd142m", 14, 384, 12, 6, 518),
                "B": Variant("vit_base_patch14_dinov2.lvd142m", 14, 768, 12, 12, 518),
                "L": Variant("vit_large_patch14_dinov2.lvd142m", 14, 1024, 24, 16, 518),
                "g": Variant("vit_giant_patch14_dinov2.lvd142m", 14, 1536, 40, 24, 518)}

    def __init__(self, *, size: str | None = None, layer: int | None = None, weights: str | None = None,
                 model_id: str | None = None, strict: bool = True, registers: bool = False,
                 stand_in: dict | None = None) -> None:
        super().__init__(size=size, layer=layer, weights=weights, model_id=model_id, strict=strict,
                         stand_in=stand_in)
        self.registers = registers
        if registers and model_id is None:
            self.model_id = self.variant.model_id.replace("_dinov2", "_reg4_dinov2")


@register_encoder("clip")
class CLIP(OpenClipEncoder):
    """OpenAI CLIP (Radford et al. 2021) image tower ViT-B/16, ViT-L/14, from open_clip (QuickGELU)."""

    quick_gelu = True
    variants = {"B": Variant("ViT-B-16", 16, 768, 12, 12, 224, tag="openai"),
                "L": Variant("ViT-L-14", 14, 1024, 24, 16, 224, tag="openai")}


@register_encoder("depth_anything_v2")
class DepthAnythingV2(TransformersEncoder):
    """Depth-Anything-V2 (Yang et al. 2024) DINOv2 backbone ViT-S/B/L, from transformers."""

    model_class, trunk = "DepthAnythingForDepthEstimation", "backbone"
    variants = {"S": Variant("depth-anything/Depth-Anything-V2-Small-hf", 14, 384, 12, 6, 518),
                "B": Variant("depth-anything/Depth-Anything-V2-Base-hf", 14, 768, 12, 12, 518),
                "L": Variant("depth-anything/Depth-Anything-V2-Large-hf", 14, 1024, 24, 16, 518)}
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
            raise ConfigError(f"tokenizer.encoder.stand_in.out_indices: Depth-Anything's neck fuses at most "
                              f"{len(self.reassemble_factors)} feature maps, got {backbone.out_indices}")
        return transformers.DepthAnythingConfig(
            backbone_config=backbone, patch_size=backbone.patch_size, reassemble_hidden_size=width,
            reassemble_factors=list(self.reassemble_factors[-maps:]),
            neck_hidden_sizes=[max(1, width >> (maps - 1 - i)) for i in range(maps)])


@register_encoder("ijepa")
class IJEPA(TransformersEncoder):
    """I-JEPA (Assran et al. 2023) ViT-H/14 (IN-1k or IN-22k), ViT-H/16-448, ViT-g/16, from transformers."""

    model_class, default_size = "IJepaModel", "H"
    variants = {"H": Variant("facebook/ijepa_vith14_1k", 14, 1280, 32, 16, 224),
                "H22k": Variant("facebook/ijepa_vith14_22k", 14, 1280, 32, 16, 224),
                "H16": Variant("facebook/ijepa_vith16_1k", 16, 1280, 32, 16, 448),
                "g": Variant("facebook/ijepa_vitg16_22k", 16, 1408, 40, 16, 224)}


@register_encoder("siglip")
class SigLIP(TimmEncoder):
    """SigLIP (Zhai et al. 2023) image tower ViT-B/16, ViT-L/16-256, So400m/14, from timm."""

    mean, std = SIGLIP_MEAN, SIGLIP_STD
    variants = {"B": Variant("vit_base_patch16_siglip_224.webli", 16, 768, 12, 12, 224),
                "L": Variant("vit_large_patch16_siglip_256.webli", 16, 1024, 24, 16, 256),
                "So400m": Variant("vit_so400m_patch14_siglip_224.webli", 14, 1152, 27, 16, 224)}


@register_encoder("siglip2")
class SigLIP2(TransformersEncoder):
    """SigLIP 2 (Tschannen et al. 2025) fixed-resolution image tower B/16, L/16-256, So400m/14, from transformers."""

    mean, std = SIGLIP_MEAN, SIGLIP_STD
    model_class = "SiglipVisionModel"
    variants = {"B": Variant("google/siglip2-base-patch16-224", 16, 768, 12, 12, 224),
                "L": Variant("google/siglip2-large-patch16-256", 16, 1024, 24, 16, 256),
                "So400m": Variant("google/siglip2-so400m-patch14-224", 14, 1152, 27, 16, 224)}


# ---------------------------------------------------------------------------------------------
# Building entries from config and initialising a tokenizer encoder


def build_encoder(spec: Mapping[str, Any], where: str = "tokenizer.encoder") -> PretrainedEncoder | NoEncoder:
    """The entry for a config mapping ``{init: name, size: ..., ...}``; keys and types are checked."""
    from benchmark.config import check_options, registry_params

    if not isinstance(spec, Mapping) or "init" not in spec:
        raise ConfigError(f"{where}: expected a mapping with 'init' (one of {', '.join(ENCODERS.names())}), "
                          f"got {spec!r}")
    name = spec["init"]
    ENCODERS.get(name, where=f"{where}.init")
    kwargs = {k: v for k, v in spec.items() if k != "init"}
    check_options(kwargs, registry_params(ENCODERS, name), where, f"encoder '{name}'")
    return ENCODERS.build(name, **kwargs)


def _target_shape(encoder: nn.Module) -> tuple[int, int, int, int]:
    """(width, depth, heads, grid) of a TiTok-style encoder."""
    width = encoder.patch_embed.out_channels
    blocks = list(encoder.transformer)
    grid = math.isqrt(encoder.positional_embedding.shape[1] - 1)
    return width, len(blocks), blocks[0].attn.num_heads if blocks else 0, grid


def _check_fit(src: SourceViT, width: int, depth: int, heads: int, strict: bool, report: LoadReport) -> None:
    src_width = src.params["patch_embed.weight"].shape[0]
    problems = [f"{what}: source {a}, target {b}" for what, a, b in
                (("width", src_width, width), ("depth", src.depth, depth), ("heads", src.heads, heads)) if a != b]
    if problems and strict:
        raise ConfigError(f"tokenizer.encoder: {src.name} does not fit the tokenizer's encoder "
                          f"({'; '.join(problems)}); pick a matching tokenizer.size / encoder size, or set tokenizer.encoder.strict: false "
                          "to copy what fits")
    report.notes += [f"mismatch ({p}): copying what fits" for p in problems]


def _positional(src: SourceViT, target: Tensor, grid: int) -> tuple[Tensor, str]:
    """The target's (1, 1 + grid^2, D) position embedding from the source's class row and patch grid."""
    patches = src.pos_patches
    how = []
    if tuple(src.grid) != (grid, grid):
        patches = resample_abs_pos_embed(patches, new_size=[grid, grid], old_size=list(src.grid), num_prefix_tokens=0)
        how.append(f"patch grid {src.grid[0]}x{src.grid[1]} -> {grid}x{grid} (bicubic)")
    if src.pos_class is not None:
        cls = src.pos_class
    elif src.has_class_token:
        cls = torch.zeros_like(target[:, :1])
        how.append("class row zero (source adds no position to its class token)")
    else:
        cls = target[:, :1].detach()
        how.append("class row kept (source has no class token)")
    return torch.cat([cls.to(patches.dtype), patches], dim=1), "; ".join(how)


def apply_source(encoder: nn.Module, src: SourceViT, encoder_name: str, strict: bool = True) -> LoadReport:
    """Copy a canonical source ViT into a TiTok-style encoder; every parameter ends up in the report."""
    report = LoadReport(encoder_name, src.name)
    width, depth, heads, grid = _target_shape(encoder)
    _check_fit(src, width, depth, heads, strict, report)
    tensors, how = dict(src.params), dict(src.how)
    p = encoder.patch_embed.kernel_size[0]
    if src.patch_size != p:
        tensors["patch_embed.weight"] = resample_patch_embed(tensors["patch_embed.weight"], [p, p])
        how["patch_embed.weight"] = f"patch {src.patch_size} -> {p} (resample_patch_embed)"
    pos, how["positional_embedding"] = _positional(src, encoder.positional_embedding, grid)
    tensors["positional_embedding"] = pos
    sources = {**src.sources, "positional_embedding": src.pos_sources}
    taken: set[str] = set()
    with torch.no_grad():
        for name, param in encoder.named_parameters():
            value = tensors.get(name)
            if value is None:
                report.rows.append(Row("new", name, [], "no source counterpart: kept its initialisation"))
            elif value.shape != param.shape:
                report.rows.append(Row("new", name, [], f"shape {tuple(value.shape)} != {tuple(param.shape)}: "
                                                        "kept its initialisation"))
            else:
                param.copy_(value.to(param.dtype))
                taken.add(name)
                status = "adapted" if how.get(name) else "copied"
                report.rows.append(Row(status, name, sources.get(name, []), how.get(name, "")))
    used = {s for r in report.rows for s in r.sources}
    dropped = {s: t for t, names in sources.items() if t not in taken for s in names}
    for name in src.all_params:
        if name not in used:
            reason = src.unused.get(name) or (f"its target {dropped[name]} was not copied" if name in dropped else None)
            if reason is None:
                raise WeightsError(f"{src.name}: source parameter {name} is unaccounted for by the mapping")
            report.rows.append(Row("ignored", "", [name], reason))
    copied_blocks = min(depth, src.depth)
    if copied_blocks and any(n.startswith("transformer.") for n in taken):
        match_architecture(encoder, src.eps, src.activation, copied_blocks)
        report.norm_eps, report.activation = src.eps, src.activation
        report.notes.append(f"LayerNorm eps set to the source's {src.eps:g}; MLP activation of blocks "
                            f"0..{copied_blocks - 1} set to {src.activation} (not in the state dict: "
                            "match_architecture re-applies them)")
    if "ln_pre.weight" in dict(encoder.named_parameters()) and "ln_pre.weight" not in src.params:
        report.notes.append("the source has no pre-norm: the target's ln_pre stays at its initialisation")
    return report


def initialize_encoder(encoder: nn.Module, spec: Mapping[str, Any]) -> LoadReport:
    """Initialise a TiTok-style encoder from ``spec`` (``{init: name, size, weights, strict, ...}``)."""
    entry = build_encoder(spec)
    if isinstance(entry, NoEncoder):
        report = LoadReport("none", entry.describe())
        report.rows = [Row("new", n, [], "random init") for n, _ in encoder.named_parameters()]
        return report
    return apply_source(encoder, entry.source(), entry.registry_name, entry.strict)

"""Weight transfer from a pretrained ViT into a TiTok-style encoder, accounting for every parameter.

Each library backend (benchmark/encoder_backends.py) maps its loaded trunk into one canonical form,
:class:`SourceViT`, whose tensors carry the parameter names of a TiTok-style encoder (``patch_embed``,
``class_embedding``, ``positional_embedding``, ``ln_pre``,
``transformer.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.0,mlp.2}``, ``ln_post``). :func:`apply_source`
copies it into an encoder, adapting patch size (``timm.layers.resample_patch_embed``) and grid
(``timm.layers.resample_abs_pos_embed``), and returns a :class:`LoadReport` that accounts for every
source and every target parameter.

Two exact rewrites keep the copied blocks the same function as the source's: separate q / k / v
projections are concatenated into the fused ``qkv``, and LayerScale (x + gamma * f(x), DINOv2) is
folded into the output projection (gamma * (W x + b) = (gamma W) x + gamma b). The target's LayerNorm
eps and MLP activation are set to the source's (:func:`match_architecture`); both are recorded in the
report because they are not part of a state dict.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from benchmark.errors import ConfigError, WeightsError

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
    "gelu": "gelu",
    "geluactivation": "gelu",
    "gelu_tanh": "gelu_tanh",
    "gelutanh": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "pytorchgelutanh": "gelu_tanh",
    "gelu_new": "gelu_tanh",
    "newgeluactivation": "gelu_tanh",
    "quick_gelu": "quick_gelu",
    "quickgelu": "quick_gelu",
    "quickgeluactivation": "quick_gelu",
}


def activation_name(act: nn.Module | str) -> str:
    """The canonical name (gelu, gelu_tanh, quick_gelu) of a library's MLP activation module or name."""
    if isinstance(act, nn.GELU):
        return "gelu_tanh" if act.approximate == "tanh" else "gelu"
    key = act if isinstance(act, str) else type(act).__name__
    if key.lower() not in ACTIVATIONS:
        raise WeightsError(
            f"MLP activation {key!r} has no counterpart in the tokenizer's blocks; "
            f"supported: {', '.join(sorted(set(ACTIVATIONS.values())))}"
        )
    return ACTIVATIONS[key.lower()]


def make_activation(name: str) -> nn.Module:
    from timm.layers import QuickGELU

    return {"gelu": nn.GELU, "gelu_tanh": lambda: nn.GELU(approximate="tanh"), "quick_gelu": QuickGELU}[name]()


def match_architecture(
    encoder: nn.Module, eps: float | None, activation: str | None, blocks: int | None = None
) -> None:
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
            raise WeightsError(
                f"{out.name}: block {index} ({type(block).__name__}) has no {what} under any "
                f"known name; its parameters: {', '.join(take.params)}"
            )
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
        raise WeightsError(
            f"{out.name}: block {index} has parameters the block mapping does not know: "
            f"{', '.join(prefix + n for n in take.left())}; refusing a partial load"
        )


def new_source(
    name: str, model: nn.Module, grid: tuple[int, int], patch_size: int, heads: int, eps: float, activation: str
) -> SourceViT:
    return SourceViT(
        name=name,
        params={},
        sources={},
        how={},
        unused={},
        all_params=[n for n, _ in model.named_parameters()],
        pos_patches=torch.empty(0),
        pos_sources=[],
        pos_class=None,
        has_class_token=False,
        grid=grid,
        patch_size=patch_size,
        depth=0,
        heads=heads,
        eps=eps,
        activation=activation,
    )


def put_affine(out: SourceViT, dst: str, module: nn.Module, src: str) -> None:
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


def map_blocks(out: SourceViT, blocks: nn.ModuleList | nn.Sequential, prefix: str) -> None:
    for i, block in enumerate(blocks):
        _block(block, f"{prefix}.{i}.", i, out)
    out.depth = len(blocks)


def finish_source(out: SourceViT, reasons: Mapping[str, str]) -> SourceViT:
    """Every source parameter not used is listed as unused, with the reason of its longest matching prefix."""
    used = {s for names in out.sources.values() for s in names} | set(out.pos_sources)
    for name in out.all_params:
        if name not in used and name not in out.unused:
            match = max((p for p in reasons if name.startswith(p)), key=len, default=None)
            out.unused[name] = reasons[match] if match else "outside the ViT trunk (pooling / head)"
    return out


# ---------------------------------------------------------------------------------------------
# Copying a canonical source into an encoder


def _target_shape(encoder: nn.Module) -> tuple[int, int, int, int]:
    """(width, depth, heads, grid) of a TiTok-style encoder."""
    width = encoder.patch_embed.out_channels
    blocks = list(encoder.transformer)
    grid = math.isqrt(encoder.positional_embedding.shape[1] - 1)
    return width, len(blocks), blocks[0].attn.num_heads if blocks else 0, grid


def _check_fit(src: SourceViT, width: int, depth: int, heads: int, strict: bool, report: LoadReport) -> None:
    src_width = src.params["patch_embed.weight"].shape[0]
    problems = [
        f"{what}: source {a}, target {b}"
        for what, a, b in (("width", src_width, width), ("depth", src.depth, depth), ("heads", src.heads, heads))
        if a != b
    ]
    if problems and strict:
        raise ConfigError(
            f"tokenizer.encoder: {src.name} does not fit the tokenizer's encoder "
            f"({'; '.join(problems)}); pick a matching tokenizer.size / encoder size, or set tokenizer.encoder.strict: false "
            "to copy what fits"
        )
    report.notes += [f"mismatch ({p}): copying what fits" for p in problems]


def _positional(src: SourceViT, target: Tensor, grid: int) -> tuple[Tensor, str]:
    """The target's (1, 1 + grid^2, D) position embedding from the source's class row and patch grid."""
    patches = src.pos_patches
    how = []
    if tuple(src.grid) != (grid, grid):
        from timm.layers import resample_abs_pos_embed

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
        from timm.layers import resample_patch_embed

        tensors["patch_embed.weight"] = resample_patch_embed(tensors["patch_embed.weight"], [p, p])
        how["patch_embed.weight"] = f"patch {src.patch_size} -> {p} (resample_patch_embed)"
    pos, how["positional_embedding"] = _positional(src, encoder.positional_embedding, grid)
    tensors["positional_embedding"] = pos
    sources = {**src.sources, "positional_embedding": src.pos_sources}
    # A target with LayerScale (ls1 / ls2, e.g. SoftVQ's layout) multiplies each residual branch by its own
    # gamma: the copied branches already carry the source's (folded into attn.proj / mlp.2, or none), so the
    # target's gammas of the copied blocks are 1, not their initial 1e-5, or every copied block would be
    # an identity.
    for name, param in encoder.named_parameters():
        block = re.fullmatch(r"transformer\.(\d+)\.ls[12]\.gamma", name)
        if block and int(block.group(1)) < src.depth:
            tensors[name] = torch.ones_like(param)
            how[name] = "1: the source's LayerScale (if any) is folded into attn.proj / mlp.2"
    taken: set[str] = set()
    with torch.no_grad():
        for name, param in encoder.named_parameters():
            value = tensors.get(name)
            if value is None:
                report.rows.append(Row("new", name, [], "no source counterpart: kept its initialisation"))
            elif value.shape != param.shape:
                report.rows.append(
                    Row("new", name, [], f"shape {tuple(value.shape)} != {tuple(param.shape)}: kept its initialisation")
                )
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
        report.notes.append(
            f"LayerNorm eps set to the source's {src.eps:g}; MLP activation of blocks "
            f"0..{copied_blocks - 1} set to {src.activation} (not in the state dict: "
            "match_architecture re-applies them)"
        )
    if "ln_pre.weight" in dict(encoder.named_parameters()) and "ln_pre.weight" not in src.params:
        report.notes.append("the source has no pre-norm: the target's ln_pre stays at its initialisation")
    return report

"""Studies: a base config plus grid / zip axes, expanded into cells, each cell into hashed stages.

A study YAML holds::

    title: ...                 # shown above the tables
    source: ...                # which table / figure of which seed it reproduces
    config: {...}              # the base config (paper scale)
    profiles: {smoke: {...}}   # optional per-profile adjustments for this study
    axes:
      grid: {tokenizer.num_latent_tokens: [16, 32, 64, 128]}   # cartesian product
      zip: {a.b: [...], c.d: [...]}                             # advance together (one axis)
    cells: [{label: Big dataset, set: {data.subset: all}}]    # extra explicit cells
    label: "{tokenizer.num_latent_tokens}"                   # a cell's row label
    stages: [evaluate_tokenizer]                              # what each cell needs (deps follow)
    report: {tables: [...], figures: [...]}
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from benchmark import REPO_ROOT
from benchmark.config import Layer, defaults, load_yaml, merge_layers, nest, parse_overrides
from benchmark.errors import ConfigError
from benchmark.registry import load_plugins
from benchmark.stages import STAGES, stage_order

STUDY_KEYS = {"title", "source", "description", "config", "profiles", "axes", "cells", "label", "stages", "report"}
PROFILE_DIR = REPO_ROOT / "studies" / "profiles"


@dataclass
class Stage:
    """One unit of work, identified by the hash of exactly the config it depends on."""

    kind: str
    hash: str
    config: dict[str, Any]
    inputs: dict[str, str]
    cells: list[str] = field(default_factory=list)


@dataclass
class Cell:
    """One row of a study: its label, its resolved config and the hash of each stage it needs."""

    label: str
    overrides: dict[str, Any]
    config: dict[str, Any]
    stages: dict[str, str]


@dataclass
class Plan:
    study: str
    path: Path
    profile: str
    spec: dict[str, Any]
    cells: list[Cell]
    stages: dict[str, Stage]

    def ordered_stages(self) -> list[Stage]:
        """Stages in dependency order (upstream kinds first), each once."""
        return sorted(self.stages.values(), key=lambda s: stage_order(s.kind))


def stage_hash(kind: str, config: Mapping[str, Any], inputs: Mapping[str, str]) -> str:
    payload = {"stage": kind, "version": STAGES[kind].version, "config": config, "inputs": dict(inputs)}
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def expand_axes(axes: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
    """Grid axes form a cartesian product; zip axes advance together and act as one more axis."""
    unknown = set(axes) - {"grid", "zip"}
    if unknown:
        raise ConfigError(f"{where}: axes has unknown entries {sorted(unknown)}; use 'grid' and 'zip'")
    grid, zipped = axes.get("grid") or {}, axes.get("zip") or {}
    factors: list[list[dict[str, Any]]] = []
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: axes.grid.{key} must be a non-empty list")
        factors.append([{key: v} for v in values])
    if zipped:
        lengths = {k: len(v) if isinstance(v, list) else -1 for k, v in zipped.items()}
        if len(set(lengths.values())) != 1 or -1 in lengths.values():
            raise ConfigError(f"{where}: axes.zip lists must all be lists of one length, got {lengths}")
        n = next(iter(lengths.values()))
        factors.append([{k: v[i] for k, v in zipped.items()} for i in range(n)])
    return [dict(kv for d in combo for kv in d.items()) for combo in itertools.product(*factors)]


def cell_label(template: str | None, overrides: Mapping[str, Any], config: Mapping[str, Any]) -> str:
    if template is None:
        return ", ".join(f"{k}={v}" for k, v in overrides.items()) or "base"
    values = {k.replace(".", "_"): v for k, v in flat_config(config).items()}
    try:
        return template.replace(".", "_").format(**values)
    except (KeyError, IndexError) as exc:
        raise ConfigError(f"label '{template}' names {exc}, which the cell's config does not have") from exc


def flat_config(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Every leaf of a nested config under its dotted key: ``{"tokenizer.size": "B", ...}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(flat_config(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def load_study(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    spec = load_yaml(path)
    unknown = set(spec) - STUDY_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown top-level keys {sorted(unknown)}; allowed: {sorted(STUDY_KEYS)}")
    for key in ("config", "profiles", "axes", "report"):
        if not isinstance(spec.get(key) or {}, dict):
            raise ConfigError(f"{path}: '{key}' must be a mapping, got {type(spec[key]).__name__}")
    for kind in spec.get("stages", []):
        if kind not in STAGES:
            raise ConfigError(f"{path}: stages: unknown stage '{kind}'; known: {', '.join(STAGES)}")
    return spec


def profile_layers(spec: Mapping[str, Any], path: Path, profile: str) -> list[Layer]:
    profile_file = PROFILE_DIR / f"{profile}.yaml"
    if not profile_file.is_file():
        known = sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))
        raise ConfigError(f"--profile {profile}: no file {profile_file}; known profiles: {', '.join(known)}")
    layers = [Layer(str(profile_file), nest(load_yaml(profile_file), str(profile_file)))]
    extra = (spec.get("profiles") or {}).get(profile)
    if extra:
        layers.append(Layer(f"{path}: profiles.{profile}", nest(extra, f"{path}: profiles.{profile}")))
    return layers


def build_plan(path: str | Path, profile: str = "paper", overrides: list[str] | None = None,
               only: str | None = None) -> Plan:
    """Expand a study into cells and their stages; every cell is validated before anything runs."""
    path = Path(path)
    spec = load_study(path)
    cli = Layer("command line", nest(parse_overrides(overrides or []), "command line"))
    base = [Layer("defaults", defaults()), Layer(f"{path}: config", nest(spec.get("config") or {}, str(path))),
            *profile_layers(spec, path, profile)]
    plugins = [layer.values["plugins"] for layer in base + [cli] if layer.values.get("plugins")]
    load_plugins(plugins[-1] if plugins else [])

    cell_specs = [(None, o) for o in expand_axes(spec.get("axes") or {}, str(path))]
    for i, extra in enumerate(spec.get("cells") or []):
        if not isinstance(extra, Mapping) or "label" not in extra or set(extra) - {"label", "set"}:
            raise ConfigError(f"{path}: cells[{i}] must be a mapping with 'label' and 'set'")
        cell_specs.append((str(extra["label"]), dict(extra.get("set") or {})))

    wanted = spec.get("stages") or ["evaluate_tokenizer"]
    plan = Plan(path.stem, path, profile, spec, [], {})
    for label, cell_overrides in cell_specs:
        source = f"{path}: cell {label or cell_overrides}"
        layers = base + [Layer(source, nest(cell_overrides, source)), cli]
        config, origin = merge_layers(layers)
        label = label or cell_label(spec.get("label"), cell_overrides, config)
        cell = Cell(label, cell_overrides, config, {})
        if only and not matches(only, cell):
            continue
        for kind in closure(wanted):
            stage_cfg = STAGES[kind].select(config)
            inputs = {need: cell.stages[need] for need in STAGES[kind].needs}
            h = stage_hash(kind, stage_cfg, inputs)
            stage = plan.stages.setdefault(h, Stage(kind, h, stage_cfg, inputs))
            stage.cells.append(label)
            cell.stages[kind] = h
        plan.cells.append(cell)
    if only and not plan.cells:
        raise ConfigError(f"--only {only}: matches no cell of {path}")
    return plan


def closure(kinds: list[str]) -> list[str]:
    """The wanted stage kinds plus everything they need, in dependency order."""
    out: set[str] = set()
    todo = list(kinds)
    while todo:
        kind = todo.pop()
        if kind not in out:
            out.add(kind)
            todo.extend(STAGES[kind].needs)
    return sorted(out, key=stage_order)


def matches(pattern: str, cell: Cell) -> bool:
    """``--only``: ``key=value`` compares a config value; anything else is a label substring / glob."""
    import fnmatch

    if "=" in pattern:
        key, value = pattern.split("=", 1)
        return str(flat_config(cell.config).get(key)) == value
    if any(c in pattern for c in "*?["):
        return fnmatch.fnmatch(cell.label.lower(), pattern.lower())
    return pattern.lower() in cell.label.lower()

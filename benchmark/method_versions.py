"""Method versions in stage hashes: a change that alters what a registered method computes (a recipe
brought in line with the official code, a fixed equation) bumps its ``version``, a class attribute of the
tokenizer, generator, encoder entry or pretraining objective (1 when absent). Every stage whose config
names that method then gets a new hash, and so does everything downstream of it (a hash covers its
inputs' hashes): a run store never serves a stage that the older code computed, and the results index
marks committed results whose stages changed since (``benchmark.report --index``).

Versions at 1 are left out of the hash, so stages of methods never bumped keep theirs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from benchmark.registry import ENCODERS, GENERATORS, TOKENIZERS, Registry

# The config sections that name a registered method, and the key that names it (an OT target's tokenizer
# under ``latent_2d``).
NAMED_BY: dict[str, tuple[Registry, str]] = {
    "tokenizer": (TOKENIZERS, "name"),
    "generator": (GENERATORS, "name"),
    "latent_2d": (TOKENIZERS, "tokenizer"),
}


def _method(registry: Registry, name: Any) -> type | None:
    """The class a registry entry names; None for an unknown name (the config checks report it)."""
    return registry.get(name).obj if isinstance(name, str) and name in registry.names() else None


def _version(kind: str, name: Any, method: type | None) -> tuple[str, int] | None:
    return None if method is None else (f"{kind}:{name}", int(getattr(method, "version", 1)))


def method_versions(config: Mapping[str, Any]) -> dict[str, int]:
    """``kind:name`` -> version of each method a stage's (selected) config names, above version 1: the
    tokenizer (``tokenizer.name``, an OT target's ``latent_2d.tokenizer``), the generator, every encoder
    entry (a mapping with ``init``) and, for one pretrained offline (``pretrain``), its objective."""
    from benchmark.pretraining_objectives import OBJECTIVES

    found: list[tuple[str, int] | None] = []

    def visit(node: Any, key: str) -> None:
        if isinstance(node, Mapping):
            if key in NAMED_BY:
                registry, field = NAMED_BY[key]
                found.append(_version(registry.kind, node.get(field), _method(registry, node.get(field))))
            entry = _method(ENCODERS, node.get("init"))
            if entry is not None:
                found.append(_version(ENCODERS.kind, node["init"], entry))
                objective = getattr(entry, "pretrain_objective", None)  # none: "none" has no pretraining
                if node.get("pretrain") is not None and objective in OBJECTIVES:
                    found.append(_version("objective", objective, OBJECTIVES[objective]))
            for child_key, child in node.items():
                visit(child, str(child_key))
        elif isinstance(node, list):
            for child in node:
                visit(child, key)

    visit(config, "")
    return {name: version for name, version in filter(None, found) if version != 1}

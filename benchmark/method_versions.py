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


def _version(registry: Registry, name: Any) -> tuple[str, int] | None:
    if not isinstance(name, str) or name not in registry.names():
        return None  # an unknown name is the config checks' to report
    return f"{registry.kind}:{name}", int(getattr(registry.get(name).obj, "version", 1))


def method_versions(config: Mapping[str, Any]) -> dict[str, int]:
    """``kind:name`` -> version of each method a stage's (selected) config names, above version 1: the
    tokenizer (``tokenizer.name``, an OT target's ``latent_2d.tokenizer``), the generator, every encoder
    entry (a mapping with ``init``) and, for one pretrained offline (``pretrain``), its objective."""
    from benchmark.pretraining_objectives import OBJECTIVES

    found: list[tuple[str, int] | None] = []

    def visit(node: Any, key: str) -> None:
        if isinstance(node, Mapping):
            if key == "tokenizer":
                found.append(_version(TOKENIZERS, node.get("name")))
            if key == "generator":
                found.append(_version(GENERATORS, node.get("name")))
            if key == "latent_2d":
                found.append(_version(TOKENIZERS, node.get("tokenizer")))
            if isinstance(node.get("init"), str):
                found.append(_version(ENCODERS, node["init"]))
                entry = ENCODERS.get(node["init"]).obj if node["init"] in ENCODERS.names() else None
                objective = getattr(entry, "pretrain_objective", None)
                if node.get("pretrain") is not None and objective in OBJECTIVES:
                    found.append((f"objective:{objective}", int(getattr(OBJECTIVES[objective], "version", 1))))
            for child_key, child in node.items():
                visit(child, str(child_key))
        elif isinstance(node, list):
            for child in node:
                visit(child, key)

    visit(config, "")
    return {name: version for name, version in filter(None, found) if version != 1}

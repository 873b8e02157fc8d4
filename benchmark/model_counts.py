"""The counts plan checks make (GFLOPs per image of each tokenizer, generator and encoder pretraining, on
models built on the meta device: benchmark/estimate.py), kept so that no model is built twice for the
same code. Two stores, both keyed by what builds the model:

- shipped with the repo, ``studies/model_counts.json``: every model of the built-in studies at the smoke,
  repro and paper profiles, counted by ``python -m benchmark.shipped_counts --refresh``. A first ``--dry-run`` of
  a built-in study starts at once (paper Table 3 at the paper profile builds its models in ~80 s on 2
  cores). They hold while the files they were counted from do; the model libraries' versions they were
  counted with are recorded, not required (a new torch on PyPI would otherwise void them on every fresh
  install; tests/test_model_counts.py counts a study again under the installed ones and compares). The
  tests fail when a file changed since the refresh, or a study has a model without a count.
- the user's, ``$TOK1D_PLAN_CACHE`` (empty: no cache, shipped counts included) or
  ``$XDG_CACHE_HOME/tok1d/plan_cache.json`` (``~/.cache``): whatever else a plan checked, under
  :func:`code_digest`.

A count depends on the code that builds and runs the model: the plugin files, the harness modules that
register components or count FLOPs, every harness module they import (found by reading their import
statements, lazy ones included), and the model libraries' versions. A change elsewhere (the report, the
planner, the run store) keeps every count.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from benchmark import REPO_ROOT
from benchmark.errors import Tok1dError, WeightsError
from benchmark.store import atomic_write, read_json

PLAN_CACHE_ENV = "TOK1D_PLAN_CACHE"
SHIPPED_COUNTS = REPO_ROOT / "studies" / "model_counts.json"
# Besides the plugin files: the modules that register components (registry.BUILTIN_MODULES) and count FLOPs.
COUNTING_MODULES = ("benchmark.estimate", "benchmark.cost", "benchmark.checkpoints", "benchmark.encoder_pretraining")
MODEL_LIBRARIES = ("torch", "timm", "transformers", "open_clip_torch", "lpips")


class MissingCount(Tok1dError):
    """A model has no shipped count (``ModelCounts(..., strict=True)``: the freshness check)."""


def _key_digest(inputs: Any) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=repr).encode()).hexdigest()[:32]


IMPORT = re.compile(
    r"^[ \t]*(?:from[ \t]+(benchmark(?:\.\w+)*)[ \t]+import[ \t]+(\([^)]*\)|[^\n]*)|import[ \t]+(benchmark(?:\.\w+)*))",
    re.MULTILINE,
)


def imported_harness_modules(text: str) -> set[str]:
    """The ``benchmark.*`` modules a source text imports, at module level or inside functions (its import
    statements read as text: a regular expression is ~50x faster than ``ast`` here, and a statement it
    over-reads, e.g. in a docstring, only adds a file)."""
    names: set[str] = set()
    for module, imported, plain in IMPORT.findall(text):
        if plain:
            names.add(plain)
            continue
        names.add(module)
        for name in re.findall(r"\w+", re.sub(r"#[^\n]*", "", imported)):
            names.add(f"{module}.{name}")  # ``from benchmark import x``: x may be a module
    return names


def model_code_files(plugin_folders: Iterable[Path] | None = None) -> list[Path]:
    """The source files a count depends on: the plugin files, the registering and counting modules, and the
    harness modules they import, transitively (sorted)."""
    from benchmark.registry import BUILTIN_MODULES, plugin_dirs

    def source(module: str) -> Path:
        return REPO_ROOT.joinpath(*module.split(".")).with_suffix(".py")

    folders = plugin_dirs() if plugin_folders is None else list(plugin_folders)
    todo = [path for folder in folders for path in sorted(Path(folder).glob("*.py"))]
    todo += [source(module) for module in (*BUILTIN_MODULES, *COUNTING_MODULES)]
    seen: set[Path] = set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        imported = (source(module) for module in imported_harness_modules(path.read_text()))
        # how counts are kept does not change them
        todo += [file for file in imported if file.is_file() and file != Path(__file__)]
    return sorted(seen)


def library_versions() -> dict[str, str]:
    from importlib import metadata

    versions = {}
    for package in MODEL_LIBRARIES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "none"
    return versions


def _name(path: Path) -> str:
    return path.relative_to(REPO_ROOT).as_posix() if path.is_relative_to(REPO_ROOT) else str(path)


def file_hashes(files: Iterable[Path]) -> dict[str, str]:
    """SHA-256 (16 hex digits) of each file, by its name (relative to the repo when inside it)."""
    return {_name(path): hashlib.sha256(path.read_bytes()).hexdigest()[:16] for path in files}


def stale_files(known: dict[str, Any], current: dict[str, str] | None = None) -> list[str]:
    """The files a count file was made from that changed or went since; ``current``: hashes already taken
    (:func:`file_hashes`), the others are read."""
    files = known.get("files") or {}
    if not files:
        return ["(no files)"]
    unread = (REPO_ROOT / name for name in files.keys() - (current or {}).keys())
    current = {**(current or {}), **file_hashes(path for path in unread if path.is_file())}
    return sorted(name for name, digest in files.items() if current.get(name) != digest)


def code_digest(hashes: dict[str, str] | None = None) -> str:
    """What a count in the user's file depends on: :func:`model_code_files` (``hashes``: their
    :func:`file_hashes`, if taken already) and the model libraries' versions."""
    hashes = file_hashes(model_code_files()) if hashes is None else hashes
    versions = ";".join(f"{k}=={v}" for k, v in sorted(library_versions().items()))
    return hashlib.sha256(f"{json.dumps(hashes, sort_keys=True)};{versions}".encode()).hexdigest()[:16]


def plan_cache() -> Path | None:
    """The user's count file: ``$TOK1D_PLAN_CACHE`` (empty: none), else ``$XDG_CACHE_HOME/tok1d/plan_cache.json``
    (``~/.cache``). Outside the run store: a dry run writes nothing there."""
    given = os.environ.get(PLAN_CACHE_ENV)
    if given is not None:
        return Path(given).expanduser() if given else None
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "tok1d" / "plan_cache.json"


def read_shipped(path: Path = SHIPPED_COUNTS) -> dict[str, Any]:
    """The shipped count file: ``{"about", "files": {name: sha256}, "libraries": {package: version},
    "counts": {"kind:inputs digest": count}, "needs_weights": [key, ...]}`` (the models only published weights
    build: released tokenizers). Its counts hold while those files do: a new plugin file changes no count (a
    registered name cannot be registered again), a changed file the models import does."""
    return read_json(path) or {"files": {}, "libraries": {}, "counts": {}, "needs_weights": []}


class ModelCounts:
    """The counts of one plan check, each under the kind of model, a digest of what builds it and
    :func:`code_digest`. Cells share models (a study that varies the generator builds one tokenizer) and an
    override that changes no model (``train.steps=...``) builds nothing again. Looked up in ``shipped`` (the
    shipped file, while none of the files it was counted from changed), then in ``path`` (the user's file,
    written back with the new counts; entries of other code are dropped). ``strict`` raises :class:`MissingCount` instead
    of counting (and WeightsError for a model the shipped file says needs published weights). A failed check
    is not kept: it fails again."""

    def __init__(self, path: Path | None, shipped: Path | None = None, strict: bool = False) -> None:
        self.path, self.strict, self.added = path, strict, False
        kept = path is not None or shipped is not None  # counts made for this plan only need no code digest
        hashes = file_hashes(model_code_files()) if kept else {}
        self.code = code_digest(hashes) if kept else "this-plan"
        self.counts: dict[str, Any] = {}
        self.needs_weights: set[str] = set()
        if shipped is not None:
            known = read_shipped(shipped)
            if not stale_files(known, hashes):
                self.counts.update({f"{self.code}:{k}": v for k, v in known["counts"].items()})
                self.needs_weights.update(f"{self.code}:{k}" for k in known["needs_weights"])
        self.shipped_keys = set(self.counts)
        if path is not None:
            mine = read_json(path) or {}
            self.counts.update({k: v for k, v in mine.items() if k.startswith(self.code + ":")})

    @classmethod
    def default(cls) -> ModelCounts:
        """The user's file and the shipped counts; neither when ``$TOK1D_PLAN_CACHE`` is empty."""
        path = plan_cache()
        return cls(path, SHIPPED_COUNTS if path is not None else None)

    def get(self, kind: str, inputs: Any, count: Callable[[], Any]) -> Any:
        """The count of the ``kind`` model built from ``inputs`` (JSON-able), made by ``count()`` if new; it
        comes back as the file gives it back (tuples as lists)."""
        key = f"{self.code}:{kind}:{_key_digest(inputs)}"
        if key in self.counts:
            return self.counts[key]
        if self.strict:
            if key in self.needs_weights:
                raise WeightsError(f"the {kind} needs published weights to be counted")
            raise MissingCount(f"no shipped count of the {kind} {json.dumps(inputs, default=repr)[:200]}")
        try:
            self.counts[key] = json.loads(json.dumps(count()))
        except WeightsError:
            self.needs_weights.add(key)
            raise
        self.added = True
        return self.counts[key]

    def new_counts(self) -> dict[str, Any]:
        """The counts not read from the shipped file, without the code digest: what a refresh ships."""
        prefix = len(self.code) + 1
        return {k[prefix:]: v for k, v in sorted(self.counts.items()) if k not in self.shipped_keys}

    def save(self) -> None:
        if self.path is not None and self.added:
            mine = {k: v for k, v in self.counts.items() if k not in self.shipped_keys}
            atomic_write(self.path, lambda tmp: tmp.write_text(json.dumps(mine, sort_keys=True)))

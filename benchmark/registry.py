"""Registries of tokenizers, generators, encoders, datasets and metrics, and plugin discovery.

Modelled on timm's ``register_model``: a decorator adds a class under a name; ``build(name, **kw)``
constructs it. Tokenizers and generators live in the plugin folders ``tokenizers/`` and
``generators/`` at the repo root. Those folders have no ``__init__.py`` on purpose (a ``tokenizers``
package would shadow HuggingFace's, which ``transformers`` imports), so they are imported by path
under a private package name, the way benchopt imports a benchmark's ``solvers/``.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import inspect
import os
import sys
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmark import REPO_ROOT
from benchmark.errors import ConfigError
from benchmark.options import init_parameters, init_params

PLUGIN_PACKAGE = "tok1d_plugins"
PLUGIN_ENV = "TOK1D_PLUGINS"
BUILTIN_PLUGIN_DIRS = (REPO_ROOT / "tokenizers", REPO_ROOT / "generators")
BUILTIN_MODULES = ("benchmark.data", "benchmark.metrics", "benchmark.encoders", "benchmark.fid", "benchmark.perceptual")


@dataclass(frozen=True)
class Entry:
    """One registered class: its name, the class itself and where it was defined."""

    name: str
    obj: type
    description: str
    source: str


class Registry:
    """A name -> class table for one kind of component (tokenizer, generator, ...)."""

    def __init__(self, kind: str, harness_args: frozenset[str] = frozenset()) -> None:
        self.kind = kind
        self.harness_args = harness_args  # constructor arguments the harness supplies, never the user
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, description: str | None = None) -> Callable[[type], type]:
        """Class decorator: ``@REGISTRY.register("name")``. The docstring's first line describes it."""

        def decorator(obj: type) -> type:
            try:
                source = inspect.getsourcefile(obj) or obj.__module__
            except TypeError:  # defined outside any file (e.g. built with type())
                source = obj.__module__
            old = self._entries.get(name)
            if old is not None and old.source != source:
                raise ConfigError(f"{self.kind} '{name}' is registered twice: in {old.source} and in {source}")
            doc = description or (inspect.getdoc(obj) or "").strip().splitlines()[:1]
            text = doc if isinstance(doc, str) else (doc[0] if doc else "")
            self._entries[name] = Entry(name, obj, text, source)
            obj.registry_name = name
            return obj

        return decorator

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def get(self, name: str, where: str = "") -> Entry:
        """The entry for ``name``; an unknown name raises with the close matches."""
        if name not in self._entries:
            close = difflib.get_close_matches(str(name), self.names(), n=3, cutoff=0.5)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            at = f"{where}: " if where else ""
            raise ConfigError(
                f"{at}unknown {self.kind} '{name}'.{hint} Registered: {', '.join(self.names()) or 'none'}."
            )
        return self._entries[name]

    def build(self, name: str, **kwargs: Any) -> Any:
        return self.get(name).obj(**kwargs)

    def params(self, name: str, where: str = "") -> dict[str, Any]:
        """The user-settable constructor parameters of an entry and their type hints."""
        return init_params(self.get(name, where).obj, self.harness_args)

    def null_defaults(self, name: str) -> set[str]:
        """The parameters of an entry whose default is ``None`` (setting them to null changes nothing)."""
        params = init_parameters(self.get(name).obj, self.harness_args)
        return {p for p, param in params.items() if param.default is None}


TOKENIZERS = Registry("tokenizer", frozenset({"image_size"}))
GENERATORS = Registry("generator", frozenset({"token_spec", "num_classes"}))
ENCODERS = Registry("encoder")
DATASETS = Registry("dataset", frozenset({"split"}))
METRICS = Registry("metric")
ALL = {r.kind: r for r in (TOKENIZERS, GENERATORS, ENCODERS, DATASETS, METRICS)}

register_tokenizer = TOKENIZERS.register
register_generator = GENERATORS.register
register_encoder = ENCODERS.register
register_dataset = DATASETS.register
register_metric = METRICS.register


def plugin_dirs(extra: Iterable[str | os.PathLike] = ()) -> list[Path]:
    """Built-in plugin folders, then those of ``$TOK1D_PLUGINS`` (os.pathsep-separated), then ``extra``."""
    env = [p for p in os.environ.get(PLUGIN_ENV, "").split(os.pathsep) if p]
    dirs = [*BUILTIN_PLUGIN_DIRS, *map(Path, env), *map(Path, extra)]
    out: list[Path] = []
    for d in dirs:
        d = Path(d).expanduser().resolve()
        if not d.is_dir():
            raise ConfigError(f"plugin folder {d} does not exist (from ${PLUGIN_ENV} or 'plugins')")
        if d not in out:
            out.append(d)
    return out


def _package_for(folder: Path) -> str:
    """A private package whose ``__path__`` is ``folder``, so plugin files can import each other."""
    if folder in BUILTIN_PLUGIN_DIRS:
        name = f"{PLUGIN_PACKAGE}.{folder.name}"
    else:
        digest = hashlib.sha1(str(folder).encode()).hexdigest()[:8]
        name = f"{PLUGIN_PACKAGE}.{folder.name}_{digest}"
    if PLUGIN_PACKAGE not in sys.modules:
        root = types.ModuleType(PLUGIN_PACKAGE)
        root.__path__ = []
        sys.modules[PLUGIN_PACKAGE] = root
    if name not in sys.modules:
        pkg = types.ModuleType(name)
        pkg.__path__ = [str(folder)]
        sys.modules[name] = pkg
    return name


def _import_plugin(path: Path) -> types.ModuleType:
    package = _package_for(path.parent)
    name = f"{package}.{path.stem}"
    if name in sys.modules:  # imported already, maybe relatively by another plugin (``from .softvq import``)
        _pickle_by_value(sys.modules[name])
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise ConfigError(f"plugin file {path} failed to import: {type(exc).__name__}: {exc}") from exc
    _pickle_by_value(module)
    return module


def _pickle_by_value(module: types.ModuleType) -> None:
    """Plugins imported by path cannot be pickled by reference on a Slurm node (benchopt's lesson)."""
    try:
        import cloudpickle
    except ImportError:  # cloudpickle comes with submitit; without it there is no Slurm executor
        return
    cloudpickle.register_pickle_by_value(module)


def load_plugins(extra: Iterable[str | os.PathLike] = ()) -> None:
    """Import the harness's built-in components and every ``*.py`` in the plugin folders."""
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    for folder in plugin_dirs(extra):
        for path in sorted(folder.glob("*.py")):
            if not path.name.startswith("_"):
                _import_plugin(path)

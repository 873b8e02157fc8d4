"""The run store: one folder per stage, ``<root>/<kind>/<hash>/``, written so that a killed job
leaves nothing half written (every file goes to a temporary name and is renamed into place).

    stage.json    the stage's config, inputs and runtime (written when it starts)
    result.json   its outputs; present if and only if the stage finished
    error.json    the error and log path of its last failed attempt
    log.txt       its log; ckpt/last.pt its last training checkpoint; model.safetensors its weights
"""

from __future__ import annotations

import json
import os
import traceback
from pathlib import Path
from typing import Any, Callable

RUNS_ENV = "TOK1D_RUNS"


def default_root(cli: str | None = None) -> Path:
    """``--runs`` if given, else ``$TOK1D_RUNS``, else ``runs/`` in the working directory."""
    return Path(cli or os.environ.get(RUNS_ENV) or "runs").resolve()


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` then rename ``tmp`` onto ``path`` (atomic on POSIX)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str)))


def read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


class RunStore:
    """Finished, failed and pending stages under one root folder."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def dir(self, kind: str, hash: str) -> Path:
        return self.root / kind / hash

    def result(self, kind: str, hash: str) -> dict[str, Any] | None:
        return read_json(self.dir(kind, hash) / "result.json")

    def error(self, kind: str, hash: str) -> dict[str, Any] | None:
        return read_json(self.dir(kind, hash) / "error.json")

    def is_done(self, kind: str, hash: str) -> bool:
        return (self.dir(kind, hash) / "result.json").is_file()

    def begin(self, kind: str, hash: str, record: dict[str, Any]) -> Path:
        d = self.dir(kind, hash)
        d.mkdir(parents=True, exist_ok=True)
        (d / "error.json").unlink(missing_ok=True)
        write_json(d / "stage.json", record)
        return d

    def finish(self, kind: str, hash: str, result: dict[str, Any]) -> None:
        write_json(self.dir(kind, hash) / "result.json", result)

    def fail(self, kind: str, hash: str, exc: BaseException) -> dict[str, Any]:
        d = self.dir(kind, hash)
        record = {
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": "".join(traceback.format_exception(exc))[-4000:],
            "log": str(d / "log.txt"),
        }
        write_json(d / "error.json", record)
        return record

"""Checks a plan before anything runs or is queued, so that a typo fails ``--dry-run`` on the login
node, not a Slurm job hours later: every data config (the resolution the tokenizers need, the data
root, its split folders and one readable image: nothing is listed in full) and every model (built on
the meta device, which runs its constructor's checks and its forward's shapes; benchmark/estimate.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmark.errors import ConfigError, Tok1dError
from benchmark.study import Plan


def check_data(data: dict[str, Any], where: str) -> None:
    """The dataset a cell names can be read: its resolution is set and its splits can be opened."""
    from benchmark.data import check_dataset

    if data.get("resolution") is None:
        raise ConfigError(
            f"{where}: data.resolution is not set (data.name: {data.get('name')}); the tokenizers "
            "take their image size from it"
        )
    for split in ("train", "eval"):
        try:
            check_dataset(data, split)
        except Tok1dError as exc:
            raise type(exc)(f"{where}: {exc}") from None


def check_plan(plan: Plan, cache: Path | None = None) -> dict[str, Any]:
    """Check the selected cells' data and models; returns the stages' cost estimates (stage hash ->
    :class:`~benchmark.estimate.StageCost`), a by-product of building the models (a cell checked before
    with the same config and code, as ``cache`` records, is not built again)."""
    from benchmark.estimate import estimate_plan

    seen: set[str] = set()
    for cell in (c for c in plan.cells if c.selected):
        key = repr(sorted(cell.config["data"].items()))
        if key not in seen:
            seen.add(key)
            check_data(cell.config["data"], f"{plan.path}: cell {cell.label}")
    return estimate_plan(plan, cache)

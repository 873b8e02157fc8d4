"""``python -m benchmark.fetch_weights studies/<study>.yaml [--profile paper] [k=v ...]``
``python -m benchmark.fetch_weights --release titok-l32 [--release ...]`` (``--release all``: every one)

Downloads the weights of every pretrained encoder a study names (``tokenizer.encoder``, or any other
``{init: <encoder>, ...}`` mapping of its cells) into each library's own cache (timm and transformers:
the Hugging Face cache, ``$HF_HOME``; open_clip: its download cache), and the files of every official
tokenizer or generator release its cells use (``tokenizer: {name: released, release: <name>}``, the same
for ``generator``) or ``--release``
names, tokenizers and generators alike (benchmark.convert.RELEASES, e.g. ``titok-l32`` and its MaskGIT
generator ``titok-l32-generator``: Hugging Face repos into the Hugging Face cache, the others into
``$TOK1D_RELEASES``), so that runs on compute nodes without network find them with ``HF_HUB_OFFLINE=1``.
Run it on a login node.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from benchmark.encoders import NoEncoder, build_encoder
from benchmark.errors import Tok1dError, WeightsError
from benchmark.registry import ENCODERS
from benchmark.study import Plan, build_plan

# Options that change how an encoder is used, not which weights it needs.
USE_ONLY = ("layer", "strict")


def encoder_specs(config: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """(dotted key, spec) of every mapping in a resolved config whose ``init`` names an encoder."""
    for key, value in config.items():
        if not isinstance(value, Mapping):
            continue
        if isinstance(value.get("init"), str) and value["init"] in ENCODERS:
            yield f"{prefix}{key}", dict(value)
        else:
            yield from encoder_specs(value, f"{prefix}{key}.")


def distinct_specs(plan: Plan) -> dict[str, tuple[dict[str, Any], list[str]]]:
    """Each distinct weights spec of a plan, keyed by its JSON form, with the cells / keys that use it."""
    out: dict[str, tuple[dict[str, Any], list[str]]] = {}
    for cell in plan.cells:
        for where, spec in encoder_specs(cell.config):
            spec = {k: v for k, v in spec.items() if k not in USE_ONLY}
            key = json.dumps(spec, sort_keys=True)
            out.setdefault(key, (spec, []))[1].append(f"{cell.label}: {where}")
    return out


def fetch(spec: Mapping[str, Any]) -> str:
    """Download (or, for a local ``weights`` path, check) one encoder's weights; returns what was done."""
    entry = build_encoder(spec)
    if isinstance(entry, NoEncoder):
        return "random init: nothing to fetch"
    if entry.stand_in is not None:
        made = "pretrained offline by a stage of its study" if entry.pretrain else "random weights"
        return f"stand-in built here ({made}): nothing to fetch"
    if entry.weights is not None:
        if not Path(entry.weights).expanduser().exists():
            return f"MISSING local weights {entry.weights}"
        return f"local weights {entry.weights}: nothing to fetch"
    entry.model()
    return f"fetched {entry.describe()} into the {entry.library} cache"


def release_names(plan: Plan) -> dict[str, list[str]]:
    """Each official release the plan's cells use from the caches (a ``released`` tokenizer or generator naming
    a ``release``, without its own ``source`` or a ``stand_in``), with the cells that use it."""
    out: dict[str, list[str]] = {}
    for cell in plan.cells:
        for section in ("tokenizer", "generator"):
            entry = cell.config.get(section, {})
            if (
                entry.get("name") == "released"
                and entry.get("release")
                and not (entry.get("source") or entry.get("stand_in"))
            ):
                out.setdefault(entry["release"], []).append(cell.label)
    return out


def fetch_releases(releases: dict[str, list[str]]) -> int:
    """Download each release (benchmark.convert.fetch_release); prints what was done, returns the failures."""
    from benchmark.convert import fetch_release, release_info

    failed = 0
    for name, users in releases.items():
        try:
            release_info(name)
            done = f"fetched into {fetch_release(name)}"
        except WeightsError as exc:
            done = f"could not fetch: {exc.reason}"
        except Tok1dError as exc:
            done = f"could not fetch: {exc}"
        failed += done.startswith("could not")
        print(f"release {name}\n  {done}" + (f"\n  used by {', '.join(users)}" if users else ""))
    return failed


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmark.fetch_weights", description=__doc__.split("\n\n")[1])
    p.add_argument("study", nargs="?", help="a study YAML, e.g. studies/thesis_table4_init.yaml")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. tokenizer.encoder.size=L")
    p.add_argument("--profile", default="paper", help="studies/profiles/<name>.yaml (default: paper)")
    p.add_argument(
        "--release",
        action="append",
        default=[],
        metavar="NAME",
        help="an official tokenizer or generator release to fetch (python -m benchmark.convert --list; 'all': every "
        "one); repeatable",
    )
    args = p.parse_intermixed_args(argv)
    if args.study is None and not args.release:
        p.error("name a study, or releases with --release")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.study is None:
        from benchmark.convert import RELEASES

        names = list(RELEASES) if "all" in args.release else args.release
        failed = fetch_releases(dict.fromkeys(names, []))
        print(f"{len(names) - failed} of {len(names)} releases available")
        return 1 if failed else 0
    try:
        plan = build_plan(args.study, args.profile, args.overrides)
        specs = distinct_specs(plan)
    except Tok1dError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    releases = release_names(plan)
    for name in args.release:
        releases.setdefault(name, [])
    if not specs and not releases:
        print(f"{args.study}: no cell names a pretrained encoder or an official release; nothing to fetch")
        return 0
    release_failures = fetch_releases(releases) if releases else 0
    if releases:
        print(f"{len(releases) - release_failures} of {len(releases)} releases available")
    if not specs:
        return 1 if release_failures else 0
    failed = 0
    for spec, users in specs.values():
        try:
            done = fetch(spec)
        except WeightsError as exc:
            done = f"could not fetch: {exc.reason}"
        except Tok1dError as exc:
            done = f"could not fetch: {exc}"
        failed += done.startswith(("could not", "MISSING"))
        print(f"{spec['init']} {json.dumps(spec, sort_keys=True)}\n  {done}\n  used by {', '.join(users)}")
    print(
        f"{len(specs) - failed} of {len(specs)} encoder weights available"
        + (f"; {failed} could not be fetched (see above)" if failed else "")
    )
    return 1 if failed or release_failures else 0


if __name__ == "__main__":
    sys.exit(main())

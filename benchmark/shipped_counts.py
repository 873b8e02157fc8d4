"""``python -m benchmark.shipped_counts [--refresh]``: the model counts shipped with the repo
(``studies/model_counts.json``, read by benchmark/model_counts.py): every model of the built-in studies at
every profile (smoke, repro, paper). Without ``--refresh``: which plans miss a count under the current code
(exit code 1 if any). With it: count them all again (6 min on 2 cores) and write the file."""

from __future__ import annotations

import json
from pathlib import Path

from benchmark import REPO_ROOT
from benchmark.errors import Tok1dError
from benchmark.model_counts import SHIPPED_COUNTS, ModelCounts, file_hashes, library_versions, model_code_files
from benchmark.registry import BUILTIN_PLUGIN_DIRS
from benchmark.store import atomic_write
from benchmark.study import build_plan, profile_names, study_files

REFRESH_COMMAND = "python -m benchmark.shipped_counts --refresh"


def count_builtin_studies(counts: ModelCounts) -> list[str]:
    """Estimate every built-in study (an alias of another once) at every profile with ``counts``; one line
    per plan that fails (with ``strict=True``: per plan with a model that has no shipped count)."""
    from benchmark.estimate import estimate_plan

    failures = []
    for study in study_files(aliases=False):
        for profile in profile_names():
            try:
                estimate_plan(build_plan(study, profile), counts)
            except Tok1dError as exc:
                failures.append(f"{study.relative_to(REPO_ROOT)} --profile {profile}: {exc}")
    return failures


def refresh(path: Path = SHIPPED_COUNTS) -> list[str]:
    """Count every model of the built-in studies at the shipped profiles under the current code and write
    them to ``path``; returns the plans that still miss a count (a model whose count failed)."""
    files = file_hashes(model_code_files(BUILTIN_PLUGIN_DIRS))  # before counting: what the counts come from
    counts = ModelCounts(None)
    failures = count_builtin_studies(counts)
    shipped = {
        "about": (
            "GFLOPs per image of every model of the built-in studies at the profiles "
            f"{', '.join(profile_names())} (read by benchmark/model_counts.py); written by {REFRESH_COMMAND}"
        ),
        "files": files,
        "libraries": library_versions(),
        "counts": counts.new_counts(),
        "needs_weights": sorted(key.split(":", 1)[1] for key in counts.needs_weights),
    }
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(shipped, indent=1) + "\n"))
    return failures + count_builtin_studies(ModelCounts(None, path, strict=True))


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m benchmark.shipped_counts", description=__doc__.split("\n\n")[0])
    p.add_argument("--refresh", action="store_true", help="count every model of the built-in studies again")
    args = p.parse_args(argv)
    if args.refresh:
        failures = refresh()
        print(f"wrote {SHIPPED_COUNTS.relative_to(REPO_ROOT)}")
    else:
        failures = count_builtin_studies(ModelCounts(None, SHIPPED_COUNTS, strict=True))
    for line in failures:
        print(line)
    print(f"{len(failures)} plan(s) without shipped counts" if failures else "every built-in study is counted")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())

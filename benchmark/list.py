"""``python -m benchmark.list``: every registered tokenizer, generator, encoder, dataset and metric, and
the studies and profiles the repository ships."""

from __future__ import annotations

import sys

from benchmark.registry import ALL, load_plugins
from benchmark.study import profile_names, study_files


def studies() -> list[tuple[str, str]]:
    """(path, title) of every study YAML (an alias file shows what it points at)."""
    from benchmark.config import load_yaml

    out = []
    for path in study_files():
        title = str(load_yaml(path).get("title", ""))
        alias = f" (same as {path.resolve().name})" if path.is_symlink() else ""
        out.append((f"studies/{path.name}", title + alias))
    return out


def main() -> int:
    load_plugins()
    for kind, registry in ALL.items():
        print(f"{kind}s:")
        entries = registry.entries()
        if not entries:
            print("  (none registered)")
        width = max((len(e.name) for e in entries), default=0)
        for entry in entries:
            objective = getattr(entry.obj, "pretrain_objective", None)  # an encoder's offline stand-in
            extra = f" Offline stand-in pretraining: {objective}." if objective else ""
            print(f"  {entry.name:<{width}}  {entry.description}{extra}")
    rows = studies()
    width = max(len(p) for p, _ in rows)
    print("studies (python -m benchmark.run <study> [--profile P]):")
    for path, title in rows:
        print(f"  {path:<{width}}  {title}")
    print(f"profiles (--profile): {', '.join(profile_names())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

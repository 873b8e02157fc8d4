"""``python -m benchmark.list``: every registered tokenizer, generator, encoder, dataset and metric."""

from __future__ import annotations

import sys

from benchmark.registry import ALL, load_plugins


def main() -> int:
    load_plugins()
    for kind, registry in ALL.items():
        print(f"{kind}s:")
        entries = registry.entries()
        if not entries:
            print("  (none registered)")
        width = max((len(e.name) for e in entries), default=0)
        for entry in entries:
            print(f"  {entry.name:<{width}}  {entry.description}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The house rules, checked: no import cycles inside benchmark/ (counting imports inside functions too),
the planner and the stage graph load without torch, plugins never become packages."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "benchmark"


def imports_of(path: Path) -> set[str]:
    """The benchmark modules that ``path`` imports at run time, at module level or inside functions
    (imports under ``if TYPE_CHECKING:`` are for type checkers only and do not count)."""
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            return
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("benchmark."))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "benchmark":
                out.update(f"benchmark.{a.name}" for a in node.names if (PACKAGE / f"{a.name}.py").is_file())
            elif node.module.startswith("benchmark."):
                out.add(node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return out


def import_graph() -> dict[str, set[str]]:
    return {
        f"benchmark.{p.stem}": imports_of(p) - {f"benchmark.{p.stem}"}
        for p in PACKAGE.glob("*.py")
        if p.stem != "__init__"
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (a list of modules, first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycles_in_benchmark():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_option_checking_is_a_leaf():
    assert import_graph()["benchmark.options"] <= {"benchmark.errors"}


def test_planner_and_stage_graph_load_without_torch():
    code = (
        "import sys, benchmark.graph, benchmark.study, benchmark.store, benchmark.run, benchmark.status;"
        "print(sorted(m for m in ('torch', 'pandas', 'ot', 'timm', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_plugin_folders_are_not_packages():
    assert not (REPO / "tokenizers" / "__init__.py").exists() and not (REPO / "generators" / "__init__.py").exists()

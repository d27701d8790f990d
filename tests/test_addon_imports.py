"""The add-on's import graph has no circle (parsed with ast: no bpy needed).

Every ``import`` counts, also those inside functions (a lazy import is still a dependency; a circle
hidden in a function is how the preferences <-> backend_process <-> connection circle lived). The
vendored ``shared`` package is not part of the graph (it never imports the add-on). The package's
``__init__`` imports its submodules by name (``importlib``, the ``MODULES`` list), which is not an
edge here: it is the registry, and every submodule may read its ``ERRORS``.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.bpy_only

ROOT = Path(__file__).resolve().parents[1]
ADDON = ROOT / "blender_addon"


def _module_name(path: Path, package_dir: Path) -> str:
    rel = path.relative_to(package_dir).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts) or "__init__"


def import_graph(package_dir: Path, skip: tuple[str, ...] = ("shared",)) -> dict[str, set[str]]:
    """module -> the package's modules it imports (relative imports; dotted names inside the package;
    ``__init__`` for the package itself)."""
    files = [p for p in package_dir.rglob("*.py")
             if "__pycache__" not in p.parts and p.relative_to(package_dir).parts[0] not in skip]
    modules = {_module_name(p, package_dir): p for p in files}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        is_pkg = path.name == "__init__.py"
        here = [] if mod == "__init__" else mod.split(".")
        base_pkg = here if is_pkg else here[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom) or node.level == 0:
                continue
            pkg = base_pkg[:len(base_pkg) - (node.level - 1)] if node.level > 1 else base_pkg
            target = pkg + (node.module.split(".") if node.module else [])
            if target and target[0] in skip:
                continue
            names = [".".join(target + [a.name]) for a in node.names]
            subs = [n for n in names if n in modules]
            graph[mod].update(subs)                 # from . import a  /  from .pkg import submodule
            name = ".".join(target) or "__init__"
            if name in modules and len(subs) < len(names):
                graph[mod].add(name)                # from .pkg import something_in_it
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a path (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_the_addon_has_no_import_circle():
    graph = import_graph(ADDON)
    # the parse sees the edges that matter (so an empty graph cannot pass)
    assert {"connection", "backend_process", "prefs", "__init__"} <= graph["preferences"]
    assert "prefs" in graph["connection"] and "prefs" in graph["backend_process"]
    assert "splat_object" in graph["viewport.draw"]
    cycle = find_cycle(graph)
    assert cycle is None, "import circle in the add-on: " + " -> ".join(cycle)


def test_the_check_finds_a_circle_hidden_in_a_function(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("from .sub.c import thing\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text("def f():\n    from ..a import x\n")
    assert find_cycle(import_graph(pkg)) == ["a", "b", "sub.c", "a"]
    (pkg / "sub" / "c.py").write_text("def f():\n    from .. import d\n")
    assert find_cycle(import_graph(pkg)) is None

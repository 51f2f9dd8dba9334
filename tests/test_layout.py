"""The package's shape: runtime imports form no cycle, stay relative, and reach no private names."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Folder -> import name, as pyproject.toml's package-dir maps them.
FOLDERS = {ROOT / "exporter": "passthrough_exporter", ROOT / "plugins": "passthrough_exporter.plugins"}


def modules() -> dict[str, Path]:
    out = {}
    for folder, package in FOLDERS.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join([package, *parts])] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import that runs, at module level or in a function; not those under TYPE_CHECKING."""
    out: list[ast.Import | ast.ImportFrom] = []

    def walk(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    walk(sub)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                out.append(child)
            walk(child)

    walk(tree)
    return out


def import_graph() -> tuple[dict[str, set[str]], list[str], list[str]]:
    """(module -> package modules it imports at run time, absolute self-imports, private names imported)."""
    mods = modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    absolute, private = [], []
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in _runtime_imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
                absolute += [f"{mod}: import {t}" for t in targets if t.startswith("passthrough_exporter")]
            else:
                if node.level == 0:
                    if (node.module or "").startswith("passthrough_exporter"):
                        absolute.append(f"{mod}: from {node.module} import ...")
                    continue
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                where = ".".join(base + ([node.module] if node.module else []))
                targets = []
                for alias in node.names:
                    sub = f"{where}.{alias.name}"
                    targets.append(sub if sub in mods else where)
                    if alias.name.startswith("_") and not alias.name.startswith("__") and sub not in mods:
                        private.append(f"{mod}: from {where} import {alias.name}")
            graph[mod].update(t for t in targets if t in mods and t != mod)
    return graph, absolute, private


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_checker_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_package_has_no_import_cycle():
    graph, _, _ = import_graph()
    assert "passthrough_exporter.reading.sysfs.files" in graph and "passthrough_exporter.plugins.pci" in graph
    assert "passthrough_exporter.model" in graph["passthrough_exporter.plugins.pci"]  # edges are seen
    assert cycles(graph) == []


def test_imports_inside_the_package_are_relative_and_public():
    _, absolute, private = import_graph()
    assert absolute == []
    assert private == []


def test_no_frozen_object_is_changed_after_construction():
    for path in modules().values():
        assert "object.__setattr__" not in path.read_text(), path

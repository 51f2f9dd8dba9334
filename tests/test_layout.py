"""The package's shape: imports run down through the layers, form no cycle, stay relative, and reach
no private names; pyproject.toml lists every package."""

from __future__ import annotations

import ast
import tomllib
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


def _imports(tree: ast.AST, typing: bool = False) -> list[ast.Import | ast.ImportFrom]:
    """Every import that runs, at module level or in a function; those under TYPE_CHECKING too when
    `typing` (a type-only import is a dependency of the reader, if not of the program)."""
    out: list[ast.Import | ast.ImportFrom] = []

    def walk(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child) and not typing:
                for sub in child.orelse:
                    walk(sub)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                out.append(child)
            walk(child)

    walk(tree)
    return out


def import_graph(typing: bool = False) -> tuple[dict[str, set[str]], list[str], list[str]]:
    """(module -> package modules it imports at run time (and for type checking, when `typing`),
    absolute self-imports, private names imported)."""
    mods = modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    absolute, private = [], []
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(), str(path)), typing):
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


# The layers, bottom to top, as the subpackages' __init__ docstrings describe them: data flows
# read -> judge -> render -> serve, and the commands drive them all. The rule plugins judge.
LAYERS = ("root", "reading", "judging", "rendering", "serving", "commands")
# What stays at the package's root: what every layer shares. A new module goes into a layer; adding
# one here is a decision about the architecture, not a way to make this test pass.
ROOT_MODULES = {"model", "settings", "inputs", "textsafe", "logs", "buildinfo"}


def layer(module: str) -> str:
    parts = module.split(".")[1:]  # below passthrough_exporter
    if not parts:
        return "root"  # the package's __init__: `hookimpl` and the version, made on first use
    if parts[0] == "plugins":
        return "judging"
    if parts[0] == "__main__":
        return "commands"
    if parts[0] in LAYERS:
        return parts[0]
    assert len(parts) == 1 and parts[0] in ROOT_MODULES, f"{module} is in no layer"
    return "root"


def upward(graph: dict[str, set[str]]) -> list[str]:
    """Every import of a module from a higher layer than the importer's."""
    return sorted(f"{a} ({layer(a)}) -> {b} ({layer(b)})" for a, targets in graph.items() for b in targets
                  if LAYERS.index(layer(b)) > LAYERS.index(layer(a)))


def test_the_checker_finds_an_import_up_the_layers():
    assert upward({"passthrough_exporter.rendering.metrics": {"passthrough_exporter.commands.cmdline"},
                   "passthrough_exporter.commands.cli": {"passthrough_exporter.rendering.metrics"}}) == [
        "passthrough_exporter.rendering.metrics (rendering) -> passthrough_exporter.commands.cmdline (commands)"]
    assert upward({"passthrough_exporter.plugins.pci": {"passthrough_exporter.judging.facts",
                                                         "passthrough_exporter.reading.sysfs.attrs"}}) == []


def test_imports_run_only_down_through_the_layers():
    graph, _, _ = import_graph(typing=True)
    assert {layer(m) for m in graph} == set(LAYERS)  # every layer is there, and every module in one
    assert upward(graph) == []


def test_every_layer_says_what_it_holds_and_what_it_may_import():
    for folder in [*(ROOT / "exporter" / name for name in LAYERS[1:]), ROOT / "plugins"]:
        doc = ast.get_docstring(ast.parse((folder / "__init__.py").read_text())) or ""
        assert "May import" in doc, folder.name


def packages() -> list[str]:
    """Every folder of the two roots that holds an __init__.py, by import name."""
    return sorted(".".join([package, *init.parent.relative_to(folder).parts])
                  for folder, package in FOLDERS.items() for init in folder.rglob("__init__.py"))


def test_pyproject_lists_every_package():
    """An editable install finds a package pyproject.toml leaves out (it imports from the folders);
    a wheel would not hold it."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert {ROOT / folder: package for package, folder in setuptools["package-dir"].items()} == FOLDERS
    assert "passthrough_exporter.plugins.policy" in packages()  # subpackages are found
    listed = sorted(setuptools["packages"])
    assert listed == packages(), (set(packages()) - set(listed), set(listed) - set(packages()))  # unlisted, unknown


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

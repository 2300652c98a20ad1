"""The project's import graph has no cycle (issue #22): a module that imports another never comes
back to itself, so any module can be imported first and none sees another half-initialised.

Two graphs are checked. The import-time one counts the imports that run when a module is
imported (module level, class bodies, ``if`` and ``try`` blocks), not those inside functions nor
under ``if TYPE_CHECKING:``; a cycle there is a half-initialised module. The full one adds the
imports deferred into functions (kept there to start fast): a cycle through one of them is a
circle the deferral only hides (``tuner.experiment`` once imported ``tuner.experiments`` in
``get_experiment``, whose experiments import ``tuner.experiment``).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("tuner", "trainables", "search_spaces", "analysis", "cluster")
Graph = dict[str, set[str]]


def project_modules(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file, for every module of ``packages`` (a package is its
    ``__init__.py``)."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


def imports(tree: ast.Module, *, deferred: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements that run when the module is imported, and (``deferred``) those
    inside its functions; never those under ``if TYPE_CHECKING:``."""
    stack: list[ast.AST] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) and not deferred:
            continue
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
        else:
            stack.extend(ast.iter_child_nodes(node))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_modules(
    name: str, path: Path, modules: dict[str, Path], *, deferred: bool = False
) -> set[str]:
    """The project modules that module ``name`` imports (:func:`imports`): ``from a import b``
    counts as ``a.b`` where that is a module, else as ``a``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in imports(tree, deferred=deferred):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:  # relative: from .x import y
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                       for a in node.names]  # fmt: skip
        for target in targets:
            while target and target not in modules:  # import a.b.c where only a.b is ours
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(modules: dict[str, Path], *, deferred: bool = False) -> Graph:
    return {name: imported_modules(name, path, modules, deferred=deferred)
            for name, path in modules.items()}  # fmt: skip


def cycles(graph: Graph) -> list[list[str]]:
    """Paths that end where they start, found by depth-first search: at least one wherever
    modules import each other in a circle; [] when the graph is acyclic."""
    found: list[list[str]] = []
    state: dict[str, str] = {}  # "open" while on the current path, "done" after
    in_cycle: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open" and nxt not in in_cycle:
                loop = path[path.index(nxt) :] + [nxt]
                in_cycle.update(loop)
                found.append(loop)
            elif nxt not in state:
                visit(nxt, path)
        path.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return found


# --- the check on fakes ------------------------------------------------------------------------


def test_cycles_finds_a_loop_and_passes_a_tree():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_only_imports_that_run_at_import_time_count(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "low.py").write_text("import json\n")
    (pkg / "late.py").write_text("def f():\n    from pkg import high\n")
    (pkg / "typed.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import high\n"
    )
    (pkg / "high.py").write_text(
        "from pkg import low\ntry:\n    import pkg.late\nexcept ImportError:\n    pass\n"
        "class A:\n    from pkg.typed import TYPE_CHECKING\n"
    )
    (pkg / "rel.py").write_text("from . import low\nfrom .high import A\n")
    modules = project_modules(tmp_path, ("pkg",))
    graph = import_graph(modules)
    assert graph["pkg.high"] == {"pkg.low", "pkg.late", "pkg.typed"}
    assert graph["pkg.late"] == graph["pkg.typed"] == graph["pkg.low"] == set()
    assert graph["pkg.rel"] == {"pkg.low", "pkg.high"}
    full = import_graph(modules, deferred=True)
    assert full["pkg.late"] == {"pkg.high"} and full["pkg.typed"] == set()


# --- the project -------------------------------------------------------------------------------


@pytest.mark.parametrize("deferred", [False, True], ids=["import-time", "with-deferred"])
def test_the_project_has_no_import_cycle(deferred):
    modules = project_modules()
    assert "tuner.bench.cli" in modules and "trainables.data.loading" in modules
    loops = cycles(import_graph(modules, deferred=deferred))
    assert not loops, "import cycles: " + "; ".join(" -> ".join(loop) for loop in loops)


def private_imports(modules: dict[str, Path]) -> list[str]:
    """``module: from other import _name`` for every private name one project module takes from
    another (issue #22: a name another module needs is part of its owner's interface)."""
    found = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in imports(tree, deferred=True):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module.split(".")[0] not in PACKAGES or node.module == name:
                    continue
                found += [f"{name}: from {node.module} import {a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]  # fmt: skip
    return found


def test_no_module_imports_another_modules_private_name():
    assert private_imports(project_modules()) == []


def test_the_private_import_check_bites(tmp_path):
    (tmp_path / "tuner").mkdir()
    (tmp_path / "tuner" / "a.py").write_text("from tuner.b import _hidden, shown\n")
    (tmp_path / "tuner" / "b.py").write_text("_hidden = shown = 1\n")
    assert private_imports(project_modules(tmp_path, ("tuner",))) == [
        "tuner.a: from tuner.b import _hidden"
    ]


MAX_MODULE_LINES = 400  # issue #22: a module a reader can hold; STYLE.md aims at ~300
MAX_FUNCTION_LINES = 60  # a function that fits on a screen


def sizes(root: Path) -> Iterator[tuple[str, int, int]]:
    """``(what, lines, limit)`` for every module of the packages and every function in them."""
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            text = path.read_text()
            name = str(path.relative_to(root))
            yield name, len(text.splitlines()), MAX_MODULE_LINES
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = (node.end_lineno or node.lineno) - node.lineno + 1
                    yield f"{name}:{node.name}", lines, MAX_FUNCTION_LINES


def test_no_module_over_400_lines_and_no_function_over_60():
    over = [f"{what} ({lines} > {limit})" for what, lines, limit in sizes(ROOT) if lines > limit]
    assert not over, "split these: " + ", ".join(over)


def test_the_size_check_bites(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "tuner").mkdir()
    (tmp_path / "tuner" / "long.py").write_text(f"def long():\n{body}\n")
    found = {what: lines for what, lines, limit in sizes(tmp_path) if lines > limit}
    assert found == {"tuner/long.py:long": MAX_FUNCTION_LINES + 1}

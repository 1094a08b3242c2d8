"""The package's shape: imports point one way, modules stay readable in one sitting.

Every module under cnnlib/ is parsed with ``ast``; every import in it counts, at module level
or inside a function, relative (``from .x import y``, ``from .. import x``) or absolute
(``import cnnlib.x``, ``from cnnlib.x import y``, ``importlib.import_module("cnnlib.x")``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cnnlib"
MAX_LINES = 500
# Modules allowed above MAX_LINES, each with the reason it reads better whole.
LONG_MODULES: dict[str, str] = {}


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(name: str, known: set[str]) -> str:
    """``name``, or its longest prefix that is a module (``cnnlib.models.create_model``)."""
    while name not in known and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def imports(source: str, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``module`` imports anywhere in ``source``."""
    top = module.split(".")[0]
    here = module if is_package else module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(_resolve(a.name, known) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.rsplit(".", node.level - 1)[0] if node.level > 1 else here
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            for a in node.names:  # `from . import data` names a module, `from .x import f` not
                full = f"{base}.{a.name}"
                found.add(full if full in known else _resolve(base, known))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.add(_resolve(node.args[0].value, known))
    return {m for m in found if m in known and m != module and m.split(".")[0] == top}


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    known = set(files)
    return {m: imports(p.read_text(), m, p.name == "__init__.py", known) for m, p in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as a path (first module repeated at the end), or [] when there is none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str]:
        state[m] = 1
        path.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state and (cycle := visit(n)):
                return cycle
        path.pop()
        state[m] = 2
        return []

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return []


def test_the_collector_sees_every_kind_of_import():
    known = {"cnnlib", "cnnlib.a", "cnnlib.b", "cnnlib.c", "cnnlib.d", "cnnlib.e", "cnnlib.f",
             "cnnlib.sub", "cnnlib.sub.g", "cnnlib.sub.x"}
    source = """
from .. import a as alias
from ..b import something
import cnnlib.c
import os

def later():
    from cnnlib.d import thing
    import importlib
    return importlib.import_module("cnnlib.e")

class K:
    def method(self):
        from ..f import h
        from .g import k
"""
    assert imports(source, "cnnlib.sub.x", False, known) == {
        "cnnlib.a", "cnnlib.b", "cnnlib.c", "cnnlib.d", "cnnlib.e", "cnnlib.f", "cnnlib.sub.g"}
    # in a package's __init__, "." is the package itself
    assert imports("from .g import h", "cnnlib.sub", True, known) == {"cnnlib.sub.g"}
    # a name taken from the package's __init__ is an import of the package
    assert imports("from . import load_model", "cnnlib.a", False, known) == {"cnnlib"}


def test_find_cycle_reports_the_path():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_the_import_graph_is_acyclic():
    graph = import_graph()
    assert {"cnnlib.training.loop", "cnnlib.training.launch", "cnnlib.compress.saving"} <= set(graph)
    assert "cnnlib.training.loop" in graph["cnnlib.training.launch"]  # the launcher sits above the trainer
    cycle = find_cycle(graph)
    assert not cycle, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize(("lower", "higher"), [
    ("cnnlib.training.checkpoint", "cnnlib.compress"),  # load_model's kinds come from above
    ("cnnlib.training.distributed", "cnnlib.training.loop"),
    ("cnnlib.training.distributed", "cnnlib.training.launch"),
    ("cnnlib.training.loop", "cnnlib.study.cache"),
])
def test_lower_modules_do_not_reach_up(lower, higher):
    graph = import_graph()
    seen, todo = set(), [lower]
    while todo:  # everything `lower` loads, directly or not
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += graph.get(m, ())
    assert not {m for m in seen if m == higher or m.startswith(higher + ".")}


def test_modules_read_in_one_sitting():
    sizes = {module_name(p): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    long = {m: n for m, n in sizes.items() if n > MAX_LINES and m not in LONG_MODULES}
    assert not long, f"modules over {MAX_LINES} lines (split them, or list them with a reason): {long}"
    stale = {m for m in LONG_MODULES if sizes.get(m, 0) <= MAX_LINES}
    assert not stale, f"LONG_MODULES lists modules that are no longer long: {stale}"


def test_architecture_md_names_every_module():
    text = (PACKAGE.parent / "ARCHITECTURE.md").read_text()
    names = {p.name if p.is_file() else p.name + "/" for p in PACKAGE.iterdir()
             if (p.suffix == ".py" and not p.name.startswith("__"))
             or (p.is_dir() and (p / "__init__.py").exists())}
    assert not {n for n in names if n not in text}, "ARCHITECTURE.md: module table incomplete"

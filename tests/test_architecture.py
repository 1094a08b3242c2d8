"""The package's shape: two layers, imports pointing one way, one role per module.

Every module under cnnlib/ is parsed with ``ast`` (`tools/architecture_table.py` collects
the imports); every import counts, at module level or inside a function, relative or
absolute, and ``importlib.import_module("cnnlib.x")``. The rules, one test each:

- layers: the core (data, models, training, compress and the plumbing under them) never
  imports the study layer (study, viz) or the CLI; viz never imports study; nothing but
  ``python -m cnnlib`` imports the CLI;
- no cycles between modules;
- no re-export facades: a name is imported from the module that defines it; only
  cnnlib/__init__.py (the public API) re-exports;
- an import inside a function says why on its line or the line above;
- no ``os.chdir``: locations are explicit paths;
- one role per module: a module above SOFT_LIMIT lines gets a warning, not a failure;
- ARCHITECTURE.md's module table is the one `tools/architecture_table.py` writes.
"""

from __future__ import annotations

import ast
import difflib
import functools
import io
import json
import tokenize
import warnings
from pathlib import Path

import pytest
from scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cnnlib"
SOFT_LIMIT = 500  # lines; above it a module warns: does it still hold one role?


table = load_script("tools/architecture_table.py")

# The layers from the bottom up: a module imports from its own layer or those below it.
# Layers of one line are peers only with themselves: viz sits under study, not beside it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("plumbing", ("cnnlib._checks", "cnnlib._fileio", "cnnlib.flags")),
    ("data", ("cnnlib.data",)),
    ("models", ("cnnlib.models",)),
    ("training", ("cnnlib.training",)),
    ("compress", ("cnnlib.compress",)),
    ("public API", ("cnnlib",)),  # cnnlib/__init__.py: the core's API, exported once
    ("viz", ("cnnlib.viz",)),
    ("study", ("cnnlib.study",)),
    ("entry points", ("cnnlib.cli", "cnnlib.__main__")),
]
CORE = {"plumbing", "data", "models", "training", "compress", "public API"}
STUDY = {"viz", "study"}


def layer(module: str) -> str | None:
    for name, prefixes in LAYERS:
        for p in prefixes:
            if module == p or (p != "cnnlib" and module.startswith(p + ".")):
                return name
    return None


def rank(module: str) -> int:
    return [name for name, _ in LAYERS].index(layer(module))


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


@functools.cache
def _modules():
    return table.modules(PACKAGE)  # parsed once per session; nothing here changes them


def _sources() -> dict[str, str]:
    return {name: m.source for name, m in _modules().items()}


def _graph() -> dict[str, set[str]]:
    return table.graph(_modules())  # module level and inside functions alike


# -- the checks, as functions of source text (tested below on small examples) -----------------


def _module_level(tree: ast.Module):
    """The statements that run at import (module body, into if/try/with, not into defs)."""
    todo = list(tree.body)
    while todo:
        node = todo.pop(0)
        yield node
        if isinstance(node, ast.If | ast.Try | ast.With):
            for block in ("body", "orelse", "finalbody"):
                todo += getattr(node, block, [])
            todo += [s for h in getattr(node, "handlers", []) for s in h.body]


def bindings(source: str) -> tuple[set[str], set[str]]:
    """(names a module binds by import only, names it defines) at module level."""
    imported, defined = set(), set()
    for node in _module_level(ast.parse(source)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            imported.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            defined.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign | ast.For | ast.With):
            targets = getattr(node, "targets", None) or [getattr(node, "target", None)]
            targets += [i.optional_vars for i in getattr(node, "items", [])]
            defined.update(n.id for t in targets if t is not None
                           for n in ast.walk(t) if isinstance(n, ast.Name))
    return imported - defined, defined


def _comments(source: str) -> dict[int, str]:
    """line -> the text of its comment, pragmas (noqa, type: ignore) left out."""
    out = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            text = tok.string.lstrip("#").strip()
            for pragma in ("noqa", "type: ignore", "pragma", "fmt:"):
                if text.startswith(pragma):
                    text = ""
            out[tok.start[0]] = text
    return out


def facades(module: str, source: str, is_package: bool, known: set[str]) -> list[str]:
    """How ``module`` re-exports names it imports: `__all__` entries, ``import x as x``,
    imports kept only for others (``# noqa: F401``)."""
    tree = ast.parse(source)
    imported, _ = bindings(source)
    lines = source.splitlines()
    found = []
    for node in _module_level(tree):
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            names = [e.value for e in getattr(node.value, "elts", []) if isinstance(e, ast.Constant)]
            found += [f"{module}: __all__ lists {n!r}, imported" for n in names if n in imported]
        if not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        for a in node.names:
            if a.asname == a.name:
                found.append(f"{module}:{node.lineno}: `{a.name} as {a.asname}` re-exports it")
        text = "\n".join(lines[node.lineno - 1:node.end_lineno])
        if "noqa" in text and "F401" in text:
            own = [f"{module}.{a.name}" for a in node.names] if is_package else []
            side_effect = isinstance(node, ast.ImportFrom) and node.module == module and all(
                m in known for m in own)
            if not (own and side_effect):  # a package importing its submodules to run them
                found.append(f"{module}:{node.lineno}: an unused import kept (noqa: F401)")
    return found


def undocumented_late_imports(source: str) -> list[int]:
    """Lines of imports inside functions with no reason comment on their lines or right
    above them (a comment above a run of imports covers the run)."""
    tree = ast.parse(source)
    comments = _comments(source)
    lines = source.splitlines()
    late = [n for f in ast.walk(tree) if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
            for n in ast.walk(f) if isinstance(n, ast.Import | ast.ImportFrom)]
    starts = {n.end_lineno: n.lineno for n in late}  # an import ending on a line -> its start
    bad = []
    for node in sorted(set(late), key=lambda n: n.lineno):
        if any(comments.get(i) for i in range(node.lineno, node.end_lineno + 1)):
            continue
        above = node.lineno - 1
        while above in starts:  # the run of imports right above this one
            above = starts[above] - 1
        if not (above >= 1 and lines[above - 1].strip().startswith("#") and comments.get(above)):
            bad.append(node.lineno)
    return bad


def chdirs(source: str) -> list[int]:
    """Lines that change (or could change) the working directory."""
    return sorted({n.lineno for n in ast.walk(ast.parse(source))
                   if (isinstance(n, ast.Attribute) and n.attr in ("chdir", "fchdir"))
                   or (isinstance(n, ast.Name) and n.id in ("chdir", "fchdir"))
                   or (isinstance(n, ast.ImportFrom) and any(a.name in ("chdir", "fchdir")
                                                             for a in n.names))})


# -- the checks checked -----------------------------------------------------------------------


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
    found = [i for i in table.collect(source, "cnnlib.sub.x", False, known) if i.target in known]
    assert {i.target for i in found} == {
        "cnnlib.a", "cnnlib.b", "cnnlib.c", "cnnlib.d", "cnnlib.e", "cnnlib.f", "cnnlib.sub.g"}
    assert {i.target for i in found if i.in_function} == {
        "cnnlib.d", "cnnlib.e", "cnnlib.f", "cnnlib.sub.g"}
    assert {i.target: i.names for i in found}["cnnlib.b"] == ("something",)
    # in a package's __init__, "." is the package itself
    assert {i.target for i in table.collect("from .g import h", "cnnlib.sub", True, known)} == {
        "cnnlib.sub.g"}
    # a name taken from the package's __init__ is an import of the package
    assert [(i.target, i.names) for i in table.collect(
        "from . import load_model", "cnnlib.a", False, known)] == [("cnnlib", ("load_model",))]


def test_find_cycle_reports_the_path():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_every_module_has_a_layer():
    assert layer("cnnlib") == "public API" and layer("cnnlib.cli") == "entry points"
    assert layer("cnnlib.viz.charts") == "viz" and layer("cnnlib.study.cache") == "study"
    assert layer("cnnlib.helpers") is None
    unplaced = sorted(m for m in _modules() if layer(m) is None)
    assert not unplaced, f"modules in no layer (add them to LAYERS and ARCHITECTURE.md): {unplaced}"


def test_the_facade_finder_sees_every_kind_of_re_export():
    known = {"cnnlib.models", "cnnlib.models.a", "cnnlib.models.b"}
    source = """
import torch as torch
from cnnlib.x import load as load, keep
from cnnlib.y import helper  # noqa: F401
__all__ = ["keep", "mine"]
def mine(): ...
"""
    assert sorted(f.split(": ", 1)[1] for f in facades("cnnlib.z", source, False, known)) == [
        "__all__ lists 'keep', imported", "`load as load` re-exports it",
        "`torch as torch` re-exports it", "an unused import kept (noqa: F401)"]
    # a package importing its own submodules so that they run (registration) is no facade
    families = "from cnnlib.models import a, b  # noqa: F401\n"
    assert facades("cnnlib.models", families, True, known) == []
    assert facades("cnnlib.other", families, True, known)
    assert bindings("import os\nfrom a import b as c\nX = 1\nif X:\n    def f(): ...\n") == (
        {"os", "c"}, {"X", "f"})


def test_the_comment_check_sees_late_imports_without_a_reason():
    source = '''
import os  # module level: no reason needed

def f():
    import json  # lazy: only f needs it
    # optional: the cluster extra
    import ray
    import ray.util
    x = 1
    from x import (
        y,
    )
    import z  # noqa: F401
    # a comment about x, then a blank line

    import w
'''
    assert undocumented_late_imports(source) == [10, 13, 16]


def test_the_chdir_check_sees_every_spelling():
    assert chdirs("import os\nos.chdir('x')\nfrom os import chdir\nimport contextlib\n"
                  "with contextlib.chdir('y'):\n    pass\n") == [2, 3, 5]
    assert chdirs("import os\nos.getcwd()\n") == []


# -- the rules --------------------------------------------------------------------------------


def wrong_way(graph: dict[str, set[str]]) -> list[str]:
    """Imports that break the layers: the core reaching the study layer or the CLI, viz
    reaching study, anything reaching up, anything but `python -m cnnlib` importing the CLI."""
    bad = []
    for m, targets in sorted(graph.items()):
        for t in sorted(targets):
            if layer(m) in CORE and layer(t) not in CORE:
                bad.append(f"{m} ({layer(m)}) imports {t}: the core knows nothing of the study")
            elif layer(m) == "viz" and layer(t) == "study":
                bad.append(f"{m} imports {t}: figures take data, not the study")
            elif t == "cnnlib.cli" and m != "cnnlib.__main__":
                bad.append(f"{m} imports {t}: nothing imports the CLI")
            elif layer(m) and layer(t) and rank(t) > rank(m):
                bad.append(f"{m} ({layer(m)}) imports {t} ({layer(t)}): upwards")
    return bad


def test_the_layer_check_sees_every_wrong_way():
    graph = {"cnnlib.data.cifar": {"cnnlib.study.cache"},  # at module level or in a function
             "cnnlib.training.loop": {"cnnlib.viz.charts", "cnnlib.data.cifar"},
             "cnnlib._fileio": {"cnnlib.cli"},
             "cnnlib.viz.charts": {"cnnlib.study.table"},
             "cnnlib.study.report": {"cnnlib.cli", "cnnlib.viz.charts"},
             "cnnlib.data.augment": {"cnnlib.models.registry"},
             "cnnlib.__main__": {"cnnlib.cli"}}
    assert [line.split(" ")[0] for line in wrong_way(graph)] == [
        "cnnlib._fileio", "cnnlib.data.augment", "cnnlib.data.cifar", "cnnlib.study.report",
        "cnnlib.training.loop", "cnnlib.viz.charts"]


def test_imports_point_one_way():
    graph = _graph()
    assert {"cnnlib.training.loop", "cnnlib.study.cache", "cnnlib.viz.charts"} <= set(graph)
    bad = wrong_way(graph)
    assert not bad, "imports against the layers (ARCHITECTURE.md, Rules):\n" + "\n".join(bad)


def test_the_import_graph_is_acyclic():
    graph = _graph()
    assert "cnnlib.training.loop" in graph["cnnlib.training.launch"]  # the launcher sits above
    cycle = find_cycle(graph)
    assert not cycle, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize(("lower", "higher"), [
    ("cnnlib.training.checkpoint", "cnnlib.compress"),  # load_model's kinds come from above
    ("cnnlib.training.distributed", "cnnlib.training.loop"),
    ("cnnlib.training.distributed", "cnnlib.training.launch"),
    ("cnnlib.training.loop", "cnnlib.training.launch"),
])
def test_lower_modules_do_not_reach_up(lower, higher):
    graph = _graph()
    seen, todo = set(), [lower]
    while todo:  # everything `lower` loads, directly or not
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += graph.get(m, ())
    assert not {m for m in seen if m == higher or m.startswith(higher + ".")}


def _importers() -> dict[str, str]:
    """Source of every module that imports cnnlib: the package, benchmarks, tools, notebooks."""
    out = {m: s for m, s in _sources().items()}
    for folder in ("benchmarks", "tools"):
        out.update({f"{folder}/{p.name}": p.read_text() for p in sorted((ROOT / folder).glob("*.py"))})
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = [c["source"] for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code"]
        code = "\n".join("".join(c) if isinstance(c, list) else c for c in cells)
        out[f"notebooks/{nb.name}"] = "\n".join(
            line for line in code.splitlines() if not line.lstrip().startswith(("%", "!")))
    return out


def borrowed(importers: dict[str, str], mods: dict) -> list[str]:
    """Names taken from a module that only imports them (the package itself excepted)."""
    known = set(mods)
    only_imported = {name: bindings(m.source)[0] for name, m in mods.items()}
    bad = []
    for who, source in importers.items():
        inside = mods.get(who)
        module = who if inside else "cnnlib.__outside__"  # outside the package: no relative imports
        is_package = bool(inside) and inside.path.name == "__init__.py"
        for imp in table.collect(source, module, is_package, known):
            for name in imp.names:
                if imp.target != "cnnlib" and name in only_imported.get(imp.target, ()):
                    bad.append(f"{who}:{imp.line}: takes {name!r} from {imp.target}, which "
                               "only imports it: take it from where it is defined")
    return bad


def test_the_borrowed_name_check(tmp_path):
    package = tmp_path / "cnnlib"
    package.mkdir()
    (package / "__init__.py").write_text("from cnnlib.a import f\n")
    (package / "a.py").write_text("def f(): ...\n")
    (package / "b.py").write_text("from cnnlib.a import f\nG = 1\n")
    mods = table.modules(package)
    code = "from cnnlib import f\nfrom cnnlib.b import G\nfrom cnnlib.b import f\n"
    assert borrowed({"notebooks/x.ipynb": code}, mods) == [
        "notebooks/x.ipynb:3: takes 'f' from cnnlib.b, which only imports it: take it from "
        "where it is defined"]


def test_no_module_but_the_public_api_re_exports():
    mods = _modules()
    bad = [f for name, m in mods.items() if name != "cnnlib"
           for f in facades(name, m.source, m.path.name == "__init__.py", set(mods))]
    bad += borrowed(_importers(), mods)
    assert not bad, "re-exports outside cnnlib/__init__.py:\n" + "\n".join(bad)


def test_every_import_inside_a_function_says_why():
    bad = [f"{m.path.relative_to(ROOT)}:{line}"
           for m in _modules().values() for line in undocumented_late_imports(m.source)]
    assert not bad, ("imports inside a function without a reason comment (on the line or "
                     "the line above: what it costs at import, or what it would cycle):\n"
                     + "\n".join(bad))


def test_no_module_changes_the_working_directory():
    bad = [f"{m}:{line}" for m, s in _sources().items() for line in chdirs(s)]
    assert not bad, f"os.chdir in cnnlib (pass paths instead): {bad}"


class LongModuleWarning(UserWarning):
    pass


def test_long_modules_are_flagged_not_failed():
    sizes = {m: len(s.splitlines()) for m, s in _sources().items()}
    long = {m: n for m, n in sorted(sizes.items()) if n > SOFT_LIMIT}
    if long:
        warnings.warn(LongModuleWarning(
            f"modules over {SOFT_LIMIT} lines (one role each? split by role if not): {long}"),
            stacklevel=1)
    assert sizes["cnnlib.training.loop"] > 0


def test_architecture_md_holds_the_generated_import_table():
    text = (ROOT / "ARCHITECTURE.md").read_text()
    new = table.with_table(text, table.table(_modules()))  # ValueError without the markers
    diff = "\n".join(difflib.unified_diff(text.splitlines(), new.splitlines(), "ARCHITECTURE.md",
                                          "generated", lineterm="", n=0))
    assert new == text, ("ARCHITECTURE.md's import table differs from the code; rewrite it with "
                         "`python tools/architecture_table.py --write`:\n" + diff)


def test_the_table_follows_the_code(tmp_path):
    package = tmp_path / "cnnlib"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text('"""The package."""\n')
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "a.py").write_text("from cnnlib.sub import b\n")
    (package / "sub" / "b.py").write_text("def f():\n    import cnnlib.sub.a  # a cycle otherwise\n")
    generated = table.table(table.modules(package))
    assert "`sub.a` | `sub.b` | - |" in generated
    assert "`sub.b` | - | `sub.a` |" in generated  # inside a function only
    doc = f"# Title\n\n{table.BEGIN}\n| stale |\n{table.END}\nafter\n"
    new = table.with_table(doc, generated)
    assert "stale" not in new and generated in new and new.endswith(f"{table.END}\nafter\n")
    assert table.with_table(new, generated) == new
    with pytest.raises(ValueError):
        table.with_table("# no markers\n", generated)

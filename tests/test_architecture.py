"""The shape of the code base, checked from the source text (nothing is imported or run).

Three bars anyone can run:

* no import circle between the modules of ``nnx/``;
* ``backends/`` imports nothing from ``nnx`` (and ``nnx/`` only ``nnx`` and ``backends`` of this
  repository's packages);
* ``duplicates`` reports no pair of repeated code inside ``nnx/`` or ``backends/``.

How the import graph is built (``test_no_import_cycle_inside_nnx``)
-------------------------------------------------------------------
Every ``.py`` file under ``nnx/`` is a node named by its module (``nnx/nn/layers.py`` is
``nnx.nn.layers``; a package's ``__init__.py`` is the package itself: ``nnx/nn/__init__.py`` is
``nnx.nn``). An edge ``A -> B`` is an import in A's source, wherever it stands: at module level,
inside a function, a class, a ``try`` or an ``if`` -- a lazy import inside a function is still a
dependency, it only hides the circle from the interpreter. Only the body of an
``if TYPE_CHECKING:`` (or ``if typing.TYPE_CHECKING:``) block is left out; its ``else`` counts.
``importlib.import_module("nnx.x")`` and ``__import__("nnx.x")`` with a literal name count too.

Which module an import names:

* relative imports are resolved against A's package (``from .. import x`` in ``nnx/nn/layers.py``
  is ``from nnx import x``);
* ``import nnx.functional`` / ``import nnx.functional as F`` -> ``nnx.functional``;
* ``from P import name`` -> ``P.name`` when ``P.name`` is a module of ``nnx/`` (a submodule or a
  subpackage), else ``P`` itself (``name`` is then an attribute set by ``P``'s ``__init__``).
  So ``from .. import functional as F`` inside ``nnx/nn/layers.py`` is an edge to
  ``nnx.functional``, not to ``nnx``; ``from nnx import Tensor`` or a bare ``import nnx`` is an
  edge to ``nnx`` (the top ``__init__``).

Package ``__init__`` files: importing a submodule makes Python run the ``__init__`` of every
package on its path first, but that is not counted as an edge: a module depends on what it names,
so ``from .nn import layers`` is an edge to ``nnx.nn.layers`` only, while ``import nnx.nn`` or
``from . import nn`` (naming the package) is an edge to ``nnx.nn``'s ``__init__``. A package's
``__init__`` importing its own submodules (``nnx/__init__.py`` imports nearly everything below
it) is an ordinary edge. The consequence is the rule we want: a submodule that names its parent
package (``import nnx`` in ``nnx/data.py``, ``from . import Linear`` in ``nnx/nn/x.py``) closes a
circle exactly when that ``__init__`` imports the submodule back, directly or through others --
which ``nnx/__init__.py`` does for every module below it, so edges *into* ``nnx`` from its own
submodules are what make circles; reaching a sibling through its own module name never does.
"""
from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NNX = ROOT / "nnx"
BACKENDS = ROOT / "backends"


# ----------------------------------------------------------------------------- import collection

def _module_name(path: Path, base: Path) -> str:
    """``base/nnx/nn/layers.py`` -> ``nnx.nn.layers``; a package's ``__init__.py`` -> the package."""
    rel = path.relative_to(base).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules_under(top: Path) -> dict[str, Path]:
    """Module name -> file, for every .py file below ``top`` (hidden and cache folders skipped)."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__pycache__")))
        for fn in sorted(filenames):
            if fn.endswith(".py"):
                p = Path(dirpath) / fn
                found[_module_name(p, top.parent)] = p
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _walk_skipping_type_checking(tree: ast.AST, skip_type_checking: bool = True):
    """Every node of ``tree`` except those inside the body of an ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if skip_type_checking and isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(reversed(node.orelse))
            stack.append(node.test)
            continue
        stack.extend(reversed(list(ast.iter_child_nodes(node))))


def _resolve_relative(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute module a ``from <level dots><target> import ...`` in ``module`` names."""
    package = module if is_package else module.rpartition(".")[0]
    parts = package.split(".") if package else []
    if level - 1 > len(parts):
        raise ValueError(f"relative import beyond the top package in {module}")
    base = parts[:len(parts) - (level - 1)]
    if target:
        base += target.split(".")
    return ".".join(base)


def raw_imports(path: Path, module: str, skip_type_checking: bool = True):
    """``(line, imported_module, [names])`` for every import statement in one file.

    ``names`` are the names of a ``from ... import`` (empty for ``import x`` and literal
    ``importlib.import_module`` / ``__import__`` calls)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    for node in _walk_skipping_type_checking(tree, skip_type_checking):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                target = _resolve_relative(module, is_package, node.level, node.module)
            else:
                target = node.module
            yield node.lineno, target, [a.name for a in node.names]
        elif isinstance(node, ast.Call) and node.args:
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", None)
            arg = node.args[0]
            if name in ("import_module", "__import__") and isinstance(arg, ast.Constant) \
                    and isinstance(arg.value, str):
                target = arg.value
                if target.startswith("."):  # import_module(".x", __package__)
                    level = len(target) - len(target.lstrip("."))
                    target = _resolve_relative(module, is_package, level, target[level:] or None)
                yield node.lineno, target, []


def _in_package(name: str, top: str) -> bool:
    return name == top or name.startswith(top + ".")


# The repository's backends/ and benchmarks/ folders install as nnx.backends and nnx.benchmarks:
# subpackages of nnx by name, but outside the nnx/ tree (backends/ imports nothing from nnx, see
# below), so imports of them are not edges between nnx/'s modules.
SIBLINGS = ("nnx.backends", "nnx.benchmarks")


def _sibling(name: str) -> bool:
    return any(_in_package(name, s) for s in SIBLINGS)


def import_graph(top: Path = NNX):
    """``{module: {imported module: [line, ...]}}`` between the modules below ``top``."""
    modules = _modules_under(top)
    top_name = top.name
    graph: dict[str, dict[str, list[int]]] = {m: defaultdict(list) for m in modules}
    for module, path in modules.items():
        for line, target, names in raw_imports(path, module):
            if not _in_package(target, top_name) or _sibling(target):
                continue
            targets = []
            if names:
                for n in names:
                    sub = f"{target}.{n}"
                    if not _sibling(sub):
                        targets.append(sub if sub in modules else target)
            else:
                targets.append(target)
            for t in targets:
                # ``import nnx.foo.bar`` of a module not in the tree (a typo, a removed module):
                # count it against the nearest existing package so it still shows up.
                while t not in modules and "." in t:
                    t = t.rpartition(".")[0]
                graph[module][t].append(line)  # a module importing itself is a 1-circle
    return {m: dict(e) for m, e in graph.items()}


# ----------------------------------------------------------------------------- cycle finding

def strongly_connected_components(graph):
    """Tarjan's algorithm (iterative); components of more than one module, or with a self-loop."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = [0]

    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, it = work[-1]
            advanced = False
            for nxt in it:
                if nxt not in graph:
                    continue
                if nxt not in index:
                    index[nxt] = low[nxt] = counter[0]
                    counter[0] += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == node:
                        break
                if len(comp) > 1 or node in graph[node]:
                    out.append(sorted(comp))
    return sorted(out)


def _shortest_path(graph, comp, src, dst):
    """Shortest path ``src -> ... -> dst`` inside the component (breadth first, sorted order)."""
    prev = {src: None}
    frontier = [src]
    while frontier:
        nxt_frontier = []
        for node in frontier:
            for nxt in sorted(graph[node]):
                if nxt not in comp or nxt in prev:
                    continue
                prev[nxt] = node
                if nxt == dst:
                    path = [dst]
                    while prev[path[-1]] is not None:
                        path.append(prev[path[-1]])
                    return path[::-1]
                nxt_frontier.append(nxt)
        frontier = nxt_frontier
    return None


def covering_cycles(graph, component):
    """Circles that together use every import edge inside the component, shortest first: for each
    edge ``a -> b`` not yet on a listed circle, ``a -> b`` plus the shortest way from b back to a."""
    comp = set(component)
    edges = sorted((a, b) for a in component for b in graph[a] if b in comp)
    cycles, covered = [], set()
    for a, b in edges:
        if (a, b) in covered:
            continue
        back = [a] if a == b else _shortest_path(graph, comp, b, a)
        cyc = [a] + back if a != b else [a, a]
        covered.update(zip(cyc, cyc[1:]))
        cycles.append(cyc)
    return sorted(cycles, key=lambda c: (len(c), c))


def describe_cycles(graph, top: Path = NNX) -> str:
    """Each knot of mutually importing modules, with circles covering all its edges and the
    file:line of every import on them."""
    lines = []
    modules = _modules_under(top)
    for comp in strongly_connected_components(graph):
        lines.append(f"knot of {len(comp)} modules: {', '.join(comp)}")
        for cyc in covering_cycles(graph, comp):
            lines.append(f"  circle: {' -> '.join(cyc)}")
            for a, b in zip(cyc, cyc[1:]):
                rel = modules[a].relative_to(top.parent)
                where = ", ".join(f"{rel}:{ln}" for ln in sorted(set(graph[a][b])))
                lines.append(f"      {a} -> {b}   ({where})")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the bars

def test_no_import_cycle_inside_nnx():
    graph = import_graph(NNX)
    assert "nnx" in graph and "nnx.tensor" in graph  # the walk found the package
    report = describe_cycles(graph)
    print(report or "no import circle inside nnx/")
    assert not report, "import circles inside nnx/ (see the module docstring for the rule):\n" + report


def test_backends_import_nothing_from_nnx():
    # Strict here: even a typing-only import under TYPE_CHECKING would couple the backends to nnx.
    offenders = []
    for module, path in _modules_under(BACKENDS).items():
        for line, target, _ in raw_imports(path, module, skip_type_checking=False):
            if target and _in_package(target, "nnx"):
                offenders.append(f"{path.relative_to(ROOT)}:{line}: imports {target}")
    assert not offenders, "backends/ must import nothing from nnx:\n" + "\n".join(offenders)


def _first_party_packages():
    return sorted(p.name for p in ROOT.iterdir()
                  if p.is_dir() and (p / "__init__.py").exists() and not p.name.startswith("."))


# The one sanctioned exception: ``nnx bench`` (the command line, an entry point above the library)
# hands its arguments to the benchmark suite.
_ALLOWED_FIRST_PARTY = {("nnx.cli", "nnx.benchmarks")}


def test_nnx_is_written_only_against_backends():
    """Of this repository's own packages, nnx/ imports only nnx and its backends (nnx.backends;
    no tests/, no benchmarks/, nothing by the folders' top-level names), but for the
    ``nnx bench`` entry point."""
    others = [p for p in _first_party_packages() if p != "nnx"] + ["nnx.benchmarks", "nnx.tests"]
    offenders = []
    for module, path in _modules_under(NNX).items():
        for line, target, names in raw_imports(path, module):
            for t in [target] + [f"{target}.{n}" for n in names]:
                if (module, t) in _ALLOWED_FIRST_PARTY:
                    continue
                if t and any(_in_package(t, o) for o in others):
                    offenders.append(f"{path.relative_to(ROOT)}:{line}: imports {t}")
    assert not offenders, "\n".join(offenders)


# The checker itself, on small made-up trees, so a broken walk cannot pass the bar by seeing nothing.

def _tree(tmp_path, files):
    for rel, text in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return tmp_path


def _graph_of(tmp_path, files):
    return import_graph(_tree(tmp_path, files) / "pkg")


def test_checker_rules_on_a_made_up_package(tmp_path):
    files = {
        "pkg/__init__.py": "from . import a, sub\nfrom .b import thing\n",
        "pkg/a.py": ("from typing import TYPE_CHECKING\n"
                     "if TYPE_CHECKING:\n    from .b import thing\n"
                     "def f():\n    from . import c\n"),
        "pkg/b.py": "from .sub import leaf\nthing = 1\n",
        "pkg/c.py": "import pkg\n",                         # names the top __init__ -> circle
        "pkg/sub/__init__.py": "from .leaf import x\n",
        "pkg/sub/leaf.py": "from .. import d\nfrom . import x2\nx = 1\n",  # x2: attr of pkg.sub
        "pkg/d.py": "",
    }
    g = _graph_of(tmp_path, files)
    assert set(g["pkg"]) == {"pkg.a", "pkg.sub", "pkg.b"}
    assert set(g["pkg.a"]) == {"pkg.c"}                     # TYPE_CHECKING skipped, lazy kept
    assert set(g["pkg.b"]) == {"pkg.sub.leaf"}              # submodule, not pkg.sub's __init__
    assert set(g["pkg.sub.leaf"]) == {"pkg.d", "pkg.sub"}   # ``from .. import d`` -> pkg.d
    comps = strongly_connected_components(g)
    # pkg -> a -> c -> pkg, and pkg.sub -> leaf -> pkg.sub (leaf names its parent's attribute x2,
    # and that __init__ imports leaf back).
    assert comps == [["pkg", "pkg.a", "pkg.c"], ["pkg.sub", "pkg.sub.leaf"]]
    text = describe_cycles(g, tmp_path / "pkg")
    assert "pkg.c -> pkg" in text and "pkg/c.py:1" in text
    assert "pkg.sub.leaf -> pkg.sub   (pkg/sub/leaf.py:2)" in text


def test_checker_finds_no_circle_where_there_is_none(tmp_path):
    files = {
        "pkg/__init__.py": "from . import a, b\nfrom .sub import leaf\n",
        "pkg/a.py": "from . import b\nimport importlib\n",
        "pkg/b.py": "x = 1\n",
        "pkg/sub/__init__.py": "from . import leaf\n",
        "pkg/sub/leaf.py": "from ..a import x\nfrom .. import b as B\n",
    }
    g = _graph_of(tmp_path, files)
    assert strongly_connected_components(g) == []
    files["pkg/b.py"] = "def f():\n    import importlib\n    importlib.import_module('pkg.a')\n"
    g = _graph_of(tmp_path, files)
    assert strongly_connected_components(g) == [["pkg.a", "pkg.b"]]
    files["pkg/b.py"] = "import importlib\nimportlib.import_module('.a', __package__)\n"
    g = _graph_of(tmp_path, files)
    assert strongly_connected_components(g) == [["pkg.a", "pkg.b"]]


# ----------------------------------------------------------------------------- duplicates

_ROW = re.compile(r"^D\d+\s+(\S+?):\d+-\d+\s+~\s+(\S+?):\d+-\d+")


@pytest.mark.skipif(shutil.which("duplicates") is None,
                    reason="the `duplicates` command is not on PATH (it is a local review tool, "
                           "not a pip dependency)")
def test_duplicates_reports_no_pair_inside_nnx_or_backends():
    """Every pair `duplicates` lists with both sides in nnx/ or backends/ (boilerplate rows too)."""
    proc = subprocess.run(["duplicates", "--repo", str(ROOT), "--most", "200", "--seconds", "120"],
                          capture_output=True, text=True, timeout=300)
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr
    assert "incomplete:" not in out, out
    inside = []
    for line in out.splitlines():
        m = _ROW.match(line.strip())
        if m and all(side.startswith(("nnx/", "backends/")) for side in m.groups()):
            inside.append(line.strip())
    if "more pairs)" in out and not inside:
        pytest.fail("`duplicates --most 200` cut its list; raise --most:\n" + out)
    print(out)
    assert not inside, "duplicated code inside nnx/ or backends/:\n" + "\n".join(inside)

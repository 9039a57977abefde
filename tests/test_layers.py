"""The imports of ``app/`` point one way: down the layers that docs/design.md ("Layers") declares.

Every import of an ``app`` module counts, wherever it stands: at the top of a module,
inside a function, or under ``if TYPE_CHECKING:``. A lazy or type-only import is still
a dependency a reader has to follow, and hiding a cycle in a function only moves it from
import time to run time. No import is exempt.

Two graphs are checked for cycles: modules, and "nodes", where each top-level module
of ``app/`` is a node of its own and each sub-package (``app/server/``, ...) is one node.
Importing ``app.server.proof`` is an edge to that module only, not to the package's
``__init__`` (which holds a docstring and nothing else).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "app"
DESIGN = ROOT / "docs" / "design.md"

# The layers, lowest first: name -> (rank, members). A node may import the nodes of
# its own layer and of any layer of lower rank; server and storage share a rank and
# so never import each other. docs/design.md's "Layers" table says the same (checked
# below), with the reasons.
LAYERS: dict[str, tuple[int, frozenset[str]]] = {
    "core": (
        0,
        frozenset(
            {
                "app",
                "app.config",
                "app.endpoints",
                "app.errors",
                "app.hashing",
                "app.interrupt",
                "app.names",
                "app.progress",
                "app.results",
                "app.retry",
                "app.selection",
                "app.streaks",
                "app.timestamps",
                "app.urls",
            }
        ),
    ),
    "server": (1, frozenset({"app.server"})),
    "storage": (1, frozenset({"app.storage"})),
    "reporting": (2, frozenset({"app.reporting"})),
    "orchestration": (
        3,
        frozenset(
            {
                "app.__main__",
                "app.catchup",
                "app.claims",
                "app.config_show",
                "app.job",
                "app.lifecycle",
                "app.planning",
                "app.recording",
                "app.tally",
                "app.transfer",
            }
        ),
    ),
}


@dataclass(frozen=True)
class Import:
    """One ``import`` or ``from ... import`` of an app module."""

    source: str  # the importing module, dotted
    line: int
    target: str  # the imported module, dotted

    def __str__(self) -> str:
        return f"{self.source}:{self.line} -> {self.target}"


def modules(root: Path = APP) -> dict[str, Path]:
    """Every module of the package at ``root``, by dotted name (a package by its own name)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = (root.name, *path.relative_to(root).with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(known: Mapping[str, Path]) -> list[Import]:
    """Every import, anywhere in each module, of a module in ``known``."""
    top = next(iter(known)).split(".")[0]
    found = []
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    module = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    module = node.module or ""
                # ``from app import interrupt`` imports the module app.interrupt;
                # ``from app import __version__`` imports from the package app.
                targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in known else module for a in node.names]
            else:
                continue
            for target in dict.fromkeys(targets):
                if target == top or target.startswith(f"{top}."):
                    # ``import app.x.y`` names a module that exists; anything else is a bug here.
                    assert target in known, f"{name}:{node.lineno} imports {target}, which is no module of {top}"
                    found.append(Import(name, node.lineno, target))
    return found


def node_of(module: str) -> str:
    """``app.server.remote`` -> ``app.server``; a top-level module is its own node."""
    return ".".join(module.split(".")[:2])


def layer_of(node: str) -> str | None:
    return next((name for name, (_, members) in LAYERS.items() if node in members), None)


def cycles(edges: Iterable[tuple[str, str, Import]]) -> list[list[Import]]:
    """One cycle (the imports that close it) per strongly connected group of the graph."""
    graph: dict[str, dict[str, Import]] = {}
    for a, b, imp in edges:
        if a != b:
            graph.setdefault(a, {}).setdefault(b, imp)
            graph.setdefault(b, {})
    # Tarjan's algorithm, iterative: the graph is small, but recursion limits are not a test's business.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    group = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        group.append(w)
                        if w == v:
                            break
                    if len(group) > 1:
                        groups.append(sorted(group))
    found = []
    for group in groups:
        # The shortest way back to the group's first member, through the group.
        members, first = set(group), group[0]
        paths: dict[str, list[Import]] = {first: []}
        frontier = [first]
        while first not in [w for v in frontier for w in graph[v]]:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v]):
                    if w in members and w not in paths:
                        paths[w] = [*paths[v], graph[v][w]]
                        nxt.append(w)
            frontier = nxt
        last = next(v for v in frontier if first in graph[v])
        found.append([*paths[last], graph[last][first]])
    return found


def violations(found: Iterable[Import]) -> list[str]:
    """Each import between nodes that does not point to the same or a lower layer, with why."""
    wrong = []
    for imp in found:
        a, b = node_of(imp.source), node_of(imp.target)
        if a == b:
            continue
        la, lb = layer_of(a), layer_of(b)
        if la is None or lb is None or la == lb:
            continue  # an undeclared node fails test_every_node_has_one_layer
        if LAYERS[lb][0] >= LAYERS[la][0]:
            wrong.append(f"{imp} ({la} may not import {lb})")
    return wrong


def _render(found: list[list[Import]]) -> str:
    return "\n".join("cycle: " + ", ".join(str(imp) for imp in cycle) for cycle in found)


# -- the checks --------------------------------------------------------------------


def test_every_node_has_one_layer() -> None:
    nodes = {node_of(name) for name in modules()}
    declared = [member for _, members in LAYERS.values() for member in members]
    assert sorted(nodes - set(declared)) == [], "modules with no layer: add them to LAYERS and docs/design.md"
    assert sorted(set(declared) - nodes) == [], "LAYERS names modules that do not exist"
    assert len(declared) == len(set(declared)), "a node is in two layers"


def test_no_import_cycle_between_modules() -> None:
    found = cycles((imp.source, imp.target, imp) for imp in imports(modules()))
    assert not found, "\n" + _render(found)


def test_no_import_cycle_between_sub_packages_and_top_level_modules() -> None:
    found = cycles((node_of(imp.source), node_of(imp.target), imp) for imp in imports(modules()))
    assert not found, "\n" + _render(found)


def test_every_import_follows_the_layers() -> None:
    wrong = violations(imports(modules()))
    assert not wrong, "imports against the layers (docs/design.md, Layers):\n" + "\n".join(wrong)


def test_design_doc_declares_the_same_layers() -> None:
    text = DESIGN.read_text()
    # The section runs to the next heading of its level, wherever it stands in the page.
    section = re.split(r"^## Layers$", text, maxsplit=1, flags=re.MULTILINE)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| *(\w+) *\| *(\d+) *\| *([^|]+)\|", section, flags=re.MULTILINE)
    documented = {
        layer: (int(rank), frozenset(f"app.{m}" if m != "app" else m for m in re.findall(r"`([\w.]+)/?`", members)))
        for layer, rank, members in rows
    }
    assert documented == LAYERS


# -- the checker itself, on a package made for the purpose -------------------------


def _package(tmp_path: Path, files: Mapping[str, str]) -> dict[str, Path]:
    for rel, text in files.items():
        path = tmp_path / "pkg" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return modules(tmp_path / "pkg")


def test_a_cycle_through_a_function_level_import_is_found_and_named(tmp_path: Path) -> None:
    known = _package(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "from pkg.b import x\n",
            "b.py": "x = 1\n\ndef f():\n    from pkg import a\n",
            "c.py": "from . import a\n",
        },
    )
    found = imports(known)
    assert {str(imp) for imp in found} == {"pkg.a:1 -> pkg.b", "pkg.b:4 -> pkg.a", "pkg.c:1 -> pkg.a"}
    assert _render(cycles((i.source, i.target, i) for i in found)) == "cycle: pkg.a:1 -> pkg.b, pkg.b:4 -> pkg.a"


def test_a_type_checking_import_counts(tmp_path: Path) -> None:
    known = _package(
        tmp_path,
        {
            "__init__.py": "",
            "sub/__init__.py": "",
            "sub/m.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.top import T\n",
            "top.py": "from pkg.sub.m import *\n",
        },
    )
    found = imports(known)
    assert _render(cycles((node_of(i.source), node_of(i.target), i) for i in found)) == (
        "cycle: pkg.sub.m:3 -> pkg.top, pkg.top:1 -> pkg.sub.m"
    )


def test_the_layout_table_names_every_module() -> None:
    text = (ROOT / "docs" / "design.md").read_text()
    rows = re.findall(r"^\| `app/(\w*)/?`[^|]*\|([^\n]*)\|$", text, flags=re.MULTILINE)
    assert rows, "docs/design.md has no layout table: this test's pattern is wrong"
    named = {
        f"app.{package}.{m}" if package else f"app.{m}"
        for package, what in rows
        for m in re.findall(r"`([a-z_][a-z0-9_]*)`", what)
    }
    actual = {name for name, path in modules().items() if path.name != "__init__.py"}
    assert sorted(actual - named) == [], "modules the layout table in docs/design.md does not name"
    assert sorted(named - actual) == [], "modules the layout table in docs/design.md names that do not exist"

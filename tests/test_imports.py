"""No package of the project imports itself in a circle.

The graph is read from the source with ``ast``, not by importing it: every
``import`` and ``from ... import`` counts, relative ones resolved, wherever
it stands (also under ``if TYPE_CHECKING:`` and inside functions, where a
circle hides from the interpreter but not from the design). An edge goes to
the module imported, or to the package when a name of its ``__init__`` is.
A circle fails the test, named module by module.
"""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Where the project's packages are (each a directory with ``__init__.py``).
PACKAGES = (
    "provider_core",
    "backends/*/vm_provider_*",
    "examples/*/vm_provider_*",
    "tests/plugins/*",
    "tests/conformance/broken_backends/vm_provider_*",
)

Graph = dict[str, set[str]]


def packages(root: Path, patterns: Iterable[str] = PACKAGES) -> list[Path]:
    found: list[Path] = []
    for pattern in patterns:
        found += [p for p in sorted(root.glob(pattern)) if (p / "__init__.py").is_file()]
    return found


def modules(package: Path) -> Iterator[tuple[str, Path, bool]]:
    """(dotted name, file, is a package's ``__init__``) of every module."""
    for path in sorted(package.rglob("*.py")):
        parts = [package.name, *path.relative_to(package).with_suffix("").parts]
        init = parts[-1] == "__init__"
        if init:
            parts.pop()
        yield ".".join(parts), path, init


def _imported(tree: ast.AST, name: str, init: bool) -> Iterator[tuple[str, list[str]]]:
    """(module named, names taken from it) for each import in ``tree``."""
    package = name if init else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            yield target, [alias.name for alias in node.names]


def import_graph(roots: Iterable[Path]) -> Graph:
    """Module -> the project's modules it imports."""
    sources = {name: (path, init) for root in roots for name, path, init in modules(root)}
    graph: Graph = {name: set() for name in sources}
    for name, (path, init) in sources.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for target, names in _imported(tree, name, init):
            wanted = [f"{target}.{n}" for n in names if f"{target}.{n}" in sources]  # submodules taken by name
            if len(wanted) < len(names) or not names:
                wanted.append(target)  # names of the package itself, or a plain import
            for imported in wanted:
                module = imported
                while module and module not in sources:  # a.b.c of an unknown c: the package a.b
                    module = module.rpartition(".")[0]
                if module and module != name:
                    graph[name].add(module)
    return graph


def tangles(graph: Graph) -> list[set[str]]:
    """The groups of modules that import each other, directly or not
    (Tarjan's strongly connected components of more than one module)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def circle(graph: Graph, group: set[str]) -> list[str]:
    """A shortest circle through the group's first module (breadth first):
    its modules in import order, the first repeated at the end."""
    start = min(group)
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for nxt in sorted(graph[node] & group):
            if nxt == start:
                return [*paths[node], start]
            if nxt not in paths:
                paths[nxt] = [*paths[node], nxt]
                queue.append(nxt)
    raise AssertionError(f"no circle through {start}")  # pragma: no cover - a group is strongly connected


def test_no_package_of_the_project_imports_itself_in_a_circle() -> None:
    roots = packages(ROOT)
    assert {r.name for r in roots} >= {"provider_core", "vm_provider_libvirt", "vm_provider_proxmox", "vm_provider_sim"}
    graph = import_graph(roots)
    assert len(graph) > 80, "the graph misses most of the project's modules"
    assert "vm_provider_proxmox.inventory" in graph["vm_provider_proxmox.backend"]
    found = [
        f"{' -> '.join(circle(graph, group))} ({len(group)} modules import each other: {', '.join(sorted(group))})"
        for group in tangles(graph)
    ]
    assert found == [], "import circles:\n" + "\n".join(found)


def test_a_circle_hidden_under_type_checking_is_found(tmp_path: Path) -> None:
    """The check itself: a relative import under TYPE_CHECKING closes a circle."""
    package = tmp_path / "vm_provider_circle"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "backend.py").write_text("from . import ops\n")
    (package / "ops.py").write_text(
        textwrap.dedent(
            """
            from typing import TYPE_CHECKING

            from .helpers import tidy

            if TYPE_CHECKING:
                from .backend import Backend
            """
        )
    )
    (package / "helpers.py").write_text("import os\n")
    graph = import_graph(packages(tmp_path, ["vm_provider_*"]))
    assert graph["vm_provider_circle.ops"] == {"vm_provider_circle.backend", "vm_provider_circle.helpers"}
    (group,) = tangles(graph)
    assert group == {"vm_provider_circle.backend", "vm_provider_circle.ops"}
    assert circle(graph, group) == ["vm_provider_circle.backend", "vm_provider_circle.ops", "vm_provider_circle.backend"]


@pytest.mark.parametrize(
    ("source", "module", "init", "expected"),
    [
        ("from .. import errors", "pkg.sub.mod", False, {"pkg.errors"}),
        ("from ..errors import Bad", "pkg.sub.mod", False, {"pkg.errors"}),
        ("from . import mod", "pkg.sub", True, {"pkg.sub.mod"}),
        ("from pkg import Thing", "pkg.sub.mod", False, {"pkg"}),
        ("import pkg.errors", "pkg.sub.mod", False, {"pkg.errors"}),
        ("def f():\n    from pkg.sub import mod", "pkg.errors", False, {"pkg.sub.mod"}),
    ],
)
def test_imports_resolve_to_the_modules_they_load(
    tmp_path: Path, source: str, module: str, init: bool, expected: set[str]
) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    for path in ("__init__.py", "errors.py", "sub/__init__.py", "sub/mod.py"):
        (package / path).write_text("")
    file = package / ("/".join(module.split(".")[1:]) or ".") / "__init__.py" if init else None
    target = file or package / f"{'/'.join(module.split('.')[1:])}.py"
    target.write_text(source + "\n")
    assert import_graph([package])[module] == expected

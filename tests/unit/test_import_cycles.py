"""No import cycle among the project's modules.

A cycle makes import order matter (a module half-initialised when its partner reads it), and it
is how rooms that should be independent grow into one. Every import counts, including those under
``TYPE_CHECKING`` and inside functions: a deferred import hides a cycle, it does not remove it.
Shared types belong in a module that imports none of its users (``worker/pipelines/types.py``,
as cog's ``eventtypes.py``).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from tests.support.processes import REPO_ROOT

#: Top-level folders whose Python modules are checked, and the import root each lives under.
SOURCE_ROOTS: dict[str, Path] = {
    "core": REPO_ROOT,
    "api": REPO_ROOT,
    "worker": REPO_ROOT,
    "devstack": REPO_ROOT,
    "training": REPO_ROOT,
    "bench": REPO_ROOT,
    "tests": REPO_ROOT,
    "sfumato": REPO_ROOT / "client",
}


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under the source roots."""
    found: dict[str, Path] = {}
    for package, root in SOURCE_ROOTS.items():
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imported_names(path: Path, module: str, is_package: bool) -> Iterator[str]:
    """Every dotted name an import statement in ``path`` may load (absolute form)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            yield base
            for alias in node.names:
                yield f"{base}.{alias.name}"


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for imported in _imported_names(path, name, path.name == "__init__.py"):
            # Importing a.b.c runs a/__init__ and a/b/__init__ too, except the importer's own
            # packages: they are already initialising when their submodules run (a package's
            # __init__ re-exporting its submodules is not a cycle).
            parts = imported.split(".")
            for end in range(1, len(parts) + 1):
                target = ".".join(parts[:end])
                if target in modules and target != name and not name.startswith(target + "."):
                    graph[name].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_the_graph_sees_the_project() -> None:
    graph = _graph()
    assert "worker.pipelines.engine" in graph["worker.runtime.runner"]
    assert "core.config" in graph["api.app"]


def test_no_import_cycles() -> None:
    cycles = _cycles(_graph())
    assert not cycles, "import cycles (move shared types into a module none of them import):\n" + "\n".join(
        " <-> ".join(cycle) for cycle in cycles
    )


#: Which rooms a room may never import: the direction of dependencies between them.
FORBIDDEN: dict[str, tuple[str, ...]] = {
    # Shipped code never reaches into dev-only or never-shipped code.
    "core": ("api", "worker", "devstack", "training", "bench", "tests", "sfumato"),
    "api": ("worker", "devstack", "training", "bench", "tests", "sfumato"),
    "worker": ("api", "devstack", "training", "bench", "tests", "sfumato"),
    # Inside the worker: the runtime drives the pipelines, the pipelines load the built-in models.
    "worker.pipelines": ("worker.runtime",),
    "worker.builtin": ("worker.runtime", "worker.pipelines"),
    # The client stands alone (pip install sfumato).
    "sfumato": ("core", "api", "worker", "devstack", "training"),
}


def _inside(module: str, room: str) -> bool:
    return module == room or module.startswith(room + ".")


def test_rooms_import_in_one_direction() -> None:
    graph = _graph()
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in graph.items()
        for room, forbidden in FORBIDDEN.items()
        if _inside(module, room)
        for target in targets
        if any(_inside(target, other) for other in forbidden)
    )
    assert not wrong, "imports against the rooms' direction:\n" + "\n".join(wrong)

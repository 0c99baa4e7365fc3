"""The import graph of ``numpy_mvit2`` has no cycle (design.md, "Layers that only point one way").

Every ``import`` and ``from ... import`` statement of every ``.py`` file under ``numpy_mvit2/``
counts, wherever it is: at the top, inside a function, under ``if TYPE_CHECKING:``, in a
``try:``. The file is parsed, never imported, so a function-level import that only runs later, or a
block that only type checkers read, is an edge all the same: "hidden" cycles are cycles.

The edges are those Python's import system would follow, counted generously:

- ``import X.Y.Z`` -> ``X``, ``X.Y`` and ``X.Y.Z`` (Python imports each of them, in that order);
- ``from X import a`` -> ``X`` (executed first), ``X.a`` when that is a module of the package,
  and the packages above ``X`` (executed before ``X``) unless they are above the importing
  module itself (those are already being executed when it runs: a module is never said to import
  its own packages implicitly);
- relative imports are resolved against the importing module (``from . import x`` in a package's
  ``__init__`` names the package itself, and so is an edge to itself).

Only modules of the package count; a module importing itself is a cycle. The strictest reading
(``strict=True``) also counts, from ``from X import a``, the packages above the importing module
itself, as a checker that knows nothing of what is already running would: then a package's
``__init__`` that imports its own modules would close a cycle with each of them, and so the
package's ``__init__`` files import nothing of theirs (PEP 562's module ``__getattr__`` instead).
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "numpy_mvit2"


def module_names(package_dir: Path) -> dict[str, Path]:
    """Module name -> file, for every ``.py`` under ``package_dir`` (``__init__.py`` names its package)."""
    root = package_dir.name
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir).with_suffix("").parts
        if "__pycache__" in parts:
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join((root, *parts))] = path
    return modules


def _prefixes(name: str) -> list[str]:
    """``"a.b.c"`` -> ``["a", "a.b", "a.b.c"]``."""
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def import_graph(package_dir: Path, strict: bool = False) -> dict[str, dict[str, list[str]]]:
    """``{importer: {imported: ["file:line", ...]}}`` over the modules of the package in ``package_dir``
    (``strict``: the importing module's own packages count too, see the module docstring)."""
    modules = module_names(package_dir)
    graph: dict[str, dict[str, list[str]]] = {name: {} for name in modules}
    for importer, path in modules.items():
        is_package = path.name == "__init__.py"
        running = {importer} if strict else set(_prefixes(importer))  # already being executed
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))

        def edge(target: str, line: int) -> None:
            if target in modules:
                graph[importer].setdefault(target, []).append(f"{path.relative_to(package_dir.parent)}:{line}")

        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    for target in _prefixes(alias.name):
                        edge(target, node.lineno)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = importer.split(".") if is_package else importer.split(".")[:-1]
                    if node.level - 1 > len(base) - 1:
                        continue  # beyond the top of the package: not ours (and an ImportError)
                    base = base[: len(base) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                for target in _prefixes(source)[:-1]:
                    if target not in running:
                        edge(target, node.lineno)
                edge(source, node.lineno)
                for alias in node.names:
                    edge(f"{source}.{alias.name}", node.lineno)
    return graph


def find_cycles(graph: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """The cycles (``[a, b, ..., a]``) of the graph: in each strongly connected group of modules
    (Tarjan's algorithm), the shortest cycle through each member (breadth first), each cycle once."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(start: str) -> None:  # iterative, so that a deep graph cannot exhaust the recursion limit
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.append(member)
                        if member == node:
                            break
                    groups.append(sorted(group))

    for name in sorted(graph):
        if name not in index:
            visit(name)

    cycles = []
    for group in sorted(groups):
        members = set(group)
        if len(group) == 1 and group[0] not in graph[group[0]]:
            continue
        seen = set()
        for start in group:  # the shortest cycle through each member, so that every offending module is named
            cycle = _shortest_cycle(graph, members, start)
            key = frozenset(zip(cycle, cycle[1:]))
            if key not in seen:
                seen.add(key)
                cycles.append(cycle)
    return cycles


def _shortest_cycle(graph: dict[str, dict[str, list[str]]], members: set[str], start: str) -> list[str]:
    """``[start, ..., start]``, breadth first inside one strongly connected group."""
    previous: dict[str, str] = {}
    frontier = [start]
    while start not in previous:
        following = []
        for node in frontier:
            for child in sorted(graph[node]):
                if child in members and child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    cycle = [start]
    node = previous[start]
    while node != start:
        cycle.append(node)
        node = previous[node]
    cycle.append(start)
    return cycle[::-1]


def describe(graph: dict[str, dict[str, list[str]]], cycles: list[list[str]]) -> str:
    lines = []
    for cycle in cycles:
        lines.append(" -> ".join(cycle))
        for a, b in zip(cycle, cycle[1:]):
            where = sorted(set(graph[a][b]), key=lambda place: (place.rsplit(":", 1)[0], int(place.rsplit(":", 1)[1])))
            lines.append(f"    {a} -> {b}: {', '.join(where)}")
    return "\n".join(lines)


def test_the_package_imports_in_one_direction():
    graph = import_graph(PACKAGE)
    assert len(graph) > 10 and "numpy_mvit2.weights.files" in graph  # the walk found the package
    cycles = find_cycles(graph)
    report = describe(graph, cycles)
    print(report)
    assert not cycles, f"{len(cycles)} import cycle(s) in numpy_mvit2:\n{report}"


def test_no_cycle_even_counting_the_importers_own_packages():
    graph = import_graph(PACKAGE, strict=True)
    cycles = find_cycles(graph)
    assert not cycles, f"{len(cycles)} import cycle(s) in numpy_mvit2, read strictly:\n{describe(graph, cycles)}"


def test_strict_reading_sees_a_package_init_importing_its_modules(tmp_path):
    package = write_package(tmp_path, {
        "__init__.py": "from .b import f\n",
        "a.py": "X = 1\n",
        "b.py": "from .a import X\n\ndef f():\n    return X\n",
    })
    assert not find_cycles(import_graph(package))
    assert find_cycles(import_graph(package, strict=True)) == [["pkg", "pkg.b", "pkg"]]


# -- the checker itself, on packages written for it ---------------------------------------------


def write_package(root: Path, files: dict[str, str]) -> Path:
    package = root / "pkg"
    for name, text in files.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return package


def test_checker_finds_a_cycle_through_a_function_level_import(tmp_path):
    package = write_package(tmp_path, {
        "__init__.py": "",
        "low.py": """
            def later():
                from .high import thing  # a cycle that only closes when later() runs
                return thing
        """,
        "high.py": "from .low import later\nthing = 1\n",
        "leaf.py": "import os\n",
    })
    graph = import_graph(package)
    assert find_cycles(graph) == [["pkg.high", "pkg.low", "pkg.high"]]
    assert graph["pkg.low"]["pkg.high"] == ["pkg/low.py:3"]
    assert "pkg/low.py:3" in describe(graph, find_cycles(graph))


def test_checker_finds_cycles_under_type_checking_and_through_a_package(tmp_path):
    package = write_package(tmp_path, {
        "__init__.py": """
            TYPE_CHECKING = False
            if TYPE_CHECKING:
                from .models import Model
        """,
        "models.py": "from . import ops\n",  # `from . import x`: the package itself runs first
        "ops.py": "",
        "sub/__init__.py": "from .a import f\n",
        "sub/a.py": "import pkg.sub.b\n",
        "sub/b.py": "from ..sub import a\n",  # the package pkg.sub, named explicitly
    })
    graph = import_graph(package)
    assert graph["pkg.models"].keys() == {"pkg", "pkg.ops"}
    assert graph["pkg.sub"].keys() == {"pkg.sub.a"}  # its own submodule: no implicit edge to itself
    assert graph["pkg.sub.a"].keys() == {"pkg", "pkg.sub", "pkg.sub.b"}  # `import pkg.sub.b` names all three
    cycles = find_cycles(graph)
    assert ["pkg", "pkg.models", "pkg"] in cycles
    assert any(set(cycle) >= {"pkg.sub.a", "pkg.sub.b"} for cycle in cycles)


def test_checker_passes_a_package_that_points_one_way(tmp_path):
    package = write_package(tmp_path, {
        "__init__.py": "from ._version import __version__\n",
        "_version.py": "__version__ = '1'\n",
        "ops.py": "import math\n",
        "blocks.py": "from .ops import *\nfrom . import ops\n",  # an edge to the package, which imports no block
        "models.py": """
            from .blocks import *
            def load():
                from .io import read  # function-level, one way
                return read
        """,
        "io/__init__.py": "from .files import read\n",
        "io/files.py": "from ..ops import *\n",  # own package io not an implicit edge; pkg is above it too
        "cli.py": "from ._version import __version__\nimport pkg.models\n",
    })
    graph = import_graph(package)
    assert graph["pkg.blocks"].keys() == {"pkg", "pkg.ops"}
    assert graph["pkg.models"].keys() == {"pkg.blocks", "pkg.io"}
    assert graph["pkg.io.files"].keys() == {"pkg.ops"}
    assert graph["pkg.cli"].keys() == {"pkg", "pkg._version", "pkg.models"}
    assert find_cycles(graph) == []


def test_checker_counts_a_package_importing_itself(tmp_path):
    package = write_package(tmp_path, {"__init__.py": "def f():\n    from . import sub\n", "sub.py": ""})
    graph = import_graph(package)
    assert graph["pkg"].keys() == {"pkg", "pkg.sub"}
    assert find_cycles(graph) == [["pkg", "pkg"]]

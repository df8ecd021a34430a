"""The layering of `helpers/`, read from every import statement (module level and inside functions) with ast.

A module may import modules on its own floor or below, never above; no import cycle among helpers modules;
the floor-0 core imports only the standard library at module level (it runs before anything is installed).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from helpers import KIT_ROOT

PACKAGE = KIT_ROOT / "helpers"
CORE = 0
FLOORS = {
    "helpers": 0, "errors": 0, "rules": 0, "env": 0,  # "helpers" is helpers/__init__.py
    "hub": 1, "folders": 1, "prompts_file": 1, "outputs": 1, "memory": 1, "diffusers_logs": 1, "architectures": 1,
    "quantization": 2, "generation": 2,
    "planning": 3,
    "loading": 4, "validate": 4,
    "setup": 5, "community": 5, "batch": 5, "video": 5, "widgets": 5,
}


def modules(package: Path) -> dict[str, Path]:
    """{module name: file}: helpers/x.py is "x", a subpackage is its folder's name, __init__.py is the package's."""
    found = {package.name: package / "__init__.py"}
    for path in sorted(package.glob("*.py")):
        if path.name != "__init__.py":
            found[path.stem] = path
    for init in sorted(package.glob("*/__init__.py")):
        found[init.parent.name] = init
    return found


def _target(package: Path, importer_file: Path, node, alias: str | None) -> str | None:
    """The helpers module an import names, or None for one outside the package."""
    if isinstance(node, ast.Import):
        parts = alias.split(".")
        return (parts[1] if len(parts) > 1 else parts[0]) if parts[0] == package.name else None
    if node.level == 0:
        parts = (node.module or "").split(".")
        if parts[0] != package.name:
            return None
        if len(parts) > 1:
            return parts[1]
    else:
        base = importer_file.parent
        for _ in range(node.level - 1):
            base = base.parent
        inside = base.relative_to(package.parent).parts[1:]  # () at the package root, ("architectures",) below
        dotted = [*inside, *(node.module.split(".") if node.module else [])]
        if dotted:
            return dotted[0]
    # `from . import name` / `from helpers import name`: a module if one exists, else a name in __init__.py
    return alias if (package / f"{alias}.py").is_file() or (package / alias).is_dir() else package.name


def import_edges(package: Path) -> list[tuple[str, str, int, bool]]:
    """(importer, imported, line, at module level) for every import of a helpers module by a helpers module."""
    edges = []
    for name, path in modules(package).items():
        tree = ast.parse(path.read_text(), str(path))
        top_level = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for alias in node.names:
                target = _target(package, path, node, alias.name)
                if target is not None and target != name:
                    edges.append((name, target, node.lineno, id(node) in top_level))
    return edges


def third_party_in_core(package: Path, floors: dict[str, int]) -> list[str]:
    """Module-level imports of anything but the standard library (and the package itself) in the floor-0 core."""
    found = []
    for name, path in modules(package).items():
        if floors.get(name) != CORE:
            continue
        for node in ast.parse(path.read_text()).body:
            roots = [a.name.split(".")[0] for a in node.names] if isinstance(node, ast.Import) else \
                [(node.module or "").split(".")[0]] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            found += [f"{name}.py:{node.lineno} imports {root} at module level (floor 0 is standard library only)"
                      for root in roots if root not in sys.stdlib_module_names and root != package.name]
    return found


def cycles(edges) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan's algorithm)."""
    graph: dict[str, set[str]] = {}
    for importer, imported, *_ in edges:
        graph.setdefault(importer, set()).add(imported)
        graph.setdefault(imported, set())
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

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
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def upward(edges, floors: dict[str, int]) -> list[str]:
    """Imports of a module on a higher floor, and modules the floor table does not know."""
    found = [f"{name}.py is in no floor (the layout has no such module)" for name in
             sorted({e[0] for e in edges} | {e[1] for e in edges}) if name not in floors]
    for importer, imported, line, top in edges:
        if importer in floors and imported in floors and floors[imported] > floors[importer]:
            where = "at module level" if top else "inside a function"
            found.append(f"{importer}.py:{line} (floor {floors[importer]}) imports {imported} (floor "
                         f"{floors[imported]}) {where}")
    return found


def layering_problems(package: Path, floors: dict[str, int]) -> list[str]:
    edges = import_edges(package)
    return ([f"import cycle: {' <-> '.join(group)}" for group in cycles(edges)] + upward(edges, floors)
            + third_party_in_core(package, floors))


def test_helpers_is_layered():
    problems = layering_problems(PACKAGE, FLOORS)
    assert not problems, "\n".join(problems)


@pytest.fixture
def bad_package(tmp_path):
    """A package with one of each fault: a cycle (a <-> b), an upward import inside a function (low -> high),
    a third-party import in the core, a nested module importing upward with `..`."""
    package = tmp_path / "kitpkg"
    (package / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "VERSION = '1'\n",
        "core.py": "from __future__ import annotations\nimport json\nimport numpy\nfrom . import VERSION\n",
        "a.py": "from . import b\n",
        "b.py": "def f():\n    from .a import x\n",
        "low.py": "import os\n\ndef g():\n    from kitpkg import high\n",
        "high.py": "from .core import thing\n",
        "sub/__init__.py": "def h():\n    from ..high import y\n",
    }
    for name, text in files.items():
        (package / name).write_text(text)
    return package


def test_the_checker_finds_each_kind_of_fault(bad_package):
    floors = {"kitpkg": 0, "core": 0, "a": 1, "b": 1, "low": 1, "sub": 1, "high": 2}
    problems = layering_problems(bad_package, floors)
    assert "import cycle: a <-> b" in problems
    assert "low.py:4 (floor 1) imports high (floor 2) inside a function" in problems
    assert "sub.py:2 (floor 1) imports high (floor 2) inside a function" in problems
    assert "core.py:3 imports numpy at module level (floor 0 is standard library only)" in problems
    assert not any("json" in p or "__future__" in p or "kitpkg (floor" in p for p in problems)  # stdlib, __init__
    assert len(problems) == 4, problems
    del floors["high"]
    assert "high.py is in no floor (the layout has no such module)" in layering_problems(bad_package, floors)

"""The import contract of docs/architecture.md, checked on the real source tree.

- The layers: import-linter's contract in pyproject.toml ([tool.importlinter]), run as the
  ``lint-imports`` command would run it; a failure shows the linter's report (each chain with
  its line numbers).
- No import cycle between the modules of one package (a layers contract only sees imports
  between layers, so ``inference.a -> inference.b -> inference.a`` would pass it).
- No module uses another module's private (leading-underscore) name: make it public instead.

Imports inside functions and under ``TYPE_CHECKING`` count: they are imports all the same.
Needs the dev extra (``pip install -e '.[dev]'``: import-linter, which brings grimp).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

import clipforge

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = Path(clipforge.__file__).resolve().parent


# ---- layers (import-linter) ---------------------------------------------------------------
def test_layers_contract_holds() -> None:
    paths = [str(ROOT / "src"), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    # The same check as `lint-imports --no-cache` in the repository root (no cache folder left behind).
    command = [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()", "--no-cache"]
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    if run.returncode != 0:
        pytest.fail(f"the import contract is broken (pyproject.toml [tool.importlinter]):\n{run.stdout}{run.stderr}", pytrace=False)


# ---- no cycles inside a package -----------------------------------------------------------
def _strongly_connected(nodes: set[str], edges: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm: the groups of nodes that all reach each other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:  # v is the root of a group: pop it
            group: set[str] = set()
            while v not in group:
                group.add(stack.pop())
            on_stack.difference_update(group)
            groups.append(group)

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return groups


def _shortest_cycle(start: str, group: set[str], edges: dict[str, set[str]]) -> list[str]:
    """start -> ... -> start inside ``group``, breadth first: the fewest imports."""
    paths = {start: [start]}
    frontier = [start]
    while True:
        next_frontier = []
        for v in frontier:
            for w in sorted(edges[v] & group):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    next_frontier.append(w)
        frontier = next_frontier


def package_cycles(graph: grimp.ImportGraph, package: str) -> list[list[str]]:
    """Every import cycle among ``package`` and its descendants, one shortest cycle per group."""
    nodes = {package} | graph.find_descendants(package)
    edges = {m: graph.find_modules_directly_imported_by(m) & nodes for m in nodes}
    groups = [g for g in _strongly_connected(nodes, edges) if len(g) > 1 or any(m in edges[m] for m in g)]
    return [_shortest_cycle(min(g), g, edges) for g in sorted(groups, key=min)]


def _describe(graph: grimp.ImportGraph, cycle: list[str]) -> str:
    steps = [cycle[0]]
    for importer, imported in zip(cycle, cycle[1:]):
        lines = sorted(d["line_number"] for d in graph.get_import_details(importer=importer, imported=imported))
        steps.append(f"{imported} (l.{', '.join(map(str, lines))})")
    return " -> ".join(steps)


def test_no_import_cycle_inside_a_package() -> None:
    graph = grimp.build_graph("clipforge", cache_dir=None)
    packages = sorted(m for m in graph.find_children("clipforge") if graph.find_children(m))
    assert "clipforge.inference" in packages  # the check looks where the modules are
    cycles = [_describe(graph, c) for p in packages for c in package_cycles(graph, p)]
    if cycles:
        pytest.fail("import cycles (move what both sides need into a module they both import):\n" + "\n".join(cycles), pytrace=False)


def test_cycle_check_finds_a_cycle() -> None:
    graph = grimp.ImportGraph()
    for m in ("pkg", "pkg.sub", "pkg.sub.a", "pkg.sub.b", "pkg.sub.c", "pkg.other"):
        graph.add_module(m)
    graph.add_import(importer="pkg.sub.a", imported="pkg.sub.b", line_number=3, line_contents="from . import b")
    graph.add_import(importer="pkg.sub.b", imported="pkg.sub.c", line_number=4, line_contents="from . import c")
    graph.add_import(importer="pkg.sub.c", imported="pkg.sub.a", line_number=5, line_contents="from . import a")
    graph.add_import(importer="pkg.sub.a", imported="pkg.other", line_number=6, line_contents="from .. import other")
    assert package_cycles(graph, "pkg.sub") == [["pkg.sub.a", "pkg.sub.b", "pkg.sub.c", "pkg.sub.a"]]
    assert _describe(graph, ["pkg.sub.a", "pkg.sub.b", "pkg.sub.c", "pkg.sub.a"]).endswith("pkg.sub.a (l.5)")
    graph.remove_import(importer="pkg.sub.c", imported="pkg.sub.a")
    assert package_cycles(graph, "pkg.sub") == []


# ---- no private names across modules ------------------------------------------------------
def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    path = PACKAGE_DIR.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def private_uses(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, what) for each private name of another clipforge module that ``source`` uses:
    ``from .x import _name`` and ``x._name`` where ``x`` was imported from clipforge. A private
    submodule imported from inside its own package (``from . import _impl``) is allowed."""
    package = module if is_package else module.rpartition(".")[0]
    imported: dict[str, str] = {}  # local name -> what it is bound to
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            if target.split(".")[0] != "clipforge":
                continue
            for alias in node.names:
                imported[alias.asname or alias.name] = f"{target}.{alias.name}"
                own_submodule = _is_module(f"{target}.{alias.name}") and (package + ".").startswith(target + ".")
                if _is_private(alias.name) and not own_submodule:
                    found.append((node.lineno, f"from {target} import {alias.name}"))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "clipforge":
                    imported[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else "clipforge"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and _is_private(node.attr):
            if node.value.id in imported:
                found.append((node.lineno, f"{node.value.id}.{node.attr} ({imported[node.value.id]}.{node.attr})"))
    return sorted(found)


def test_no_module_uses_another_modules_private_names() -> None:
    found = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        uses = private_uses(path.read_text(encoding="utf-8"), _module_name(path), path.name == "__init__.py")
        found += [f"{path.relative_to(PACKAGE_DIR.parent)}:{line}: {what}" for line, what in uses]
    if found:
        pytest.fail("private names used from another module (make them public, with __all__):\n" + "\n".join(found), pytrace=False)


def test_private_check_finds_private_uses() -> None:
    source = (
        "from .io import _activation_message, load\n"
        "from ..tokenizer import _read_merges\n"
        "from . import io\n"
        "import numpy as np\n"
        "io._helper(np._private, self._own)\n"
    )
    found = private_uses(source, "clipforge.checkpoint.hf")
    assert [line for line, _ in found] == [1, 2, 5]
    assert "clipforge.checkpoint.io._helper" in found[-1][1]
    assert private_uses("from .. import __version__\n", "clipforge.serve.app") == []


def test_every_module_lists_its_public_names() -> None:
    """Each module with code says what it exports (``__all__``), and every listed name exists."""
    import importlib

    package = Path(clipforge.__file__).parent
    missing, dangling = [], []
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        has_code = any(isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom)) for node in tree.body)
        if path.name == "__main__.py" or not has_code:
            continue
        name = "clipforge." + ".".join(path.relative_to(package).with_suffix("").parts).removesuffix(".__init__")
        module = importlib.import_module(name)
        if not hasattr(module, "__all__"):
            missing.append(name)
        else:
            dangling += [f"{name}.{n}" for n in module.__all__ if not hasattr(module, n)]
    assert missing == [] and dangling == []

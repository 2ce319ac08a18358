"""A package's import graph, read from its source with ``ast``, and the cycles in it.

Every import anywhere in a file counts: at module level, inside functions, under
``if TYPE_CHECKING:``, and ``importlib.import_module(...)`` / ``importlib.util.find_spec(...)``
/ ``__import__(...)`` calls whose argument is a string literal or a name bound to one in the
same file. A deferred import still couples the two modules; hiding it does not remove the cycle.

Cycles are looked for twice: between modules, and between the package's parts, where a part is
a sub-package (``backupd.commands``, with everything below it) or a top-level module on its own.
"""

from __future__ import annotations

import ast
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

IMPORT_FUNCTIONS = frozenset({"import_module", "find_spec", "__import__"})


@dataclass(frozen=True, order=True)
class Import:
    """``importer`` imports ``imported`` at ``path:line``."""

    importer: str
    imported: str
    path: str
    line: int

    def __str__(self) -> str:
        return f"{self.importer} -> {self.imported} ({self.path}:{self.line})"


# node -> node -> the imports that make that edge (never empty)
Graph = dict[str, dict[str, list[Import]]]


def package_modules(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the package rooted at ``package_dir``."""
    package = package_dir.name
    modules: dict[str, Path] = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = [package, *path.relative_to(package_dir).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _string_constants(tree: ast.AST) -> dict[str, str]:
    """Names bound to a string literal anywhere in the file (``DRILL_MODULE = "a.b"``)."""
    constants: dict[str, str] = {}
    for node in ast.walk(tree):
        value: ast.expr | None = None
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            value, targets = node.value, node.targets
        elif isinstance(node, ast.AnnAssign):
            value, targets = node.value, [node.target]
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            for target in targets:
                if isinstance(target, ast.Name):
                    constants[target.id] = value.value
    return constants


def _called_name(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return None


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> Iterator[tuple[str, int]]:
    """(absolute dotted name, line) of everything the file imports, in any way."""
    constants = _string_constants(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = module.split(".")
                # A package's own __init__ is its level-1 base; a module's base is its package.
                drop = node.level - 1 if is_package else node.level
                base = ".".join(base_parts[: len(base_parts) - drop])
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            for alias in node.names:
                # ``from a import b``: b may be a submodule (a.b) or a name defined in a.
                yield f"{source}.{alias.name}", node.lineno
        elif isinstance(node, ast.Call) and _called_name(node) in IMPORT_FUNCTIONS and node.args:
            argument = node.args[0]
            if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                yield argument.value, node.lineno
            elif isinstance(argument, ast.Name) and argument.id in constants:
                yield constants[argument.id], node.lineno


def _resolve(name: str, modules: Iterable[str]) -> str | None:
    """The package module ``name`` refers to: itself, or the nearest enclosing module."""
    known = set(modules)
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in known:
            return candidate
        parts.pop()
    return None


def module_graph(package_dir: Path) -> Graph:
    """Module -> the package's modules it imports, with where."""
    modules = package_modules(package_dir)
    root = package_dir.parent
    graph: Graph = {name: {} for name in modules}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for name, line in _imported_names(tree, module, path.name == "__init__.py"):
            target = _resolve(name, modules)
            if target is None or target == module:
                continue
            site = Import(module, target, str(path.relative_to(root)), line)
            graph[module].setdefault(target, []).append(site)
    return graph


def part_of(module: str, subpackages: set[str]) -> str:
    """The part a module belongs to: its top-level sub-package, or the module itself."""
    parts = module.split(".")
    if len(parts) >= 2 and ".".join(parts[:2]) in subpackages:
        return ".".join(parts[:2])
    return module


def part_graph(package_dir: Path) -> Graph:
    """Part -> the parts it imports (see ``part_of``), with the module imports behind each edge."""
    modules = module_graph(package_dir)
    package = package_dir.name
    subpackages = {f"{package}.{p.name}" for p in package_dir.iterdir()
                   if (p / "__init__.py").is_file()}
    graph: Graph = {}
    for importer, targets in modules.items():
        source = part_of(importer, subpackages)
        graph.setdefault(source, {})
        for imported, sites in targets.items():
            target = part_of(imported, subpackages)
            if target != source:
                graph[source].setdefault(target, []).extend(sites)
    return graph


def _shortest_path(graph: Graph, start: str, goal: str) -> list[str] | None:
    previous: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        if node == goal:
            path = [node]
            while (step := previous[path[-1]]) is not None:
                path.append(step)
            return path[::-1]
        for successor in sorted(graph.get(node, {})):
            if successor not in previous:
                previous[successor] = node
                queue.append(successor)
    return None


def find_cycles(graph: Graph) -> list[list[str]]:
    """Cycles as node lists (first node repeated at the end), so that every edge that lies on
    any cycle appears in at least one; each is a shortest cycle through that edge."""
    found: dict[tuple[str, ...], list[str]] = {}
    for source in sorted(graph):
        for target in sorted(graph[source]):
            back = _shortest_path(graph, target, source)
            if back is None:
                continue
            cycle = [source, *back]  # source -> target ... -> source
            ring = cycle[:-1]
            turn = ring.index(min(ring))
            key = tuple(ring[turn:] + ring[:turn])
            found.setdefault(key, [*key, key[0]])
    return [found[key] for key in sorted(found)]


def describe(cycle: list[str], graph: Graph) -> str:
    """One cycle with the import chain behind each step (the first import of each edge)."""
    steps = [" -> ".join(cycle)]
    for source, target in pairwise(cycle):
        sites = sorted(graph[source][target])
        more = f" (+{len(sites) - 1} more)" if len(sites) > 1 else ""
        steps.append(f"    {source} -> {target}: {sites[0]}{more}")
    return "\n".join(steps)

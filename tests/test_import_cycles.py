"""No import cycles in backupd: neither between modules nor between its parts (sub-packages,
and each top-level module on its own). Every import in a file counts, deferred or hidden ones
included (see helpers/imports.py). The detector is itself tested on planted cycles."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from helpers.imports import Graph, describe, find_cycles, module_graph, part_graph

import backupd

PACKAGE_DIR = Path(backupd.__file__).resolve().parent


def _report(kind: str, graph: Graph) -> str:
    cycles = find_cycles(graph)
    return f"{len(cycles)} import cycle(s) between {kind}:\n" + "\n".join(
        describe(cycle, graph) for cycle in cycles)


def test_no_import_cycle_between_modules() -> None:
    graph = module_graph(PACKAGE_DIR)
    assert not find_cycles(graph), _report("modules", graph)


def test_no_import_cycle_between_the_packages_parts() -> None:
    graph = part_graph(PACKAGE_DIR)
    assert not find_cycles(graph), _report("parts of the package", graph)


def test_the_real_package_graph_is_read() -> None:
    """Guards against a vacuous pass: the walk sees backupd's modules and their real imports."""
    graph = module_graph(PACKAGE_DIR)
    assert {"backupd.cli", "backupd.cli.app", "backupd.settings",
            "backupd.commands.backup"} <= set(graph)
    assert "backupd.settings" in graph["backupd.cli.app"]
    parts = part_graph(PACKAGE_DIR)
    assert {"backupd.commands", "backupd.daemon", "backupd.pipeline", "backupd.storage",
            "backupd.notify"} <= set(parts)


# --- the detector on a planted package ------------------------------------------------------------


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    """``pkg``: a module cycle a <-> b (one side deferred in a function, the other under
    TYPE_CHECKING), and a part cycle jobs -> store -> jobs through an importlib string constant
    and a relative import; ``plain`` imports without a cycle."""
    return _write(tmp_path / "pkg", {
        "__init__.py": "",
        "a.py": """
            def later() -> None:
                from pkg import b
                b.run()
        """,
        "b.py": """
            from typing import TYPE_CHECKING
            if TYPE_CHECKING:
                import pkg.a
            def run() -> None: ...
        """,
        "plain.py": "import pkg.a\nfrom pkg.jobs import one\n",
        "jobs/__init__.py": "",
        "jobs/one.py": "from ..store import disk\n",
        "jobs/two.py": "",
        "store/__init__.py": "",
        "store/disk.py": """
            import importlib
            HOOK = "pkg.jobs.two"
            def hook() -> object:
                return importlib.import_module(HOOK)
        """,
    })


def test_a_planted_module_cycle_is_found_with_its_chain(planted: Path) -> None:
    graph = module_graph(planted)
    assert find_cycles(graph) == [["pkg.a", "pkg.b", "pkg.a"]]
    report = describe(["pkg.a", "pkg.b", "pkg.a"], graph)
    assert "pkg.a -> pkg.b (pkg/a.py:3)" in report
    assert "pkg.b -> pkg.a (pkg/b.py:4)" in report


def test_a_planted_part_cycle_is_found_through_importlib_and_relative_imports(
    planted: Path,
) -> None:
    graph = part_graph(planted)
    cycles = find_cycles(graph)
    assert ["pkg.jobs", "pkg.store", "pkg.jobs"] in cycles, cycles
    assert "pkg.jobs.one -> pkg.store.disk (pkg/jobs/one.py:1)" in describe(
        ["pkg.jobs", "pkg.store", "pkg.jobs"], graph)
    assert "pkg.store.disk -> pkg.jobs.two (pkg/store/disk.py:5)" in _report("parts", graph)
    # Modules in different parts, no module cycle: the part cycle is found only at that level.
    assert ["pkg.jobs.one", "pkg.store.disk", "pkg.jobs.one"] not in find_cycles(
        module_graph(planted))


def test_an_acyclic_package_has_no_cycles(tmp_path: Path) -> None:
    root = _write(tmp_path / "clean", {
        "__init__.py": "from clean import low\n",
        "low.py": "import json\n",
        "high.py": "from . import low\nfrom clean.parts import x\n",
        "parts/__init__.py": "",
        "parts/x.py": "from clean.low import *\n",
    })
    assert find_cycles(module_graph(root)) == []
    assert find_cycles(part_graph(root)) == []
    assert "clean.low" in module_graph(root)["clean.high"]

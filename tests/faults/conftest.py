"""Fault-injection suite: real faults against real components (``pytest -m faults``).

Every test under tests/faults/ is marked ``faults``. The secret-leak check runs last in the
session, after every other test has produced its output.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.faults import SlowDump

FAULTS_DIR = Path(__file__).resolve().parent
LEAK_CHECK_MODULE = "test_zz_secret_leaks.py"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if FAULTS_DIR in item.path.parents:
            item.add_marker(pytest.mark.faults)
    # The leak check reads what the whole session produced, so it goes last.
    last = [item for item in items if item.path.name == LEAK_CHECK_MODULE]
    rest = [item for item in items if item.path.name != LEAK_CHECK_MODULE]
    items[:] = rest + last


@pytest.fixture
def slow_dump(tmp_path: Path) -> SlowDump:
    return SlowDump(tmp_path / "shims")

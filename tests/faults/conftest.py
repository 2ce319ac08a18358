"""Fault-injection suite: real faults against real components (``pytest -m faults``).

Every test under tests/faults/ is marked ``faults``. The secret-leak check runs last in the
session, after every other test has produced its output.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
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


# --- a small real filesystem (for ENOSPC and read-only directories) -----------------------------


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """``small_fs(size="1m", readonly=False, inodes=None)``: a freshly mounted tmpfs of that
    size (and, with ``inodes``, that many inodes, the root directory's included).

    A real filesystem with a real limit: writes past it fail with ENOSPC in the kernel, exactly
    as on a full volume. Needs CAP_SYS_ADMIN (root here); skips with the reason otherwise.
    """
    mounted: list[Path] = []

    def mount(size: str = "1m", *, readonly: bool = False, inodes: int | None = None) -> Path:
        target = tmp_path / f"fs{len(mounted)}"
        target.mkdir()
        options = (f"size={size},mode=0700" + (",ro" if readonly else "")
                   + (f",nr_inodes={inodes}" if inodes is not None else ""))
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs CAP_SYS_ADMIN): {proc.stderr.strip()}")
        mounted.append(target)
        return target

    yield mount
    for target in reversed(mounted):
        # Lazy unmount: a daemon killed by the test may still hold a file open for a moment.
        subprocess.run(["umount", "-l", str(target)], capture_output=True, check=False)


@pytest.fixture
def slow_dump(tmp_path: Path) -> SlowDump:
    return SlowDump(tmp_path / "shims")

"""Standard output that cannot be written: a full disk behind ``> file`` is one clear line and
exit 1, a reader that went away (``backupd list | head``) is exit 1 without a word. Never a
traceback, and never Python's "Exception ignored" at exit, whether the output is buffered
(failing at the last flush) or not (failing in the command)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers.cli import run_backupd

FULL_DISK = "backupd: error: cannot write to standard output: No space left on device"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"DB_BACKUP_DIR": str(tmp_path / "backups")}


@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "unbuffered"])
@pytest.mark.parametrize("args", [["--help"], ["version"]], ids=["help", "version"])
def test_a_full_disk_behind_stdout_is_one_line_and_exit_1(
    env: dict[str, str], args: list[str], buffered: bool
) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    with open("/dev/full", "w") as full:
        proc = run_backupd(args, {**env, "PYTHONUNBUFFERED": "" if buffered else "1"},
                           stdout=full)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines() == [FULL_DISK]


@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "unbuffered"])
@pytest.mark.parametrize("args", [["--help"], ["version"]], ids=["help", "version"])
def test_a_reader_that_went_away_ends_it_quietly_with_exit_1(
    env: dict[str, str], args: list[str], buffered: bool
) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # `| head` that has read all it wanted
    try:
        proc = run_backupd(args, {**env, "PYTHONUNBUFFERED": "" if buffered else "1"},
                           stdout=write_end)
    finally:
        os.close(write_end)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr == ""

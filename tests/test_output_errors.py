"""Standard output that cannot be written: a full disk behind ``> file`` is one clear line and
exit 1, a reader that went away (``backupd list | head``) is exit 1 without a word, and a job
keeps its own exit code. Never a traceback, and never Python's "Exception ignored" at exit,
whether the output is buffered (failing at the last flush) or not (failing in the command).
Any other OSError is not called the output's (backupd.cli.output)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import IO

import pytest
from helpers.cli import build_env, command_probe, run_backupd, run_probe

FULL_DISK = "backupd: error: cannot write to standard output: No space left on device"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"DB_BACKUP_DIR": str(tmp_path / "backups")}


@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "unbuffered"])
@pytest.mark.parametrize("args", [["--help"], ["version"]], ids=["help", "version"])
def test_a_full_disk_behind_stdout_is_one_line_and_exit_1(
    env: dict[str, str], full: IO[str], args: list[str], buffered: bool
) -> None:
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


def test_with_stderr_broken_too_it_still_ends_with_exit_1(
    env: dict[str, str], full: IO[str]
) -> None:
    """Nothing can be said, and the message left in stderr's buffer must not turn the exit
    into Python's 120."""
    proc = subprocess.run([sys.executable, "-m", "backupd", "version"],
                          env=build_env({**env, "PYTHONUNBUFFERED": ""}), stdout=full,
                          stderr=full, timeout=60, check=False)
    assert proc.returncode == 1


# As prune and verify: a job, its own lines, then the summary.
CHATTY_JOB = """result = execute('prune', bootstrap(), lambda ctx: None)
for number in range(3):
    print(f'line {number}')
finish(result)"""


@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "unbuffered"])
def test_a_job_whose_lines_cannot_be_written_keeps_its_exit_code(
    env: dict[str, str], full: IO[str], buffered: bool
) -> None:
    """The job ran and its result reached the logs: only its printed lines are lost, and that
    is said, whether they fail as they are printed (the image sets PYTHONUNBUFFERED) or at the
    last flush."""
    proc = run_probe(CHATTY_JOB, {**env, "POSTGRES_DB": "db",
                                  "PYTHONUNBUFFERED": "" if buffered else "1"},
                     stdout=full, stderr=subprocess.PIPE)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines()[-1] == FULL_DISK


def test_a_closed_stdout_never_silences_the_file_that_took_its_descriptor(
    env: dict[str, str], tmp_path: Path
) -> None:
    """Started with stdout closed, the first file opened gets descriptor 1: reporting the
    failed output must leave that file alone."""
    kept = tmp_path / "kept.txt"
    probe = command_probe(
        f"fd = os.open({str(kept)!r}, os.O_WRONLY | os.O_CREAT)\n"
        "assert fd == 1, fd\n"
        "atexit.register(lambda: os.write(fd, b'written after the report'))\n"
        "print('to stdout')")
    proc = subprocess.run(f"exec '{sys.executable}' -c \"$PROBE\" >&-", shell=True,
                          env=build_env({**env, "PROBE": probe, "PYTHONUNBUFFERED": "1"}),
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines() == [
        "backupd: error: cannot write to standard output: Bad file descriptor"]
    assert kept.read_text() == "written after the report"


def test_an_error_of_another_file_is_not_called_the_outputs(env: dict[str, str]) -> None:
    """An OSError without a file name from elsewhere (here a command that raises one) is
    still a crash with its traceback, not 'cannot write to standard output'."""
    proc = run_probe("raise OSError(errno.EIO, 'Input/output error')", env,
                     capture_output=True)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "OSError: [Errno 5]" in proc.stderr
    assert "cannot write to standard output" not in proc.stderr


def test_a_captured_stdout_is_left_alone(capsys: pytest.CaptureFixture[str]) -> None:
    """Under a capture without a descriptor (pytest's), the guard steps aside: the entry
    point can run in-process."""
    import backupd.cli.output as output

    captured = sys.stdout
    output.guard_stdout()
    assert sys.stdout is captured

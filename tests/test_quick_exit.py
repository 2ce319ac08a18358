"""A finished command ends without the interpreter's teardown (backupd.quick_exit), yet with
every exit handler run, its output flushed and its own exit code."""

from __future__ import annotations

import subprocess
import sys

# A witness whose finalizer runs only in the interpreter's teardown (module globals cleared).
PROBE = """
import atexit, sys
from backupd import quick_exit

class Witness:
    def __del__(self):
        sys.stderr.write("torn down\\n")

witness = Witness()
{before}
print("armed:", quick_exit.arm())
atexit.register(lambda: print("handler ran"))  # registered later: runs first
sys.stdout.write("buffered output")  # no newline, stdout a pipe: still in the buffer
{end}
"""


def _run(end: str, before: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", PROBE.format(before=before, end=end)],
                          capture_output=True, text=True, timeout=60)


def test_a_finished_command_skips_the_teardown_after_every_handler() -> None:
    done = _run("quick_exit.finished(3)\nsys.exit(0)")
    assert done.returncode == 3  # the command's own code
    assert done.stdout == "armed: True\nbuffered outputhandler ran\n"
    assert "torn down" not in done.stderr


def test_without_a_finished_command_python_exits_as_usual() -> None:
    """An uncaught exception (no finished code): Python's own exit, traceback, teardown."""
    done = _run("raise RuntimeError('unexpected')")
    assert done.returncode == 1
    assert "RuntimeError: unexpected" in done.stderr
    assert "torn down" in done.stderr  # the witness proves the teardown is observable
    assert done.stdout == "armed: True\nbuffered outputhandler ran\n"


def test_a_handler_registered_before_it_is_never_skipped() -> None:
    """A sitecustomize or .pth hook (coverage's, say) registered first would run after the
    quick exit, that is never: then it is not armed, and Python exits as usual."""
    done = _run("quick_exit.finished(3)\nsys.exit(0)",
                before="atexit.register(lambda: sys.stderr.write('early handler ran\\n'))")
    assert done.returncode == 0
    assert done.stdout == "armed: False\nbuffered outputhandler ran\n"
    assert "early handler ran" in done.stderr
    assert "torn down" in done.stderr


def test_a_closed_stdout_is_one_line_and_exit_1() -> None:
    """Started with stdout closed, a command with something to print says it cannot (as
    `ls >&-` does), instead of printing to nowhere with exit 0."""
    done = subprocess.run(f"'{sys.executable}' -m backupd version >&-", shell=True,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "backupd: error: cannot write to standard output: Bad file descriptor"]


def test_the_console_script_arms_it_before_the_cli_is_imported_and_keeps_the_codes() -> None:
    ok = subprocess.run([sys.executable, "-m", "backupd", "version"], capture_output=True,
                        text=True, timeout=60)
    assert ok.returncode == 0 and ok.stdout.strip()
    bad = subprocess.run([sys.executable, "-m", "backupd", "no-such-command"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert bad.stderr.startswith("backupd: error:")
    probe = """
import sys
from backupd import quick_exit
armed = quick_exit.arm
def spy():
    print("arming; CLI imported:", "backupd.cli" in sys.modules, flush=True)
    return armed()
quick_exit.arm = spy
sys.argv = ["backupd", "version"]
from backupd.__main__ import main
main()
"""
    done = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True,
                          text=True, timeout=60)
    assert done.stdout.splitlines()[0] == "arming; CLI imported: False"

"""Ending a finished command without the interpreter's teardown.

Once a command has returned its exit code and Python has run every exit handler, what is
left of a normal exit is the teardown: every imported module's objects freed one by one
(~15 ms of a one-off backup, after its work is done and its files are closed, fsynced and
renamed). ``arm`` registers, before anything else is imported, an exit handler that runs
last (handlers run in reverse order of registration): by then non-daemon threads have been
joined and every other handler (logging's flush, tempfile's and weakref's finalizers) has
run. It flushes stdout and stderr and ends the process with the command's code.

Only a command that finished (``finished``) ends this way. An uncaught exception, or a
flush that fails (a closed pipe: Python reports it and exits 120), takes Python's own exit.
"""

from __future__ import annotations

import atexit
import os
import sys

_code: list[int] = []


def arm() -> None:
    atexit.register(_end)


def finished(code: int) -> None:
    _code[:] = [code]


def _end() -> None:
    if not _code:
        return
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return
    os._exit(_code[0])

"""Ending a finished command without the interpreter's teardown.

Once a command has returned its exit code and Python has run every exit handler, what is
left of a normal exit is the teardown: every imported module's objects freed one by one
(~15 ms of a one-off backup, after its work is done and its files are closed, fsynced and
renamed). ``arm`` registers an exit handler before backupd imports anything else, so that it
runs last (handlers run in reverse order of registration): by then non-daemon threads have
been joined and every other handler (logging's flush, tempfile's and weakref's finalizers)
has run. It flushes stdout and stderr and ends the process with the command's code.

Only a command that finished (``finished``) ends this way. An uncaught exception, or a
flush that fails (a closed pipe: Python reports it and exits 120), takes Python's own exit.
So does a process where something registered an exit handler before ``arm`` (a
sitecustomize or ``.pth`` hook, such as coverage's): that handler would run after ours, that
is, never.
"""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Callable

_code: list[int] = []


def _handlers_registered() -> int | None:
    # CPython's count of registered exit handlers; None where it cannot be known.
    count: Callable[[], int] | None = getattr(atexit, "_ncallbacks", None)
    return count() if count is not None else None


def arm() -> bool:
    """Register the handler, unless another handler is already registered; whether it was."""
    if _handlers_registered() != 0:
        return False
    atexit.register(_end)
    return True


def finished(code: int) -> None:
    _code[:] = [code]


def _end() -> None:
    if not _code:
        return
    streams = {id(s): s for s in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
               if s is not None}  # None: the descriptor was closed when Python started
    try:
        for stream in streams.values():
            stream.flush()
    except (OSError, ValueError):
        return
    os._exit(_code[0])

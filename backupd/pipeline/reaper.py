"""How the supervisor's children die with us (``backupd.pipeline.supervisor`` starts them).

Two mechanisms, because neither covers everything alone:

* ``PR_SET_PDEATHSIG`` (SIGKILL), set in the child before it executes anything, kills the
  child itself when the *thread* that started it ends;
* the reaper, a tiny process of its own (the one process started here rather than through
  ``Child``: it is the supervisor's own half, not a tool), holds the read end of a pipe whose
  write end only we hold. Children register their process group on it before they execute
  anything; when we die, however we die, the pipe reaches end of file and the reaper SIGKILLs
  every group still registered, grandchildren included.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


# Looked up once here, never in the forked child (which should call as little as possible).
_PRCTL = _load_prctl()


def die_with(parent: int, reaper: int | None, registered: int) -> Callable[[], None]:
    """preexec_fn, run in the child before it executes anything of its own: SIGKILL when the
    starting thread ends (at once if the parent is already gone), and the child's process
    group registered with the reaper (``reaper``: the pipe's fd, still open before exec), so
    no grandchild can ever exist unregistered. The pid registered is also written to
    ``registered`` (a pipe back to the parent): should the exec fail, Popen reaps the child
    without telling its pid, and the parent must still unregister it (a pid, once free, may
    become an unrelated process group's id)."""
    prctl = _PRCTL

    def in_child() -> None:
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGKILL), ctypes.c_ulong(0),
                  ctypes.c_ulong(0), ctypes.c_ulong(0))
        if reaper is not None:
            with contextlib.suppress(OSError):
                os.write(reaper, b"%d\n" % os.getpid())  # our pid is our group's id
                os.write(registered, b"%d\n" % os.getpid())
        if os.getppid() != parent:  # we died between fork and prctl
            os.kill(os.getpid(), signal.SIGKILL)

    return in_child


_REAPER_CODE = """
import os, signal, sys
for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGPIPE):
    signal.signal(s, signal.SIG_IGN)
groups = set()
for line in sys.stdin.buffer:
    try:
        pgid = int(line)
    except ValueError:
        continue
    if pgid > 0:
        groups.add(pgid)
    else:
        groups.discard(-pgid)
for pgid in groups:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass
"""


class _Reaper:
    """Kills the registered process groups once we are gone (see the module's docstring).

    It runs in a session of its own and ignores terminal and stop signals, so a signal to
    our process group (Ctrl-C, ``kill -- -PGID``) cannot take it down with us. Children
    register themselves (``die_with``); we unregister them once reaped."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._fd: int | None = None
        self._owner = 0

    def fd(self) -> int | None:
        """The write end of the pipe to the reaper, started if need be (None: it cannot run;
        PDEATHSIG still kills the child itself)."""
        with self._lock:
            if self._fd is None or self._owner != os.getpid() or not self._running():
                self._start()
            return self._fd

    def _running(self) -> bool:
        # A dead reaper (the OOM killer, a stray kill) is replaced, or the next child would
        # die of SIGPIPE registering with it, and the ones after it would go unprotected.
        assert self._process is not None
        try:
            pid, _ = os.waitpid(self._process.pid, os.WNOHANG)
        except ChildProcessError:
            return False
        return pid == 0

    def unregister(self, pgid: int) -> None:
        with self._lock:
            if self._fd is None or self._owner != os.getpid():
                return
            # A dead reaper (EPIPE) is replaced when the next child starts (see _running).
            with contextlib.suppress(OSError):
                os.write(self._fd, b"%d\n" % -pgid)

    def _start(self) -> None:
        if self._process is not None and self._process.stdin is not None:
            # A dead reaper's pipe, or (after a fork) our parent's. Closed through its file
            # object: closing the bare fd would leave that object to close the number again
            # when it is collected, by then another file's or socket's (even the new
            # reaper's pipe, whose end of file would kill every registered child).
            with contextlib.suppress(OSError):
                self._process.stdin.close()
        self._fd = None
        try:
            process = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _REAPER_CODE], stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                env={})
        except OSError:
            return
        assert process.stdin is not None
        self._process, self._fd, self._owner = process, process.stdin.fileno(), os.getpid()
        # Never waited for: it lives exactly as long as we do.
        process.returncode = 0


REAPER = _Reaper()

"""Standard output that cannot be written: a full disk or quota behind `> file`, a reader that
went away (`| head`), a descriptor closed before backupd started.

``guard_stdout`` (the console script calls it first) puts a thin layer under ``sys.stdout``
that turns its write and flush errors into :class:`StdoutError`, so they are told apart from
every other OSError: a file's read error is never reported as the output's. ``report`` says it
in one line (nothing for a reader that went away) and points the broken descriptors at
/dev/null, so that what is still buffered for them cannot fail again at exit (Python would
print "Exception ignored" and exit 120). The exit code is the job's, where the command ran a
job (its result already reached the logs and notifiers: only its printed lines are lost), else
1 (backupd.cli.run).
"""

from __future__ import annotations

import errno
import io
import os
import sys
from typing import TYPE_CHECKING

from backupd.log import point_at_devnull, say_on_stderr

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer


class StdoutError(OSError):
    """Writing or flushing standard output failed; ``errno`` says why. ``fd``: standard
    output's descriptor, None when it was closed before backupd started (the descriptor
    number may then be another file's)."""

    def __init__(self, code: int, reason: str, fd: int | None) -> None:
        super().__init__(code, reason)
        self.fd = fd


class _Guarded(io.BufferedIOBase):
    """stdout's binary layer, its errors raised as StdoutError. ``inner`` None: the descriptor
    was closed when Python started."""

    name = "<stdout>"

    def __init__(self, inner: io.BufferedIOBase | None) -> None:
        super().__init__()
        self._inner = inner
        self._fd = inner.fileno() if inner is not None else None

    def writable(self) -> bool:
        return True

    def write(self, data: ReadableBuffer) -> int:
        if self._inner is None:
            raise StdoutError(errno.EBADF, os.strerror(errno.EBADF), None)
        try:
            return self._inner.write(data)
        except OSError as exc:
            raise StdoutError(exc.errno or errno.EIO, exc.strerror or str(exc), self._fd) \
                from None

    def flush(self) -> None:
        if self._inner is None:
            return
        try:
            self._inner.flush()
        except OSError as exc:
            raise StdoutError(exc.errno or errno.EIO, exc.strerror or str(exc), self._fd) \
                from None

    def fileno(self) -> int:
        if self._inner is None:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        return self._inner.fileno()

    def isatty(self) -> bool:
        return self._inner is not None and self._inner.isatty()


def guard_stdout() -> None:
    """Put the guard under ``sys.stdout``, keeping its encoding and buffering."""
    current = sys.stdout
    inner = getattr(current, "buffer", None) if current is not None else None
    if current is not None:
        try:
            current.fileno()
        except (OSError, ValueError):
            return  # not a descriptor's text stream (a test's capture): leave it alone
        if inner is None:
            return
    sys.stdout = io.TextIOWrapper(
        _Guarded(inner), encoding=getattr(current, "encoding", None) or "utf-8",
        errors=getattr(current, "errors", None) or "strict",
        line_buffering=bool(getattr(current, "line_buffering", False)),
        write_through=bool(getattr(current, "write_through", False)))


def report(exc: StdoutError) -> None:
    """Say it once (not for a reader that went away) and silence the broken streams."""
    if exc.fd is not None:
        point_at_devnull(exc.fd)
    if exc.errno != errno.EPIPE:
        say_on_stderr(f"backupd: error: cannot write to standard output: {exc.strerror}")


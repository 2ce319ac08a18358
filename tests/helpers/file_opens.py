"""How many times one file is opened, by any process, as the kernel reports it (inotify's
IN_OPEN on the file): for "read once" claims, observed from outside the code under test."""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from pathlib import Path
from types import TracebackType

IN_OPEN = 0x00000020
# Watched too, though not counted: the kernel merges an event into the one queued before it
# when they are the same, so two opens in a row with nothing between would read as one.
IN_CLOSE_NOWRITE = 0x00000010
IN_CLOSE_WRITE = 0x00000008
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)


class OpenCounter:
    """``with OpenCounter(path) as opens: ...; opens.count()``: the opens of ``path`` since
    the watch began (a process of the test's or any child's)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = -1
        self._opens = 0

    def __enter__(self) -> OpenCounter:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        if libc.inotify_add_watch(fd, os.fsencode(self.path),
                                  IN_OPEN | IN_CLOSE_NOWRITE | IN_CLOSE_WRITE) < 0:
            code = ctypes.get_errno()
            os.close(fd)
            raise OSError(code, f"inotify_add_watch {self.path}")
        self._fd = fd
        return self

    def count(self) -> int:
        while True:
            try:
                data = os.read(self._fd, 65536)
            except OSError as exc:
                if exc.errno == errno.EAGAIN:
                    return self._opens
                raise
            offset = 0
            while offset < len(data):
                _, mask, _, length = _EVENT.unpack_from(data, offset)
                self._opens += bool(mask & IN_OPEN)
                offset += _EVENT.size + length

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        os.close(self._fd)

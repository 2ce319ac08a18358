"""A file that is still being written, followed by a reader (the backup's read-back).

The writer calls ``grew()`` after handing bytes to the OS and ``done(size)`` once the file
is flushed and fsynced; the reader gets every byte *from the file*, in order, waiting at
its end until the writer has written more, so verification overlaps the dump.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator


class WriteAbandoned(Exception):
    """The writer failed; the file will be removed, there is nothing to verify."""


class GrowingFile:
    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._version = 0
        self._final_size: int | None = None
        self._abandoned = False

    def grew(self) -> None:
        with self._changed:
            self._version += 1
            self._changed.notify_all()

    def done(self, size: int) -> None:
        with self._changed:
            self._final_size = size
            self._changed.notify_all()

    def abandon(self) -> None:
        with self._changed:
            self._abandoned = True
            self._changed.notify_all()

    def chunks(self, fd: int, read_size: int) -> Iterator[bytes]:
        """Every byte of the open file ``fd``, in order, until the writer is done."""
        while True:
            with self._changed:
                version, final, abandoned = self._version, self._final_size, self._abandoned
            if abandoned:
                raise WriteAbandoned
            chunk = os.read(fd, read_size)
            if chunk:
                yield chunk
                continue
            if final is not None:
                # ``final`` was set before this read: the writer had finished, this is the end.
                return
            with self._changed:
                while (self._version == version and not self._abandoned
                       and self._final_size is None):
                    self._changed.wait()

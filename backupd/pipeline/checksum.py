"""A pass-through writer that counts and hashes what goes into the file."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import BinaryIO


class HashingWriter:
    """Wraps the output file; sees exactly the bytes stored, so its SHA-256 is the file's."""

    def __init__(self, sink: BinaryIO, on_write: Callable[[], object] | None = None) -> None:
        self._sink = sink
        self._hash = hashlib.sha256()
        self.bytes_written = 0
        self._on_write = on_write  # told after each write (a reader follows the file)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._hash.update(data)
        written = self._sink.write(data)
        self.bytes_written += len(data)
        if self._on_write is not None:
            self._on_write()
        return written if written is not None else len(data)

    def flush(self) -> None:
        self._sink.flush()

    @property
    def closed(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def close(self) -> None:
        """The atomic writer owns the file; closing the wrapper must not close it."""

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

"""Crash-safe file writes: temporary name, fsync, rename, fsync the directory.

A reader either sees the complete file under its final name or nothing at all;
a crash at any point leaves at most a dot-file ending in ``.partial``, which no
command treats as a backup and the next start-up removes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from backupd.naming import partial_name

FILE_MODE = 0o600
DIR_MODE = 0o700


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(final_path: Path) -> Iterator[BinaryIO]:
    """Yield a file to write; on a clean exit it becomes ``final_path``, else it vanishes."""
    temporary = final_path.with_name(partial_name(final_path.name))
    # O_EXCL: two writers can never share a temporary file; 0600 from the first byte.
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    handle = os.fdopen(fd, "wb", buffering=1024 * 1024)
    try:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())
        handle.close()
        os.replace(temporary, final_path)
        fsync_directory(final_path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            handle.close()
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise


def write_bytes_atomically(final_path: Path, data: bytes) -> None:
    with atomic_write(final_path) as handle:
        handle.write(data)

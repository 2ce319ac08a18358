"""pg_dump's directory format (``-Fd``, parallel with ``-j``), stored as ONE artifact: an
uncompressed tar of the directory (``<db>_<ts>.dir.tar``, ``.age`` when encrypted).

Why a tar and not the directory with a manifest of every file's checksum: an artifact is one
stored file plus its manifest (storage/base.py). A tar keeps that true, so the repository
protocol, S3, replication, retention, encryption (one age stream) and the verification
stream work on it unchanged, and a partial upload can never leave some files of a backup
without the others. The tar is not compressed again: pg_dump compressed every data file
(``NNNN.dat.gz``) already; only ``toc.dat``, a small fraction, is stored as it is.

pg_dump -Fd writes files, in parallel and in no fixed order, so the directory exists on
disk while it runs (a hidden ``.<name>.pgdump.partial`` beside the backup, mode 0700) and is
streamed into the pipeline once pg_dump has finished; it is removed at once, on success,
failure or cancel (and by the next start-up after a SIGKILL: LocalRepository's leftovers).
For an encrypted backup that directory is the one place plaintext is on disk, for the time
of the dump. Restore unpacks the verified tar into such a directory for ``pg_restore -j``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from backupd.naming import PARTIAL_SUFFIX

BLOCK = tarfile.BLOCKSIZE  # 512
COPY_SIZE = 1024 * 1024
TOC = "toc.dat"
# The tar holds what pg_dump -Fd writes, nothing else: the table of contents, the large
# objects' list, and one data file per table / large object, compressed or not.
DATA_EXTENSIONS = ("", ".gz", ".zst", ".lz4")


def scratch_directory(beside: Path, purpose: str) -> Path:
    """A new private directory next to ``beside`` (never listed: a leading dot and
    ``.partial``); the caller removes it with ``remove_scratch``."""
    path = beside.with_name(f".{beside.name}.{purpose}{PARTIAL_SUFFIX}")
    remove_scratch(path)  # a leftover of a killed run of the same name
    path.mkdir(mode=0o700)
    return path


def remove_scratch(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(path)


@contextlib.contextmanager
def scratch(beside: Path, purpose: str) -> Iterator[Path]:
    """A scratch directory beside ``beside``, or in the temporary directory where that
    one cannot be written (a read-only DB_BACKUP_DIR still restores); removed after."""
    try:
        path = scratch_directory(beside, purpose)
    except OSError:
        path = Path(tempfile.mkdtemp(prefix=f"backupd-{purpose}-"))
    try:
        yield path
    finally:
        remove_scratch(path)


def member_order(directory: Path) -> list[str]:
    """The table of contents first (verify reads it before the data), then by name."""
    names = sorted(entry.name for entry in os.scandir(directory))
    return ([TOC] if TOC in names else []) + [n for n in names if n != TOC]


def write_tar(directory: Path, sink: BinaryIO, moved: Callable[[int], None]) -> int:
    """Write every file of ``directory`` to ``sink`` as one ustar stream; its size.

    Written by hand rather than with tarfile's stream mode: 1 MiB writes (tarfile's are
    10 KiB) into the hashing, encrypting and file writers behind ``sink``."""
    written = 0
    for name in member_order(directory):
        path = directory / name
        info = path.lstat()
        if not path.is_file() or path.is_symlink():
            raise OSError(0, f"pg_dump's directory holds {name!r}, which is not a file")
        header = tarfile.TarInfo(name)
        header.size = info.st_size
        header.mtime = int(info.st_mtime)
        header.mode = 0o600
        sink.write(header.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict"))
        written += BLOCK
        copied = 0
        with open(path, "rb") as source:
            while chunk := source.read(COPY_SIZE):
                sink.write(chunk)
                copied += len(chunk)
                moved(len(chunk))
        if copied != info.st_size:
            raise OSError(0, f"{name} changed size while it was stored")
        padding = -copied % BLOCK
        sink.write(b"\0" * padding)
        written += copied + padding
    sink.write(b"\0" * (2 * BLOCK))  # end of archive
    return written + 2 * BLOCK


class Extractor:
    """Writes the members a DirectoryArchiveCheck reads into ``directory`` (restore), each
    file created new (O_EXCL, 0600): a name seen twice cannot overwrite the first."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._fd: int | None = None

    def begin(self, name: str) -> None:
        self.end()
        self._fd = os.open(self.directory / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)

    def write(self, data: bytes | memoryview) -> None:
        assert self._fd is not None
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]

    def end(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

"""One sequential read of the stored bytes: SHA-256, size and the content checks in one pass.

The same scan serves the backup's read-back (following the file as it is written),
``backupd verify``, and restore (which receives the checked SQL as it goes by).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO, cast

from pyrage import x25519

from backupd.errors import BackupdError
from backupd.pipeline.compress import BLOCK_SIZE
from backupd.pipeline.encrypt import AgeError, decrypt_into
from backupd.pipeline.growing import GrowingFile, WriteAbandoned
from backupd.pipeline.verification.content import (
    CustomArchiveCheck,
    ParallelGzipCheck,
    PlainSqlCheck,
)
from backupd.pipeline.verification.directory import DirectoryArchiveCheck
from backupd.progress import Progress, Stream

# Sequential reads of a few MiB: few system calls, little memory.
READ_SIZE = 2 * BLOCK_SIZE
# Checks of a whole archive, given to a scan by its caller.
ArchiveContent = DirectoryArchiveCheck | CustomArchiveCheck
Content = PlainSqlCheck | ParallelGzipCheck | ArchiveContent
# A restore forwards the SQL as it is checked, at psql's pace: the stored bytes are handed
# on in slices this big, so what was read counts up as psql takes it (a display's
# percentage moves, the stall watchdog sees movement), not one READ_SIZE at a time.
FORWARD_SLICE = 64 * 1024


class FileScan:
    """What one sequential read of the stored bytes proves: their SHA-256 and size and, for
    plain SQL, the content checks. Fed by a finished file (``scan_file``) or by one still
    being written (``follow_growing_file``): the same code checks both."""

    def __init__(self, compression: str | None, members: list[int] | None = None,
                 forward: Callable[[bytes], object] | None = None,
                 content: ArchiveContent | None = None, *, forward_ahead: bool = False) -> None:
        """``forward_ahead``: ``forward`` takes the SQL as fast as it comes (not at psql's
        pace), so the members are inflated on all cores ahead of it."""
        self._digest = hashlib.sha256()
        self.size = 0
        self.identity: tuple[int, int] = (0, 0)  # (st_dev, st_ino) of the file read
        self.content: Content | None = content
        paced = forward is not None and not forward_ahead
        self._slice = FORWARD_SLICE if paced else READ_SIZE
        if content is None and members is not None and compression == "gzip" and not paced:
            self.content = ParallelGzipCheck(members, forward)
        elif content is None and compression is not None:
            self.content = PlainSqlCheck(compression, forward)
        self._problem: OSError | None = None

    def read(self, fd: int, chunks: Iterable[bytes], stream: Stream | None = None) -> FileScan:
        info = os.fstat(fd)
        self.identity = (info.st_dev, info.st_ino)
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        for chunk in chunks:
            self._digest.update(chunk)
            self.size += len(chunk)
            for start in range(0, len(chunk), self._slice):
                piece = chunk[start:start + self._slice] if len(chunk) > self._slice else chunk
                if self.content is not None:
                    self.content.write(piece)
                if stream is not None:
                    stream.moved(len(piece))
        return self

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()

    def fail(self, problem: OSError) -> None:
        self._problem = problem
        if isinstance(self.content, ParallelGzipCheck):
            self.content.close()
        elif isinstance(self.content, CustomArchiveCheck):
            self.content.abort()

    def raise_problem(self) -> None:
        if self._problem is not None:
            raise self._problem


def open_no_follow(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_NOFOLLOW)


def scan_file(path: Path, compression: str | None, members: list[int] | None = None,
              forward: Callable[[bytes], object] | None = None,
              content: ArchiveContent | None = None,
              stream: Stream | None = None, *, forward_ahead: bool = False) -> FileScan:
    """Read a finished file once (raises OSError); ``stream`` counts the bytes read."""
    result = FileScan(compression, members, forward, content, forward_ahead=forward_ahead)
    fd: int | None = None
    try:
        fd = open_no_follow(path)
        result.read(fd, iter(lambda: os.read(fd, READ_SIZE), b""), stream)
    except BaseException:
        if isinstance(result.content, ParallelGzipCheck):
            result.content.close()
        elif isinstance(result.content, CustomArchiveCheck):
            result.content.abort()
        raise
    finally:
        if fd is not None:
            os.close(fd)
    return result


def follow_growing_file(fd: int, growing: GrowingFile, compression: str | None,
                        writer_identity: tuple[int, int],
                        content: Callable[[], ArchiveContent] | None = None,
                        progress: Progress | None = None) -> FileScan:
    """The backup's read-back: read the file open on ``fd`` (opened by the writer before
    this thread ran: backupd.pipeline.run) while it is being written; ``fd`` stays the
    caller's to close. ``content``: makes the archive's checks, in this thread (their
    processes end with it).

    Never raises: a failure is kept in the result and reported by ``verify_file``.
    """
    result = FileScan(compression)
    try:
        if content is not None:
            result.content = content()
    except OSError as exc:
        result.fail(exc)
        return result
    except BackupdError as exc:  # pg_restore not found: the archive cannot be checked
        result.fail(OSError(0, str(exc)))
        return result
    try:
        with (progress or Progress()).stream("read-back of the file written") as stream:
            result.read(fd, growing.chunks(fd, READ_SIZE), stream)
        if isinstance(result.content, CustomArchiveCheck):
            result.content.close()  # its pg_restore processes end with this thread
        if result.identity != writer_identity:
            raise OSError(0, "the read-back opened another file than the one written")
    except OSError as exc:
        result.fail(exc)
    except WriteAbandoned:
        result.fail(OSError(0, "the write was abandoned"))
    return result



class DecryptingScan:
    """The scan of an age-encrypted plain-SQL backup with the key at hand, in one pass: the
    stored bytes are hashed as the decryptor reads them, and the plaintext (authenticated
    chunks only) goes through the same PlainSqlCheck as an unencrypted backup's."""

    def __init__(self, compression: str, forward: Callable[[bytes], object] | None = None,
                 content: DirectoryArchiveCheck | None = None) -> None:
        self.content: PlainSqlCheck | DirectoryArchiveCheck = (
            content if content is not None else PlainSqlCheck(compression, forward))
        self.age_problem: AgeError | None = None
        self.sha256 = ""

    def read(self, path: Path, identities: list[x25519.Identity],
             stream: Stream | None = None) -> DecryptingScan:
        with os.fdopen(open_no_follow(path), "rb", buffering=0) as handle:
            source = _HashingReader(handle, stream)
            batched = _Batched(self.content.write)
            try:
                decrypt_into(cast(BinaryIO, source), batched, identities)
                batched.flush()
            except AgeError as exc:
                self.age_problem = exc
            source.drain()
        self.sha256 = source.hexdigest()
        return self


class _Batched:
    """Collects age's 8 KiB plaintext writes into READ_SIZE batches (fewer Python calls)."""

    def __init__(self, write: Callable[[bytes], object]) -> None:
        self._write = write
        self._buffer = bytearray()

    def write(self, data: bytes) -> int:
        self._buffer += data
        if len(self._buffer) >= READ_SIZE:
            self.flush()
        return len(data)

    def flush(self) -> None:
        if self._buffer:
            batch, self._buffer = bytes(self._buffer), bytearray()
            self._write(batch)


class _HashingReader:
    """Reads the stored file in READ_SIZE blocks, hashing each, and hands out slices."""

    def __init__(self, raw: BinaryIO, stream: Stream | None) -> None:
        self._raw = raw
        self._stream = stream
        self._digest = hashlib.sha256()
        self._block = memoryview(b"")

    def read(self, size: int = -1) -> bytes:
        if not self._block:
            block = self._raw.read(READ_SIZE)
            if not block:
                return b""
            self._digest.update(block)
            if self._stream is not None:
                self._stream.moved(len(block))
            self._block = memoryview(block)
        piece = self._block if size < 0 else self._block[:size]
        self._block = self._block[len(piece):]
        return bytes(piece)

    def drain(self) -> None:
        """Hash the rest of the file, whatever the decryptor left unread."""
        self._block = memoryview(b"")
        while block := self._raw.read(READ_SIZE):
            self._digest.update(block)
            if self._stream is not None:
                self._stream.moved(len(block))

    def hexdigest(self) -> str:
        return self._digest.hexdigest()

"""The backup pipeline: pg_dump → compress → (encrypt) → checksum → atomic write.

The thread reading pg_dump only moves bytes; compression (and hashing and the file
write behind it) run in the compressor's own thread, so on two cores compression
hides behind the dump instead of adding to it. Memory is bounded by a few blocks,
whatever the size of the database.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from backupd.cancel import CancelToken
from backupd.errors import Cancelled, JobFailed
from backupd.pipeline.checksum import HashingWriter
from backupd.pipeline.compress import BLOCK_SIZE, open_compressor
from backupd.pipeline.dump import PgDump
from backupd.pipeline.sqlcheck import HeadTail
from backupd.settings import Settings
from backupd.storage.atomic import atomic_write

# Wraps the file sink in an encrypting writer (age, see backupd.pipeline.encrypt).
EncryptorFactory = Callable[[BinaryIO], BinaryIO]


@dataclass(frozen=True)
class DumpOutcome:
    raw_bytes: int
    stored_bytes: int
    sha256: str
    stderr_tail: str


class DumpFailed(JobFailed):
    def __init__(self, message: str, stderr_tail: str) -> None:
        super().__init__(message)
        self.stderr_tail = stderr_tail


def dump_to_file(
    settings: Settings,
    destination: Path,
    cancel: CancelToken,
    *,
    backup_format: str = "plain",
    compression: str = "gzip",
    level: int | None = None,
    encryptor: EncryptorFactory | None = None,
) -> DumpOutcome:
    """Write a complete, fsynced backup at ``destination``, or raise and leave nothing."""
    dump = PgDump(settings, backup_format)
    if backup_format == "custom" and level is not None:
        # Custom format compresses inside pg_dump (zlib, levels 0-9).
        dump.argv.append(f"--compress={min(level, 9)}")
    head_tail = HeadTail()
    with atomic_write(destination) as out:
        hashing = HashingWriter(out)
        sink: BinaryIO = hashing  # type: ignore[assignment]
        encrypting = encryptor(sink) if encryptor is not None else None
        if encrypting is not None:
            sink = encrypting
        # Custom format is compressed by pg_dump itself, table by table.
        writer = open_compressor(sink, "none" if backup_format == "custom" else compression, level)
        source = dump.start()
        unregister = cancel.on_cancel(dump.terminate)
        try:
            reader = cast(io.BufferedReader, source)
            while chunk := reader.read1(BLOCK_SIZE):
                head_tail.feed(chunk)
                writer.write(chunk)
            if writer is not sink:
                writer.close()
            if encrypting is not None:
                encrypting.close()
            code = dump.wait()
        except BaseException:
            dump.stop()
            abort = getattr(encrypting, "abort", None)
            if abort is not None:
                abort()  # stop the encrypting thread; the partial file is discarded
            raise
        finally:
            unregister()
        if cancel.cancelled:
            raise Cancelled("backup cancelled by shutdown; pg_dump was stopped and "
                            "the partial file removed")
        if code != 0:
            reason = dump.last_error_line or f"exit code {code}"
            raise DumpFailed(f"pg_dump failed: {reason}", dump.stderr_tail)
        if backup_format == "plain":
            problem = head_tail.problem()
            if problem is not None:
                raise DumpFailed(f"pg_dump output rejected: {problem}", dump.stderr_tail)
        elif head_tail.total == 0:
            raise DumpFailed("pg_dump output rejected: the dump is empty", dump.stderr_tail)
    return DumpOutcome(head_tail.total, hashing.bytes_written, hashing.sha256, dump.stderr_tail)

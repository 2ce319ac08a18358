"""Taking a base backup: pg_basebackup's tar stream -> compress -> (age) -> checksum -> file.

One supervised ``pg_basebackup -D - -F tar -X fetch`` writes the whole data directory, the
WAL from the backup's start to its stop (``pg_wal/``) and PostgreSQL's ``backup_manifest``
(pg_basebackup injects it at the end of a tar written to stdout) as a single tar stream.
WAL is *included* (``-X fetch``) rather than taken from the archive: a base backup is then
self-contained, it reaches consistency even when the WAL archive has a gap or is lost, and
it is one artifact (one file, one manifest) in every repository. The cost is the WAL written
during the backup, stored twice (here and in the archive).

While the bytes pass on their way to the file, every member of the tar is hashed and, at the
end, checked against the ``backup_manifest`` (backupd.archive.backup_manifest): a stream that
does not match never becomes a file under its final name.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from backupd.archive.backup_manifest import BackupContentCheck, BackupContentError
from backupd.archive.tarstream import TarError, TarReader
from backupd.cancel import CancelToken
from backupd.errors import Cancelled, JobFailed
from backupd.manifest import BaseBackupFacts
from backupd.pipeline.checksum import HashingWriter
from backupd.pipeline.compress import MemberGzipWriter, open_compressor
from backupd.pipeline.config import ConnectionConfig
from backupd.pipeline.run import EncryptorFactory, pump
from backupd.pipeline.supervisor import Child, tool_path
from backupd.storage.atomic import atomic_write


@dataclass(frozen=True)
class BaseBackupConfig:
    connection: ConnectionConfig
    compression: str = "gzip"
    level: int | None = None
    label: str = "backupd base backup"
    # "fast": the backup starts at once (an immediate checkpoint); "spread": it waits for
    # the next checkpoint, sparing the server's I/O.
    checkpoint: str = "fast"


@dataclass(frozen=True)
class TakenBaseBackup:
    facts: BaseBackupFacts
    raw_bytes: int
    stored_bytes: int
    sha256: str
    stderr_tail: str
    gzip_members: list[int] | None


class BaseBackupFailed(JobFailed):
    def __init__(self, message: str, stderr_tail: str = "") -> None:
        super().__init__(message)
        self.stderr_tail = stderr_tail


def pg_basebackup(config: BaseBackupConfig, cancel: CancelToken) -> Child:
    """pg_basebackup writing one tar stream (WAL and backup_manifest inside) to stdout."""
    argv = [tool_path("pg_basebackup"), "--pgdata=-", "--format=tar", "--wal-method=fetch",
            "--manifest-checksums=SHA256", f"--checkpoint={config.checkpoint}",
            f"--label={config.label}", "--no-password"]
    return Child(argv, env=config.connection.libpq_env(), stdout=subprocess.PIPE,
                 cancel=cancel)


def take_base_backup(config: BaseBackupConfig, destination: Path, cancel: CancelToken, *,
                     encryptor: EncryptorFactory | None = None,
                     source: Child | None = None) -> TakenBaseBackup:
    """Write a complete, checked, fsynced base backup at ``destination``, or raise and leave
    nothing (the temporary file is removed)."""
    child = source if source is not None else pg_basebackup(config, cancel)
    check = BackupContentCheck()
    reader = TarReader(check)
    with atomic_write(destination) as out:
        hashing = HashingWriter(out)
        sink: BinaryIO = hashing  # type: ignore[assignment]
        encrypting = encryptor(sink) if encryptor is not None else None
        if encrypting is not None:
            sink = encrypting
        writer = open_compressor(sink, config.compression, config.level)
        try:
            with cancel.progress.stream("pg_basebackup output") as stream:
                code = pump(child, writer, sink, encrypting, reader.feed, stream)
            reader.finish()
        except TarError as exc:
            _raise_if_cancelled(cancel)
            # pg_basebackup's own error explains a stream that ended early; else the stream.
            reason = child.error_line
            raise BaseBackupFailed(f"pg_basebackup failed: {reason}" if reason
                                   else f"pg_basebackup's output rejected: {exc}",
                                   child.stderr_tail) from None
        _raise_if_cancelled(cancel)
        if code != 0:
            raise BaseBackupFailed(
                f"pg_basebackup failed: {child.error_line or f'exit code {code}'}",
                child.stderr_tail)
        try:
            facts = check.finish()
        except BackupContentError as exc:
            raise BaseBackupFailed(f"the base backup does not match its backup_manifest: "
                                   f"{exc}", child.stderr_tail) from None
    members = (writer.member_sizes if isinstance(writer, MemberGzipWriter)
               and encrypting is None else None)
    return TakenBaseBackup(facts, reader.offset, hashing.bytes_written, hashing.sha256,
                           child.stderr_tail, members)


def _raise_if_cancelled(cancel: CancelToken) -> None:
    if cancel.cancelled:
        raise Cancelled("base backup cancelled by shutdown; pg_basebackup was stopped and the "
                        "partial file removed")

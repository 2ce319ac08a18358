"""The backup pipeline: pg_dump → compress → (encrypt) → checksum → atomic write.

The thread reading pg_dump only moves bytes; compression (and hashing and the file
write behind it) run in the compressor's own thread, so on two cores compression
hides behind the dump instead of adding to it. Memory is bounded by a few blocks,
whatever the size of the database.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from backupd.cancel import CancelToken
from backupd.errors import Cancelled, JobFailed
from backupd.naming import partial_name
from backupd.pipeline.checksum import HashingWriter
from backupd.pipeline.compress import BLOCK_SIZE, MemberGzipWriter, open_compressor
from backupd.pipeline.config import DumpConfig
from backupd.pipeline.directory import remove_scratch, scratch_directory, write_tar
from backupd.pipeline.dump import pg_dump, start
from backupd.pipeline.growing import GrowingFile
from backupd.pipeline.sqlcheck import HeadTail
from backupd.pipeline.supervisor import Child
from backupd.progress import Stream
from backupd.storage.atomic import atomic_write

# Wraps the file sink in an encrypting writer (age, see backupd.pipeline.encrypt).
EncryptorFactory = Callable[[BinaryIO], BinaryIO]
# Reads the file back while it is written: (a descriptor open on it for reading, its growth,
# (st_dev, st_ino) of the file written). Runs in its own thread, which may start late: the
# descriptor is opened by the temporary name before the thread starts, since by the time it
# runs a small dump may already be renamed into place. The descriptor stays the caller's.
# Keeps its result itself, never raises.
ReadBack = Callable[[int, GrowingFile, tuple[int, int]], object]


@dataclass(frozen=True)
class DumpOutcome:
    raw_bytes: int
    stored_bytes: int
    sha256: str
    stderr_tail: str
    # Compressed size of every gzip member, when the stored file is the gzip stream itself.
    gzip_members: list[int] | None = None


class DumpFailed(JobFailed):
    def __init__(self, message: str, stderr_tail: str) -> None:
        super().__init__(message)
        self.stderr_tail = stderr_tail


def dump_to_file(
    config: DumpConfig,
    destination: Path,
    cancel: CancelToken,
    *,
    encryptor: EncryptorFactory | None = None,
    read_back: ReadBack | None = None,
    source: Child | None = None,
    kind: str = "dump",
) -> DumpOutcome:
    """Write a complete, fsynced backup at ``destination``, or raise and leave nothing.

    ``read_back`` (verification) follows the file as it grows, in a thread of its own,
    and finishes its last bytes once the file is flushed and fsynced. ``source``: the
    child whose output is stored (default: pg_dump of ``config``), producing SQL of
    ``kind`` (the globals: pg_dumpall --globals-only, kind "globals")."""
    backup_format = config.backup_format
    directory = (scratch_directory(destination, "pgdump")
                 if backup_format == "directory" and source is None else None)
    dump = source if source is not None else pg_dump(config, cancel, directory)
    tool = "pg_dump" if source is None else source.argv[0].rsplit("/", 1)[-1]
    head_tail = HeadTail()
    growing = GrowingFile()
    follower: threading.Thread | None = None
    reading: int | None = None
    encrypting: BinaryIO | None = None
    try:
        if directory is not None:
            _dump_directory(dump, directory, cancel)
        with atomic_write(destination) as out:
            if read_back is not None:
                info = os.fstat(out.fileno())
                # Opened here, not in the thread: the rename below may come first.
                reading = os.open(destination.with_name(partial_name(destination.name)),
                                  os.O_RDONLY | os.O_NOFOLLOW)
                thread = threading.Thread(
                    target=read_back, name="read-back", daemon=True,
                    args=(reading, growing, (info.st_dev, info.st_ino)))
                thread.start()
                follower = thread  # only a started thread is joined
            hashing = HashingWriter(out, on_write=growing.grew)
            sink: BinaryIO = hashing  # type: ignore[assignment]
            encrypting = encryptor(sink) if encryptor is not None else None
            if encrypting is not None:
                sink = encrypting
            # Custom and directory formats are compressed by pg_dump itself, table by table.
            writer = open_compressor(
                sink, config.compression if backup_format == "plain" else "none", config.level)
            if directory is not None:
                with cancel.progress.stream("tar of pg_dump's directory") as stream:
                    head_tail.total = write_tar(directory, sink, stream.moved)
                if encrypting is not None:
                    encrypting.close()
                code = 0
            else:
                with cancel.progress.stream(f"{tool} output") as stream:
                    code = pump(dump, writer, sink, encrypting, head_tail.feed, stream)
            if cancel.cancelled:
                raise Cancelled(f"{cancel.reason or 'backup cancelled by shutdown'}; {tool} "
                                "was stopped and the partial file removed")
            if code != 0:
                reason = dump.error_line or f"exit code {code}"
                raise DumpFailed(f"{tool} failed: {reason}", dump.stderr_tail)
            if backup_format == "plain":
                problem = head_tail.problem(cluster=kind == "globals")
                if problem is not None:
                    raise DumpFailed(f"{tool} output rejected: {problem}", dump.stderr_tail)
            elif head_tail.total == 0:
                raise DumpFailed("pg_dump output rejected: the dump is empty", dump.stderr_tail)
        # Flushed, fsynced and renamed: the read-back may finish the last bytes.
        growing.done(hashing.bytes_written)
    except BaseException:
        growing.abandon()
        abort = getattr(encrypting, "abort", None) if directory is not None else None
        if abort is not None:
            abort()
        raise
    finally:
        if directory is not None:
            remove_scratch(directory)
        try:
            if follower is not None:
                follower.join()
        finally:
            if reading is not None:
                os.close(reading)
    members = (writer.member_sizes if isinstance(writer, MemberGzipWriter)
               and encrypting is None else None)
    return DumpOutcome(head_tail.total, hashing.bytes_written, hashing.sha256, dump.stderr_tail,
                       members)


def _dump_directory(dump: Child, directory: Path, cancel: CancelToken) -> None:
    """pg_dump -Fd -j N into ``directory``; DumpFailed unless it completed. The files'
    growth is its progress (there is no stream to count)."""
    with dump, cancel.progress.stream("pg_dump directory") as stream:
        written = 0
        while not dump.has_exited(1.0):
            size = sum(entry.stat().st_size for entry in os.scandir(directory))
            if size > written:
                stream.moved(size - written)
                written = size
        code = dump.wait()
    if cancel.cancelled:
        raise Cancelled(f"{cancel.reason or 'backup cancelled by shutdown'}; pg_dump was "
                        "stopped and its directory removed")
    if code != 0:
        raise DumpFailed(f"pg_dump failed: {dump.error_line or f'exit code {code}'}",
                         dump.stderr_tail)


# pg_dump writes 4 KiB at a time. Read whenever anything was there, a scale-20 dump took
# 22,317 reads (median 4 KiB), each a wake-up of this thread and a trip through the writers.
# After a short read, a nap lets the pipe gather more first. The nap is bounded so that a
# producer writing at GATHER_RATE fills at most half the pipe meanwhile: pg_dump never waits.
GATHER_RATE = 512 * 1024 * 1024  # bytes/s; pg_dump here: ~80 MB/s
MIN_GATHER_PIPE = 256 * 1024  # a smaller pipe (not enlarged) fills too fast to nap at all


def _gathering(capacity: int) -> tuple[float, int]:
    """(seconds to nap after a short read, what counts as short) for a pipe of ``capacity``
    bytes."""
    if capacity < MIN_GATHER_PIPE:
        return 0.0, 0
    return capacity / 2 / GATHER_RATE, capacity // 4


def pump(dump: Child, writer: BinaryIO, sink: BinaryIO, encrypting: BinaryIO | None,
         inspect: Callable[[bytes], object], stream: Stream) -> int:
    """Move the child's output through the writers, each chunk shown to ``inspect`` first;
    the child's exit code. Any failure stops the child and the writers' threads. For pg_dump
    (and pg_basebackup, backupd.archive.take). A cancel stops
    pg_dump's process group (the supervisor), which ends its output."""
    source, capacity = start(dump)
    try:
        fd = source.fileno()
        nap, short = _gathering(capacity)
        # Straight from the pipe (no Python-side buffer): one read takes all pg_dump has
        # written, up to the enlarged pipe's size.
        while chunk := os.read(fd, BLOCK_SIZE):
            inspect(chunk)  # raises to stop everything (base backups: a damaged tar)
            writer.write(chunk)
            stream.moved(len(chunk))
            if len(chunk) < short:
                # An oversleep (a busy machine) costs nothing: the pipe then holds more, the
                # next read is long, and no nap follows it.
                time.sleep(nap)
        if writer is not sink:
            writer.close()
        if encrypting is not None:
            encrypting.close()
        return dump.wait()
    except BaseException:
        dump.stop()
        source.close()
        abort = getattr(writer, "abort", None)
        if abort is not None:
            abort()  # stop the compressing threads
        abort = getattr(encrypting, "abort", None)
        if abort is not None:
            abort()  # stop the encrypting thread; the partial file is discarded
        raise

"""A base backup's members written into a directory by a second thread.

Unpacking is three costs of about equal size: zstd, the SHA-256 of every file (both in the
reading thread) and the filesystem's own (creating a data directory's thousand files costs
about half a millisecond each here, writing its bytes more). The system calls release the
GIL, so handing them to one writer thread lets them run beside the decompression and the
hashing on a second core. One thread, one FIFO queue: every operation happens in the order
the archive gives it, as before. The queue is bounded, so the reader waits for the disk
rather than holding the archive in memory. A write error is raised in the reading thread at
its next hand-over, or at ``finish`` at the latest: nothing is reported written that was not.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from pathlib import Path, PurePosixPath

from backupd.archive.tarstream import MemberSink, TarError, TarMember
from backupd.errors import naming

_LANES = 2  # creating files is serialised per directory in the kernel; two overlap
_QUEUE_DEPTH = 32  # pieces in flight: a few MiB of decompressed data each at most, usually
_MKDIR, _OPEN, _WRITE, _CLOSE = range(4)
_Job = tuple[int, Path | bytes | None]


class _Lane:
    """One writer thread and its FIFO queue: a file's operations all go to one lane."""

    def __init__(self, writer: DirectoryWriter, number: int) -> None:
        self._writer = writer
        self._jobs: queue.Queue[_Job | None] = queue.Queue(maxsize=_QUEUE_DEPTH)
        self._thread = threading.Thread(target=self._run, name=f"backupd-extract-{number}",
                                        daemon=True)
        self._thread.start()

    def put(self, job: _Job) -> None:
        if self._writer.error is not None:
            raise self._writer.error
        self._jobs.put(job)

    def stop(self) -> None:
        self._jobs.put(None)
        self._thread.join()

    def write(self, data: bytes) -> int:
        self.put((_WRITE, data))
        return len(data)

    def close(self) -> None:
        self.put((_CLOSE, None))

    def _run(self) -> None:
        fd = -1
        path = self._writer.target  # the file (or directory) being written
        try:
            while (job := self._jobs.get()) is not None:
                if self._writer.error is not None or self._writer.abandoned:
                    continue  # keep taking jobs so the reader never blocks on a full queue
                if isinstance(job[1], Path):
                    path = job[1]
                try:
                    fd = self._do(job, fd)
                except OSError as exc:  # a write names no file (ENOSPC): it names it
                    self._writer.error = naming(exc, path)
                except BaseException as exc:  # handed to the reading thread
                    self._writer.error = exc
        finally:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _do(self, job: _Job, fd: int) -> int:
        operation, argument = job
        if operation == _WRITE:
            assert isinstance(argument, bytes)
            view = memoryview(argument)
            while view:
                view = view[os.write(fd, view):]
            return fd
        if operation == _CLOSE:
            if self._writer.sync_each_file:
                os.fsync(fd)
            os.close(fd)
            return -1
        assert isinstance(argument, Path)
        if operation == _MKDIR:
            argument.mkdir(mode=0o700, parents=True, exist_ok=True)
            return fd
        argument.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        return os.open(argument, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)


class DirectoryWriter:
    """Writes each member under ``target``; a path that would leave it is refused (at once,
    in the caller's thread). ``finish`` after the last member, ``abort`` on any failure."""

    def __init__(self, target: Path, *, sync_each_file: bool = True) -> None:
        self.target = target
        self.sync_each_file = sync_each_file
        self.error: BaseException | None = None
        self.abandoned = False
        self._lanes = [_Lane(self, number) for number in range(_LANES)]
        self._next = 0

    def __call__(self, member: TarMember) -> MemberSink | None:
        relative = PurePosixPath(member.path)
        if relative.is_absolute() or ".." in relative.parts or not relative.parts:
            raise TarError(f"member {member.path!r} points outside the data directory")
        path = self.target.joinpath(*relative.parts)
        if member.kind != "directory" and member.kind != "file":
            return None  # reported by the content check
        lane = self._lanes[self._next]
        self._next = (self._next + 1) % len(self._lanes)
        if member.kind == "directory":
            lane.put((_MKDIR, path))  # a file's lane makes its parents too, whichever is first
            return None
        lane.put((_OPEN, path))
        return lane

    def finish(self) -> None:
        """Wait until everything handed over is written (and closed); raise its error."""
        for lane in self._lanes:
            lane.stop()
        if self.error is not None:
            raise self.error

    def abort(self) -> None:
        """Stop writing (what is queued is dropped) and close what is open."""
        self.abandoned = True
        for lane in self._lanes:
            lane.stop()

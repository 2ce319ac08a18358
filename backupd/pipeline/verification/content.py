"""Content checks fed with the stored bytes in order: the compressed stream and pg_dump's
first and last lines, sequentially (PlainSqlCheck) or on all cores (ParallelGzipCheck)."""

from __future__ import annotations

import collections
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from backupd.pipeline.compress import (
    MEMBER_SIZE,
    GzipStreamChecker,
    MemberCheck,
    check_gzip_member,
    open_checker,
)
from backupd.pipeline.custom import ArchiveReader
from backupd.pipeline.sqlcheck import HEAD_BYTES, TAIL_BYTES, HeadTail, header_problem
from backupd.pipeline.verification.report import VerifyReport


class PlainSqlCheck:
    """Decompresses a plain-SQL backup fed in chunks and checks pg_dump's first and last lines.

    Also the sink for decrypted ``.age`` content, so both paths run the same checks.
    ``forward``, if given, receives the decompressed SQL in order (restore).
    """

    def __init__(self, compression: str,
                 forward: Callable[[bytes], object] | None = None) -> None:
        self.compression = compression
        self._checker = open_checker(compression)
        self._head_tail = HeadTail()
        self._forward = forward
        self._stream_problem: str | None = None

    @property
    def member_sizes(self) -> list[int]:
        return self._checker.member_sizes

    def write(self, chunk: bytes) -> int:
        if self._stream_problem is None:
            pieces = self._checker.feed(chunk)
            while True:
                try:
                    piece = next(pieces, None)
                except (ValueError, OSError) as exc:
                    self._stream_problem = describe_stream_error(exc)
                    break
                if piece is None:
                    break
                self._head_tail.feed(piece)
                # Outside the try: a failing consumer (psql gone) says nothing about the file.
                if self._forward is not None:
                    self._forward(piece)
        return len(chunk)

    def add_checks(self, report: VerifyReport, *, cluster: bool = False) -> bool:
        """Add the stream and SQL checks; False when the stream itself failed.
        ``cluster``: the SQL is pg_dumpall's (the globals artifact), not pg_dump's."""
        if self._stream_problem is None:
            try:
                self._checker.finish()
            except ValueError as exc:
                self._stream_problem = str(exc)
        return add_content_checks(report, self.compression, self._stream_problem,
                                   self._head_tail, cluster=cluster)


def add_content_checks(report: VerifyReport, compression: str, stream_problem: str | None,
                        head_tail: HeadTail, *, cluster: bool = False) -> bool:
    if not report.add(f"{compression} integrity", stream_problem is None, stream_problem or ""):
        return False
    problem = head_tail.problem(cluster=cluster)
    report.add("sql content", problem is None, problem or "")
    return True


class ParallelGzipCheck:
    """The checks of PlainSqlCheck for a gzip file whose member sizes the manifest records:
    members are cut from the stream as it is read and inflated on all cores, a few in
    flight (memory stays flat), their first and last bytes summed up in order.
    ``forward``, if given, receives each intact member's SQL, in order, until the first
    damaged member (the verdict then fails)."""

    def __init__(self, members: list[int],
                 forward: Callable[[bytes], object] | None = None) -> None:
        self.compression = "gzip"
        self.member_sizes = members
        self._forward = forward
        self._next = 0  # index of the member being gathered
        self._gathered: list[bytes | memoryview] = []
        self._gathered_bytes = 0
        self._offset = 0  # file offset where the member being gathered starts
        self._extra = 0  # bytes beyond the recorded members
        workers = max(1, min(4, os.cpu_count() or 1))
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="inflate")
        # (index, offset, the member itself while its SQL is still to be forwarded, check)
        self._in_flight: collections.deque[
            tuple[int, int, bytes | memoryview | None, Future[MemberCheck]]] = (
            collections.deque())
        self._max_in_flight = workers * 2
        self._head_tail = HeadTail()
        self._problem: str | None = None

    def write(self, chunk: bytes) -> int:
        view = memoryview(chunk)
        while view:
            if self._next >= len(self.member_sizes):
                self._extra += len(view)
                break
            want = self.member_sizes[self._next] - self._gathered_bytes
            self._gathered.append(view[:want])
            self._gathered_bytes += len(self._gathered[-1])
            view = view[want:]
            if self._gathered_bytes == self.member_sizes[self._next]:
                self._submit()
        return len(chunk)

    def _submit(self) -> None:
        parts = self._gathered
        member = parts[0] if len(parts) == 1 else b"".join(parts)
        if self._problem is None:
            forwarding = self._forward is not None
            # backupd writes members of MEMBER_SIZE bytes of SQL: those are kept whole by
            # the inflating thread, anything bigger is inflated again, in steps, as it is
            # forwarded.
            future = self._pool.submit(check_gzip_member, member, TAIL_BYTES,
                                       keep_up_to=MEMBER_SIZE if forwarding else 0)
            self._in_flight.append((self._next, self._offset,
                                    member if forwarding else None, future))
        self._offset += self._gathered_bytes
        self._next += 1
        self._gathered, self._gathered_bytes = [], 0
        while len(self._in_flight) > self._max_in_flight:
            self._collect_oldest()

    def _collect_oldest(self) -> None:
        index, offset, member, future = self._in_flight.popleft()
        result = future.result()
        if self._problem is not None:
            return
        if result.problem is not None:
            end = offset + self.member_sizes[index]
            problem = describe_stream_error(ValueError(result.problem))
            self._problem = (f"gzip member {index + 1} of {len(self.member_sizes)} (bytes "
                             f"{offset}-{end}): {problem}")
        else:
            self._head_tail.feed_part(result.head, result.tail, result.raw_bytes)
            if self._forward is not None and member is not None:
                # Taken away while it runs: a forward that raises gets nothing more, not
                # even from the members that close() still collects.
                forward, self._forward = self._forward, None
                for piece in (result.content if result.content is not None
                              else GzipStreamChecker().feed(member)):
                    forward(piece)
                self._forward = forward

    def close(self) -> None:
        while self._in_flight:
            self._collect_oldest()
        self._pool.shutdown(wait=True)

    def add_checks(self, report: VerifyReport, *, cluster: bool = False) -> bool:
        self.close()
        if self._problem is None:
            recorded = sum(self.member_sizes)
            if self._extra or self._next < len(self.member_sizes) or not self.member_sizes:
                self._problem = (f"the file has {self._offset + self._gathered_bytes + self._extra}"
                                 f" bytes where the manifest's gzip members add up to {recorded}")
        return add_content_checks(report, "gzip", self._problem, self._head_tail,
                                  cluster=cluster)


def describe_stream_error(exc: BaseException) -> str:
    text = str(exc)
    if "incorrect header" in text or "Error -3" in text or "invalid" in text.lower():
        return f"not a valid compressed stream ({text})"
    return text




class HeaderGate:
    """Passes the SQL on only once it starts with pg_dump's header, so a file that is not
    a pg_dump at all never reaches psql (its footer can only be checked at the end)."""

    def __init__(self, send: Callable[[bytes], object]) -> None:
        self._send = send
        self._held = b""
        self._open = False

    def __call__(self, data: bytes) -> None:
        if self._open:
            self._send(data)
            return
        if len(self._held) >= HEAD_BYTES:
            return  # the header was wrong: hold everything back; the report says why
        self._held += data
        if len(self._held) >= HEAD_BYTES and header_problem(self._held[:HEAD_BYTES]) is None:
            self._open = True
            held, self._held = self._held, b""
            self._send(held)


class CustomArchiveCheck:
    """The content checks of an (unencrypted or decrypted) custom archive fed in order: two
    pg_restore processes read it as it goes by (pipeline.custom.ArchiveReader), so the
    backup's read-back checks it while pg_dump is still writing. ``close`` in the thread
    that made it (the processes die with that thread)."""

    compression = "custom"
    member_sizes: list[int] = []

    def __init__(self) -> None:
        self._reader = ArchiveReader()

    def write(self, chunk: bytes | memoryview) -> int:
        return self._reader.write(chunk)

    def close(self) -> None:
        self._reader.finish()

    def abort(self) -> None:
        self._reader.abort()

    def add_checks(self, report: VerifyReport, *, cluster: bool = False) -> bool:
        del cluster  # a custom archive is always one database's pg_dump
        archive = self._reader.finish()
        if report.add("pg_restore --list", archive.toc_problem is None,
                      archive.toc_problem or ""):
            report.add("archive data", archive.data_problem is None, archive.data_problem or "")
        return True

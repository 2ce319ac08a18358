"""Compression codecs, behind two functions: a writer for the pipeline, a reader for verify.

gzip uses ISA-L (python-isal): byte-compatible with plain ``gunzip``, several times
faster than zlib. The gzip writer cuts the SQL into independent gzip *members* of
MEMBER_SIZE bytes each, compressed by a small pool of threads (ISA-L releases the GIL
while it compresses). A concatenation of gzip members is one valid gzip file (RFC 1952;
``gunzip`` and ``gzip -t`` read it as usual) and costs ~0.1% in size, but the members'
compressed sizes, recorded in the manifest, let verify inflate them on every core.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

import zstandard
from isal import isal_zlib

# ISA-L has levels 0-3; 1 is its sweet spot for speed versus size.
DEFAULT_LEVELS = {"gzip": 1, "zstd": 3}
BLOCK_SIZE = 1024 * 1024
# SQL per gzip member. Small enough that a few in flight keep memory flat (each costs its
# raw bytes plus ~a third for the compressed copy), large enough that the per-member
# overhead (an 18-byte header/trailer and a cold 32 KiB window) is negligible.
MEMBER_SIZE = 2 * BLOCK_SIZE
COMPRESS_THREADS = 2
# Decompressed bytes produced per step: memory does not depend on the compression ratio.
INFLATE_STEP = BLOCK_SIZE
# zstd's multi-threaded jobs and its window (see zstd_compressor): bounded memory.
ZSTD_JOB_SIZE = 2 * BLOCK_SIZE
ZSTD_MAX_WINDOW_LOG = 21
# zstd's decompressobj has no output limit: feed it small slices instead.
ZSTD_FEED = 128 * 1024
GZIP_MAGIC = b"\x1f\x8b"


class MemberGzipWriter:
    """A writable stream that compresses into ``sink`` as independent gzip members.

    ``write`` gathers SQL into MEMBER_SIZE blocks and hands each to the pool; finished
    members are written to ``sink`` in order by the calling thread, at most ``threads + 1``
    blocks being in flight, so memory is bounded whatever the size of the dump.
    ``member_sizes`` lists every member's compressed size, in file order, after close().
    """

    def __init__(self, sink: BinaryIO, level: int, threads: int = COMPRESS_THREADS) -> None:
        self._sink = sink
        self._level = level
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="gzip")
        self._in_flight: collections.deque[Future[bytes]] = collections.deque()
        self._max_in_flight = threads + 1
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self.member_sizes: list[int] = []
        self.closed = False

    def _compress(self, block: bytes) -> bytes:
        return isal_zlib.compress(block, self._level, wbits=31)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        size = len(data)
        if isinstance(data, bytes) and self._pending_bytes + size < MEMBER_SIZE:
            self._pending.append(data)  # the usual case (a pipe read): no copy
            self._pending_bytes += size
            return size
        view = memoryview(data)
        while view:
            room = MEMBER_SIZE - self._pending_bytes
            piece = view[:room]
            self._pending.append(bytes(piece))
            self._pending_bytes += len(piece)
            view = view[room:]
            if self._pending_bytes >= MEMBER_SIZE:
                self._submit()
        return size

    def _submit(self) -> None:
        pending = self._pending
        block = pending[0] if len(pending) == 1 else b"".join(pending)
        self._pending, self._pending_bytes = [], 0
        self._in_flight.append(self._pool.submit(self._compress, block))
        while len(self._in_flight) > self._max_in_flight:
            self._write_oldest()

    def _write_oldest(self) -> None:
        member = self._in_flight.popleft().result()
        self._sink.write(member)
        self.member_sizes.append(len(member))

    def flush(self) -> None:
        """Members are written whole; there is nothing useful to flush before close()."""

    def writable(self) -> bool:
        return True

    def close(self) -> None:
        if self.closed:
            return
        try:
            # An empty dump still becomes one (empty) member: a valid gzip file.
            if self._pending_bytes or (not self.member_sizes and not self._in_flight):
                self._submit()
            while self._in_flight:
                self._write_oldest()
            self._sink.flush()
        finally:
            self.abort()

    def abort(self) -> None:
        """Stop the pool (after an error); queued blocks are dropped."""
        self.closed = True
        self._pending = []
        for future in self._in_flight:
            future.cancel()
        self._in_flight.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> MemberGzipWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_compressor(sink: BinaryIO, compression: str, level: int | None) -> BinaryIO:
    """A writable stream that compresses into ``sink``; close() finishes the stream."""
    level = DEFAULT_LEVELS.get(compression, 0) if level is None else level
    if compression == "gzip":
        writer = MemberGzipWriter(sink, min(level, isal_zlib.ISAL_BEST_COMPRESSION))
        return writer  # type: ignore[return-value]
    if compression == "zstd":
        return zstd_compressor(level).stream_writer(sink, closefd=False)
    if compression == "none":
        return sink
    raise ValueError(f"unknown compression {compression!r}")


def zstd_compressor(level: int) -> zstandard.ZstdCompressor:
    """zstd compressing in one worker thread of its own (so off the thread reading pg_dump),
    with its memory bounded whatever the level or the size of the dump.

    zstd's multi-threaded mode buffers whole jobs: by default 4 windows each (8 MiB at level
    3), several in flight, ~38 MiB in all, which took a zstd backup's peak to ~105 MiB. Jobs of
    ZSTD_JOB_SIZE and a window of at most 2**ZSTD_MAX_WINDOW_LOG cost ~12 MiB; the window is
    level 3's own, so the default level compresses as before (higher levels lose a little
    ratio for it; their match tables, from level ~17 up, need more memory in any case)."""
    defaults = zstandard.ZstdCompressionParameters.from_level(level)
    params = zstandard.ZstdCompressionParameters.from_level(
        level, threads=1, job_size=ZSTD_JOB_SIZE, write_checksum=True,
        window_log=min(defaults.window_log, ZSTD_MAX_WINDOW_LOG))
    return zstandard.ZstdCompressor(compression_params=params)


class GzipStreamChecker:
    """Decompresses a (possibly multi-member) gzip stream fed in chunks, checking CRCs.

    Every member's CRC and length are checked by the decompressor; trailing bytes
    that are not a new gzip member are an error, as ``gzip -t`` treats them.
    ``member_sizes`` records the compressed size of every complete member, so a reader
    can compare the file's real member boundaries with the ones a manifest records.
    """

    def __init__(self) -> None:
        self._inflater = isal_zlib.decompressobj(wbits=31)
        self._member_in = 0  # compressed bytes of the current member consumed so far
        self.member_sizes: list[int] = []
        self._started = False

    def feed(self, chunk: bytes | memoryview) -> Iterator[bytes]:
        """The decompressed data, in pieces of at most INFLATE_STEP bytes."""
        if not self._started and chunk:
            self._started = True
            # Else a short non-gzip file would only be reported as "truncated".
            if not GZIP_MAGIC.startswith(bytes(chunk[:2])):
                raise ValueError("not a gzip file (it does not start with gzip's magic bytes)")
        pending = chunk
        while True:
            try:
                out = self._inflater.decompress(pending, INFLATE_STEP)
            except isal_zlib.error as exc:  # type: ignore[misc]  # the stub calls it an instance
                # IsalError is no ValueError: callers would treat corruption as a crash.
                raise ValueError(f"not a valid gzip stream ({exc})") from None
            if out:
                yield out
            if self._inflater.eof:
                rest = self._inflater.unused_data
                self.member_sizes.append(self._member_in + len(pending) - len(rest))
                self._member_in = 0
                if rest and not GZIP_MAGIC.startswith(rest[:2]):
                    raise ValueError("trailing garbage after the gzip stream")
                self._inflater = isal_zlib.decompressobj(wbits=31)
                pending = rest
                if not pending:
                    return
                continue
            tail = self._inflater.unconsumed_tail
            self._member_in += len(pending) - len(tail)
            pending = tail
            # A full step may leave output inside the inflater even with no input left.
            if not pending and len(out) < INFLATE_STEP:
                return

    def finish(self) -> None:
        # A fresh inflater with nothing fed: the stream ended exactly after a member.
        if self._member_in or not self.member_sizes:
            raise ValueError("the gzip stream is truncated (unexpected end of file)")


@dataclass
class MemberCheck:
    """One gzip member inflated on its own: its problem, or its size and edge bytes."""

    problem: str | None = None
    raw_bytes: int = 0
    head: bytes = b""  # the first ``edge`` bytes of its content
    tail: bytes = b""  # the last ``edge`` bytes (overlaps ``head`` when the content is short)
    # All of it, when asked to keep up to that much and it was no more (else None).
    content: list[bytes] | None = None


def check_gzip_member(member: bytes | memoryview, edge: int, *,
                      keep_up_to: int = 0) -> MemberCheck:
    """Inflate ``member``, which must be exactly one complete gzip member (CRC and length
    checked), keeping its size and first/last ``edge`` bytes (for the SQL checks), and its
    whole content if that is at most ``keep_up_to`` bytes (memory never depends on the
    compression ratio: a member that inflates to more is not kept)."""
    checker = GzipStreamChecker()
    result = MemberCheck(content=[] if keep_up_to else None)
    try:
        for piece in checker.feed(member):
            if result.content is not None:
                if result.raw_bytes + len(piece) <= keep_up_to:
                    result.content.append(piece)
                else:
                    result.content = None
            if result.raw_bytes < edge:
                result.head += piece[: edge - result.raw_bytes]
            result.tail = (result.tail + piece[-edge:])[-edge:]
            result.raw_bytes += len(piece)
        checker.finish()
    except ValueError as exc:
        result.problem = str(exc)
        return result
    if len(checker.member_sizes) != 1:
        result.problem = (f"holds {len(checker.member_sizes)} gzip members where the "
                          "manifest records one")
    return result


class ZstdStreamChecker:
    def __init__(self) -> None:
        self._inflater = zstandard.ZstdDecompressor().decompressobj()
        self._eof = False
        self.member_sizes: list[int] = []  # zstd files are not split; kept for one interface

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        view = memoryview(chunk)
        for start in range(0, len(view), ZSTD_FEED):
            try:
                data = self._inflater.decompress(view[start:start + ZSTD_FEED])
            except zstandard.ZstdError as exc:
                raise ValueError(f"zstd stream is corrupt: {exc}") from None
            self._eof = bool(getattr(self._inflater, "eof", False))
            if data:
                yield data

    def finish(self) -> None:
        if not self._eof:
            raise ValueError("the zstd stream is truncated (unexpected end of file)")


def open_checker(compression: str) -> GzipStreamChecker | ZstdStreamChecker:
    if compression == "gzip":
        return GzipStreamChecker()
    if compression == "zstd":
        return ZstdStreamChecker()
    raise ValueError(f"unknown compression {compression!r}")

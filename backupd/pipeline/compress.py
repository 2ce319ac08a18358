"""Compression codecs, behind two functions: a writer for the pipeline, a reader for verify.

gzip uses ISA-L (python-isal): byte-compatible with plain ``gunzip``, several times
faster than zlib, and its threaded writer compresses off the thread reading pg_dump.
"""

from __future__ import annotations

from typing import BinaryIO

import zstandard
from isal import igzip_threaded, isal_zlib

# ISA-L has levels 0-3; 1 is its sweet spot for speed versus size.
DEFAULT_LEVELS = {"gzip": 1, "zstd": 3}
BLOCK_SIZE = 1024 * 1024


def open_compressor(sink: BinaryIO, compression: str, level: int | None) -> BinaryIO:
    """A writable stream that compresses into ``sink``; close() finishes the stream."""
    level = DEFAULT_LEVELS.get(compression, 0) if level is None else level
    if compression == "gzip":
        writer: BinaryIO = igzip_threaded.open(  # type: ignore[no-untyped-call]
            sink, "wb", compresslevel=min(level, isal_zlib.ISAL_BEST_COMPRESSION), threads=1,
            block_size=BLOCK_SIZE,
        )
        return writer
    if compression == "zstd":
        compressor = zstandard.ZstdCompressor(level=level, threads=1, write_checksum=True)
        return compressor.stream_writer(sink, closefd=False)
    if compression == "none":
        return sink
    raise ValueError(f"unknown compression {compression!r}")


class GzipStreamChecker:
    """Decompresses a (possibly multi-member) gzip stream fed in chunks, checking CRCs.

    Every member's CRC and length are checked by the decompressor; trailing bytes
    that are not a new gzip member are an error, as ``gzip -t`` treats them.
    """

    def __init__(self) -> None:
        self._inflater = isal_zlib.decompressobj(wbits=31)
        self.finished_member = False
        self._started = False

    def feed(self, chunk: bytes) -> bytes:
        if not self._started and chunk:
            self._started = True
            # Else a short non-gzip file would only be reported as "truncated".
            if not chunk.startswith(b"\x1f\x8b"[: len(chunk)]):
                raise ValueError("not a gzip file (it does not start with gzip's magic bytes)")
        # A list, not a growing bytearray: one member (the usual case) is returned uncopied.
        out: list[bytes] = []
        while chunk:
            try:
                out.append(self._inflater.decompress(chunk))
            except isal_zlib.error as exc:  # type: ignore[misc]  # the stub calls it an instance
                # IsalError is no ValueError: callers would treat corruption as a crash.
                raise ValueError(f"not a valid gzip stream ({exc})") from None
            if not self._inflater.eof:
                break
            chunk = self._inflater.unused_data
            self.finished_member = True
            if chunk:
                if not chunk.startswith(b"\x1f\x8b"[: len(chunk)]):
                    raise ValueError("trailing garbage after the gzip stream")
                self._inflater = isal_zlib.decompressobj(wbits=31)
                self.finished_member = False
        return out[0] if len(out) == 1 else b"".join(out)

    def finish(self) -> None:
        if not self._inflater.eof:
            raise ValueError("the gzip stream is truncated (unexpected end of file)")


class ZstdStreamChecker:
    def __init__(self) -> None:
        self._inflater = zstandard.ZstdDecompressor().decompressobj()
        self._eof = False

    def feed(self, chunk: bytes) -> bytes:
        try:
            data = self._inflater.decompress(chunk)
        except zstandard.ZstdError as exc:
            raise ValueError(f"zstd stream is corrupt: {exc}") from None
        self._eof = bool(getattr(self._inflater, "eof", False))
        return data

    def finish(self) -> None:
        if not self._eof:
            raise ValueError("the zstd stream is truncated (unexpected end of file)")


def open_checker(compression: str) -> GzipStreamChecker | ZstdStreamChecker:
    if compression == "gzip":
        return GzipStreamChecker()
    if compression == "zstd":
        return ZstdStreamChecker()
    raise ValueError(f"unknown compression {compression!r}")


def open_decompressed(path: str | BinaryIO, compression: str) -> BinaryIO:
    """A readable stream of the decompressed content of a file path or a stream (restore)."""
    if compression == "gzip":
        return igzip_threaded.open(path, "rb", threads=1)  # type: ignore[no-any-return,no-untyped-call]
    source = open(path, "rb") if isinstance(path, str) else path  # noqa: SIM115
    if compression == "zstd":
        return zstandard.ZstdDecompressor().stream_reader(source, closefd=True)
    return source

"""The bytes of a stored WAL file (:mod:`backupd.archive.walstore`): compressed, and encrypted
when age is on, on the way in, with the raw and the stored SHA-256; decompressed and hashed on
the way out, so a copy is checked against its manifest as it is written."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from backupd.errors import JobFailed
from backupd.pipeline.checksum import HashingWriter
from backupd.pipeline.compress import BLOCK_SIZE, open_checker, open_compressor


class WalFetchError(JobFailed):
    """A WAL file that cannot be restored as archived (missing, corrupt, undecryptable)."""


def unreadable(name: str, where: str, exc: OSError) -> WalFetchError:
    return WalFetchError(f"WAL file {name} cannot be read from the archive ({where}): "
                         f"{exc.strerror or exc}")


def read_block(stored: BinaryIO, name: str, where: str) -> bytes:
    """A block of archived WAL file ``name``: an OSError reading it (EACCES, EIO) is the
    archive's, said naming the file."""
    try:
        return stored.read(BLOCK_SIZE)
    except OSError as exc:
        raise unreadable(name, where, exc) from None


def encode(source: Path, out: BinaryIO, compression: str, level: int | None,
           encryptor: object) -> tuple[int, str, int, str]:
    """(raw bytes, raw SHA-256, stored bytes, stored SHA-256) of ``source`` written to ``out``."""
    hashing = HashingWriter(out)
    sink: BinaryIO = hashing  # type: ignore[assignment]
    encrypting = encryptor(sink) if callable(encryptor) else None
    if encrypting is not None:
        sink = encrypting
    writer = open_compressor(sink, compression, level)
    raw = hashlib.sha256()
    raw_bytes = 0
    try:
        with open(source, "rb") as data:
            while chunk := data.read(BLOCK_SIZE):
                raw.update(chunk)
                raw_bytes += len(chunk)
                writer.write(chunk)
        writer.close()
        if encrypting is not None:
            encrypting.close()
    except BaseException:
        for stream in (writer, encrypting):
            abort = getattr(stream, "abort", None)
            if abort is not None:
                with contextlib.suppress(Exception):
                    abort()
        raise
    return raw_bytes, raw.hexdigest(), hashing.bytes_written, hashing.sha256


class RawSink:
    """Decompresses stored bytes into ``out``, hashing the raw WAL on the way."""

    def __init__(self, out: BinaryIO, digest: hashlib._Hash, artifact: str) -> None:
        compression = "zstd" if ".wal.zst" in artifact else "gzip"
        self._checker = open_checker(compression)
        self._out = out
        self._digest = digest
        self._artifact = artifact
        self.write_error: OSError | None = None  # writing ``out`` failed (a full disk)

    def write(self, data: bytes) -> int:
        for raw in self._feed(data):
            self._digest.update(raw)
            try:
                self._out.write(raw)
            except OSError as exc:
                self.write_error = exc
                raise
        return len(data)

    def _feed(self, data: bytes) -> Iterator[bytes]:
        try:
            yield from self._checker.feed(data)
        except Exception as exc:
            raise WalFetchError(f"{self._artifact} is corrupt: {exc}") from None

    def finish(self) -> None:
        try:
            self._checker.finish()
        except Exception as exc:
            raise WalFetchError(f"{self._artifact} is corrupt: {exc}") from None

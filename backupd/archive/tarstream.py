"""A tar archive read as it streams past: pushed in chunks, never seeked, never buffered whole.

Base backups are one tar stream (pg_basebackup's) that goes through compression and age on
its way to the repository, and through the reverse on its way out. ``tarfile`` pulls from a
file object; every stage here pushes, so this reader takes chunks (``feed``) and hands each
member's header and data to a consumer. It reads the ustar headers PostgreSQL writes, plus GNU
long names and pax ``path``/``size`` records, and checks every header's checksum: a damaged
or truncated stream is an error naming where, never a shorter archive.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

BLOCK = 512
_REGULAR = (b"0", b"\0", b"7")
_DIRECTORY = b"5"
_GNU_LONG_NAME = b"L"
_PAX_HEADERS = (b"x", b"g")


class TarError(ValueError):
    """The stream is not a complete, undamaged tar archive."""


@dataclass(frozen=True)
class TarMember:
    path: str
    size: int
    kind: str  # "file", "directory" or "other" (symbolic links, devices, ...)
    mode: int


class MemberSink(Protocol):
    def write(self, data: bytes) -> object: ...

    def close(self) -> None: ...


# Told about every member; returns where its data goes (None: skipped).
MemberHandler = Callable[[TarMember], MemberSink | None]


def _octal(field: bytes, what: str) -> int:
    if field and field[0] & 0x80:  # GNU base-256 for sizes above 8 GiB
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise TarError(f"damaged tar header ({what} {text!r} is not a number)") from None


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _checksum_ok(header: bytes) -> bool:
    recorded = _octal(header[148:156], "checksum")
    return sum(header[:148]) + 8 * 0x20 + sum(header[156:]) == recorded


def _pax_records(data: bytes) -> dict[str, str]:
    records: dict[str, str] = {}
    while data:
        length_text = data.partition(b" ")[0]
        try:
            length = int(length_text)
        except ValueError:
            raise TarError("damaged pax header") from None
        record = data[len(length_text) + 1:length].rstrip(b"\n")
        key, _, value = record.partition(b"=")
        records[key.decode()] = value.decode("utf-8", "surrogateescape")
        data = data[length:]
    return records


class TarReader:
    """Feed it the archive's bytes in chunks of any size; ``finish`` at the end of the stream."""

    def __init__(self, handle: MemberHandler) -> None:
        self._handle = handle
        self._header = bytearray()
        self._remaining = 0  # data bytes of the current member still to come
        self._padding = 0  # zero bytes after them, up to the next 512-byte boundary
        self._sink: MemberSink | None = None
        self._meta: bytearray | None = None  # data of a long-name or pax member
        self._meta_kind = b""
        self._long_name: str | None = None
        self._pax: dict[str, str] = {}
        self._ended = False
        self.offset = 0  # bytes of the archive consumed: where an error is
        self.members = 0

    def feed(self, chunk: bytes | memoryview) -> None:
        view = memoryview(chunk)
        while view:
            if self._remaining:
                piece = view[: self._remaining]
                self._data(bytes(piece))
                self._remaining -= len(piece)
                view = view[len(piece):]
                self.offset += len(piece)
                if not self._remaining:
                    self._member_done()
                continue
            if self._padding:
                skip = min(self._padding, len(view))
                self._padding -= skip
                view = view[skip:]
                self.offset += skip
                continue
            need = BLOCK - len(self._header)
            self._header += view[:need]
            self.offset += min(need, len(view))
            view = view[need:]
            if len(self._header) == BLOCK:
                header, self._header = bytes(self._header), bytearray()
                self._start(header)

    def _data(self, piece: bytes) -> None:
        if self._meta is not None:
            self._meta += piece
        elif self._sink is not None:
            self._sink.write(piece)

    def _start(self, header: bytes) -> None:
        if self._ended:
            return  # the rest of the end-of-archive blocks (and tar's record padding)
        if header == bytes(BLOCK):
            self._ended = True
            return
        if not _checksum_ok(header):
            raise TarError(f"damaged tar header at byte {self.offset - BLOCK}")
        size = _octal(header[124:136], "size")
        kind = header[156:157]
        self._remaining, self._padding = size, -size % BLOCK
        if kind == _GNU_LONG_NAME or kind in _PAX_HEADERS:
            self._meta, self._meta_kind = bytearray(), kind
        else:
            name = _text(header[0:100])
            if header[257:262] == b"ustar" and header[345] != 0:
                name = f"{_text(header[345:500])}/{name}"
            name = self._pax.pop("path", "") or self._long_name or name
            if "size" in self._pax:
                size = int(self._pax.pop("size"))
                self._remaining, self._padding = size, -size % BLOCK
            self._pax, self._long_name = {}, None
            member = TarMember(
                path=name.rstrip("/") if kind == _DIRECTORY else name, size=size,
                kind=("file" if kind in _REGULAR else
                      "directory" if kind == _DIRECTORY else "other"),
                mode=_octal(header[100:108], "mode"))
            self.members += 1
            self._sink = self._handle(member)
        if not self._remaining:
            self._member_done()

    def _member_done(self) -> None:
        if self._meta is not None:
            data, self._meta = bytes(self._meta), None
            if self._meta_kind == _GNU_LONG_NAME:
                self._long_name = _text(data)
            elif self._meta_kind == b"x":
                self._pax = _pax_records(data)
            return
        if self._sink is not None:
            sink, self._sink = self._sink, None
            sink.close()

    def finish(self) -> None:
        """The stream ended: it must have ended exactly at tar's end-of-archive marker."""
        if self._remaining or not self._ended:
            raise TarError(f"the tar stream is truncated (ends at byte {self.offset}, "
                           + ("inside a member)" if self._remaining
                              else "before its end-of-archive marker)"))

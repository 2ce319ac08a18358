"""PostgreSQL's WAL file names and LSN arithmetic.

A segment is named ``TTTTTTTTXXXXXXXXYYYYYYYY``: timeline, then the segment number split
into a "log" (the high 32 bits of its LSN) and a segment within that log. How many segments
a log holds depends on the segment size (``wal_segment_size``, 16 MiB unless initdb was told
otherwise), so every conversion takes it: always the server's, as the archive records it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

DEFAULT_SEGMENT_SIZE = 16 * 1024 * 1024
# Where the WAL archive lives inside DB_BACKUP_DIR (and under the S3 prefix), and
# pg_receivewal's directory inside the local archive.
WAL_SUBDIRECTORY = "wal"
SPOOL_SUBDIRECTORY = "spool"
_LOG_SIZE = 0x1_0000_0000  # bytes of WAL per "log" (the high 32 bits of an LSN)

WalKind = Literal["segment", "partial", "history"]

_SEGMENT = re.compile(r"(?P<tli>[0-9A-F]{8})(?P<log>[0-9A-F]{8})(?P<seg>[0-9A-F]{8})"
                      r"(?P<partial>\.partial)?")
_HISTORY = re.compile(r"(?P<tli>[0-9A-F]{8})\.history")
_LSN = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")


def segments_per_log(segment_size: int) -> int:
    return _LOG_SIZE // segment_size


@dataclass(frozen=True)
class WalFileName:
    """One WAL file. Ordered as PostgreSQL needs them: by timeline, then position; a
    timeline's history file comes before its segments, a segment before its ``.partial``."""

    timeline: int
    segno: int  # 0 for a history file
    kind: WalKind
    segment_size: int = DEFAULT_SEGMENT_SIZE

    @property
    def name(self) -> str:
        if self.kind == "history":
            return f"{self.timeline:08X}.history"
        name = segment_name(self.timeline, self.segno, self.segment_size)
        return name + ".partial" if self.kind == "partial" else name

    @property
    def partial(self) -> bool:
        return self.kind == "partial"

    @property
    def history(self) -> bool:
        return self.kind == "history"

    @property
    def segment(self) -> str:
        """The segment's name without ``.partial`` (a history file's own name)."""
        if self.kind == "history":
            return self.name
        return segment_name(self.timeline, self.segno, self.segment_size)

    @property
    def sort_key(self) -> tuple[int, int, int, int]:
        kinds = {"history": 0, "segment": 1, "partial": 2}
        return (self.timeline, 0 if self.kind == "history" else 1, self.segno, kinds[self.kind])

    @property
    def start_lsn(self) -> int:
        return 0 if self.kind == "history" else self.segno * self.segment_size

    def __str__(self) -> str:
        return self.name


def parse_wal_name(name: str, segment_size: int = DEFAULT_SEGMENT_SIZE) -> WalFileName | None:
    """The WAL file ``name`` names (full match), or None for anything else."""
    match = _SEGMENT.fullmatch(name)
    if match is not None:
        seg = int(match["seg"], 16)
        if seg >= segments_per_log(segment_size):
            return None  # no such segment at this size
        segno = int(match["log"], 16) * segments_per_log(segment_size) + seg
        return WalFileName(int(match["tli"], 16), segno,
                           "partial" if match["partial"] else "segment", segment_size)
    match = _HISTORY.fullmatch(name)
    if match is not None:
        return WalFileName(int(match["tli"], 16), 0, "history", segment_size)
    return None


def segment_name(timeline: int, segno: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> str:
    per_log = segments_per_log(segment_size)
    return f"{timeline:08X}{segno // per_log:08X}{segno % per_log:08X}"


def lsn_to_segno(lsn: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> int:
    return lsn // segment_size


def parse_lsn(text: str) -> int:
    """``"0/3000028"`` -> 50331688; ValueError for anything that is not an LSN."""
    match = _LSN.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a WAL position (expected like 0/3000028)")
    return (int(match[1], 16) << 32) | int(match[2], 16)


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"

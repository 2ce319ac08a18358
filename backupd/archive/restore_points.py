"""Named restore points in the archived WAL (``pg_waldump``): where ``--to-name`` stops.

PostgreSQL stops replay at the *first* restore point of the name, and the name is not
unique (``pg_create_restore_point`` makes another each time). So ``recover --to-name``
reads every RESTORE_POINT record in the WAL it would replay and goes on only when there is
exactly one; ``backupd mark`` refuses a name already there.

pg_waldump prints a restore point's name, not its time: the time is read from the record
itself (``xl_restore_point.rp_time``), when it lies within one WAL page as it nearly always
does (else the time is reported unknown, never guessed).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from backupd.archive.recovery import RecoveryPlan, WalLike
from backupd.archive.walnames import format_lsn, parse_lsn, parse_wal_name
from backupd.errors import JobFailed
from backupd.pipeline.clients import missing_server_tools, server_tool
from backupd.pipeline.supervisor import Child

# rmgr: XLOG len (rec/tot): 98/98, tx: 0, lsn: 0/03000060, prev 0/03000028,
#   desc: RESTORE_POINT before-migration
_RESTORE_POINT = re.compile(
    r"^rmgr: XLOG .*lsn: (?P<lsn>[0-9A-F]+/[0-9A-F]+), .*desc: RESTORE_POINT (?P<name>.*)$",
    re.MULTILINE)
# In pg_waldump's error line: "... invalid record length at 0/3000180: ...", "invalid magic
# number 0000 in WAL segment 000000010000000000000004, offset 0".
_LSN = re.compile(r"\b[0-9A-F]{1,8}/[0-9A-F]{1,8}\b")
_SEGMENT_NAME = re.compile(r"\b[0-9A-F]{24}\b")
# Segments read by one pg_waldump run (and, when fetched for the scan, on disk at once).
WINDOW_SEGMENTS = 64
# The record as written (PostgreSQL 13 to 17): a 24-byte XLogRecord header, the main data's
# short header (XLR_BLOCK_ID_DATA_SHORT, length), then xl_restore_point: rp_time
# (microseconds since 2000-01-01 UTC, int64), rp_name[64].
_XLOG_BLCKSZ = 8192
_RM_XLOG_ID = 0
_XLOG_RESTORE_POINT = 0x70
_DATA_SHORT = 0xFF
_RESTORE_POINT_SIZE = 72
_POSTGRES_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
# XLOG_PAGE_MAGIC (access/xlog_internal.h), the first two bytes of every WAL page: the major
# that wrote the WAL, to name the pg_waldump that is missing.
_PAGE_MAGIC_MAJOR = {0xD106: 13, 0xD10D: 14, 0xD110: 15, 0xD113: 16, 0xD116: 17}


@dataclass(frozen=True)
class RestorePoint:
    name: str
    lsn: int
    time: datetime | None  # None: the record crosses a WAL page, its time was not read

    def describe(self) -> str:
        when = self.time.isoformat() if self.time is not None else "time unknown"
        return f"{format_lsn(self.lsn)} ({when})"


def waldump_reading(wal_file: Path, server_root: Path) -> Path | None:
    """The pg_waldump that reads ``wal_file`` (each major has its own WAL page magic): tried
    newest major first, before the data directory's PG_VERSION is at hand. None: none."""
    try:
        majors = sorted((int(n) for n in os.listdir(server_root) if n.isdigit()), reverse=True)
    except OSError:
        return None
    for major in majors:
        tool = server_tool("pg_waldump", major, server_root)
        if tool is None:
            continue
        argv = [str(tool), "--limit=1", "--path", str(wal_file.parent), wal_file.name]
        with Child(argv, stdout=subprocess.DEVNULL) as child:
            if child.wait(60) == 0:
                return tool
    return None


def missing_waldump(wal_file: Path, server_root: Path) -> str:
    """Why :func:`waldump_reading` found none, in one line: the major that wrote ``wal_file``
    (its page magic), its package and PG_SERVER_ROOT."""
    with wal_file.open("rb") as wal:
        head = wal.read(2)
    major = _PAGE_MAGIC_MAJOR.get(int.from_bytes(head, sys.byteorder)) if len(head) == 2 \
        else None
    if major is None:
        return (f"no pg_waldump in {server_root} reads the archive's WAL ({wal_file.name}): "
                "install the server package of the archive's major (postgresql-NN), or set "
                "PG_SERVER_ROOT to a directory with NN/bin/pg_waldump in it")
    missing = missing_server_tools(("pg_waldump",), major, server_root)
    return missing or (f"the PostgreSQL {major} pg_waldump in {server_root / str(major) / 'bin'} "
                       f"cannot read the archive's WAL file {wal_file.name}")


def find(chosen: RecoveryPlan, wal_dir: Path, waldump: Path, name: str,
         fetch: Callable[[WalLike, Path], None] | None = None) -> list[RestorePoint]:
    """Every restore point called ``name`` in ``chosen``'s WAL, oldest first.

    Without ``fetch`` the files are in ``wal_dir`` already (recover's copy). With it, each
    is fetched there as the scan reaches it and removed once read, so at most
    WINDOW_SEGMENTS + 1 are on disk (``backupd mark`` reads the whole archive)."""
    found: list[RestorePoint] = []
    for run in _runs(chosen.segments):
        for start in range(0, len(run), WINDOW_SEGMENTS):
            # One segment more than the window: a record that starts in the window's last
            # segment and ends in the next is read whole; records starting in that extra
            # segment belong to the next window.
            window = run[start:start + WINDOW_SEGMENTS + 1]
            files = [wal_dir / chosen.file_name(w) for w in window]
            if fetch is not None:
                for wal, path in zip(window, files, strict=True):
                    if not path.exists():
                        fetch(wal, path)
            limit = (window[-1].segno * chosen.segment_size
                     if len(window) > WINDOW_SEGMENTS else None)
            for lsn, point in _scan(waldump, wal_dir, files[0].name, files[-1].name,
                                    chosen.segment_size):
                if point == name and (limit is None or lsn < limit):
                    file = files[lsn // chosen.segment_size - window[0].segno]
                    found.append(RestorePoint(name, lsn,
                                              _record_time(file, lsn % chosen.segment_size)))
            if fetch is not None:
                for path in files[:WINDOW_SEGMENTS]:
                    path.unlink(missing_ok=True)
    return found


def _runs(segments: Sequence[WalLike]) -> list[list[WalLike]]:
    """Consecutive segments of one timeline each (pg_waldump reads one timeline)."""
    runs: list[list[WalLike]] = []
    for wal in segments:
        if runs and runs[-1][-1].timeline == wal.timeline:
            runs[-1].append(wal)
        else:
            runs.append([wal])
    return runs


def _scan(waldump: Path, wal_dir: Path, first: str, last: str,
          segment_size: int) -> list[tuple[int, str]]:
    # The WAL ends in zeros (a partial) or in a record continued past ``last``: pg_waldump
    # then exits non-zero after printing every complete record, which is all we need. Where
    # it stopped before ``last``, the scan would be short (one restore point where there are
    # two): that fails, never passes for the whole WAL.
    argv = [str(waldump), "--rmgr=XLOG", "--path", str(wal_dir), first, last]
    with Child(argv, stdout=subprocess.PIPE, env={"TZ": "UTC"}) as child:
        assert child.stdout is not None
        out = child.stdout.read().decode("utf-8", "replace")
        code = child.wait(600)
        problem = child.error_line
    last_name = parse_wal_name(last, segment_size)
    if code != 0 and (last_name is None
                      or (_stopped_at(problem, segment_size) or 0) < last_name.start_lsn):
        raise JobFailed(f"pg_waldump stopped reading the archive's WAL before {last} ("
                        f"{problem or f'exit code {code}'}): its restore points cannot all "
                        "be known; check the archive (`backupd verify --wal`)")
    return [(parse_lsn(m.group("lsn")), m.group("name")) for m in _RESTORE_POINT.finditer(out)]


def _stopped_at(line: str, segment_size: int) -> int | None:
    """Where pg_waldump's error says reading failed: the furthest LSN or segment it names."""
    positions = [parse_lsn(m.group(0)) for m in _LSN.finditer(line)]
    for match in _SEGMENT_NAME.finditer(line):
        named = parse_wal_name(match.group(0), segment_size)
        if named is not None:
            positions.append(named.start_lsn)
    return max(positions, default=None)


def _record_time(segment: Path, offset: int) -> datetime | None:
    """rp_time of the restore point record at ``offset`` in ``segment``; None when the record
    is not laid out as expected (it crosses a page, or another layout)."""
    needed = 26 + 8
    if offset % _XLOG_BLCKSZ + needed > _XLOG_BLCKSZ:
        return None
    with segment.open("rb") as wal:
        wal.seek(offset)
        head = wal.read(needed)
    if (len(head) < needed or head[17] != _RM_XLOG_ID or head[16] & 0xF0 != _XLOG_RESTORE_POINT
            or head[24] != _DATA_SHORT or head[25] != _RESTORE_POINT_SIZE):
        return None
    # The server writes its WAL in its own byte order: the machine's, as for pg_waldump.
    micros = int.from_bytes(head[26:34], sys.byteorder, signed=True)
    return _POSTGRES_EPOCH + timedelta(microseconds=micros)

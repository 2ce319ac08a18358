"""What the WAL itself says: the newest commit in a run of segments (``pg_waldump``).

Recovery needs it twice: a ``--to-time`` target after the archive's newest commit is never
reached (the server would replay everything and then refuse to start), and a PITR drill
checks that the newest commit durable in the archive is in the recovered server.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from backupd.pipeline.clients import server_tool
from backupd.pipeline.supervisor import Child

# rmgr: Transaction len (rec/tot): 34/34, tx: 735, lsn: 0/03000108, prev 0/030000D0,
#   desc: COMMIT 2026-12-05 23:10:00.123456 UTC
_COMMIT = re.compile(
    r"tx:\s+(?P<xid>\d+), lsn: (?P<lsn>[0-9A-F]+/[0-9A-F]+), .*desc: COMMIT "
    r"(?P<time>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) (?P<zone>\S+)")


@dataclass(frozen=True)
class Commit:
    xid: int
    lsn: int
    time: datetime


def data_major(data_dir: Path) -> int:
    """The major of a data directory (a recovered one, or a base backup being extracted)."""
    return int((data_dir / "PG_VERSION").read_text().strip())


def waldump_for(data_dir: Path, server_root: Path) -> Path | None:
    """The pg_waldump that reads ``data_dir``'s WAL: its own major's, or None."""
    return server_tool("pg_waldump", data_major(data_dir), server_root)


def newest_commit(wal_dir: Path, segment_files: list[str], timeline: int,
                  waldump: Path | None) -> Commit | None:
    """The last COMMIT record in the segments (newest first; stops at the first that has
    one). None when there is no pg_waldump (``waldump``: the WAL's own major's, from
    ``clients.server_tool``) or no segment holds a commit."""
    if waldump is None:
        return None
    for name in reversed(segment_files):
        commits = _commits(waldump, wal_dir, name, timeline)
        if commits:
            return commits[-1]
    return None


def _commits(waldump: Path, wal_dir: Path, segment: str, timeline: int) -> list[Commit]:
    # A segment's WAL ends in zeros (a partial) or in a record continued in the next file:
    # pg_waldump then exits non-zero after printing every complete record, which is all we
    # need.
    argv = [str(waldump), "--rmgr=Transaction", f"--timeline={timeline}", "--path", str(wal_dir),
            segment]
    with Child(argv, stdout=subprocess.PIPE, env={"TZ": "UTC"}) as child:
        assert child.stdout is not None
        out = child.stdout.read().decode("utf-8", "replace")
        child.wait(120)
    commits = []
    for match in _COMMIT.finditer(out):
        if match.group("zone") != "UTC":
            continue  # TZ=UTC above: any other zone is not a time we can read
        high, low = match.group("lsn").split("/")
        when = datetime.fromisoformat(match.group("time")).replace(tzinfo=UTC)
        commits.append(Commit(int(match.group("xid")), (int(high, 16) << 32) | int(low, 16),
                              when))
    return commits

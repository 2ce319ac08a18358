"""WAL archiving tests (issues 15, 16): a private cluster to stream from, the daemon's
environment for it, and what the archive holds, read through backupd's own WalArchive."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from backupd.archive.walnames import DEFAULT_SEGMENT_SIZE, WalFileName, parse_wal_name
from backupd.archive.walstore import (
    SPOOL_SUBDIRECTORY,
    WAL_SUBDIRECTORY,
    ArchivedWal,
    WalArchive,
)
from backupd.storage.base import Repository
from backupd.storage.local import LocalRepository

from .cli import server_env
from .cluster import PrivateCluster
from .faults import wait_until
from .pg import ServerAddress, connect, pg_binary, psql

# What every WAL test's cluster runs with (wal_level=replica is PostgreSQL 15's default,
# written out so the test says what it needs).
WAL_SERVER_SETTINGS = {"wal_level": "replica", "max_wal_senders": "4",
                       "max_replication_slots": "4"}
# With wal_env: only streaming, no base backup at start (BASEBACKUP_SCHEDULE is weekly by
# default with WAL_ARCHIVE=on, and the daemon takes one at start when none exists).
STREAM_ONLY = {"BASEBACKUP_SCHEDULE": "off"}


def wal_dir(backup_dir: Path) -> Path:
    return backup_dir / WAL_SUBDIRECTORY


def spool_dir(backup_dir: Path) -> Path:
    return backup_dir / WAL_SUBDIRECTORY / SPOOL_SUBDIRECTORY


def wal_env(cluster: PrivateCluster | ServerAddress, backup_dir: Path,
            **extra: str) -> dict[str, str]:
    """The daemon's environment: WAL_ARCHIVE=on from ``cluster`` into ``backup_dir``, no
    dump at start, no drill, no health server (pass HEALTH_PORT to have one)."""
    address = cluster.address if isinstance(cluster, PrivateCluster) else cluster
    return server_env(address, "postgres", backup_dir, **{
        "WAL_ARCHIVE": "on", "BACKUP_ON_START": "false", "DRILL_SCHEDULE": "off",
        "HEALTH_PORT": "0", "DB_BACKUP_COMPRESSION": "zstd", **extra})


def local_archive(backup_dir: Path) -> WalArchive:
    return WalArchive(LocalRepository(wal_dir(backup_dir)), spool=spool_dir(backup_dir))


def archived(backup_dir: Path) -> list[ArchivedWal]:
    """Every WAL file of the local archive (committed artifacts and the spool's files)."""
    return local_archive(backup_dir).segments()


def committed_segments(backup_dir: Path) -> list[str]:
    """Complete segments committed to the local archive (with a manifest), in order."""
    return [w.name for w in archived(backup_dir) if w.artifact is not None
            and w.wal.kind == "segment"]


def live_partial(backup_dir: Path) -> Path | None:
    partials = sorted(spool_dir(backup_dir).glob("*.partial"))
    return partials[-1] if partials else None


def gaps(names: Iterable[str], segment_size: int = DEFAULT_SEGMENT_SIZE) -> list[str]:
    """The segments missing between the first and the last of ``names`` (per timeline;
    a ``.partial`` counts for its segment)."""
    parsed = [w for n in names if (w := parse_wal_name(n, segment_size)) is not None
              and w.kind != "history"]
    missing: list[str] = []
    for timeline in sorted({w.timeline for w in parsed}):
        have = {w.segno for w in parsed if w.timeline == timeline}
        missing += [WalFileName(timeline, segno, "segment", segment_size).name
                    for segno in range(min(have), max(have) + 1) if segno not in have]
    return missing


def current_wal_file(server: ServerAddress) -> str:
    return psql(server, "postgres", "SELECT pg_walfile_name(pg_current_wal_lsn())").strip()


def switch_wal(server: ServerAddress, times: int = 1) -> str:
    """Write a little and switch segments ``times`` times; the last segment completed."""
    completed = ""
    for _ in range(times):
        psql(server, "postgres", "CREATE TABLE IF NOT EXISTS wal_ticks (at timestamptz);"
                                 "INSERT INTO wal_ticks VALUES (now());")
        completed = psql(server, "postgres",
                         "SELECT pg_walfile_name(pg_switch_wal())").strip()
    return completed


def wait_archived(backup_dir: Path, segment: str, timeout: float = 60) -> None:
    wait_until(lambda: segment in committed_segments(backup_dir), timeout,
               f"{segment} committed to the local archive")


def wait_streaming(backup_dir: Path, timeout: float = 60) -> Path:
    wait_until(lambda: live_partial(backup_dir) is not None, timeout,
               "pg_receivewal writing its .partial in the spool")
    partial = live_partial(backup_dir)
    assert partial is not None
    return partial


def commit_marker(server: ServerAddress, marker: str) -> float:
    """Commit a row holding ``marker``; the time.monotonic() of the COMMIT's return."""
    psql(server, "postgres", "CREATE TABLE IF NOT EXISTS wal_markers (m text);"
                             f"INSERT INTO wal_markers VALUES ('{marker}');")
    return time.monotonic()


def seconds_until(predicate: Callable[[], object], since: float, timeout: float = 60,
                  what: str = "") -> float:
    """Wait for ``predicate``; the seconds from ``since`` (time.monotonic()) until it held."""
    wait_until(predicate, timeout, what)
    return time.monotonic() - since


def holds(path: Path | None, marker: str) -> bool:
    return path is not None and path.exists() and marker.encode() in path.read_bytes()


def receivewal_pids(backup_dir: Path) -> list[int]:
    """Live pg_receivewal processes writing into ``backup_dir``'s spool."""
    spool = str(spool_dir(backup_dir)).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z" and argv and argv[0].endswith(b"pg_receivewal") and spool in argv:
            found.append(int(entry.name))
    return found


def write_wal(server: ServerAddress, kilobytes: int = 256) -> None:
    """Write about ``kilobytes`` of WAL (rows of random text, never compressible away)."""
    rows = max(1, kilobytes * 1024 // 120)
    psql(server, "postgres", "CREATE TABLE IF NOT EXISTS wal_load (v text);"
                             "INSERT INTO wal_load SELECT md5(random()::text) || "
                             f"md5(random()::text) FROM generate_series(1, {rows});")


def slot_retained(server: ServerAddress) -> int:
    """Bytes of WAL the server keeps for the archive's replication slot (current LSN minus
    the slot's restart_lsn)."""
    return int(psql(server, "postgres", "SELECT pg_current_wal_lsn() - restart_lsn "
                                        "FROM pg_replication_slots").strip())


def healthz(port: int) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def restore_points_in_pg_wal(cluster: PrivateCluster, name: str) -> int:
    """Restore points called ``name`` in the cluster's own pg_wal (flushed first): whether a
    `backupd mark` made one, whatever the archive holds."""
    import re
    import subprocess

    with connect(cluster.address) as conn:
        conn.execute("SELECT pg_switch_wal()")
    wal = cluster.data_dir / "pg_wal"
    files = sorted(p.name for p in wal.iterdir() if re.fullmatch(r"[0-9A-F]{24}", p.name))
    dumped = subprocess.run([pg_binary("pg_waldump"), "--rmgr=XLOG", "--path", str(wal),
                             files[0], files[-1]], capture_output=True, text=True, check=False)
    # Read at all: the switch just made is an XLOG record (a count of 0 proves nothing else).
    assert "SWITCH" in dumped.stdout, dumped.stderr
    return dumped.stdout.count(f"RESTORE_POINT {name}\n")


def offsite_repository(endpoint_url: str, bucket: str, client: object,
                       prefix: str = "") -> Repository:
    """The offsite repository (base backups and dumps) under ``prefix``, as backupd's own."""
    from backupd.storage.s3 import S3Config, S3Repository

    return S3Repository(S3Config(bucket=bucket, prefix=prefix, endpoint_url=endpoint_url),
                        client=client)  # type: ignore[arg-type]


def offsite_archive(endpoint_url: str, bucket: str, client: object, prefix: str = "") -> WalArchive:
    """The WAL archive on S3 (``<prefix>wal/``), read through backupd's own WalArchive."""
    return WalArchive(offsite_repository(endpoint_url, bucket, client,
                                         f"{prefix}{WAL_SUBDIRECTORY}/"))


def local_manifests(backup_dir: Path) -> dict[str, dict[str, object]]:
    """WAL file name -> its local manifest (JSON), for committed artifacts."""
    import json

    found = {}
    for wal in archived(backup_dir):
        if wal.artifact is not None:
            path = wal_dir(backup_dir) / f"{wal.artifact}.manifest.json"
            found[wal.name] = json.loads(path.read_text())
    return found


def archive_holds(backup_dir: Path, marker: str, scratch: Path) -> bool:
    """Whether any WAL file of the local archive (fetched, so checked) holds ``marker``."""
    archive = local_archive(backup_dir)
    scratch.mkdir(parents=True, exist_ok=True)
    for wal in reversed(archive.segments()):
        dest = scratch / wal.name
        try:
            archive.fetch(wal.name, dest)
        except Exception:  # completed and moved while we looked: the next round sees it
            continue
        try:
            if holds(dest, marker):
                return True
        finally:
            dest.unlink(missing_ok=True)
    return False


# --- archives written file by file, for checks that read only listings --------------------

# A cluster identity for archives written by store_wal_files (never compared with a server).
STAND_IN_ORIGIN_ID = "7716253996312042151"


def store_wal_files(archive: WalArchive, names: Iterable[str], scratch: Path,
                    histories: dict[str, str] | None = None) -> None:
    """Each of ``names`` stored into ``archive`` as the daemon stores a WAL file (manifest
    and all): random bytes, or for a history file its text from ``histories``."""
    import os

    from backupd.archive.walstore import WalOrigin

    for name in names:
        wal = parse_wal_name(name)
        assert wal is not None, name
        source = scratch / name
        source.write_bytes((histories or {})[name].encode() if wal.history
                           else os.urandom(64 * 1024))
        archive.store(source, wal, WalOrigin(STAND_IN_ORIGIN_ID), compression="zstd",
                      level=None, scratch=scratch)
        source.unlink()


def put_base_backup_record(repository: Repository, scratch: Path, *, timeline: int,
                           segno: int, encrypted: bool = False) -> str:
    """A verified base backup's manifest in ``repository`` (with stand-in data), from
    segment ``segno`` of ``timeline`` to a stop in that segment; its name (an ``.age`` one
    when ``encrypted``: so named and recorded, the stand-in data as it is). For what decides
    from listings alone (verify --wal, recover's plan, mark), never for one that is
    unpacked."""
    from datetime import UTC, datetime

    from backupd.archive.walnames import format_lsn
    from backupd.manifest import BaseBackupFacts, Manifest
    from backupd.naming import BASE_DATABASE, BASE_KIND, base_backup_name

    now = datetime.now(UTC)
    name = base_backup_name(now, "gzip", encrypted)
    data = scratch / name
    data.write_bytes(b"stand-in for a base backup")
    start = segno * DEFAULT_SEGMENT_SIZE
    facts = BaseBackupFacts(system_identifier=int(STAND_IN_ORIGIN_ID), timeline=timeline,
                            start_timeline=timeline, start_lsn=format_lsn(start + 40),
                            stop_lsn=format_lsn(start + 400),
                            wal_segment_size=DEFAULT_SEGMENT_SIZE)
    size = data.stat().st_size
    repository.put(Manifest(kind=BASE_KIND, name=name, database=BASE_DATABASE, started_at=now,
                            finished_at=now, raw_bytes=size, stored_bytes=size,
                            encrypted=encrypted,
                            sha256=hashlib.sha256(data.read_bytes()).hexdigest(),
                            verified=True, verified_at=now, base_backup=facts), data)
    data.unlink()
    return name

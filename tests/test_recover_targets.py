"""``backupd recover`` decides where replay stops, whatever the base backup carries.

The primary keeps recovery settings in its postgresql.auto.conf (as a primary that was
itself recovered, and never reset them, does): a ``recovery_target_time`` long past with
``recovery_target_action = 'promote'``. They travel inside every later base backup. One
private cluster, one daemon run, one archive for the module: the table ``t`` exists before
the base backup, then rows in batches A, B, C, D are committed after it.
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers.cli import start_backupd, stop_backupd
from helpers.cluster import AS_ROOT, SERVER_OS_USER, PrivateCluster
from helpers.faults import wait_until
from helpers.pg import connect
from helpers.recovered import recover, started
from helpers.wal import WAL_SERVER_SETTINGS, holds, spool_dir, wait_streaming, wal_env

from backupd.archive.basebackups import list_base_backups
from backupd.storage.local import LocalRepository

pytestmark = pytest.mark.slow
PASSWORD = "recover-targets-pw"
# What a primary recovered to a point in time (and never reset) keeps in postgresql.auto.conf.
LEFTOVER = {"recovery_target_time": "2001-01-01 00:00:00+00", "recovery_target_action": "promote"}


@dataclass
class Archive:
    cluster: PrivateCluster
    backup_dir: Path
    env: dict[str, str]
    work: Path
    c_lsn: str  # the end of the WAL after batch C's commit


def _insert(cluster: PrivateCluster, batch: str, note: str = "") -> str:
    with connect(cluster.address) as conn:
        conn.execute("INSERT INTO t SELECT %s, g, %s FROM generate_series(1, 40) g",
                     (batch, note))
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    return str(row[0])


@pytest.fixture(scope="module")
def archive() -> Iterator[Archive]:
    with PrivateCluster(PASSWORD, server_settings=WAL_SERVER_SETTINGS) as cluster:
        cluster.start()
        assert cluster.root is not None
        work = cluster.root / "work"
        work.mkdir()
        if AS_ROOT:
            shutil.chown(work, SERVER_OS_USER, SERVER_OS_USER)
        backup_dir = work / "backups"
        env = wal_env(cluster, backup_dir)
        with connect(cluster.address) as conn:
            conn.execute("CREATE TABLE t (batch text, n int, note text)")
            for key, value in LEFTOVER.items():
                conn.execute(f"ALTER SYSTEM SET {key} = '{value}'")
        daemon = start_backupd(["run"], env, log_dir=work / "daemon")
        try:
            wait_streaming(backup_dir)
            # The daemon takes the first base backup itself (WAL_ARCHIVE=on and none yet).
            wait_until(lambda: any(b.verified for b in list_base_backups(
                LocalRepository(backup_dir))), 300, "the daemon's first base backup")
            for batch in "ABC":
                c_lsn = _insert(cluster, batch)
            marker = f"d-marker-{secrets.token_hex(6)}"
            _insert(cluster, "D", marker)
            wait_until(lambda: any(holds(p, marker) for p in spool_dir(backup_dir).glob(
                "*.partial")), 60, "D durable in the local partial")
        finally:
            stop_backupd(daemon, timeout=60)
        yield Archive(cluster, backup_dir, env, work, c_lsn)


def _batches(archive: Archive, target_dir: Path) -> dict[str, int]:
    with started(target_dir, PASSWORD) as server, connect(server) as conn:
        rows = conn.execute("SELECT batch, count(*) FROM t GROUP BY batch").fetchall()
    return {str(batch): int(count) for batch, count in rows}


def test_a_leftover_target_in_the_base_backup_does_not_stop_a_recover_to_the_end(
        archive: Archive) -> None:
    target_dir = archive.work / "to-end"
    out = recover(archive.env, target_dir)
    assert "target: the end of the archive" in out
    auto = (target_dir / "postgresql.auto.conf").read_text()
    assert f"recovery_target_time = '{LEFTOVER['recovery_target_time']}'" in auto  # carried
    assert _batches(archive, target_dir) == {"A": 40, "B": 40, "C": 40, "D": 40}


def test_a_leftover_target_does_not_clash_with_the_requested_one(archive: Archive) -> None:
    # A second kind of target beside the leftover time is "multiple recovery targets
    # specified" to the server unless the leftover is cleared.
    target_dir = archive.work / "to-lsn"
    recover(archive.env, target_dir, "--to-lsn", archive.c_lsn)
    assert _batches(archive, target_dir) == {"A": 40, "B": 40, "C": 40}

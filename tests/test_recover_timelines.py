"""``backupd recover`` after a point-in-time recovery: the archive then holds two timelines,
and a base backup taken on the old one after the recovered-to point ends at a higher LSN
than the new timeline's own. Only base backups on the path to the newest timeline can be
recovered (the server refuses the others: "requested timeline 2 is not a child of this
server's history").

A private primary on timeline 1: base backup 1 (the daemon's), rows A, then rows B and more
WAL, base backup 2. It is stopped; recovered to the end of A and started (timeline 2); the
daemon streams from it into the same archive (the slot is gone there: it takes base backup
3 on timeline 2 itself); rows C. Retention, too, counts only base backups 1 and 3.

The recovered directory keeps its pg_wal_archive/ (the runbook says to remove it once the data
is checked; not everyone does), so base backup 3 carries that stale WAL copy: a recover from
it unpacks only its own fresh copy. The stale copy holds ``00000002.history`` too, as one left
by a recover of an archive already on timeline 2 would, which the fresh copy also holds.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

import pytest
from helpers.basebackups import take_base_backup
from helpers.cli import run_backupd, start_backupd, stop_backupd
from helpers.cluster import PrivateCluster
from helpers.faults import wait_until
from helpers.pg import connect
from helpers.recovered import BATCH_TABLE, batch_counts, insert_batch, recover, started
from helpers.wal import (
    WAL_SERVER_SETTINGS,
    holds,
    spool_dir,
    switch_wal,
    wait_archived,
    wait_streaming,
    wal_env,
)

from backupd.archive.basebackups import BaseBackupInfo, list_base_backups
from backupd.archive.recovery_dir import WAL_COPY_NAME
from backupd.storage.local import LocalRepository

pytestmark = pytest.mark.slow
PASSWORD = "recover-timelines-pw"


def _bases(backup_dir: Path) -> list[BaseBackupInfo]:
    return [b for b in list_base_backups(LocalRepository(backup_dir)) if b.verified]


def _durable(backup_dir: Path, marker: str) -> None:
    wait_until(lambda: any(holds(p, marker) for p in spool_dir(backup_dir).glob("*.partial")),
               60, f"{marker} durable in the local partial")


def _batches(data_dir: Path) -> dict[str, int]:
    with started(data_dir, PASSWORD) as server:
        return batch_counts(server)


def test_after_a_point_in_time_recovery_recover_takes_the_new_timelines_base_backup() -> None:
    with PrivateCluster(PASSWORD, server_settings=WAL_SERVER_SETTINGS) as cluster:
        cluster.start()
        work = cluster.work_directory()
        backup_dir = work / "backups"
        env = wal_env(cluster, backup_dir)
        with connect(cluster.address) as conn:
            conn.execute(BATCH_TABLE)
        daemon = start_backupd(["run"], env, log_dir=work / "daemon-1")
        try:
            wait_streaming(backup_dir)
            wait_until(lambda: _bases(backup_dir), 300, "the daemon's first base backup")
            [first] = [b.name for b in _bases(backup_dir)]
            marker = f"a-{secrets.token_hex(6)}"
            a_lsn = insert_batch(cluster.address, "A", marker)
            _durable(backup_dir, marker)
            insert_batch(cluster.address, "B")
            # Timeline 1 goes on well past A, and its base backup 2 ends there, with its WAL
            # archived (so the old choice of it got as far as the server's refusal).
            switch_wal(cluster.address, 6)
            abandoned = take_base_backup(env, "--no-prune").name
            wait_archived(backup_dir, switch_wal(cluster.address), 90)
        finally:
            stop_backupd(daemon, timeout=60)
        cluster.stop()

        recovered = work / "recovered"
        recover(env, recovered, "--to-lsn", a_lsn)
        with started(recovered, PASSWORD) as server:
            history = recovered / "pg_wal" / "00000002.history"
            stale = recovered / WAL_COPY_NAME / history.name
            shutil.copy(history, stale)
            os.chown(stale, history.stat().st_uid, history.stat().st_gid)
            env_two = wal_env(server, backup_dir)
            daemon = start_backupd(["run"], env_two, log_dir=work / "daemon-2")
            try:
                wait_until(lambda: any(b.timeline == 2 for b in _bases(backup_dir)), 300,
                           "a base backup on timeline 2")
                marker = f"c-{secrets.token_hex(6)}"
                insert_batch(server, "C", marker)
                _durable(backup_dir, marker)
            finally:
                stop_backupd(daemon, timeout=60)

        by_name = {b.name: b for b in _bases(backup_dir)}
        [on_two] = [b for b in by_name.values() if b.timeline == 2]
        # What made the old choice wrong: the abandoned one ends later.
        assert by_name[abandoned].timeline == 1
        assert by_name[abandoned].stop_lsn > on_two.stop_lsn
        out = recover(env, work / "to-end")
        assert _batches(work / "to-end") == {"A": 40, "C": 40}
        assert f"base backup: {on_two.name}" in out, out
        # Only this recover's copy: none of the first recover's timeline-1 segments.
        copied = sorted(p.name for p in (work / "to-end" / WAL_COPY_NAME).iterdir())
        assert copied and all(not name.startswith("00000001") for name in copied), copied
        said = (backup_dir / "recover_log.txt").read_text()
        assert f"WARNING: the base backup holds a {WAL_COPY_NAME}/ left by an earlier " \
            "recover: not unpacked" in said, said
        # Retention counts the two on the path (the first, before the fork, and timeline 2's)
        # toward BASEBACKUP_KEEP=2, not the abandoned one, which displaced the first: the
        # daemon's retention after base backup 3 kept it, and prune would too.
        assert first in by_name
        pruned = run_backupd(["prune", "--dry-run"], {**env, "BASEBACKUP_KEEP": "2"})
        assert pruned.returncode == 0, pruned.stderr
        assert f"would delete base backup {first}" not in pruned.stdout + pruned.stderr

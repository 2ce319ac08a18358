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

Without ``00000002.history`` in the archive (or readable there), recover cannot tell which base
backups are on the path to timeline 2: it fails naming the file, before anything is written.

Both servers are stopped once the archive is made: `backupd mark` there has nothing to connect to.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers.basebackups import take_base_backup
from helpers.cli import as_a_user_sees_it, run_backupd, start_backupd, stop_backupd
from helpers.faults import wait_until
from helpers.recovered import (
    copy_archive,
    insert_batch,
    pitr_cluster,
    recover,
    recovered_batches,
    started,
    wait_first_base_backup,
)
from helpers.wal import (
    archived,
    holds,
    spool_dir,
    switch_wal,
    wait_archived,
    wal_env,
)

from backupd.archive.basebackups import BaseBackupInfo, list_base_backups
from backupd.archive.recovery_dir import WAL_COPY_NAME
from backupd.archive.walstore import WAL_SUBDIRECTORY
from backupd.commands.mark import SCRATCH_PREFIX
from backupd.storage.local import LocalRepository

pytestmark = pytest.mark.slow
PASSWORD = "recover-timelines-pw"


def _bases(backup_dir: Path) -> list[BaseBackupInfo]:
    return [b for b in list_base_backups(LocalRepository(backup_dir)) if b.verified]


def _durable(backup_dir: Path, marker: str) -> None:
    wait_until(lambda: any(holds(p, marker) for p in spool_dir(backup_dir).glob("*.partial")),
               60, f"{marker} durable in the local partial")


@dataclass
class Archive:
    """The two-timeline archive, made once for the module (the daemons stopped)."""

    backup_dir: Path
    env: dict[str, str]
    work: Path
    first: str  # base backup 1, on timeline 1 before the fork
    abandoned: str  # base backup 2, on timeline 1 after the fork


@pytest.fixture(scope="module")
def archive() -> Iterator[Archive]:
    with pitr_cluster(PASSWORD) as pitr:
        cluster, work, backup_dir, env = pitr.cluster, pitr.work, pitr.backup_dir, pitr.env
        daemon = start_backupd(["run"], env, log_dir=work / "daemon-1")
        try:
            wait_first_base_backup(backup_dir)
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
        yield Archive(backup_dir, env, work, first, abandoned)


def test_after_a_point_in_time_recovery_recover_takes_the_new_timelines_base_backup(
        archive: Archive) -> None:
    backup_dir, env, work = archive.backup_dir, archive.env, archive.work
    first, abandoned = archive.first, archive.abandoned
    by_name = {b.name: b for b in _bases(backup_dir)}
    [on_two] = [b for b in by_name.values() if b.timeline == 2]
    # What made the old choice wrong: the abandoned one ends later.
    assert by_name[abandoned].timeline == 1
    assert by_name[abandoned].stop_lsn > on_two.stop_lsn
    out = recover(env, work / "to-end")
    assert recovered_batches(work / "to-end", PASSWORD) == {"A": 40, "C": 40}
    assert f"base backup: {on_two.name}" in out, out
    # Only this recover's copy: none of the first recover's timeline-1 segments.
    copied = sorted(p.name for p in (work / "to-end" / WAL_COPY_NAME).iterdir())
    assert copied and all(not name.startswith("00000001") for name in copied), copied
    said = (backup_dir / "recover_log.txt").read_text()
    assert f"WARNING: the base backup holds a {WAL_COPY_NAME}/ left by an earlier " \
        "recover: not unpacked" in said, said
    # Retention counts the two on the path (the first, before the fork, and timeline 2's)
    # toward BASEBACKUP_KEEP=2, not the abandoned one, which displaced the first: the
    # daemon's retention after base backup 3 kept it, and prune would too, each for its
    # reason (the abandoned one as newer than the oldest kept, not as one of the two).
    assert first in by_name
    pruned = run_backupd(["prune", "--dry-run"], {**env, "BASEBACKUP_KEEP": "2"})
    assert pruned.returncode == 0, pruned.stderr
    said = pruned.stdout + pruned.stderr
    assert "would delete base backup" not in said, said
    newest_two = "one of the newest 2 verified base backups"
    for name, why in ((first, newest_two), (on_two.name, newest_two),
                      (abandoned, "not on the path to the newest timeline, newer than the "
                                  "oldest kept")):
        assert f"keep base backup {name} in {backup_dir}: {why}" in said, said


@pytest.mark.parametrize("damage", ["missing", "unreadable"])
def test_recover_without_the_newest_timelines_history_file_fails_naming_it(
        archive: Archive, tmp_path: Path, damage: str) -> None:
    """The archive holds timeline 2's WAL but not (or not readably) 00000002.history: no base
    backup can be told to be on the path to timeline 2, so nothing is chosen (not the
    abandoned one, not the newest on timeline 1) and nothing written: exit 1, one line
    naming the file."""
    copy = copy_archive(archive.backup_dir, tmp_path / "backups")
    [history] = [w for w in archived(copy) if w.history and w.timeline == 2]
    assert history.artifact is not None and not list(spool_dir(copy).glob("*.history"))
    stored = copy / WAL_SUBDIRECTORY / history.artifact
    if damage == "missing":
        stored.unlink()
        Path(f"{stored}.manifest.json").unlink()
    else:
        stored.chmod(0)
    target_dir = tmp_path / "recovered"
    env = {k: v for k, v in archive.env.items() if k != "BACKUPD_LOG_FORMAT"}
    proc = run_backupd(["recover", "--target-dir", str(target_dir)],
                       {**env, "DB_BACKUP_DIR": str(copy)}, timeout=300, obey_file_modes=True)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, (proc.returncode, proc.stderr)
    assert "00000002.history" in lines[0] and "internal error" not in lines[0], lines[0]
    assert "base_backup=None" in lines[0], lines[0]  # nothing chosen
    assert not target_dir.exists()


def test_mark_over_an_unreadable_history_file_fails_naming_it(
        archive: Archive, tmp_path: Path) -> None:
    """The history file mark's check needs is there but cannot be read: damage to the archive,
    not a check that cannot run (as for a missing one, which mark warns about): exit 1, one
    line naming it, no restore point made."""
    copy = copy_archive(archive.backup_dir, tmp_path / "backups")
    [history] = [w for w in archived(copy) if w.history and w.timeline == 2]
    assert history.artifact is not None
    (copy / WAL_SUBDIRECTORY / history.artifact).chmod(0)
    # mark reads the archive only once a server answers: the timeline-2 server, up again.
    with started(archive.work / "recovered", PASSWORD) as server:
        env = as_a_user_sees_it(wal_env(server, copy))
        proc = run_backupd(["mark", "after-the-fork"], env, timeout=300, obey_file_modes=True)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, (proc.returncode, proc.stderr)
    assert "restore point 'after-the-fork' not made" in lines[0], lines[0]
    assert "00000002.history" in lines[0] and "cannot be read" in lines[0], lines[0]


def _files(directory: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in directory.rglob("*") if p.is_file()}


def test_mark_without_a_server_fails_before_reading_any_of_the_archive(
        archive: Archive, tmp_path: Path) -> None:
    """No server to make the restore point on is found before the archive is read (which,
    large, could take long): every WAL file mode 0, and DB_BACKUP_DIR read-only, so any
    fetch, or the scan's scratch directory, would fail the mark differently."""
    copy = copy_archive(archive.backup_dir, tmp_path / "backups")
    stored = [p for p in (copy / WAL_SUBDIRECTORY).rglob("*")
              if p.is_file() and not p.name.endswith(".manifest.json")]
    assert any(".history" in p.name for p in stored), stored
    for path in stored:
        path.chmod(0)
    copy.chmod(0o555)
    proc = run_backupd(["mark", "while-down"], as_a_user_sees_it(archive.env,
                                                                 DB_BACKUP_DIR=str(copy)),
                       timeout=300, obey_file_modes=True)
    # The other line: the job's log file (in DB_BACKUP_DIR too) could not be written.
    lines = [x for x in proc.stderr.strip().splitlines() if "job log file" not in x]
    assert proc.returncode == 1 and len(lines) == 1, (proc.returncode, proc.stderr)
    assert "restore point 'while-down' not made: cannot connect to PostgreSQL" in lines[0], \
        lines[0]
    assert "Connection refused" in lines[0], lines[0]


@pytest.mark.parametrize("server", ["stopped", "unknown-host"])
def test_mark_without_a_server_to_connect_to_fails_saying_no_point_was_made(
        archive: Archive, server: str) -> None:
    """No server answers: POSTGRES_PORT's is stopped,
    or POSTGRES_HOST does not resolve (as a stopped compose service's name does not). Both
    are runtime failures, not settings to fix: the same settings work once the server is
    back, and backupd cannot tell a typo from an outage. Exit 1, one line saying the restore
    point was not made, libpq's reason and the settings to check; DB_BACKUP_DIR as it was
    but for mark's log (no scratch WAL left)."""
    extra = {"POSTGRES_HOST": "db.invalid"} if server == "unknown-host" else {}
    env = as_a_user_sees_it(archive.env, **extra)
    before = _files(archive.backup_dir)
    proc = run_backupd(["mark", "before-the-outage"], env, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, (proc.returncode, proc.stderr)
    line = lines[0]
    assert "restore point 'before-the-outage' not made" in line, line
    assert "cannot connect to PostgreSQL" in line and "internal error" not in line, line
    if server == "stopped":
        address = f"{env['POSTGRES_HOST']}:{env['POSTGRES_PORT']}"
        assert "Connection refused" in line and "check POSTGRES_HOST and POSTGRES_PORT" in line
        assert f"listening on {address}?" in line, line
    else:
        assert "check POSTGRES_HOST ('db.invalid' is not a known host name)" in line, line
    after = _files(archive.backup_dir)
    assert not list(archive.backup_dir.glob(f"{SCRATCH_PREFIX}*"))
    changed = {name for name in before.keys() | after.keys()
               if before.get(name) != after.get(name)}
    assert changed <= {"mark_log.txt"}, changed

"""``backupd recover`` and the PITR drill over backupd's own archive (issue 16's proof): the
daemon streams WAL into DB_BACKUP_DIR/wal and to S3 (moto), `backupd basebackup` takes the
base backup; rows in batches A, then time T1, then B, then C, with C committed 10 s before
the recovers and only ever in the partial segment.

Each recovered directory is started with plain pg_ctl as the postgres user, with the archive
(DB_BACKUP_DIR) renamed away first. One cluster, one daemon run, one archive for the module;
`backupd mark before-migration` then a table created (the "migration") close its history.
"""

from __future__ import annotations

import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from helpers.cli import as_a_user_sees_it, build_env, run_backupd, start_backupd, stop_backupd
from helpers.cluster import AS_ROOT, SERVER_OS_USER, PrivateCluster, free_port
from helpers.daemon import FAST, NEVER_DURING_TEST
from helpers.daemon import started as daemon_started
from helpers.faults import wait_until
from helpers.logs import jobs_finished, log_events
from helpers.offsite import s3_env
from helpers.pg import connect, pg_binary
from helpers.procs import kill_processes, processes_in
from helpers.recovered import (
    BATCH_TABLE,
    as_postgres,
    copy_archive,
    insert_batch,
    pg_ctl_start,
    postgres_owner,
    recover,
    started,
)
from helpers.s3server import S3Server
from helpers.wal import WAL_SERVER_SETTINGS, holds, wait_streaming, wal_env

from backupd.archive.basebackups import list_base_backups
from backupd.archive.recovery_dir import STAGING_NAME
from backupd.archive.recovery_source import archive_source
from backupd.archive.walnames import parse_lsn
from backupd.configs import age_key_files
from backupd.errors import JobFailed
from backupd.job import JobContext, repositories_for
from backupd.result import JobResult
from backupd.settings import Settings
from backupd.storage.local import LocalRepository

pytestmark = pytest.mark.slow
PASSWORD = "archive-recover-pw"


@dataclass
class Archive:
    cluster: PrivateCluster
    backup_dir: Path
    env: dict[str, str]
    s3_env: dict[str, str]
    work: Path
    t1: datetime
    c_lsn: int
    c_marker: str


@pytest.fixture(scope="module")
def archive(s3_server: S3Server) -> Iterator[Archive]:
    bucket = f"bk-{secrets.token_hex(6)}"
    s3_server.start()
    s3_server.client().create_bucket(Bucket=bucket)
    with PrivateCluster(PASSWORD, server_settings=WAL_SERVER_SETTINGS) as cluster:
        cluster.start()
        work = cluster.work_directory()
        backup_dir = work / "backups"
        offsite = s3_env(s3_server, bucket, "prod/", WAL_S3_PARTIAL_SECONDS="1")
        env = wal_env(cluster, backup_dir, **offsite)
        daemon = start_backupd(["run"], env, log_dir=work / "daemon")
        try:
            wait_streaming(backup_dir)
            with connect(cluster.address) as conn:
                conn.execute(BATCH_TABLE)
            # The daemon takes the first base backup itself (WAL_ARCHIVE=on and none yet).
            wait_until(lambda: any(b.verified for b in list_base_backups(
                LocalRepository(backup_dir))), 300, "the daemon's first base backup")
            insert_batch(cluster.address, "A")
            time.sleep(1)
            t1 = datetime.now(UTC)
            time.sleep(1)
            insert_batch(cluster.address, "B")
            with connect(cluster.address) as conn:
                conn.execute("SELECT pg_switch_wal()")
            marker = f"c-marker-{secrets.token_hex(6)}"
            c_lsn = parse_lsn(insert_batch(cluster.address, "C", marker))
            spool = backup_dir / "wal" / "spool"
            wait_until(lambda: any(holds(p, marker) for p in spool.glob("*.partial")), 60,
                       "C durable in the local partial")
            # `backupd mark before-migration`, then a migration's writes.
            marked = run_backupd(["mark", "before-migration"], env)
            assert marked.returncode == 0, marked.stderr
            migration = f"migrated-{secrets.token_hex(6)}"
            with connect(cluster.address) as conn:
                conn.execute(f"CREATE TABLE migrated AS SELECT '{migration}'::text AS note")
            wait_until(lambda: any(holds(p, migration) for p in spool.glob("*.partial")), 60,
                       "the migration durable in the local partial")
            time.sleep(10)  # C is committed 10 s before the recovers (and S3 has its partial)
        finally:
            stop_backupd(daemon, timeout=60)
        yield Archive(cluster, backup_dir, env, offsite, work, t1, c_lsn, marker)


@contextmanager
def _archive_moved_away(archive: Archive) -> Iterator[None]:
    away = archive.backup_dir.with_name("backups-away")
    archive.backup_dir.rename(away)
    try:
        yield
    finally:
        away.rename(archive.backup_dir)


def _batches(archive: Archive, target_dir: Path) -> tuple[dict[str, int], bool]:
    """Rows per batch in the recovered server, and whether the migration's table is there."""
    with _archive_moved_away(archive), started(target_dir, PASSWORD) as server, \
            connect(server) as conn:
        rows = conn.execute("SELECT batch, count(*) FROM t GROUP BY batch").fetchall()
        migrated = conn.execute("SELECT to_regclass('migrated') IS NOT NULL").fetchone()
    return {str(batch): int(count) for batch, count in rows}, bool(migrated and migrated[0])


def test_recover_to_t1_gives_exactly_batch_a(archive: Archive) -> None:
    target_dir = archive.work / "to-t1"
    out = recover(archive.env, target_dir, "--to-time", archive.t1.isoformat())
    assert "base backup: base_" in out and "WAL: " in out
    assert f"target: time {archive.t1.isoformat()}" in out
    assert _batches(archive, target_dir) == ({"A": 40}, False)
    auto = (target_dir / "postgresql.auto.conf").read_text()
    assert "restore_command = 'cp pg_wal_archive/%f %p'" in auto
    assert "recovery_target_action = 'promote'" in auto


def test_recover_to_the_end_includes_c_from_the_partial_segment(archive: Archive) -> None:
    repos = repositories_for(_settings(archive.env))
    wal = archive_source(repos, age_key_files(_settings(archive.env))).wal()
    c_segno = archive.c_lsn // (16 * 1024 * 1024)
    assert [w.segno for w in wal if w.partial] == [c_segno]
    assert all(w.segno < c_segno for w in wal if not w.partial and not w.history)
    # An existing empty directory, as a volume's mount point is: recover takes it over
    # (the server's owner and mode 0700 with --owner).
    target_dir = archive.work / "to-end"
    target_dir.mkdir(mode=0o755)
    out = recover(archive.env, target_dir)
    assert target_dir.stat().st_mode & 0o777 == 0o700
    assert ".partial (" in out  # the report names the WAL range: it ends in the partial
    assert _batches(archive, target_dir) == ({"A": 40, "B": 40, "C": 40}, True)


def test_mark_then_writes_then_recover_to_the_name(archive: Archive) -> None:
    target_dir = archive.work / "to-name"
    recover(archive.env, target_dir, "--to-name", "before-migration")
    assert _batches(archive, target_dir) == ({"A": 40, "B": 40, "C": 40}, False)


def test_recover_from_s3_alone_into_an_empty_machine(archive: Archive) -> None:
    empty = archive.work / "empty-machine"
    env = {**archive.env, "DB_BACKUP_DIR": str(empty / "backups")}
    target_dir = empty / "data"
    empty.mkdir()
    if AS_ROOT:
        shutil.chown(empty, SERVER_OS_USER, SERVER_OS_USER)
    recover(env, target_dir, "--from-s3")
    assert _batches(archive, target_dir) == ({"A": 40, "B": 40, "C": 40}, True)


def _settings(env: dict[str, str], **override: str) -> Settings:
    values: dict[str, Any] = {**{k: v for k, v in env.items() if k.isupper()}, **override}
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_a_pitr_drill_passes_and_cleans_up(archive: Archive) -> None:
    from backupd.commands import pitr_drill, pitr_scratch

    ctx = JobContext(_settings(archive.env), JobResult(job="drill", database="postgres"))
    outcome = pitr_drill.run(ctx)
    assert outcome.base_backup is not None and outcome.base_backup.startswith("base_")
    assert outcome.rto_seconds is not None and outcome.replay_seconds is not None
    assert not pitr_scratch.scratch_directory(archive.backup_dir).exists()
    assert not [w for w in ctx.result.warnings if "not checked" in w]


def test_a_pitr_drill_with_a_corrupt_segment_fails_naming_it(archive: Archive) -> None:
    from backupd.commands import pitr_drill, pitr_scratch

    copy = copy_archive(archive.backup_dir, archive.work / "corrupt-copy")
    segments = _segments(copy)
    victim = segments[len(segments) // 2]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    ctx = JobContext(_settings(archive.env, DB_BACKUP_DIR=str(copy)),
                     JobResult(job="drill", database="postgres"))
    with pytest.raises(JobFailed, match=victim.name.split(".")[0]):
        pitr_drill.run(ctx)
    assert not pitr_scratch.scratch_directory(copy).exists()


def _segments(backup_dir: Path) -> list[Path]:
    return sorted(p for p in (backup_dir / "wal").glob("0000*.wal.*")
                  if not p.name.endswith(".manifest.json"))


def test_a_gap_makes_recover_refuse_before_writing(archive: Archive) -> None:
    copy = copy_archive(archive.backup_dir, archive.work / "gappy")
    missing = _segments(copy)[1]
    missing.unlink()
    Path(f"{missing}.manifest.json").unlink()
    segment = missing.name.split(".")[0]
    target_dir = archive.work / "gap-target"
    proc = run_backupd(["recover", "--target-dir", str(target_dir)],
                       {**archive.env, "DB_BACKUP_DIR": str(copy)}, timeout=120)
    assert proc.returncode == 1
    assert f"WAL gap: {segment} .. {segment} missing" in proc.stderr
    assert not target_dir.exists()


def test_a_target_before_the_oldest_base_backup_or_after_the_end_is_refused(
        archive: Archive) -> None:
    for when, why in (("2001-01-01T00:00:00+00:00", "before the oldest base backup"),
                      (datetime.now(UTC).isoformat(), "after the archive's end")):
        target_dir = archive.work / "refused-target"
        proc = run_backupd(["recover", "--target-dir", str(target_dir), "--to-time", when],
                           archive.env, timeout=120)
        assert proc.returncode == 2 and why in proc.stderr, proc.stderr
        assert not target_dir.exists()


def test_without_the_archives_pg_waldump_a_time_past_the_end_warns_what_happens_and_the_fix(
        archive: Archive) -> None:
    """PG_SERVER_ROOT without that major's pg_waldump: the newest commit cannot be read, so a
    time after it (but not in the future) is let through (a time before it, the usual case,
    recovers as asked; refusing would stop that too), with one warning saying what to
    install, what the server will do, and the way out. Both are proved here: the server
    refuses to start as said, and the line the warning names makes it recover to the end."""
    empty = archive.work / "empty-server-root"
    empty.mkdir(exist_ok=True)
    target_dir = archive.work / "unchecked-end"
    auto = target_dir / "postgresql.auto.conf"
    env = {**as_a_user_sees_it(archive.env), "PG_SERVER_ROOT": str(empty)}
    owner = ["--owner", postgres_owner()] if AS_ROOT else []
    proc = run_backupd(["recover", "--target-dir", str(target_dir), *owner, "--to-time",
                        datetime.now(UTC).isoformat()], env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    major = (target_dir / "PG_VERSION").read_text().strip()
    [warned] = [line for line in proc.stderr.splitlines() if "[warning" in line]
    assert "--to-time" in warned and "not checked against the archive's newest commit" in warned
    assert f"install postgresql-{major}" in warned and str(empty / major / "bin") in warned
    assert "refuses to start (recovery ended before configured recovery target was " \
        "reached)" in warned, warned
    way_out = "recovery_target_time = ''"
    assert f"add the line {way_out} to {auto}" in warned, warned

    log = archive.work / "unchecked-end-first-start.log"
    # pg_ctl may say it started: the server accepts connections once consistent, before
    # replay reaches the end. What counts is that it then stops by itself, saying why.
    pg_ctl_start(target_dir, free_port(), log)
    try:
        wait_until(lambda: not (target_dir / "postmaster.pid").exists(), 120,
                   "the recovered server to give up at the archive's end")
    finally:
        as_postgres([pg_binary("pg_ctl"), "stop", "-D", str(target_dir), "-m", "immediate"],
                    target_dir.parent)
    assert "recovery ended before configured recovery target was reached" in log.read_text()
    with auto.open("a") as conf:
        conf.write(f"{way_out}\n")
    assert _batches(archive, target_dir) == ({"A": 40, "B": 40, "C": 40}, True)
    shutil.rmtree(target_dir)


def test_a_non_empty_target_is_refused_untouched(archive: Archive, tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    env = {k: v for k, v in archive.env.items() if k != "BACKUPD_LOG_FORMAT"}  # as a user
    proc = run_backupd(["recover", "--target-dir", str(tmp_path), "--force"], env)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--target-dir" in lines[0] and "not empty" in lines[0]
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_a_live_servers_data_directory_is_refused(archive: Archive) -> None:
    proc = run_backupd(["recover", "--target-dir", str(archive.cluster.data_dir), "--force"],
                       archive.env)
    assert proc.returncode == 2
    assert "live server's data directory" in proc.stderr
    assert archive.cluster.is_running()


# `backupd recover` itself, killed by SIGKILL right after its second WAL file was copied.
_KILLED_RECOVER = """
import os, signal, sys
from backupd.archive import recovery_source
from backupd.cli import main

copied = []
fetch = recovery_source.ArchiveSource.fetch

def fetch_then_die(self, wal, dest):
    fetch(self, wal, dest)
    copied.append(wal)
    if len(copied) == 2:
        os.kill(os.getpid(), signal.SIGKILL)

recovery_source.ArchiveSource.fetch = fetch_then_die
sys.exit(main(sys.argv[1:]))
"""


def test_a_killed_recover_leaves_a_directory_the_server_refuses(archive: Archive) -> None:
    target_dir = archive.work / "killed"
    owner = ["--owner", postgres_owner()] if AS_ROOT else []
    args = ["recover", "--target-dir", str(target_dir), *owner]
    proc = subprocess.run([sys.executable, "-c", _KILLED_RECOVER, *args],
                          env=build_env(archive.env), capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert (target_dir / STAGING_NAME).is_dir() and not (target_dir / "PG_VERSION").exists()
    if AS_ROOT:
        shutil.chown(target_dir, SERVER_OS_USER, SERVER_OS_USER)
    start = pg_ctl_start(target_dir, free_port(), archive.work / "killed.log")
    assert start.returncode != 0
    assert "not a database cluster directory" in start.stderr
    # The next recover refuses it without --force; with --force it cleans up and recovers.
    refused = run_backupd(args, archive.env, timeout=120)
    assert refused.returncode == 2 and "incomplete recover" in refused.stderr
    recover(archive.env, target_dir, "--force")
    assert (target_dir / "PG_VERSION").exists() and not (target_dir / STAGING_NAME).exists()


def test_backupd_drill_with_wal_archive_on_is_also_a_pitr_drill(archive: Archive) -> None:
    """The DRILL_SCHEDULE path: `backupd drill` drills the newest dump, then the archive."""
    backed_up = run_backupd(["backup", "--no-prune"], archive.env, timeout=300)
    assert backed_up.returncode == 0, backed_up.stderr
    proc = run_backupd(["drill"], archive.env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    pitr = jobs_finished(proc.stderr, "drill")[-1]["outcome"]["pitr"]
    assert pitr["base_backup"].startswith("base_") and pitr["rto_seconds"] > 0
    assert "pitr_rto=" in proc.stdout


def test_a_pitr_drill_killed_with_backupd_leaves_no_server_and_the_next_start_removes_its_copy(
        archive: Archive) -> None:
    """SIGKILL mid-drill: the scratch server dies with backupd (nothing for anyone to stop),
    and the decrypted copy of the cluster it leaves is gone once the daemon starts again."""
    from backupd.commands.pitr_scratch import scratch_directory

    copy = copy_archive(archive.backup_dir, archive.work / "killed-drill")
    env = {**archive.env, "DB_BACKUP_DIR": str(copy)}
    scratch = scratch_directory(copy)
    data = scratch / "data"
    try:
        drill = start_backupd(["drill"], env, log_dir=archive.work / "killed-drill-log")
        try:
            wait_until(lambda: processes_in(data), 300, "the PITR drill's scratch server")
        finally:
            drill.send_signal(signal.SIGKILL)
            drill.wait(10)
        wait_until(lambda: not processes_in(data), 10, "the scratch server gone with backupd")
        assert (data / "PG_VERSION").exists()  # the leftover this is about

        daemon_env = {**env, "WAL_ARCHIVE": "off", "BACKUP_ON_START": "false",
                      "BACKUP_SCHEDULE": NEVER_DURING_TEST, **FAST}
        daemon = start_backupd(["run"], daemon_env, log_dir=archive.work / "after-kill-log")
        try:
            wait_until(lambda: daemon_started(daemon), 60, "the daemon to start")
            assert not scratch.exists()
            assert any(e.get("event") == "removed the scratch directory of an interrupted "
                                         "PITR drill" and e.get("directory") == str(scratch)
                       for e in log_events(daemon.read_stderr()))
        finally:
            assert stop_backupd(daemon, timeout=30) == 0
    finally:
        kill_processes(processes_in(data))
        shutil.rmtree(scratch, ignore_errors=True)

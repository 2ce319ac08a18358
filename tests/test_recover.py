"""``backupd recover``: point-in-time recovery into a self-contained data directory, proven by
starting each result with plain pg_ctl, the archive moved away first.

One private cluster and one archive (pg_receivewal + pg_basebackup) serve the module: rows
in batches A, then time T1, then B, then C, with C committed 10 s before the recovers and
never in a completed segment.
"""

from __future__ import annotations

import os
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
from helpers.cli import build_env, run_backupd
from helpers.cluster import AS_ROOT, SERVER_OS_USER, PrivateCluster
from helpers.pg import connect
from helpers.plain_archive import PlainArchive
from helpers.recovered import pg_ctl_start, postgres_owner, started

from backupd.archive.recovery import RecoveryTarget, parse_target_lsn
from backupd.archive.recovery_dir import STAGING_NAME, parse_owner
from backupd.commands.recover import RecoverOptions, recover_into
from backupd.errors import ConfigError, JobFailed
from backupd.job import JobContext
from backupd.outcomes import RecoverOutcome
from backupd.result import JobResult
from backupd.settings import Settings

pytestmark = pytest.mark.slow
PASSWORD = "recover-pw"
WAL_SETTINGS = {"wal_level": "replica", "max_wal_senders": "4", "max_replication_slots": "4"}


@dataclass
class History:
    cluster: PrivateCluster
    archive: PlainArchive
    t1: datetime
    c_lsn: str
    work: Path


def _insert(cluster: PrivateCluster, batch: str, rows: int = 50) -> str:
    with connect(cluster.address) as conn:
        conn.execute("INSERT INTO t SELECT %s, g FROM generate_series(1, %s) g", (batch, rows))
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    return str(row[0])


@pytest.fixture(scope="module")
def history() -> Iterator[History]:
    with PrivateCluster(PASSWORD, server_settings=WAL_SETTINGS) as cluster:
        cluster.start()
        assert cluster.root is not None
        work = cluster.root / "work"
        work.mkdir()
        if AS_ROOT:
            shutil.chown(work, SERVER_OS_USER, SERVER_OS_USER)
        archive = PlainArchive(cluster.root / "archive", cluster)
        archive.start_streaming()
        try:
            with connect(cluster.address) as conn:
                conn.execute("CREATE TABLE t (batch text, n int)")
            archive.take_base_backup("base1")
            _insert(cluster, "A")
            time.sleep(1)
            t1 = datetime.now(UTC)
            time.sleep(1)
            _insert(cluster, "B")
            with connect(cluster.address) as conn:
                conn.execute("SELECT pg_switch_wal()")
            c_lsn = _insert(cluster, "C")
            archive.wait_for_durable(c_lsn)
            time.sleep(10)  # C is committed 10 s before the recovers; still in the partial
            yield History(cluster, archive, t1, c_lsn, work)
        finally:
            archive.stop_streaming()


def _context(history: History) -> JobContext:
    values: dict[str, Any] = {
        "POSTGRES_HOST": "127.0.0.1", "POSTGRES_PORT": str(history.cluster.port),
        "POSTGRES_USER": "postgres", "POSTGRES_PASSWORD": PASSWORD, "POSTGRES_DB": "postgres",
        "DB_BACKUP_DIR": str(history.work / "backups")}
    settings = Settings(_env_file=None, **values)  # type: ignore[call-arg]
    return JobContext(settings, JobResult(job="recover", database="postgres"))


def _recover(history: History, target_dir: Path, target: RecoveryTarget,
             archive: PlainArchive | None = None, *, force: bool = False) -> JobContext:
    ctx = _context(history)
    options = RecoverOptions(owner=parse_owner(postgres_owner()) if AS_ROOT else None,
                             force=force)
    outcome = RecoverOutcome(target_dir=str(target_dir), target=target.describe())
    ctx.result.outcome = outcome
    recover_into(ctx, archive or history.archive, target_dir, target, options, outcome)
    return ctx


@contextmanager
def _archive_moved_away(history: History) -> Iterator[None]:
    """The recovered directory must not need the archive: it is renamed away meanwhile."""
    away = history.archive.root.with_name("archive-away")
    history.archive.root.rename(away)
    try:
        yield
    finally:
        away.rename(history.archive.root)


def _batches(history: History, target_dir: Path) -> dict[str, int]:
    with _archive_moved_away(history), started(target_dir, PASSWORD) as server, \
            connect(server) as conn:
        rows = conn.execute("SELECT batch, count(*) FROM t GROUP BY batch").fetchall()
    return {str(batch): int(count) for batch, count in rows}


def test_recover_to_time_t1_gives_exactly_batch_a(history: History) -> None:
    target_dir = history.work / "to-t1"
    _recover(history, target_dir, RecoveryTarget(time=history.t1))
    assert not (target_dir / STAGING_NAME).exists()
    auto = (target_dir / "postgresql.auto.conf").read_text()
    assert "restore_command = 'cp pg_wal_archive/%f %p'" in auto
    assert "recovery_target_action = 'promote'" in auto
    assert (target_dir / "recovery.signal").exists()
    assert _batches(history, target_dir) == {"A": 50}


def test_recover_to_the_end_includes_the_partial_segment(history: History) -> None:
    partials = [w for w in history.archive.wal() if w.partial]
    # C is in the in-progress segment only: no completed segment holds it.
    c_segment = parse_target_lsn(history.c_lsn) // (16 * 1024 * 1024)
    assert [w.segno for w in partials] == [c_segment]
    assert all(w.segno < c_segment for w in history.archive.wal() if not w.partial
               and not w.history)
    target_dir = history.work / "to-end"
    ctx = _recover(history, target_dir, RecoveryTarget())
    outcome = ctx.result.outcome
    assert outcome is not None and getattr(outcome, "base_backup", None) == "base1"
    assert _batches(history, target_dir) == {"A": 50, "B": 50, "C": 50}


def test_a_gap_is_refused_before_anything_is_written(history: History,
                                                     tmp_path: Path) -> None:
    gappy = PlainArchive(tmp_path / "gappy", history.cluster)
    shutil.copytree(history.archive.base_dir, gappy.base_dir, dirs_exist_ok=True)
    segments = sorted(w.name for w in history.archive.wal() if not w.history)
    for name in segments:
        shutil.copyfile(history.archive.wal_dir / name, gappy.wal_dir / name)
    missing = segments[1]
    (gappy.wal_dir / missing).unlink()
    target_dir = tmp_path / "target"
    with pytest.raises(JobFailed, match=f"WAL gap: {missing} .. {missing} missing"):
        _recover(history, target_dir, RecoveryTarget(), gappy)
    assert not target_dir.exists()


def test_a_time_before_the_oldest_base_backup_or_after_the_end_is_refused(
        history: History, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="before the oldest base backup"):
        _recover(history, tmp_path / "a", RecoveryTarget(time=datetime(2001, 1, 1, tzinfo=UTC)))
    with pytest.raises(ConfigError, match="after the archive's end"):
        _recover(history, tmp_path / "b", RecoveryTarget(time=datetime.now(UTC)))
    assert list(tmp_path.iterdir()) == []


def test_a_non_empty_target_is_refused_untouched(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    result = run_backupd(["recover", "--target-dir", str(tmp_path)],
                         build_env({"DB_BACKUP_DIR": str(tmp_path / "backups"),
                                    "POSTGRES_PASSWORD": "x"}))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--target-dir" in lines[0] and "not empty" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_a_live_servers_data_directory_is_refused(history: History, tmp_path: Path) -> None:
    result = run_backupd(["recover", "--target-dir", str(history.cluster.data_dir), "--force"],
                         build_env({"DB_BACKUP_DIR": str(tmp_path), "POSTGRES_PASSWORD": "x"}))
    assert result.returncode == 2
    assert "live server's data directory" in result.stderr
    assert history.cluster.is_running()


_KILLED_RECOVER = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from pathlib import Path
from helpers.plain_archive import PlainArchive
from backupd.archive.recovery import RecoveryTarget
from backupd.commands import recover

class Killed(PlainArchive):
    fetched = 0
    def fetch(self, wal, dest):
        super().fetch(wal, dest)
        self.fetched += 1
        if self.fetched == 2:
            os.kill(os.getpid(), signal.SIGKILL)

archive = Killed.__new__(Killed)
archive.root = Path({root!r}); archive.wal_dir = archive.root / "wal"
archive.base_dir = archive.root / "base"; archive.description = "killed"
from test_recover import _context_for
from backupd.outcomes import RecoverOutcome
recover.recover_into(_context_for({port}, {work!r}), archive, Path({target!r}),
                     RecoveryTarget(), recover.RecoverOptions(owner={owner}),
                     RecoverOutcome(target_dir={target!r}, target="end"))
"""


def _context_for(port: int, work: str) -> JobContext:
    values: dict[str, Any] = {
        "POSTGRES_HOST": "127.0.0.1", "POSTGRES_PORT": str(port), "POSTGRES_USER": "postgres",
        "POSTGRES_PASSWORD": PASSWORD, "POSTGRES_DB": "postgres",
        "DB_BACKUP_DIR": str(Path(work) / "backups")}
    settings = Settings(_env_file=None, **values)  # type: ignore[call-arg]
    return JobContext(settings, JobResult(job="recover", database="postgres"))


def test_a_killed_recover_leaves_a_directory_no_server_starts_on(history: History) -> None:
    target_dir = history.work / "killed"
    owner = parse_owner(postgres_owner()) if AS_ROOT else None
    tests = str(Path(__file__).parent)
    script = _KILLED_RECOVER.format(tests=tests, root=str(history.archive.root),
                                    port=history.cluster.port, work=str(history.work),
                                    target=str(target_dir), owner=owner)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": tests}, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert (target_dir / STAGING_NAME).is_dir()
    if AS_ROOT:
        shutil.chown(target_dir, SERVER_OS_USER, SERVER_OS_USER)
    start = pg_ctl_start(target_dir, 1, history.work / "killed.log")
    assert start.returncode != 0
    assert "not a database cluster directory" in start.stderr
    # Without --force the next recover refuses; with it, it cleans up and recovers.
    from backupd.archive.recovery_dir import check_target

    with pytest.raises(ConfigError, match="incomplete recover"):
        check_target(target_dir, force=False)
    check_target(target_dir, force=True)
    _recover(history, target_dir, RecoveryTarget(), force=True)
    assert (target_dir / "PG_VERSION").exists() and not (target_dir / STAGING_NAME).exists()


def test_mark_then_writes_then_recover_to_the_name(history: History) -> None:
    env = build_env({"POSTGRES_HOST": "127.0.0.1", "POSTGRES_PORT": str(history.cluster.port),
                     "POSTGRES_USER": "postgres", "POSTGRES_PASSWORD": PASSWORD,
                     "POSTGRES_DB": "postgres", "DB_BACKUP_DIR": str(history.work / "backups")})
    marked = run_backupd(["mark", "before-migration"], env)
    assert marked.returncode == 0, marked.stderr
    with connect(history.cluster.address) as conn:
        conn.execute("CREATE TABLE migrated AS SELECT g AS n FROM generate_series(1, 10) g")
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    history.archive.wait_for_durable(str(row[0]))
    target_dir = history.work / "to-name"
    _recover(history, target_dir, RecoveryTarget(name="before-migration"))
    assert "recovery_target_name = 'before-migration'" in (
        target_dir / "postgresql.auto.conf").read_text()
    with _archive_moved_away(history), started(target_dir, PASSWORD) as server, \
            connect(server) as conn:
        assert conn.execute("SELECT to_regclass('migrated')").fetchone() == (None,)
        counts = dict(conn.execute("SELECT batch, count(*) FROM t GROUP BY batch").fetchall())
    assert counts == {"A": 50, "B": 50, "C": 50}


def test_a_pitr_drill_passes_and_cleans_up(history: History) -> None:
    from backupd.commands import pitr_drill

    ctx = _context(history)
    outcome = pitr_drill.run(ctx, history.archive)
    assert outcome.base_backup == "base1"
    assert outcome.rto_seconds is not None and outcome.replay_seconds is not None
    assert outcome.rto_seconds >= outcome.replay_seconds > 0
    assert not pitr_drill.scratch_directory(ctx.settings.backup_dir).exists()
    assert not [w for w in ctx.result.warnings if "newest durable commit" in w]

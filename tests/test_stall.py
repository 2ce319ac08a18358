"""The stall watchdog and the job timeout (issue 17) against the real server: a dump behind
an ACCESS EXCLUSIVE lock, a frozen server backend, a job that runs too long. Each ends in a
reported failure naming what the job waited on, and nothing partial stays behind."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from helpers.backups import backup_files
from helpers.cli import (
    BackupdProcess,
    EnvFactory,
    kill_group,
    run_backupd,
    server_env,
    start_backupd,
    stop_backupd,
)
from helpers.cluster import PrivateCluster
from helpers.faults import SlowDump, partial_files, wait_until
from helpers.logs import LogEvent, human_lines, jobs_finished
from helpers.pg import (
    ServerAddress,
    connect,
    database_exists,
    drop_database,
    psql,
    unique_db_name,
)
from helpers.ports import free_port
from helpers.slow_restore import pausing_psql

LOCKER_APP = "stall-test-locker"


@contextmanager
def table_locked(server: ServerAddress, database: str, table: str) -> Iterator[int]:
    """``table`` held in ACCESS EXCLUSIVE mode by another session (its pid), until the end."""
    with psycopg.connect(server.conninfo(database), application_name=LOCKER_APP) as locker:
        locker.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        row = locker.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        try:
            yield int(row[0])
        finally:
            locker.rollback()


def nothing_partial(directory: Path) -> list[str]:
    """Whatever in DB_BACKUP_DIR could pass for (part of) a backup."""
    manifests = [p.name for p in directory.glob("*.manifest.json")] if directory.is_dir() else []
    return [p.name for p in partial_files(directory)] + manifests + backup_files(directory)


def test_a_dump_behind_an_exclusive_lock_fails_naming_the_lock_and_its_holder(
        pg_server: ServerAddress, small_db: str, backup_dir: Path,
        backupd_env: EnvFactory) -> None:
    with table_locked(pg_server, small_db, "public.items") as holder:
        proc = run_backupd(["backup"], backupd_env(small_db, DB_BACKUP_STALL_SECONDS="5"),
                           timeout=180)
    assert proc.returncode == 1, proc.stderr
    (line,) = [ln for ln in human_lines(proc.stderr) if "stalled" in ln]
    assert "no data moved" in line and "DB_BACKUP_STALL_SECONDS=5" in line, line
    assert "pg_dump output" in line, line  # what it was waiting on
    assert "table items" in line or "table public.items" in line, line
    assert "AccessShareLock" in line and "AccessExclusiveLock" in line, line
    assert f"pid {holder}" in line and LOCKER_APP in line, line
    (finished,) = jobs_finished(proc.stderr, "backup")
    assert finished["status"] == "failed" and "stalled" in finished["error"]
    assert nothing_partial(backup_dir) == []



def test_a_restore_whose_psql_stops_reading_fails_as_stalled_and_leaves_no_database(
        pg_server: ServerAddress, env: dict[str, str], backup: Path, tmp_path: Path) -> None:
    """The restore's feed is watched too: psql stops reading (it sits in pg_sleep on the
    server, mid-transaction), the feed blocks, and the watchdog ends the restore; neither the
    target nor a scratch database is left behind."""
    shim = pausing_psql(tmp_path / "shim", tmp_path / "psql.pid", pause_seconds=120)
    target = unique_db_name("stalled_restore")
    slow = {**env, "PATH": f"{shim}{os.pathsep}{os.environ['PATH']}",
            "DB_BACKUP_STALL_SECONDS": "3"}
    proc = run_backupd(["restore", "--yes", "--target-db", target, backup.name], slow,
                       timeout=180)
    assert proc.returncode == 1, proc.stderr
    (line,) = [ln for ln in human_lines(proc.stderr) if "stalled" in ln]
    assert "no data moved" in line and "DB_BACKUP_STALL_SECONDS=3" in line, line
    (finished,) = jobs_finished(proc.stderr, "restore")
    assert finished["status"] == "failed" and "stalled" in finished["error"]
    assert not database_exists(pg_server, target)
    # The scratch database is <target>__restoring_<stamp> (commands/restore_target.py).
    wait_until(lambda: not _databases_named(pg_server, target), 30, "the scratch dropped")


def _databases_named(server: ServerAddress, prefix: str) -> list[str]:
    with connect(server) as conn:
        return [row[0] for row in conn.execute(
            "SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (prefix,))]


def test_a_stalled_database_fails_alone_and_the_run_goes_on(
        pg_server: ServerAddress, small_db: str, make_db: Callable[..., str],
        backup_dir: Path, backupd_env: EnvFactory) -> None:
    """Each database of a backup run is a job of its own: the watchdog stops the stalled one,
    the next is backed up, and the run's summary names the one that failed."""
    other = make_db()
    psql(pg_server, other, "CREATE TABLE t AS SELECT 1 AS x")
    env = backupd_env(f"{small_db},{other}", DB_BACKUP_STALL_SECONDS="5",
                      DB_BACKUP_GLOBALS="off")
    with table_locked(pg_server, small_db, "public.items"):
        proc = run_backupd(["backup", "--no-prune"], env, timeout=180)
    assert proc.returncode == 1, proc.stderr
    results = {r["database"]: r for r in jobs_finished(proc.stderr, "backup")}
    assert results[small_db]["status"] == "failed"
    assert results[small_db]["error"].startswith("stalled: "), results[small_db]["error"]
    assert results[other]["status"] == "success", results[other]
    assert f"1 of 2 databases failed: {small_db!r}" in results[f"{small_db},{other}"]["error"]
    (kept,) = backup_files(backup_dir)
    assert kept.startswith(f"{other}_"), kept
    assert partial_files(backup_dir) == []

def _copying_backend(server: ServerAddress, database: str) -> int | None:
    """The pid of pg_dump's server backend while it streams a table (COPY ... TO stdout)."""
    with psycopg.connect(server.conninfo(database), autocommit=True) as conn:
        row = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'backupd' "
            "AND datname = current_database() AND state = 'active' "
            "AND query LIKE 'COPY %%TO stdout%%'").fetchone()
    return int(row[0]) if row else None


@pytest.mark.slow
def test_a_frozen_server_backend_ends_the_job_anyway(
        private_cluster: Callable[..., PrivateCluster], tmp_path: Path) -> None:
    cluster = private_cluster()
    with psycopg.connect(cluster.address.conninfo("postgres"), autocommit=True) as conn:
        conn.execute("CREATE DATABASE frozen")
    with psycopg.connect(cluster.address.conninfo("frozen"), autocommit=True) as conn:
        # Enough rows that pg_dump is still streaming them when the test finds its backend.
        conn.execute("CREATE TABLE big AS SELECT g AS id, md5(g::text) AS payload "
                     "FROM generate_series(1, 1500000) AS g")
    backup_dir = tmp_path / "backups"
    env = server_env(cluster.address, "frozen", backup_dir, HEALTH_PORT="0",
                     DB_BACKUP_STALL_SECONDS="5")
    outcome: list[subprocess.CompletedProcess[str]] = []
    running = threading.Thread(target=lambda: outcome.append(
        run_backupd(["backup"], env, timeout=240)))
    running.start()
    frozen: int | None = None
    try:
        deadline = time.monotonic() + 120
        while frozen is None and running.is_alive() and time.monotonic() < deadline:
            frozen = _copying_backend(cluster.address, "frozen")
            if frozen is not None:
                os.kill(frozen, signal.SIGSTOP)
            else:
                time.sleep(0.02)
        assert frozen is not None, "pg_dump's backend was never seen streaming the table"
        running.join(240)
        assert not running.is_alive(), "backupd did not end while the backend was frozen"
    finally:
        if frozen is not None:
            os.kill(frozen, signal.SIGCONT)
        running.join(60)
    (proc,) = outcome
    assert proc.returncode == 1, proc.stderr
    (line,) = [ln for ln in human_lines(proc.stderr) if "stalled" in ln]
    assert "no data moved" in line and "pg_dump output" in line, line
    if "could not be asked" not in line:
        assert f"pid {frozen}" in line, line  # the server still lists the frozen backend
    else:
        # Stopped while it held one of the server's shared locks (a buffer mapping
        # partition's, say, as a sequential scan takes them all the time), the backend
        # blocks the probe's own catalogue reads too: the probe's statement timeout then
        # says so, and the job still ends (seen once in CI).
        assert "statement timeout" in line, line
    (finished,) = jobs_finished(proc.stderr, "backup")
    assert finished["status"] == "failed"
    assert nothing_partial(backup_dir) == []


def _finished_runs(daemon: BackupdProcess) -> list[LogEvent]:
    return jobs_finished(daemon.read_stderr(), "backup")


@pytest.mark.slow
def test_the_job_timeout_fails_a_run_and_the_next_scheduled_run_goes_ahead(
        small_db: str, backup_dir: Path, tmp_path: Path, backupd_env: EnvFactory,
        backupd_daemon: Callable[..., BackupdProcess]) -> None:
    # A dump that moves (no stall) but far too slowly: ~1 KiB/s.
    shim = SlowDump(tmp_path / "shim", chunk=256, delay=0.25)
    env = backupd_env(small_db, BACKUP_SCHEDULE="*/5 * * * * *", SCHEDULE_SECONDS_FIELD="1",
                      BACKUP_ON_START="false", DRILL_SCHEDULE="off",
                      DB_BACKUP_JOB_TIMEOUT_SECONDS="10", PATH=shim.path())
    daemon = backupd_daemon(["run"], env)
    wait_until(lambda: any(r["status"] == "failed" for r in _finished_runs(daemon)), 120,
               "a run to hit the job timeout")
    assert partial_files(backup_dir) == [] and backup_files(backup_dir) == []
    shim.slow = False
    wait_until(lambda: any(r["status"] == "success" for r in _finished_runs(daemon)), 120,
               "the next scheduled run to succeed")
    assert stop_backupd(daemon, timeout=30) == 0

    runs = [r for r in _finished_runs(daemon) if r["status"] != "skipped"]
    failed, succeeded = runs[0], runs[-1]
    assert failed["status"] == "failed", runs
    assert failed["error"].startswith("job timeout: the job ran for "), failed["error"]
    assert "DB_BACKUP_JOB_TIMEOUT_SECONDS=10" in failed["error"]
    assert "pg_dump output" in failed["error"]  # what it was doing when stopped
    assert succeeded["status"] == "success" and succeeded["backup_name"]
    assert len(backup_files(backup_dir)) == 1


@contextmanager
def another_backupd_copying(server: ServerAddress, database: str) -> Iterator[threading.Event]:
    """A session named as backupd's, in ``database``, running a COPY that moves a row every
    10 ms for a minute (another sidecar's backup on the same server); the event is set once
    it has ended. The COPY is ended on the way out."""
    started, ended, pids = threading.Event(), threading.Event(), []

    def copy() -> None:
        try:
            with psycopg.connect(server.conninfo(database), application_name="backupd") as conn:
                pids.append(conn.info.backend_pid)
                with conn.cursor().copy("COPY (SELECT g, pg_sleep(0.01) FROM "
                                        "generate_series(1, 6000) g) TO STDOUT") as rows:
                    for _ in rows:
                        started.set()
        except psycopg.Error:
            pass  # ended on the way out
        finally:
            started.set()
            ended.set()

    thread = threading.Thread(target=copy, name="other-backupd", daemon=True)
    thread.start()
    assert started.wait(30) and not ended.is_set(), "the other COPY never started"
    try:
        yield ended
    finally:
        with connect(server) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) pid", (pids,))
        thread.join(30)


def test_another_backupds_work_elsewhere_on_the_server_does_not_hide_a_stall(
        pg_server: ServerAddress, small_db: str, make_db: Callable[..., str],
        backup_dir: Path, backupd_env: EnvFactory) -> None:
    """The server's progress views count as a job's movement only in the job's own
    databases: a sidecar backing up another database of the same server, its COPY moving the
    whole time, must not keep this dump's stall from being seen."""
    with another_backupd_copying(pg_server, make_db()) as other_ended, \
            table_locked(pg_server, small_db, "public.items"):
        proc = run_backupd(["backup"], backupd_env(small_db, DB_BACKUP_STALL_SECONDS="3"),
                           timeout=180)
        assert not other_ended.is_set(), "the other COPY ended first: nothing was proven"
    assert proc.returncode == 1, proc.stderr
    (finished,) = jobs_finished(proc.stderr, "backup")
    assert finished["status"] == "failed" and "stalled" in finished["error"], finished
    assert nothing_partial(backup_dir) == []


def test_a_restores_long_index_build_in_its_scratch_database_is_not_a_stall(
        pg_server: ServerAddress, make_db: Callable[..., str], backupd_env: EnvFactory,
        tmp_path: Path) -> None:
    """The restore works in a scratch database, not in POSTGRES_DB, which need not exist yet
    (a restore onto a new server): its index build there, with no byte moving in the
    restore's streams, is the job's work for three times DB_BACKUP_STALL_SECONDS and more.
    The restore is then stopped (its scratch database is left for the next restore of the
    target to drop, as after any killed restore: dropped here)."""
    source = make_db()
    psql(pg_server, source, """
        -- Slow (10 ms a row: 30 s for the index) only where a restore loads it.
        CREATE FUNCTION slow(int) RETURNS int IMMUTABLE LANGUAGE sql AS $$
          SELECT $1 + 0 FROM pg_catalog.pg_sleep(CASE WHEN pg_catalog.current_database()
            LIKE '%__restoring_%' THEN 0.01 ELSE 0 END) $$;
        CREATE TABLE wide (id int, filler text);
        INSERT INTO wide SELECT i, repeat('x', 2000) FROM generate_series(1, 3000) i;
        CREATE INDEX wide_slow_idx ON wide (slow(id));""")
    env = backupd_env(source)
    take = run_backupd(["backup", "--no-prune"], env, timeout=180)
    assert take.returncode == 0, take.stderr
    (name,) = backup_files(Path(env["DB_BACKUP_DIR"]))
    target = unique_db_name("slow_index")
    restoring = start_backupd(["restore", "--yes", name],
                              {**env, "POSTGRES_DB": target, "DB_BACKUP_STALL_SECONDS": "2"},
                              log_dir=tmp_path / "log")
    building = ("SELECT count(*) FROM pg_stat_activity WHERE starts_with(datname, %s) "
                "AND state = 'active' AND query LIKE 'CREATE INDEX wide_slow_idx%%'")
    try:
        with connect(pg_server) as conn:
            wait_until(lambda: conn.execute(building, (target,)).fetchone() == (1,)
                       or restoring.poll() is not None, 120, "the index build to start")
            assert restoring.poll() is None, restoring.read_stderr()[-3000:]
            time.sleep(7)  # past three stall limits of the restore's idle streams
            assert restoring.poll() is None, restoring.read_stderr()[-3000:]
            assert conn.execute(building, (target,)).fetchone() == (1,)
        stop_backupd(restoring)
    finally:
        kill_group(restoring)
        restoring.wait()
        for leftover in _databases_named(pg_server, target):
            drop_database(pg_server, leftover)
    assert "stalled" not in restoring.read_stderr()


@pytest.mark.parametrize("postgres_db", ["template1", "app,other", "*"])
def test_the_probe_of_an_unreachable_server_says_so(tmp_path: Path, postgres_db: str) -> None:
    """Every database the probe tries fails: the view says the server could not be asked
    (POSTGRES_DB=template1 is also one of the maintenance databases it falls back to)."""
    from backupd.postgres.waits import server_view
    from backupd.settings import Settings

    settings = Settings(_env_file=None, POSTGRES_HOST="127.0.0.1",  # type: ignore[call-arg]
                        POSTGRES_PORT=str(free_port()), POSTGRES_DB=postgres_db,
                        DB_BACKUP_DIR=str(tmp_path))
    view = server_view(settings)
    assert view.work == ""
    assert view.waits is not None
    assert view.waits.startswith("the server could not be asked what the job waits on (")


@pytest.mark.parametrize("postgres_db", ["app,other", "*", "bk_not_created_yet"])
def test_the_probe_asks_the_server_whatever_postgres_db_names(
        pg_server: ServerAddress, tmp_path: Path, postgres_db: str) -> None:
    """A list, `*` or a database not created yet (a restore onto a new server): the probe
    asks from a maintenance database instead of failing to connect."""
    from backupd.postgres.waits import server_view
    from backupd.settings import Settings

    settings = Settings(_env_file=None, POSTGRES_HOST=pg_server.host,  # type: ignore[call-arg]
                        POSTGRES_PORT=str(pg_server.port), POSTGRES_USER=pg_server.user,
                        POSTGRES_PASSWORD=pg_server.password or "unused",
                        POSTGRES_DB=postgres_db, DB_BACKUP_DIR=str(tmp_path))
    view = server_view(settings)
    assert view.waits is None or "could not be asked" not in view.waits, view.waits


def test_the_probe_also_asks_each_other_server_the_job_works_on(
        pg_server: ServerAddress, tmp_path: Path) -> None:
    """A drill's database on the drill server is asked about on that server: here it does
    not answer, and the view says so beside the job's own server's answer."""
    from backupd.postgres.waits import job_view
    from backupd.progress import Place
    from backupd.settings import Settings

    def settings(port: int) -> Settings:
        return Settings(_env_file=None, POSTGRES_HOST=pg_server.host,  # type: ignore[call-arg]
                        POSTGRES_PORT=str(port), POSTGRES_USER=pg_server.user,
                        POSTGRES_PASSWORD=pg_server.password or "unused",
                        POSTGRES_DB="postgres", DB_BACKUP_DIR=str(tmp_path))

    own, drill_server = settings(pg_server.port), settings(free_port())
    view = job_view(own, [Place("appdb", drill_server)])
    assert view.waits is not None
    # Only the drill server's part: other tests' sessions may be waiting on the own server.
    assert "the server could not be asked what the job waits on (" in view.waits, view
    assert view.work.endswith("|")  # the own server's counters, then the drill server's: none

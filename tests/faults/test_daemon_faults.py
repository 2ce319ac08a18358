"""The daemon under PostgreSQL faults: every fault is a failed, reported job; the daemon
keeps running and the next scheduled run after the fault is fixed succeeds by itself."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.cli import BackupdProcess, server_env, stop_backupd
from helpers.cluster import PrivateCluster
from helpers.faults import SlowDump, partial_files, wait_until
from helpers.leakcheck import SECRET_PASSWORD
from helpers.logs import LogEvent, jobs_finished
from helpers.pg import ServerAddress, connect, psql
from helpers.procs import kill_processes, processes_with_env
from psycopg import sql


def finished(proc: BackupdProcess, status: str) -> list[LogEvent]:
    return jobs_finished(proc.read_stderr(), job="backup", status=status)


def _admin(cluster: PrivateCluster) -> ServerAddress:
    return cluster.address


# Each fault: (break the setup -> env overrides, reason expected, fix it).
def _unreachable(c: PrivateCluster) -> tuple[dict[str, str], str, Callable[[], None]]:
    c.stop("immediate")
    return {}, "cannot connect", c.start


def _wrong_password(c: PrivateCluster) -> tuple[dict[str, str], str, Callable[[], None]]:
    def fix() -> None:
        with connect(_admin(c)) as conn:
            conn.execute(sql.SQL("ALTER ROLE postgres PASSWORD {}").format(
                sql.Literal(SECRET_PASSWORD + "-new")))
    return {"POSTGRES_PASSWORD": SECRET_PASSWORD + "-new"}, "password authentication failed", fix


def _database_missing(c: PrivateCluster) -> tuple[dict[str, str], str, Callable[[], None]]:
    def fix() -> None:
        with connect(_admin(c)) as conn:
            conn.execute("CREATE DATABASE appdb")
    return {"POSTGRES_DB": "appdb"}, "does not exist", fix


def _permission_denied(c: PrivateCluster) -> tuple[dict[str, str], str, Callable[[], None]]:
    with connect(_admin(c)) as conn:
        conn.execute("CREATE DATABASE appdb")
        conn.execute(sql.SQL("CREATE ROLE backup_user LOGIN PASSWORD {}").format(
            sql.Literal(SECRET_PASSWORD)))
    psql(_admin(c), "appdb", "CREATE TABLE private_t (id int); INSERT INTO private_t VALUES (1);")

    def fix() -> None:
        psql(_admin(c), "appdb", "GRANT SELECT ON private_t TO backup_user;")
    return {"POSTGRES_DB": "appdb", "POSTGRES_USER": "backup_user"}, "permission denied", fix


FAULTS = {f.__name__.strip("_"): f for f in
          (_unreachable, _wrong_password, _database_missing, _permission_denied)}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_daemon_reports_the_fault_keeps_running_and_recovers(
    fault: str, private_cluster: Callable[..., PrivateCluster],
    backupd_daemon: Callable[..., BackupdProcess], tmp_path: Path,
) -> None:
    cluster = private_cluster(SECRET_PASSWORD)
    overrides, reason, fix = FAULTS[fault](cluster)
    directory = tmp_path / "backups"
    env = server_env(cluster.address, "postgres", directory, **{
        "POSTGRES_CONNECT_TIMEOUT": "2", "HEALTH_PORT": "0",
        "BACKUP_SCHEDULE": "*/2 * * * * *", "SCHEDULE_SECONDS_FIELD": "1",
        "BACKUP_ON_START": "false", "DRILL_SCHEDULE": "off", **overrides,
    })
    daemon = backupd_daemon(["run"], env)

    wait_until(lambda: finished(daemon, "failed"), 30, "a failed scheduled backup")
    assert reason in str(finished(daemon, "failed")[0]["error"])
    assert daemon.poll() is None, "the daemon exited on a database fault"
    assert (directory / "backup_log.txt").is_file() and reason in (
        directory / "backup_log.txt").read_text()

    fix()
    wait_until(lambda: finished(daemon, "success"), 30, "a successful backup after the fix")
    assert daemon.poll() is None
    assert stop_backupd(daemon, sig=signal.SIGTERM, timeout=30) == 0
    assert partial_files(directory) == []


def test_sigkill_mid_dump_leaves_no_pg_dump_running(
    pg_server: ServerAddress, fixture_db: str, backup_dir: Path, tmp_path: Path,
    backupd_env: Callable[..., dict[str, str]],
    backupd_daemon: Callable[..., BackupdProcess],
) -> None:
    """``docker kill`` of the daemon while pg_dump waits for a table lock (so no broken pipe
    would ever stop it): pg_dump, here a throttling wrapper and the real pg_dump it runs (a
    grandchild), dies with the daemon, and its session then leaves the server."""
    env = backupd_env(fixture_db, BACKUP_SCHEDULE="0 0 1 1 *", SCHEDULE_SECONDS_FIELD="1",
                      DRILL_SCHEDULE="off")
    env["PATH"] = SlowDump(tmp_path / "shim", chunk=4096, delay=0.04).path()
    with connect(pg_server, fixture_db) as locker:
        locker.autocommit = False
        (table,) = locker.execute("SELECT format('%I.%I', schemaname, tablename) FROM pg_tables "
                                  "WHERE schemaname = 'public' LIMIT 1").fetchone() or ("",)
        locker.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        daemon = backupd_daemon(["run"], env)  # no backup yet: it dumps at once
        try:
            wait_until(lambda: psql(pg_server, "postgres",
                                    "SELECT count(*) FROM pg_stat_activity WHERE datname = "
                                    f"'{fixture_db}' AND query LIKE 'LOCK TABLE %' "
                                    "AND wait_event_type = 'Lock'").strip() == "1", 60,
                       "pg_dump to wait for the locked table")
            assert len(processes_with_env("PGDATABASE", fixture_db)) == 2  # wrapper + pg_dump
            daemon.kill()  # SIGKILL the daemon alone, not its process group
            daemon.wait()
            wait_until(lambda: not processes_with_env("PGDATABASE", fixture_db), 10,
                       "pg_dump to die with the daemon")
        finally:
            kill_processes(processes_with_env("PGDATABASE", fixture_db))
            locker.rollback()
    wait_until(lambda: psql(pg_server, "postgres",
                            "SELECT count(*) FROM pg_stat_activity WHERE datname = "
                            f"'{fixture_db}' AND application_name = 'backupd'").strip() == "0",
               30, "pg_dump's session to end")

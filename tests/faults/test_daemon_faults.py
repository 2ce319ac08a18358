"""The daemon under PostgreSQL faults: every fault is a failed, reported job; the daemon
keeps running and the next scheduled run after the fault is fixed succeeds by itself."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.cli import BackupdProcess, server_env, stop_backupd
from helpers.cluster import PrivateCluster
from helpers.faults import partial_files, wait_until
from helpers.leakcheck import SECRET_PASSWORD
from helpers.logs import LogEvent, jobs_finished
from helpers.pg import ServerAddress, connect, psql
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

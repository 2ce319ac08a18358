"""PostgreSQL failing under backupd: killed mid-dump, unreachable, wrong password, database
missing, permission denied. Each is a failed job with a clear reason that reaches the
notifiers, leaves no partial file, and the next run after the fault is gone succeeds.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers.cli import BackupdProcess, run_backupd, server_env, stop_backupd
from helpers.cluster import PrivateCluster, free_port
from helpers.faults import SlowDump, dump_partials, partial_files, wait_until
from helpers.http_receiver import HttpReceiver
from helpers.leakcheck import SECRET_PASSWORD
from helpers.logs import jobs_finished
from helpers.pg import ServerAddress, connect, psql, unique_db_name
from psycopg import sql


def cluster_env(cluster: PrivateCluster, database: str, directory: Path,
                **extra: str) -> dict[str, str]:
    return server_env(cluster.address, database, directory,
                      **{"POSTGRES_CONNECT_TIMEOUT": "3", **extra})


def data_files(directory: Path) -> list[str]:
    if not directory.is_dir():
        return []
    return sorted(p.name for p in directory.iterdir() if p.name.endswith((".sql.gz", ".dump")))


def failure_records(stderr: str, job: str = "backup") -> list[dict[str, object]]:
    """The structured "job finished" records of failed jobs (what the notifiers received)."""
    return jobs_finished(stderr, job=job, status="failed")


def assert_failed_cleanly(proc_stderr: str, directory: Path, reason: str) -> None:
    (record,) = failure_records(proc_stderr)
    assert reason in str(record["error"]), record["error"]
    assert partial_files(directory) == []
    log = (directory / "backup_log.txt").read_text()
    assert "backup failed" in log and reason in log


def test_server_killed_mid_dump(
    private_cluster: Callable[..., PrivateCluster], backupd_daemon: Callable[..., BackupdProcess],
    slow_dump: SlowDump, http_receiver: HttpReceiver, tmp_path: Path,
) -> None:
    cluster = private_cluster(SECRET_PASSWORD)
    # Twice what the socket's buffers may grow to (tcp_rmem's and tcp_wmem's maximum: 36 MiB
    # here), so the server is still sending when it dies, while the shim holds pg_dump back.
    # With 20 MB, pg_dump once had all of it before the kill and the backup succeeded.
    rows = 2 * (socket_buffer_max() // 200 + 1)
    with connect(cluster.address) as conn:
        conn.execute("CREATE DATABASE big")
    psql(cluster.address, "big",
         "CREATE TABLE t AS SELECT g AS id, repeat(md5(g::text), 6) AS v "
         f"FROM generate_series(1, {rows}) g;")
    directory = tmp_path / "backups"
    slack = f"http://127.0.0.1:{http_receiver.port}/services/T000/B000/XXXXSECRETXXXX"
    env = cluster_env(cluster, "big", directory, PATH=slow_dump.path(), SLACK_WEBHOOK_URL=slack)

    proc = backupd_daemon(["backup"], env)
    # The dump's own file: the directory's short-lived write probe may vanish before its stat.
    wait_until(lambda: any(p.stat().st_size > 0 for p in dump_partials(directory)),
               what="the partial backup file to grow")
    cluster.stop("immediate")
    slow_dump.slow = False  # let pg_dump drain what it had buffered and notice the loss
    code = stop_backupd(proc, sig=0, timeout=60)  # sig 0: just wait for it

    assert code == 1
    assert "backup failed" in proc.read_stdout() + proc.read_stderr()
    assert_failed_cleanly(proc.read_stderr(), directory, "pg_dump failed")
    assert data_files(directory) == []
    (posted,) = [r for r in http_receiver.requests if r.json is not None]
    assert "pg_dump failed" in json.dumps(posted.json), posted.json

    cluster.start()
    again = run_backupd(["backup"], env)
    assert again.returncode == 0, again.stderr
    (name,) = data_files(directory)
    rows = json.loads(run_backupd(["list", "--json"], env).stdout)
    assert [(r["name"], r["state"]) for r in rows] == [(name, "verified")]


def socket_buffer_max() -> int:
    """How far a TCP connection's receive and send buffers may grow, together, in bytes."""
    return sum(int(Path(f"/proc/sys/net/ipv4/{name}").read_text().split()[2])
               for name in ("tcp_rmem", "tcp_wmem"))


@pytest.fixture
def limited_role(pg_server: ServerAddress) -> Iterator[str]:
    role = unique_db_name("limited")
    with connect(pg_server) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    yield role
    with connect(pg_server) as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def test_unreachable_server_then_recovers(
    private_cluster: Callable[..., PrivateCluster], tmp_path: Path
) -> None:
    cluster = private_cluster(SECRET_PASSWORD)
    cluster.stop("immediate")
    directory = tmp_path / "backups"
    env = cluster_env(cluster, "postgres", directory)

    failed = run_backupd(["backup"], env)
    assert failed.returncode == 1
    assert_failed_cleanly(failed.stderr, directory, "cannot connect to PostgreSQL")
    assert data_files(directory) == []

    cluster.start()
    assert run_backupd(["backup"], env).returncode == 0
    assert len(data_files(directory)) == 1


def test_nothing_listening_on_the_port(backupd_env: Callable[..., dict[str, str]],
                                       backup_dir: Path) -> None:
    env = backupd_env("postgres", POSTGRES_PORT=str(free_port()), POSTGRES_CONNECT_TIMEOUT="3")
    proc = run_backupd(["backup"], env)
    assert proc.returncode == 1
    assert_failed_cleanly(proc.stderr, backup_dir, "Connection refused")


def test_wrong_password(private_cluster: Callable[..., PrivateCluster], tmp_path: Path) -> None:
    cluster = private_cluster(SECRET_PASSWORD)
    directory = tmp_path / "backups"
    wrong = "wr0ng-PW-not-the-one"
    proc = run_backupd(["backup"], cluster_env(cluster, "postgres", directory,
                                               POSTGRES_PASSWORD=wrong))
    assert proc.returncode == 1
    assert_failed_cleanly(proc.stderr, directory, "password authentication failed")
    assert wrong not in proc.stderr + proc.stdout


def test_database_missing(backupd_env: Callable[..., dict[str, str]], backup_dir: Path) -> None:
    missing = unique_db_name("missing")
    proc = run_backupd(["backup"], backupd_env(missing))
    assert proc.returncode == 1
    assert_failed_cleanly(proc.stderr, backup_dir, "does not exist")


def test_permission_denied_on_a_table(
    pg_server: ServerAddress, make_db: Callable[..., str], limited_role: str,
    backupd_env: Callable[..., dict[str, str]], backup_dir: Path,
) -> None:
    database = make_db()
    psql(pg_server, database, "CREATE TABLE secret_stuff (id int); INSERT INTO secret_stuff "
                              "VALUES (1);")
    proc = run_backupd(["backup"], backupd_env(database, POSTGRES_USER=limited_role))
    assert proc.returncode == 1
    assert_failed_cleanly(proc.stderr, backup_dir, "permission denied")
    assert data_files(backup_dir) == []


def test_pg_dump_failure_quotes_its_error_line_not_the_detail(
    private_cluster: Callable[..., PrivateCluster], tmp_path: Path,
) -> None:
    """pg_dump prints ``error: ... ERROR: permission denied`` and then ``detail: Query was:
    LOCK TABLE ...``; the failure must quote the first, even when the query names a table
    whose name holds the word "error"."""
    cluster = private_cluster(SECRET_PASSWORD)
    with connect(cluster.address) as conn:
        conn.execute("CREATE DATABASE appdb")
        conn.execute(sql.SQL("CREATE ROLE backup_user LOGIN PASSWORD {}").format(
            sql.Literal(SECRET_PASSWORD)))
    psql(cluster.address, "appdb", "CREATE TABLE error_log (id int); INSERT INTO error_log "
                                   "VALUES (1);")
    directory = tmp_path / "backups"
    proc = run_backupd(["backup"], cluster_env(cluster, "appdb", directory,
                                               POSTGRES_USER="backup_user"))
    assert proc.returncode == 1, proc.stderr
    (record,) = failure_records(proc.stderr)
    error = str(record["error"])
    assert error.startswith("pg_dump failed: "), error
    assert "ERROR:  permission denied for table error_log" in error, error
    assert "Query was" not in error and "detail" not in error.lower(), error
    assert data_files(directory) == []

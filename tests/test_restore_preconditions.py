"""``restore --replace`` checks up front what would keep its final swap from finishing (a
prepared transaction in the target; a restoring role that is CREATEDB but may not rename the
target), and then fails in one line having changed nothing, instead of an internal error
after the whole restore with a full ``…__restoring_…`` copy left behind. Prepared
transactions and roles need a private cluster."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from helpers.backups import take_backup
from helpers.cli import run_backupd, server_env
from helpers.cluster import PrivateCluster, databases_on
from helpers.pg import ServerAddress, connect, psql


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivateCluster]:
    with PrivateCluster("pre-pw", server_settings={"max_prepared_transactions": "2"}) as c:
        c.start()
        psql(c.address, "postgres", "CREATE ROLE restorer LOGIN CREATEDB PASSWORD 'r-pw'")
        yield c


@pytest.fixture
def app(cluster: PrivateCluster) -> Iterator[str]:
    with connect(cluster.address) as conn:
        conn.execute("DROP DATABASE IF EXISTS app WITH (FORCE)")
        conn.execute("CREATE DATABASE app")
    psql(cluster.address, "app", "CREATE TABLE t (id int); INSERT INTO t VALUES (1), (2);")
    yield "app"
    with connect(cluster.address) as conn:
        for (name,) in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'app%'"
                                    ).fetchall():
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def assert_refused_cleanly(proc_stderr: str, cluster: PrivateCluster, before: set[str],
                           *words: str) -> None:
    assert "Traceback" not in proc_stderr and "internal error" not in proc_stderr, proc_stderr
    line = proc_stderr.strip().splitlines()[-1]  # the one human line after the JSON log
    assert line.startswith("restore failed"), line
    for word in words:
        assert word in line, line
    assert "nothing was changed" in line
    assert databases_on(cluster) == before  # no `…__restoring_…` copy left


def test_prepared_transaction_in_the_target_is_reported_first(
        cluster: PrivateCluster, app: str, tmp_path: Path) -> None:
    env = server_env(cluster.address, app, tmp_path / "b")
    backup = take_backup(env)
    before = databases_on(cluster)
    with psycopg.connect(cluster.address.conninfo(app), autocommit=True) as holder:
        holder.execute("BEGIN")
        holder.execute("INSERT INTO t VALUES (3)")
        holder.execute("PREPARE TRANSACTION 'app-pending-1'")
    try:
        proc = run_backupd(["restore", backup.name, "--replace", "--yes"], env)

        assert proc.returncode == 1, proc.stderr
        assert_refused_cleanly(proc.stderr, cluster, before, "prepared transaction",
                               "app-pending-1", "ROLLBACK PREPARED")
    finally:
        psql(cluster.address, app, "ROLLBACK PREPARED 'app-pending-1'")
    # Once it is resolved, the same restore goes through.
    proc = run_backupd(["restore", backup.name, "--replace", "--yes"], env)
    assert proc.returncode == 0, proc.stderr


def as_restorer(cluster: PrivateCluster) -> ServerAddress:
    return ServerAddress("127.0.0.1", cluster.port, "restorer", "r-pw")


def test_createdb_role_that_may_not_rename_the_target_is_reported_first(
        cluster: PrivateCluster, app: str, tmp_path: Path) -> None:
    """The target belongs to postgres; its table to restorer, so the restore itself would
    work and only the final rename could not."""
    psql(cluster.address, app, "ALTER TABLE t OWNER TO restorer")
    env = server_env(as_restorer(cluster), app, tmp_path / "b")
    backup = take_backup(env)
    before = databases_on(cluster)

    proc = run_backupd(["restore", backup.name, "--replace", "--yes"], env)

    assert proc.returncode == 1, proc.stderr
    assert_refused_cleanly(proc.stderr, cluster, before, "'restorer'", "owned by 'postgres'",
                           "GRANT postgres TO restorer")


def test_createdb_role_that_owns_the_target_replaces_it(
        cluster: PrivateCluster, app: str, tmp_path: Path) -> None:
    """What the docs promise: a CREATEDB role (not a superuser) can replace its database."""
    psql(cluster.address, "postgres", f"ALTER DATABASE {app} OWNER TO restorer")
    psql(cluster.address, app, "ALTER TABLE t OWNER TO restorer")
    env = server_env(as_restorer(cluster), app, tmp_path / "b")
    backup = take_backup(env)
    psql(cluster.address, app, "DELETE FROM t")

    proc = run_backupd(["restore", backup.name, "--replace", "--yes"], env)

    assert proc.returncode == 0, proc.stderr
    assert psql(cluster.address, app, "SELECT count(*) FROM t").strip() == "2"
    with connect(cluster.address) as conn:
        row = conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s",
                           (app,)).fetchone()
    assert row is not None and row[0] == "restorer"

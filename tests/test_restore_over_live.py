"""Restoring onto a server that is in use, on private clusters (roles change): the
documented "over the live database" restore touches that one database and never the roles,
and a whole-cluster restore checks every target before it changes anything."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.backups import back_up
from helpers.cli import one_error_line, run_backupd, server_env
from helpers.cluster import PrivateCluster
from helpers.pg import ServerAddress, connect, psql

pytestmark = pytest.mark.slow

ClusterFactory = Callable[..., PrivateCluster]


def role_names(server: ServerAddress) -> set[str]:
    with connect(server) as conn:
        return {str(r[0]) for r in conn.execute(
            "SELECT rolname FROM pg_roles WHERE rolname !~ '^pg_'")}


def test_replace_over_the_live_database_does_not_bring_back_a_dropped_role(
        private_cluster: ClusterFactory, tmp_path: Path) -> None:
    live = private_cluster("live pw").address
    psql(live, "postgres", """
        CREATE ROLE leaver LOGIN PASSWORD 'old secret';
        CREATE DATABASE appdb;""")
    psql(live, "appdb", "CREATE TABLE t (x int); INSERT INTO t SELECT generate_series(1, 5);")
    directory = tmp_path / "backups"
    back_up(live, "appdb", directory)
    # The admin offboards the login; then the database needs its backup back.
    psql(live, "postgres", "DROP ROLE leaver")
    psql(live, "appdb", "DELETE FROM t")

    proc = run_backupd(["restore", "--latest", "--replace", "--yes"],
                       server_env(live, "appdb", directory), timeout=300)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "leaver" not in role_names(live)
    with connect(live, "appdb") as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (5,)


def server_picture(server: ServerAddress) -> tuple[set[str], set[str]]:
    """Its roles and its databases."""
    with connect(server) as conn:
        databases = {str(r[0]) for r in conn.execute("SELECT datname FROM pg_database")}
    return role_names(server), databases


def test_a_database_holding_tables_refuses_the_whole_restore_before_any_change(
        private_cluster: ClusterFactory, tmp_path: Path) -> None:
    live = private_cluster("live pw").address
    psql(live, "postgres", "CREATE ROLE app LOGIN; CREATE DATABASE appdb OWNER app; "
                           "CREATE DATABASE otherdb;")
    psql(live, "appdb", "SET ROLE app; CREATE TABLE a (x int); INSERT INTO a VALUES (1);")
    psql(live, "otherdb", "CREATE TABLE b (x int); INSERT INTO b VALUES (2);")
    directory = tmp_path / "backups"
    back_up(live, "appdb,otherdb", directory)
    # appdb and its owner are gone; otherdb is still there, holding its table.
    psql(live, "postgres", "DROP DATABASE appdb; DROP ROLE app;")
    before = server_picture(live)

    proc = run_backupd(["restore", "--latest", "--yes"],
                       server_env(live, "appdb,otherdb", directory), timeout=300)

    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = one_error_line(proc.stderr)
    assert "--replace" in line and "otherdb" in line and "appdb" not in line
    assert "--target-db" not in line
    assert server_picture(live) == before

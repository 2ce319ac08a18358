"""Tablespaces on private clusters: their directories, and where a database and its tables
and indexes are, read straight from the catalogs (not through backupd's own code); the
source cluster the restore and drill tests back up (tablespace_source), and what they
expect of it; the ``source`` and ``target`` fixtures of those tests (registered for every
test by tests/conftest.py; a module's own ``source`` or ``target`` overrides them)."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from .cluster import AS_ROOT, SERVER_OS_USER, PrivateCluster
from .pg import ServerAddress, connect, psql


def tablespace_directory(cluster: PrivateCluster, name: str) -> Path:
    """A new, empty directory for a tablespace of ``cluster``, owned by the server's OS
    user, inside the cluster's own temporary directory (so it goes with the cluster)."""
    if cluster.root is None:
        raise RuntimeError("tablespace_directory: the cluster is not set up")
    directory = cluster.root / name
    directory.mkdir()
    if AS_ROOT:
        shutil.chown(directory, SERVER_OS_USER, SERVER_OS_USER)
    return directory


def make_tablespace(cluster: PrivateCluster, name: str) -> Path:
    """CREATE TABLESPACE ``name`` on ``cluster``, in a directory of its own."""
    directory = tablespace_directory(cluster, f"ts_{name}")
    with connect(cluster.address) as conn:
        conn.execute(f"CREATE TABLESPACE {name} LOCATION '{directory}'")
    return directory


def tablespaces(server: ServerAddress) -> set[str]:
    with connect(server) as conn:
        return {str(r[0]) for r in conn.execute(
            "SELECT spcname FROM pg_tablespace WHERE spcname NOT IN ('pg_default', 'pg_global')")}


def database_tablespace(server: ServerAddress, database: str) -> str | None:
    with connect(server) as conn:
        row = conn.execute("SELECT t.spcname FROM pg_database d JOIN pg_tablespace t "
                           "ON t.oid = d.dattablespace WHERE d.datname = %s",
                           (database,)).fetchone()
    return None if row is None else str(row[0])


def relation_tablespaces(server: ServerAddress, database: str) -> dict[str, str]:
    """Each table's and index's tablespace (the database's default by its name), by name."""
    with connect(server, database) as conn:
        rows = conn.execute(
            "SELECT c.relname, t.spcname FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public' "
            "JOIN pg_database d ON d.datname = current_database() "
            "JOIN pg_tablespace t ON t.oid = CASE c.reltablespace WHEN 0 THEN d.dattablespace "
            "ELSE c.reltablespace END WHERE c.relkind IN ('r', 'i', 'm', 'p', 'I')").fetchall()
    return {str(name): str(space) for name, space in rows}


def leftover_databases(server: ServerAddress) -> list[str]:
    """Databases a restore may leave behind half made (its scratch databases)."""
    with connect(server) as conn:
        return [str(r[0]) for r in conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE '%\\_\\_restoring\\_%'")]


SOURCE_DATABASES = "appdb,plaindb"
# Where everything is on the source: appdb's own tables in its default tablespace space_db;
# a table and an index (post-data, after all the data) in space_tbl.
PLACED = {"in_default": "space_db", "in_default_pkey": "space_db",
          "elsewhere": "space_tbl", "in_default_note": "space_tbl"}
FALLBACK = "was restored without some of its tablespaces"
# A restoring role that is not a superuser: CREATEDB, and CREATE on no tablespace unless granted.
RESTORER = ServerAddress("127.0.0.1", 0, "restorer", "r-pw")
GRANTDB_PLACED = {"in_db": "space_db", "in_pg_default": "pg_default", "in_tbl": "space_tbl"}


@contextmanager
def tablespace_source() -> Iterator[PrivateCluster]:
    """A running cluster with tablespaces space_db and space_tbl: appdb (owned by app) in
    space_db with objects in both (PLACED), plaindb in pg_default, and grantdb, owned by the
    RESTORER role, with a table in each of the three places (GRANTDB_PLACED)."""
    with PrivateCluster("source-pw") as cluster:
        cluster.start()
        make_tablespace(cluster, "space_db")
        make_tablespace(cluster, "space_tbl")
        psql(cluster.address, "postgres", """
            CREATE ROLE app LOGIN;
            GRANT CREATE ON TABLESPACE space_tbl TO app;
            CREATE DATABASE appdb OWNER app TABLESPACE space_db;
            CREATE DATABASE plaindb;""")
        psql(cluster.address, "appdb", """
            SET ROLE app;
            CREATE TABLE in_default (id int PRIMARY KEY, note text);
            INSERT INTO in_default SELECT g, 'note ' || g FROM generate_series(1, 100) g;
            CREATE INDEX in_default_note ON in_default (note) TABLESPACE space_tbl;
            CREATE TABLE elsewhere (y int) TABLESPACE space_tbl;
            INSERT INTO elsewhere VALUES (1), (2), (3);""")
        psql(cluster.address, "plaindb", "CREATE TABLE t (x int); INSERT INTO t VALUES (7);")
        assert relation_tablespaces(cluster.address, "appdb") == PLACED
        # A database its restoring role owns, with a table in each of the three places:
        # pg_dump puts in_pg_default there by `SET default_tablespace = pg_default;`.
        psql(cluster.address, "postgres", f"""
            CREATE ROLE {RESTORER.user} LOGIN CREATEDB PASSWORD '{RESTORER.password}';
            CREATE DATABASE grantdb OWNER {RESTORER.user} TABLESPACE space_db;""")
        psql(cluster.address, "grantdb", f"""
            CREATE TABLE in_db (x int);
            CREATE TABLE in_pg_default (x int) TABLESPACE pg_default;
            CREATE TABLE in_tbl (x int) TABLESPACE space_tbl;
            INSERT INTO in_db VALUES (1); INSERT INTO in_pg_default VALUES (2);
            INSERT INTO in_tbl VALUES (3);
            ALTER TABLE in_db OWNER TO {RESTORER.user};
            ALTER TABLE in_pg_default OWNER TO {RESTORER.user};
            ALTER TABLE in_tbl OWNER TO {RESTORER.user};""")
        assert relation_tablespaces(cluster.address, "grantdb") == GRANTDB_PLACED
        yield cluster


def fallbacks(result: dict[str, Any]) -> list[str]:
    """The tablespace fallback warnings of a job's result (its "job finished" event)."""
    return [w for w in result["warnings"] if FALLBACK in w]


def make_restorer(target: PrivateCluster) -> None:
    psql(target.address, "postgres",
         f"CREATE ROLE {RESTORER.user} LOGIN CREATEDB PASSWORD '{RESTORER.password}'")


def as_restorer(target: PrivateCluster) -> ServerAddress:
    return dataclasses.replace(RESTORER, port=target.port)


@pytest.fixture(scope="module")
def source() -> Iterator[PrivateCluster]:
    """The tablespace_source cluster, made once per test module that asks for it."""
    with tablespace_source() as cluster:
        yield cluster


@pytest.fixture
def target(private_cluster: Callable[..., PrivateCluster]) -> PrivateCluster:
    """A fresh cluster with none of the source's tablespaces or roles, to restore onto."""
    return private_cluster("target-pw")

"""Tablespaces on private clusters: their directories, and where a database and its tables
and indexes are, read straight from the catalogs (not through backupd's own code)."""

from __future__ import annotations

import shutil
from pathlib import Path

from .cluster import AS_ROOT, SERVER_OS_USER, PrivateCluster
from .pg import ServerAddress, connect


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

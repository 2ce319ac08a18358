"""What an administrator puts into template1 so that every new database has it (an extension,
a schema, a function), and how the tests read it back from a server's database."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from backupd.postgres.user_objects import UserObjects, read_user_objects

from .cli import run_backupd, server_env
from .cluster import PrivateCluster
from .pg import ServerAddress, connect, psql

# Objects template0 lacks: a whole-system backup must carry them, a new server get them back.
TEMPLATE1_OBJECTS = """
    CREATE EXTENSION citext;
    CREATE SCHEMA util;
    CREATE FUNCTION util.shout(t text) RETURNS text LANGUAGE sql IMMUTABLE
        AS 'SELECT upper(t)';
"""

# What undoes TEMPLATE1_OBJECTS: template1 holding nothing of its own again.
EMPTY_TEMPLATE1 = "DROP SCHEMA util CASCADE; DROP EXTENSION citext;"

# A subscription made without a publisher (connect = false): an object of template1's own.
SUBSCRIPTION = """
    CREATE SUBSCRIPTION feed_sub CONNECTION 'host=127.0.0.1 port=1 dbname=nowhere'
        PUBLICATION feed_pub WITH (connect = false, enabled = false, create_slot = false,
                                   slot_name = NONE);
"""


def put_into_template1(server: ServerAddress, sql: str = TEMPLATE1_OBJECTS) -> None:
    psql(server, "template1", sql)


@contextmanager
def cluster_holding(password: str, sql: str = TEMPLATE1_OBJECTS) -> Iterator[PrivateCluster]:
    """A started private cluster whose template1 holds ``sql``."""
    with PrivateCluster(password) as cluster:
        cluster.start()
        put_into_template1(cluster.address, sql)
        yield cluster


def first_run_with_the_globals_off(server: ServerAddress, directory: Path,
                                   **extra: str) -> dict[str, str]:
    """TEMPLATE1_OBJECTS put into ``server``'s template1, then a first run of '*' into
    ``directory`` with DB_BACKUP_GLOBALS=off (no globals manifest); it must succeed. Its
    settings (``extra`` added), for the runs that follow."""
    put_into_template1(server)
    env = server_env(server, "*", directory, HEALTH_PORT="0", DB_BACKUP_GLOBALS="off", **extra)
    assert run_backupd(["backup", "--no-prune"], env).returncode == 0
    return env


def template_objects(server: ServerAddress, database: str = "template1") -> list[str]:
    """The extensions, schemas and functions of ``database`` that template0 lacks, by name."""
    with connect(server, database) as conn:
        rows = conn.execute(
            "SELECT 'extension ' || extname FROM pg_extension WHERE oid >= 16384 "
            "UNION ALL SELECT 'schema ' || nspname FROM pg_namespace WHERE oid >= 16384 "
            "AND nspname NOT LIKE 'pg\\_%' "
            "UNION ALL SELECT 'function ' || p.oid::regprocedure::text FROM pg_proc p "
            "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'util' "
            "ORDER BY 1").fetchall()
    return [str(row[0]) for row in rows]


def a_new_database_gets(server: ServerAddress) -> list[str]:
    """What a database created now (CREATE DATABASE, from template1) holds of its own."""
    with connect(server) as conn:
        conn.execute("CREATE DATABASE backupd_test_new_from_template1")
    try:
        return template_objects(server, "backupd_test_new_from_template1")
    finally:
        with connect(server) as conn:
                conn.execute("DROP DATABASE backupd_test_new_from_template1")


def template1_flags(server: ServerAddress) -> tuple[bool, bool]:
    """template1's (datistemplate, datallowconn)."""
    with connect(server) as conn:
        row = conn.execute("SELECT datistemplate, datallowconn FROM pg_database "
                           "WHERE datname = 'template1'").fetchone()
    assert row is not None
    return bool(row[0]), bool(row[1])


def subscriptions_in(server: ServerAddress) -> list[tuple[str, str]]:
    """Every subscription of the server, with the database it is in."""
    with connect(server) as conn:
        rows = conn.execute("SELECT s.subname, d.datname FROM pg_subscription s "
                            "JOIN pg_database d ON d.oid = s.subdbid ORDER BY 1").fetchall()
    return [(str(row[0]), str(row[1])) for row in rows]


def objects_in(server: ServerAddress, database: str = "template1") -> UserObjects:
    """What backupd finds ``database`` holds of its own."""
    with connect(server, database) as conn:
        return read_user_objects(conn)


def restore_onto_new(private_cluster: Callable[..., PrivateCluster], backups: Path
                     ) -> tuple[PrivateCluster, subprocess.CompletedProcess[str], str]:
    """A new private cluster (the new server of a disaster recovery), the whole-system
    ``restore_latest`` of ``backups`` onto it, and all it said (stdout and stderr)."""
    target = private_cluster("target-pw")
    proc = restore_latest(target.address, backups)
    return target, proc, proc.stdout + proc.stderr


def restore_latest(server: ServerAddress, backups: Path, *options: str,
                   **extra: str) -> subprocess.CompletedProcess[str]:
    """``backupd restore --latest --yes`` (with ``options``, e.g. ``--database template1``) of
    the whole-system backups in ``backups`` onto ``server``; it must succeed."""
    proc = run_backupd(["restore", "--latest", *options, "--yes"],
                       server_env(server, "*", backups, **extra), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc

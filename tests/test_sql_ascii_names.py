"""Names that are not UTF-8 on a SQL_ASCII cluster: there a name is bytes in no declared
encoding (a Latin-1 ``café`` is ``caf\\xe9``), and backupd, which reads names as text
(backupd.postgres.connection.as_text), cannot read it. pg_dump can still dump such a
database, so the backup is taken (its row counts left out, said in one warning); a step
that needs the name -- the drill's comparison, the drill server's inventory -- fails in
one line naming the object, its bytes escaped, and saying to rename it (R17)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.backups import back_up, backup_files, read_manifest, take_backup
from helpers.cli import drill_server_env, not_utf8_failure, run_backupd, server_env
from helpers.cluster import PrivateCluster
from helpers.pg import connect, psql
from helpers.tablespaces import tablespace_directory

from backupd.commands.drill_server import CLUSTER_MARK, STATE_DATABASE, STATE_MARK

pytestmark = pytest.mark.slow

LATIN1_TABLE = b'"caf\xe9"'  # what a Latin-1 client made of "café"
SHOWN_TABLE = 'public."caf\\xe9"'  # as backupd names it: the byte escaped
LATIN1_DATABASE = b'"d\xe9p\xf4t"'
SHOWN_NAME = '"d\\xe9p\\xf4t"'  # its bytes escaped once (not_text.shown)
SHOWN_DATABASE = f"database {SHOWN_NAME}"
# Names in UTF-8 that is not ASCII, which a SQL_ASCII session keeps as they are but psycopg
# cannot send on one ('ascii' codec): backupd sends them as text (as_text).
ROLE, TABLESPACE, SUBSCRIPTION = "rôle", "espacé", "abonné"


def run_bytes(cluster: PrivateCluster, database: str, statement: bytes) -> None:
    """``statement`` sent as it is: on a SQL_ASCII session the server takes any bytes."""
    with connect(cluster.address, database) as conn:
        conn.autocommit = True
        conn.execute(statement)


@pytest.fixture(scope="module")
def live() -> Iterator[PrivateCluster]:
    with PrivateCluster("live-pw", encoding="SQL_ASCII") as cluster:
        cluster.start()
        psql(cluster.address, "postgres", "CREATE DATABASE appdb; CREATE DATABASE plain;")
        psql(cluster.address, "appdb", "CREATE TABLE notes (id int); INSERT INTO notes "
                                       "VALUES (1);")
        run_bytes(cluster, "appdb", b"CREATE TABLE " + LATIN1_TABLE + b" (x int); "
                                    b"INSERT INTO " + LATIN1_TABLE + b" VALUES (1)")
        psql(cluster.address, "plain", "CREATE TABLE t (x int); INSERT INTO t VALUES (7);")
        run_bytes(cluster, "postgres", b"CREATE DATABASE " + LATIN1_DATABASE)
        psql(cluster.address, "postgres", "CREATE DATABASE legacy")
        run_bytes(cluster, "legacy", b'CREATE SCHEMA "sch\xe9ma"; '
                                     b'CREATE TABLE "sch\xe9ma".t (x int)')
        yield cluster


def test_a_backup_is_taken_and_warns_naming_the_table(live: PrivateCluster,
                                                      tmp_path: Path) -> None:
    proc = run_backupd(["backup", "--no-prune"], server_env(
        live.address, "appdb", tmp_path, BACKUPD_LOG_FORMAT="console"), timeout=300)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    warnings = [line for line in (proc.stdout + proc.stderr).splitlines()
                if "could not count the tables' rows" in line]
    assert warnings, proc.stdout + proc.stderr
    assert f"table {SHOWN_TABLE} in database appdb" in warnings[0], warnings[0]
    assert "rename it" in warnings[0], warnings[0]


def test_the_manifest_records_the_server_version_as_text(live: PrivateCluster,
                                                        tmp_path: Path) -> None:
    """A SQL_ASCII session hands text columns back as bytes: the version must still be
    recorded as the server says it, not as the bytes' repr (b'15...')."""
    data = take_backup(server_env(live.address, "plain", tmp_path))

    said = psql(live.address, "plain", "SHOW server_version").strip()
    assert read_manifest(data)["server_version"] == said


def test_a_schema_is_named_in_its_database(live: PrivateCluster, tmp_path: Path) -> None:
    proc = run_backupd(["backup", "--no-prune"], server_env(
        live.address, "legacy", tmp_path, BACKUPD_LOG_FORMAT="console"), timeout=300)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'schema "sch\\xe9ma" in database legacy has a name that is not UTF-8' in (
        proc.stdout + proc.stderr), proc.stdout + proc.stderr


def test_a_backup_of_every_database_takes_the_others_and_fails_naming_that_one(
        live: PrivateCluster, tmp_path: Path) -> None:
    """POSTGRES_DB='*': a database whose name is not UTF-8 cannot be named in backupd's
    settings, files or manifests; the run backs up every other database and fails naming it,
    as it does a listed database the server lacks."""
    proc = run_backupd(["backup", "--no-prune"], server_env(
        live.address, "*", tmp_path, BACKUPD_LOG_FORMAT="console"), timeout=300)

    said = proc.stdout + proc.stderr
    assert proc.returncode == 1, said
    assert "internal error" not in said and "Traceback" not in said, said
    taken = {name.split("_2")[0] for name in backup_files(tmp_path)}
    assert taken == {"appdb", "legacy", "plain", "postgres", "globals"}, said
    [line] = [line for line in said.splitlines() if SHOWN_DATABASE in line]
    assert "failed" in line and "not UTF-8" in line and "rename it" in line, line


def test_the_summary_of_a_run_of_every_database_shows_that_name_escaped_once(
        live: PrivateCluster, tmp_path: Path) -> None:
    """The run's summary lines and its failure name it as the failure of its backup does,
    once escaped, not quoted again by repr (``'"d\\\\xe9p\\\\xf4t"'``)."""
    proc = run_backupd(["backup", "--no-prune"], server_env(
        live.address, "*", tmp_path, BACKUPD_LOG_FORMAT="console"), timeout=300)

    said = proc.stdout + proc.stderr
    assert proc.returncode == 1, said
    assert f"  {SHOWN_NAME}: failed: {SHOWN_DATABASE} on the server" in said, said
    assert f"1 of 5 databases failed: {SHOWN_NAME}" in said, said
    assert "\\\\x" not in said, said  # no byte escaped twice


def test_a_drill_of_every_database_drills_the_others_and_warns_naming_that_one(
        live: PrivateCluster, tmp_path: Path) -> None:
    env = server_env(live.address, "*", tmp_path, BACKUPD_LOG_FORMAT="console",
                     DB_BACKUP_EXCLUDE="appdb,legacy")  # their drills fail (Latin-1 names)
    assert run_backupd(["backup", "--no-prune"], env, timeout=300).returncode == 1  # above

    proc = run_backupd(["drill"], env, timeout=300)

    said = proc.stdout + proc.stderr
    assert proc.returncode == 0, said
    [line] = [line for line in said.splitlines() if SHOWN_DATABASE in line]
    assert "warning" in line and "rename it" in line, line
    assert "Restore drills of 2 databases passed" in said, said
    # Each drill records itself in its backup's manifest, with the rows the backup counted.
    drilled = {manifest["database"]: manifest for manifest in (
        read_manifest(tmp_path / name) for name in backup_files(tmp_path)
        if not name.startswith("globals_"))}
    assert drilled.keys() == {"plain", "postgres"}, said
    assert all(manifest["drill_ok"] is True for manifest in drilled.values()), drilled
    assert drilled["plain"]["table_rows"] == {"public.t": 1}, drilled["plain"]
    for manifest in drilled.values():
        assert f"Restore drill of {manifest['name']} passed" in said, said


def test_a_drill_fails_in_one_line_naming_the_table(live: PrivateCluster,
                                                    tmp_path: Path) -> None:
    env = server_env(live.address, "appdb", tmp_path, BACKUPD_LOG_FORMAT="console")
    take_backup(env)

    proc = run_backupd(["drill"], env, timeout=300)

    line = not_utf8_failure(proc)
    assert f"table {SHOWN_TABLE} in database appdb" in line, line


def test_a_drill_server_holding_a_database_named_in_latin1_fails_naming_it(
        live: PrivateCluster, tmp_path: Path) -> None:
    back_up(live.address, "plain,postgres", tmp_path)
    with PrivateCluster("drill-pw", encoding="SQL_ASCII") as drill:
        drill.start()
        run_bytes(drill, "postgres", b"CREATE DATABASE " + LATIN1_DATABASE)
        proc = run_backupd(["drill"], drill_server_env(
            live.address, "plain,postgres", tmp_path, drill.address,
            BACKUPD_LOG_FORMAT="console"), timeout=300)

    line = not_utf8_failure(proc)
    assert SHOWN_DATABASE in line, line


def server_names(cluster: PrivateCluster) -> tuple[set[str], set[str], set[str]]:
    """The databases, roles (pg_* aside) and tablespaces on ``cluster``, read as UTF-8."""
    with connect(cluster.address) as conn:
        conn.execute("SET client_encoding = 'UTF8'")
        databases, roles, tablespaces = ({str(row[0]) for row in conn.execute(query)} for query in (
            "SELECT datname FROM pg_database",
            "SELECT rolname FROM pg_roles WHERE rolname NOT LIKE 'pg\\_%'",
            "SELECT spcname FROM pg_tablespace"))
    return databases, roles, tablespaces


def test_a_killed_drills_leftovers_named_in_utf8_are_removed_from_a_sql_ascii_drill_server(
        live: PrivateCluster, tmp_path: Path) -> None:
    """A role, a tablespace and a restored copy holding a subscription, named in UTF-8 that
    is not ASCII: the drill server's cleanup sends their names as text, where psycopg
    could not send them on its SQL_ASCII session (UnicodeEncodeError: an internal error)."""
    back_up(live.address, "plain", tmp_path)
    before = ('{"roles": ["postgres"], "tablespaces": ["pg_default", "pg_global"], '
              '"databases": ["postgres", "template0", "template1"]}')
    with PrivateCluster("drill-pw", encoding="SQL_ASCII") as drill:
        drill.start()
        empty = server_names(drill)
        directory = tablespace_directory(drill, "ts_leftover")
        for statement in (
                f"CREATE DATABASE {STATE_DATABASE}",
                f"COMMENT ON DATABASE {STATE_DATABASE} IS '{STATE_MARK}{before}'",
                f'CREATE ROLE "{ROLE}"',
                f"CREATE TABLESPACE \"{TABLESPACE}\" LOCATION '{directory}'",
                "CREATE DATABASE copied",
                f"COMMENT ON DATABASE copied IS '{CLUSTER_MARK}; backupd drops it after the "
                "drill'"):
            run_bytes(drill, "postgres", statement.encode())
        run_bytes(drill, "copied", f'CREATE SUBSCRIPTION "{SUBSCRIPTION}" CONNECTION '
                                   "'dbname=nowhere' PUBLICATION p WITH (connect = false)"
                                   .encode())
        assert server_names(drill) != empty

        proc = run_backupd(["drill"], drill_server_env(
            live.address, "plain", tmp_path, drill.address, BACKUPD_LOG_FORMAT="console"),
            timeout=300)

        said = proc.stdout + proc.stderr
        assert proc.returncode == 0, said
        assert "removed what an interrupted drill left" in said, said
        assert server_names(drill) == empty, said

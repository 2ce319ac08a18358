"""Tablespaces across a restore, against real clusters: a database whose default tablespace
is one of its own (CREATE DATABASE ... TABLESPACE), a table and an index in another, backed
up and restored onto a second, fresh cluster that has those tablespaces or does not (its
disks laid out differently, as after a disaster). Drills: test_drill_tablespaces.

The choice (docs/backup-and-recovery.md, "Tablespaces"): the backup records the database's
tablespace; the restore creates the database there when the server has it, and otherwise
in the default tablespace, with one warning naming the tablespace and what to run. Objects
in a tablespace the server lacks go to the database's default tablespace, in the same
warning. A restore never fails, nor leaves a database behind, for a missing tablespace."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest
from helpers.backups import (
    back_up,
    only_backup,
    read_manifest,
    refresh_manifest,
    sql_of,
    write_gzip_sql,
    write_manifest,
)
from helpers.cli import run_backupd, server_env
from helpers.cluster import PrivateCluster
from helpers.logs import jobs_finished
from helpers.pg import ServerAddress, connect, psql
from helpers.tablespaces import (
    FALLBACK,
    GRANTDB_PLACED,
    PLACED,
    RESTORER,
    SOURCE_DATABASES,
    as_restorer,
    database_tablespace,
    fallbacks,
    leftover_databases,
    make_restorer,
    make_tablespace,
    relation_tablespaces,
    tablespace_directory,
)

from backupd.postgres.tablespaces import object_tablespaces, server_tablespaces

pytestmark = pytest.mark.slow


def restore(target: PrivateCluster, directory: Path) -> dict[str, Any]:
    """The whole-cluster restore onto ``target``; its result (the "job finished" event)."""
    proc = run_backupd(["restore", "--latest", "--yes"],
                       server_env(target.address, SOURCE_DATABASES, directory), timeout=300)
    [result] = jobs_finished(proc.stderr, "restore")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return dict(result)


def assert_data_came_back(server: ServerAddress) -> None:
    with connect(server, "appdb") as conn:
        assert conn.execute("SELECT count(*), sum(id) FROM in_default").fetchone() == (100, 5050)
        assert conn.execute("SELECT sum(y) FROM elsewhere").fetchone() == (6,)
        assert conn.execute("SELECT pg_get_userbyid(relowner) FROM pg_class "
                            "WHERE relname = 'elsewhere'").fetchone() == ("app",)
    with connect(server, "plaindb") as conn:
        assert conn.execute("SELECT x FROM t").fetchone() == (7,)


def test_onto_a_server_without_the_tablespaces_everything_restores_into_the_default_one(
        source: PrivateCluster, target: PrivateCluster, tmp_path: Path) -> None:
    back_up(source.address, SOURCE_DATABASES, tmp_path / "b")

    result = restore(target, tmp_path / "b")

    assert_data_came_back(target.address)
    assert database_tablespace(target.address, "appdb") == "pg_default"
    assert set(relation_tablespaces(target.address, "appdb").values()) == {"pg_default"}
    # One warning for appdb, naming both tablespaces and what to run; none for plaindb.
    [warning] = fallbacks(result)
    assert warning.startswith(f"database 'appdb' {FALLBACK}")
    assert "instead of 'space_db'" in warning and "'space_tbl'" in warning
    assert 'ALTER DATABASE "appdb" SET TABLESPACE "space_db"' in warning
    assert "CREATE TABLESPACE" in warning
    # The globals say, for each tablespace, that it was not created and where things went.
    spaces = [w for w in result["warnings"] if w.startswith("globals: tablespace")]
    assert len(spaces) == 2 and all("default tablespace" in w for w in spaces), spaces
    assert leftover_databases(target.address) == []


def test_onto_a_server_with_the_tablespaces_the_database_and_objects_go_into_them(
        source: PrivateCluster, target: PrivateCluster, tmp_path: Path) -> None:
    back_up(source.address, SOURCE_DATABASES, tmp_path / "b")
    # The new server's administrator made them (elsewhere on its disk) before the restore.
    make_tablespace(target, "space_db")
    make_tablespace(target, "space_tbl")

    result = restore(target, tmp_path / "b")

    assert_data_came_back(target.address)
    assert database_tablespace(target.address, "appdb") == "space_db"
    assert relation_tablespaces(target.address, "appdb") == PLACED
    assert database_tablespace(target.address, "plaindb") == "pg_default"
    assert fallbacks(result) == []


def test_the_backup_records_the_tablespaces_and_an_older_manifest_still_restores(
        source: PrivateCluster, target: PrivateCluster, tmp_path: Path) -> None:
    directory = tmp_path / "b"
    back_up(source.address, SOURCE_DATABASES, directory)
    [dump] = directory.glob("appdb_*.sql.gz")
    manifest = read_manifest(dump)
    assert manifest["database_properties"]["tablespace"] == "space_db"
    assert manifest["object_tablespaces"] == ["space_tbl"]
    # A manifest written before either was recorded.
    del manifest["database_properties"]["tablespace"], manifest["object_tablespaces"]
    write_manifest(dump, manifest)
    make_tablespace(target, "space_tbl")

    result = restore(target, directory)

    assert_data_came_back(target.address)
    # Where the database was is not known: the server's default, and nothing to warn about.
    assert database_tablespace(target.address, "appdb") == "pg_default"
    assert relation_tablespaces(target.address, "appdb")["elsewhere"] == "space_tbl"
    assert fallbacks(result) == []


def test_a_custom_format_backup_restores_without_the_tablespaces_too(
        source: PrivateCluster, target: PrivateCluster, tmp_path: Path) -> None:
    back_up(source.address, SOURCE_DATABASES, tmp_path / "b", DB_BACKUP_FORMAT="custom")

    result = restore(target, tmp_path / "b")

    assert_data_came_back(target.address)
    assert database_tablespace(target.address, "appdb") == "pg_default"
    assert set(relation_tablespaces(target.address, "appdb").values()) == {"pg_default"}
    [warning] = fallbacks(result)
    assert "'space_db'" in warning and "'space_tbl'" in warning
    assert "--no-tablespaces" in warning


def back_up_grantdb(source: PrivateCluster, directory: Path, backup_format: str) -> Path:
    proc = run_backupd(["backup"], server_env(source.address, "grantdb", directory,
                                              DB_BACKUP_FORMAT=backup_format), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return only_backup(directory)


def restore_as_a_restorer_of_space_db(
        target: PrivateCluster, dump: Path) -> subprocess.CompletedProcess[str]:
    """grantdb's ``dump`` restored onto ``target``, which has both tablespaces, as RESTORER,
    who may create in space_db but neither in pg_default nor in space_tbl."""
    make_tablespace(target, "space_db")
    make_tablespace(target, "space_tbl")
    make_restorer(target)
    psql(target.address, "postgres", f"GRANT CREATE ON TABLESPACE space_db TO {RESTORER.user}")
    return run_backupd(["restore", dump.name, "--yes"],
                       server_env(as_restorer(target), "grantdb", dump.parent), timeout=300)


def failure_naming_the_grant(proc: subprocess.CompletedProcess[str]) -> str:
    """The error of a restore that failed (exit code 1), which must end naming the GRANT for
    the one tablespace (pg_default or space_tbl) it says pg_restore stopped at."""
    assert proc.returncode == 1, proc.stdout + proc.stderr
    [result] = jobs_finished(proc.stderr, "restore")
    error = str(result["error"])
    [name] = [n for n in ("pg_default", "space_tbl") if f"tablespace {n}" in error]
    assert error.endswith(f'GRANT CREATE ON TABLESPACE "{name}" TO "restorer", or restore as '
                          "a role that may create in it"), error
    return error


@pytest.mark.parametrize("backup_format", ["plain", "custom"])
def test_a_role_without_create_on_a_tablespace_restores_into_the_databases_own(
        source: PrivateCluster, target: PrivateCluster, tmp_path: Path,
        backup_format: str) -> None:
    """The restoring role may create in space_db (the database goes there) but not in
    pg_default nor in space_tbl, which the server has: their tables go to space_db, and the
    warning gives the GRANT, not a CREATE TABLESPACE."""
    dump = back_up_grantdb(source, tmp_path / "b", backup_format)

    proc = restore_as_a_restorer_of_space_db(target, dump)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    with connect(target.address, "grantdb") as conn:
        assert conn.execute("SELECT (SELECT x FROM in_db), (SELECT x FROM in_pg_default), "
                            "(SELECT x FROM in_tbl)").fetchone() == (1, 2, 3)
    assert database_tablespace(target.address, "grantdb") == "space_db"
    assert set(relation_tablespaces(target.address, "grantdb").values()) == {"space_db"}
    [result] = jobs_finished(proc.stderr, "restore")
    [warning] = [w for w in result["warnings"] if "grantdb" in w]
    assert "instead of" not in warning  # the database itself is where it was
    for name in ("pg_default", "space_tbl"):
        assert f'GRANT CREATE ON TABLESPACE "{name}" TO "restorer"' in warning, warning
    assert "CREATE TABLESPACE name LOCATION" not in warning  # none is missing
    assert leftover_databases(target.address) == []


@pytest.mark.parametrize("backup_format", ["custom", "directory"])
def test_an_older_archive_a_role_may_not_create_in_fails_naming_the_grant(
        source: PrivateCluster, target: PrivateCluster, tmp_path: Path,
        backup_format: str) -> None:
    """A manifest from before object tablespaces were recorded: the restore cannot know to
    use --no-tablespaces, and pg_restore stops at the first object in a tablespace the role
    may not create in. The failure's last line names that tablespace and the way out."""
    dump = back_up_grantdb(source, tmp_path / "b", backup_format)
    manifest = read_manifest(dump)
    del manifest["object_tablespaces"]
    write_manifest(dump, manifest)

    proc = restore_as_a_restorer_of_space_db(target, dump)

    error = failure_naming_the_grant(proc)
    assert "\n" not in error, error
    assert leftover_databases(target.address) == []


@pytest.mark.parametrize("backup_format", ["custom", "directory"])
def test_a_newer_archive_that_misses_a_tablespace_is_not_called_older(
        source: PrivateCluster, target: PrivateCluster, tmp_path: Path,
        backup_format: str) -> None:
    """A manifest that records its objects' tablespaces but not one the dump has objects
    in (the list is read just before pg_dump starts, so a table moved there meanwhile is
    missing from it): the restore fails as an older one does, with the GRANT, but is not
    said to be a backup from before object tablespaces were recorded."""
    dump = back_up_grantdb(source, tmp_path / "b", backup_format)
    manifest = read_manifest(dump)
    manifest["object_tablespaces"] = []
    write_manifest(dump, manifest)

    proc = restore_as_a_restorer_of_space_db(target, dump)

    error = failure_naming_the_grant(proc)
    assert "before they were recorded" not in error, error
    assert "its manifest does not list it" in error, error
    assert leftover_databases(target.address) == []


def test_no_tablespaces_gives_the_fix_up_for_every_tablespace_its_objects_were_in(
        source: PrivateCluster, target: PrivateCluster, tmp_path: Path) -> None:
    """The server lacks only space_tbl, but pg_restore --no-tablespaces moves every object:
    the one in pg_default too, and the warning says how to put that one back as well."""
    dump = back_up_grantdb(source, tmp_path / "b", "custom")
    make_tablespace(target, "space_db")
    make_restorer(target)  # the owner

    proc = run_backupd(["restore", dump.name, "--yes"],
                       server_env(target.address, "grantdb", tmp_path / "b"), timeout=300)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert set(relation_tablespaces(target.address, "grantdb").values()) == {"space_db"}
    [result] = jobs_finished(proc.stderr, "restore")
    [warning] = fallbacks(dict(result))
    assert "--no-tablespaces" in warning
    for name in ("pg_default", "space_tbl"):
        assert (f'SET TABLESPACE "{name}" for each object the backup lists with '
                f"'Tablespace: {name}'") in warning, warning


def test_out_of_its_tablespace_the_warning_says_to_move_its_pg_default_objects_back(
        source: PrivateCluster, target: PrivateCluster, tmp_path: Path) -> None:
    """grantdb is in space_db, in_pg_default explicitly in pg_default. On a server without
    space_db the database goes to pg_default, and in_pg_default becomes one of its default
    tablespace's objects: the ALTER DATABASE ... SET TABLESPACE space_db the warning gives
    takes it along into space_db, so the warning says to move it back afterwards. Run as
    the warning says, everything is where it was."""
    dump = back_up_grantdb(source, tmp_path / "b", "plain")
    assert read_manifest(dump)["object_tablespaces"] == ["pg_default", "space_tbl"]
    make_tablespace(target, "space_tbl")
    make_restorer(target)  # the owner

    proc = run_backupd(["restore", dump.name, "--yes"],
                       server_env(target.address, "grantdb", tmp_path / "b"), timeout=300)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    [result] = jobs_finished(proc.stderr, "restore")
    [warning] = fallbacks(dict(result))
    alter_database = 'ALTER DATABASE "grantdb" SET TABLESPACE "space_db"'
    move_back = ('SET TABLESPACE "pg_default" for each object the backup lists with '
                 "'Tablespace: pg_default'")
    assert alter_database in warning and move_back in warning, warning
    assert warning.index(alter_database) < warning.index(move_back), warning
    make_tablespace(target, "space_db")
    psql(target.address, "postgres", "ALTER DATABASE grantdb SET TABLESPACE space_db")
    assert relation_tablespaces(target.address, "grantdb")["in_pg_default"] == "space_db"
    psql(target.address, "grantdb", "ALTER TABLE in_pg_default SET TABLESPACE pg_default")
    assert relation_tablespaces(target.address, "grantdb") == GRANTDB_PLACED


def test_a_restore_beside_the_database_on_its_own_server_keeps_its_tablespace(
        source: PrivateCluster, tmp_path: Path) -> None:
    directory = tmp_path / "b"
    back_up(source.address, SOURCE_DATABASES, directory)
    [dump] = directory.glob("appdb_*.sql.gz")
    env = server_env(source.address, "appdb", directory)
    try:
        proc = run_backupd(["restore", dump.name, "--target-db", "appdb_copy", "--yes"], env,
                           timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert database_tablespace(source.address, "appdb_copy") == "space_db"
        assert relation_tablespaces(source.address, "appdb_copy") == PLACED
    finally:
        psql(source.address, "postgres", "DROP DATABASE IF EXISTS appdb_copy")




def test_a_restore_that_fails_leaves_no_database_in_the_tablespace(
        source: PrivateCluster, target: PrivateCluster, tmp_path: Path) -> None:
    """Never half made: the database created in its tablespace for a restore that then
    fails is dropped, so the tablespace is empty again (and can be dropped)."""
    directory = tmp_path / "b"
    back_up(source.address, SOURCE_DATABASES, directory)
    [dump] = directory.glob("appdb_*.sql.gz")
    text = sql_of(dump).replace(b"\nCOPY ", b"\nSELECT 1/0;\nCOPY ", 1)
    write_gzip_sql(dump, text)
    refresh_manifest(dump, raw_bytes=len(text))
    make_tablespace(target, "space_db")
    make_tablespace(target, "space_tbl")

    proc = run_backupd(["restore", "--latest", "--yes"],
                       server_env(target.address, SOURCE_DATABASES, directory), timeout=300)

    assert proc.returncode == 1 and "division by zero" in proc.stdout + proc.stderr
    assert database_tablespace(target.address, "appdb") is None
    assert leftover_databases(target.address) == []
    assert database_tablespace(target.address, "plaindb") == "pg_default"  # the others go on
    psql(target.address, "postgres", "DROP TABLESPACE space_db")  # nothing left in it


def test_a_sql_ascii_session_sees_the_servers_tablespaces(source: PrivateCluster) -> None:
    # psycopg hands text back as bytes on a SQL_ASCII session (a cluster made with
    # `initdb --no-locale`): read as "b'space_db'", every tablespace looked missing.
    with psycopg.connect(source.address.conninfo("postgres"), autocommit=True,
                         options="-c client_encoding=SQL_ASCII") as conn:
        present = server_tablespaces(conn).present
    assert {"pg_default", "space_db", "space_tbl"} <= present, present
    with psycopg.connect(source.address.conninfo("appdb"), autocommit=True,
                         options="-c client_encoding=SQL_ASCII") as conn:
        assert object_tablespaces(conn) == ["space_tbl"]
        # The session is left as it was.
        assert conn.info.parameter_status("client_encoding") == "SQL_ASCII"


def test_a_tablespace_name_that_is_not_utf8_does_not_stop_reading_the_others(
        source: PrivateCluster) -> None:
    # A session on a SQL_ASCII database may name a tablespace in Latin-1 bytes, and
    # pg_tablespace is the whole cluster's. Reading it failed (UTF-8 sessions could not
    # decode it, and a SQL_ASCII one was refused it as UTF-8), and with it every restore onto
    # that server. Read as it is, the name matches no backup's, and the others are seen.
    psql(source.address, "postgres", "CREATE DATABASE legacy ENCODING 'SQL_ASCII' "
         "LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
    directory = tablespace_directory(source, "ts_latin1")
    try:
        with psycopg.connect(source.address.conninfo("legacy"), autocommit=True) as conn:
            conn.execute(b'CREATE TABLESPACE "espace_\xe9" LOCATION '
                         + f"'{directory}'".encode())
        for database in ("postgres", "legacy"):  # a UTF-8 session, a SQL_ASCII one
            with psycopg.connect(source.address.conninfo(database), autocommit=True) as conn:
                found = server_tablespaces(conn)
            assert {"pg_default", "space_db", "space_tbl", "espace_\ufffd"} <= found.present
            assert {"pg_default", "space_db", "space_tbl"} <= found.creatable, found
        with psycopg.connect(source.address.conninfo("legacy"), autocommit=True) as conn:
            conn.execute(b'CREATE TABLE odd (x int) TABLESPACE "espace_\xe9"')
            assert object_tablespaces(conn) == ["espace_\ufffd"]
            conn.execute("DROP TABLE odd")
    finally:
        with psycopg.connect(source.address.conninfo("legacy"), autocommit=True) as conn:
            conn.execute(b'DROP TABLESPACE IF EXISTS "espace_\xe9"')
        psql(source.address, "postgres", "DROP DATABASE legacy")


def test_another_sessions_temporary_table_is_no_object_tablespace(
        source: PrivateCluster) -> None:
    # temp_tablespaces puts a session's temporary tables in space_db; they are no object of
    # plaindb's dump, and listing them made a custom restore use --no-tablespaces for all.
    with connect(source.address, "plaindb") as other:
        other.execute("SET temp_tablespaces = space_db")
        other.execute("CREATE TEMP TABLE scratch (x int)")
        row = other.execute("SELECT t.spcname FROM pg_class c JOIN pg_tablespace t "
                            "ON t.oid = c.reltablespace WHERE c.oid = 'scratch'::regclass"
                            ).fetchone()
        assert row is not None and row[0] == "space_db"  # it is there: the case is real
        with connect(source.address, "plaindb") as conn:
            assert object_tablespaces(conn) == []

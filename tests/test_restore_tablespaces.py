"""Tablespaces across a restore, against real clusters: a database whose default tablespace
is one of its own (CREATE DATABASE ... TABLESPACE), a table and an index in another, backed
up and restored onto a second, fresh cluster that has those tablespaces or does not (its
disks laid out differently, as after a disaster), and drilled onto one that does not.

The choice (docs/backup-and-recovery.md, "Tablespaces"): the backup records the database's
tablespace; the restore creates the database there when the server has it, and otherwise
in the default tablespace, with one warning naming the tablespace and what to run. Objects
in a tablespace the server lacks go to the database's default tablespace, in the same
warning. A restore never fails, nor leaves a database behind, for a missing tablespace."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
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
from helpers.logs import jobs_finished, log_events
from helpers.pg import ServerAddress, connect, psql
from helpers.tablespaces import (
    database_tablespace,
    leftover_databases,
    make_tablespace,
    relation_tablespaces,
    tablespace_directory,
    tablespaces,
)

from backupd.postgres.tablespaces import object_tablespaces, server_tablespaces

pytestmark = pytest.mark.slow

DATABASES = "appdb,plaindb"
# Where everything is on the source: appdb's own tables in its default tablespace space_db;
# a table and an index (post-data, after all the data) in space_tbl.
PLACED = {"in_default": "space_db", "in_default_pkey": "space_db",
          "elsewhere": "space_tbl", "in_default_note": "space_tbl"}
FALLBACK = "was restored without some of its tablespaces"
# A restoring role that is not a superuser: CREATEDB, and CREATE on no tablespace unless granted.
RESTORER = ServerAddress("127.0.0.1", 0, "restorer", "r-pw")
GRANTDB_PLACED = {"in_db": "space_db", "in_pg_default": "pg_default", "in_tbl": "space_tbl"}


@pytest.fixture(scope="module")
def source() -> Iterator[PrivateCluster]:
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


@pytest.fixture
def target(private_cluster: Callable[..., PrivateCluster]) -> PrivateCluster:
    return private_cluster("target-pw")


def restore(target: PrivateCluster, directory: Path) -> dict[str, Any]:
    """The whole-cluster restore onto ``target``; its result (the "job finished" event)."""
    proc = run_backupd(["restore", "--latest", "--yes"],
                       server_env(target.address, DATABASES, directory), timeout=300)
    [result] = jobs_finished(proc.stderr, "restore")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return dict(result)


def fallbacks(result: dict[str, Any]) -> list[str]:
    return [w for w in result["warnings"] if FALLBACK in w]


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
    back_up(source.address, DATABASES, tmp_path / "b")

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
    back_up(source.address, DATABASES, tmp_path / "b")
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
    back_up(source.address, DATABASES, directory)
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
    back_up(source.address, DATABASES, tmp_path / "b", DB_BACKUP_FORMAT="custom")

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


def make_restorer(target: PrivateCluster) -> None:
    psql(target.address, "postgres",
         f"CREATE ROLE {RESTORER.user} LOGIN CREATEDB PASSWORD '{RESTORER.password}'")


def as_restorer(target: PrivateCluster) -> ServerAddress:
    return dataclasses.replace(RESTORER, port=target.port)


@pytest.mark.parametrize("backup_format", ["plain", "custom"])
def test_a_role_without_create_on_a_tablespace_restores_into_the_databases_own(
        source: PrivateCluster, target: PrivateCluster, tmp_path: Path,
        backup_format: str) -> None:
    """The restoring role may create in space_db (the database goes there) but not in
    pg_default nor in space_tbl, which the server has: their tables go to space_db, and the
    warning gives the GRANT, not a CREATE TABLESPACE."""
    dump = back_up_grantdb(source, tmp_path / "b", backup_format)
    make_tablespace(target, "space_db")
    make_tablespace(target, "space_tbl")
    make_restorer(target)
    psql(target.address, "postgres", f"GRANT CREATE ON TABLESPACE space_db TO {RESTORER.user}")

    proc = run_backupd(["restore", dump.name, "--yes"],
                       server_env(as_restorer(target), "grantdb", tmp_path / "b"), timeout=300)

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
    back_up(source.address, DATABASES, directory)
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


def test_a_drill_beside_the_live_database_compares_its_tablespace(
        source: PrivateCluster, tmp_path: Path) -> None:
    """Beside the live database (no drill server) the tablespaces are there: the scratch
    copy goes into the database's own, and the tablespace is compared like the other
    properties, so moving the live database since the backup is drift, named."""
    directory = tmp_path / "b"
    env = server_env(source.address, "appdb", directory)
    back_up(source.address, DATABASES, directory)

    clean = run_backupd(["drill"], env, timeout=300)

    assert clean.returncode == 0, clean.stdout + clean.stderr
    [result] = jobs_finished(clean.stderr, "drill")
    assert result["outcome"]["differences"] == [] and result["outcome"]["drift"] == []
    make_tablespace(source, "space_moved")
    psql(source.address, "postgres", "ALTER DATABASE appdb SET TABLESPACE space_moved")
    try:
        moved = run_backupd(["drill"], env, timeout=300)
        assert moved.returncode == 0, moved.stdout + moved.stderr
        [result] = jobs_finished(moved.stderr, "drill")
        assert result["outcome"]["drift"] == [
            "database tablespace: 'space_db' in the backup, 'space_moved' in the live database"]
    finally:
        psql(source.address, "postgres", "ALTER DATABASE appdb SET TABLESPACE space_db; "
                                         "DROP TABLESPACE space_moved")


def test_a_drill_beside_a_database_whose_tablespace_was_dropped_says_where_its_copy_went(
        source: PrivateCluster, tmp_path: Path) -> None:
    """The live database moved out of its tablespace, which was then dropped, since the
    backup: the scratch copy goes into the default one, and the warning is about that copy,
    which the drill drops; nothing in it is to be run on the live database."""
    directory = tmp_path / "b"
    make_tablespace(source, "space_gone")
    psql(source.address, "postgres", "CREATE DATABASE gonedb TABLESPACE space_gone")
    try:
        psql(source.address, "gonedb", "CREATE TABLE t (x int); INSERT INTO t VALUES (1);")
        env = server_env(source.address, "gonedb", directory)
        backed_up = run_backupd(["backup"], env, timeout=300)
        assert backed_up.returncode == 0, backed_up.stdout + backed_up.stderr
        psql(source.address, "postgres", "ALTER DATABASE gonedb SET TABLESPACE pg_default; "
                                         "DROP TABLESPACE space_gone")

        proc = run_backupd(["drill"], env, timeout=300)

        assert proc.returncode == 0, proc.stdout + proc.stderr
        [result] = jobs_finished(proc.stderr, "drill")
        [warning] = fallbacks(dict(result))
        assert "'gonedb_drill'" in warning and "instead of 'space_gone'" in warning, warning
        assert "drops" in warning, warning
        assert "ALTER DATABASE" not in warning and "ALTER TABLE" not in warning, warning
    finally:
        psql(source.address, "postgres", "DROP DATABASE IF EXISTS gonedb; "
                                         "DROP TABLESPACE IF EXISTS space_gone")


def test_a_drill_server_role_without_create_is_said_so_not_that_the_tablespace_is_missing(
        source: PrivateCluster, target: PrivateCluster, tmp_path: Path) -> None:
    """The drill server has every tablespace, but its drill role (not a superuser) may
    create only in space_db: the drill says so in restore's words, with the GRANT."""
    directory = tmp_path / "b"
    back_up(source.address, "grantdb", directory)
    make_tablespace(target, "space_db")
    make_tablespace(target, "space_tbl")
    make_restorer(target)
    # The roles of the globals are there already (the restorer may not create roles).
    psql(target.address, "postgres", f"CREATE ROLE app; "
                                     f"GRANT CREATE ON TABLESPACE space_db TO {RESTORER.user}")
    env = server_env(source.address, "grantdb", directory,
                     DRILL_POSTGRES_HOST=target.address.host,
                     DRILL_POSTGRES_PORT=str(target.port), DRILL_POSTGRES_USER=RESTORER.user,
                     DRILL_POSTGRES_PASSWORD=RESTORER.password or "")

    proc = run_backupd(["drill"], env, timeout=300)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    [result] = jobs_finished(proc.stderr, "drill")
    [grantdb] = result["outcome"]["databases"]
    assert grantdb["ok"] and grantdb["tablespaces_missing"] == ["pg_default", "space_tbl"]
    said = [str(event.get("event")) for event in log_events(proc.stderr)]
    [line] = [line for line in said if FALLBACK in line]
    assert "'space_tbl' (role 'restorer' may not create in it)" in line, line
    assert 'GRANT CREATE ON TABLESPACE "pg_default" TO "restorer"' in line, line
    assert "ALTER DATABASE" not in line, line
    assert not [w for w in result["warnings"] if FALLBACK in w], result["warnings"]


def test_a_drill_onto_a_server_without_the_tablespaces_passes_and_says_what_it_did(
        source: PrivateCluster, target: PrivateCluster, tmp_path: Path) -> None:
    directory = tmp_path / "b"
    back_up(source.address, DATABASES, directory)
    with connect(target.address) as conn:
        before = sorted(str(r[0]) for r in conn.execute("SELECT datname FROM pg_database"))
    env = server_env(source.address, DATABASES, directory,
                     DRILL_POSTGRES_HOST=target.address.host,
                     DRILL_POSTGRES_PORT=str(target.port),
                     DRILL_POSTGRES_PASSWORD=target.password)

    proc = run_backupd(["drill"], env, timeout=300)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    [result] = jobs_finished(proc.stderr, "drill")
    outcome = result["outcome"]
    assert outcome["differences"] == [], outcome
    [appdb, plaindb] = outcome["databases"]
    assert appdb["ok"] and plaindb["ok"]
    assert appdb["tablespaces_missing"] == ["space_db", "space_tbl"]
    assert plaindb["tablespaces_missing"] == []
    # Said, not warned: a drill server seldom has the live server's directories.
    said = (proc.stdout + proc.stderr)
    assert "instead of 'space_db' (no such tablespace here)" in said
    assert not [w for w in result["warnings"] if "tablespace" in w], result["warnings"]
    # Left as it was found.
    with connect(target.address) as conn:
        after = sorted(str(r[0]) for r in conn.execute("SELECT datname FROM pg_database"))
    assert after == before and tablespaces(target.address) == set()


def test_a_restore_that_fails_leaves_no_database_in_the_tablespace(
        source: PrivateCluster, target: PrivateCluster, tmp_path: Path) -> None:
    """Never half made: the database created in its tablespace for a restore that then
    fails is dropped, so the tablespace is empty again (and can be dropped)."""
    directory = tmp_path / "b"
    back_up(source.address, DATABASES, directory)
    [dump] = directory.glob("appdb_*.sql.gz")
    text = sql_of(dump).replace(b"\nCOPY ", b"\nSELECT 1/0;\nCOPY ", 1)
    write_gzip_sql(dump, text)
    refresh_manifest(dump, raw_bytes=len(text))
    make_tablespace(target, "space_db")
    make_tablespace(target, "space_tbl")

    proc = run_backupd(["restore", "--latest", "--yes"],
                       server_env(target.address, DATABASES, directory), timeout=300)

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

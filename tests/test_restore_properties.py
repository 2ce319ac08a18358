"""A restore puts back what the database is, not only what it holds: owner, encoding and
locale, connection limit, ``ALTER DATABASE … SET``, privileges and comment; and it creates
databases as the drill does, from template0 (an object inherited from template1 is in the
dump already). Roles and template1 are global, so every test here has a private cluster."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from helpers.backups import read_manifest, take_backup, write_manifest
from helpers.cli import run_backupd, server_env
from helpers.cluster import PrivateCluster
from helpers.logs import jobs_finished
from helpers.pg import connect, psql

SOURCE = "app_db"


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivateCluster]:
    with PrivateCluster("props-pw") as private:
        private.start()
        psql(private.address, "postgres",
             "CREATE ROLE app LOGIN; CREATE ROLE reader NOLOGIN IN ROLE app;")
        yield private


@pytest.fixture
def source(cluster: PrivateCluster) -> Iterator[str]:
    """A database with every kind of database-level property set, and a table of the app's."""
    drop_all(cluster)
    psql(cluster.address, "postgres", f"""
        CREATE DATABASE {SOURCE} OWNER app TEMPLATE template0 ENCODING 'LATIN1'
            LC_COLLATE 'C' LC_CTYPE 'C' CONNECTION LIMIT 7;
        COMMENT ON DATABASE {SOURCE} IS 'the app''s data';
        ALTER DATABASE {SOURCE} SET work_mem = '5MB';
        ALTER DATABASE {SOURCE} SET search_path = "$user", public, "odd, schema";
        ALTER ROLE reader IN DATABASE {SOURCE} SET statement_timeout = '7s';
        REVOKE CONNECT, TEMPORARY ON DATABASE {SOURCE} FROM PUBLIC;
        GRANT CONNECT ON DATABASE {SOURCE} TO reader;
        GRANT TEMPORARY ON DATABASE {SOURCE} TO reader WITH GRANT OPTION;""")
    psql(cluster.address, SOURCE, "CREATE TABLE notes (id int PRIMARY KEY, body text); "
         "ALTER TABLE notes OWNER TO app; SET client_encoding = 'UTF8'; "
         "INSERT INTO notes VALUES (1, 'café');")
    yield SOURCE
    drop_all(cluster)


def drop_all(cluster: PrivateCluster) -> None:
    with connect(cluster.address) as conn:
        for (name,) in conn.execute("SELECT datname FROM pg_database WHERE datname NOT IN "
                                    "('postgres', 'template0', 'template1')").fetchall():
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def cluster_env(cluster: PrivateCluster, database: str, directory: Path,
                **extra: str) -> dict[str, str]:
    return server_env(cluster.address, database, directory, **extra)


def properties(cluster: PrivateCluster, name: str) -> dict[str, Any]:
    """Read straight from the catalogs (not through backupd's own code)."""
    with connect(cluster.address) as conn:
        row = conn.execute(
            "SELECT pg_get_userbyid(datdba), pg_encoding_to_char(encoding), datcollate, "
            "datctype, datconnlimit, datacl::text[], shobj_description(oid, 'pg_database'), "
            "oid FROM pg_database WHERE datname = %s", (name,)).fetchone()
        assert row is not None, f"no database {name}"
        settings = sorted(
            (str(role), sorted(config)) for role, config in conn.execute(
                "SELECT coalesce(pg_get_userbyid(NULLIF(setrole, 0)), '-'), setconfig "
                "FROM pg_db_role_setting WHERE setdatabase = %s", (row[7],)))
    return {"owner": row[0], "encoding": row[1], "collate": row[2], "ctype": row[3],
            "connection_limit": row[4], "acl": sorted(row[5] or []), "comment": row[6],
            "settings": settings}


def note(cluster: PrivateCluster, database: str) -> str:
    return psql(cluster.address, database,
                "SET client_encoding = 'UTF8'; SELECT body FROM notes").strip()


def public_may_connect(cluster: PrivateCluster, name: str) -> bool:
    with connect(cluster.address) as conn:
        row = conn.execute("SELECT has_database_privilege('public', %s, 'CONNECT')",
                           (name,)).fetchone()
    return bool(row and row[0])


def test_replace_puts_back_the_database_properties(
        cluster: PrivateCluster, source: str, tmp_path: Path) -> None:
    env = cluster_env(cluster, source, tmp_path / "b")
    at_backup = properties(cluster, source)
    backup = take_backup(env)
    assert read_manifest(backup)["database_properties"]["owner"] == "app"

    proc = run_backupd(["restore", backup.name, "--replace", "--yes"], env)

    assert proc.returncode == 0, proc.stderr
    assert properties(cluster, source) == at_backup
    assert not public_may_connect(cluster, source)
    assert note(cluster, source) == "café"


def test_restore_into_a_new_database_keeps_the_properties(
        cluster: PrivateCluster, source: str, tmp_path: Path) -> None:
    env = cluster_env(cluster, source, tmp_path / "b")
    at_backup = properties(cluster, source)
    backup = take_backup(env)

    proc = run_backupd(["restore", backup.name, "--target-db", "app_copy", "--yes"], env)

    assert proc.returncode == 0, proc.stderr
    assert properties(cluster, "app_copy") == at_backup
    assert note(cluster, "app_copy") == "café"


def test_a_backup_that_records_no_properties_still_restores(
        cluster: PrivateCluster, source: str, tmp_path: Path) -> None:
    env = cluster_env(cluster, source, tmp_path / "b")
    at_backup = properties(cluster, source)
    backup = take_backup(env)
    manifest = read_manifest(backup)
    del manifest["database_properties"]  # as written before backupd recorded them
    write_manifest(backup, manifest)
    assert "database_properties" not in read_manifest(backup)

    into_new = run_backupd(["restore", backup.name, "--target-db", "app_copy", "--yes"], env)
    replaced = run_backupd(["restore", backup.name, "--replace", "--yes"], env)

    assert into_new.returncode == 0, into_new.stderr
    assert "records no database properties" in into_new.stderr
    assert note(cluster, "app_copy") == "café"
    assert replaced.returncode == 0, replaced.stderr
    # Replacing: the properties of the database it replaces are kept.
    assert properties(cluster, source) == at_backup


def test_an_object_inherited_from_template1_restores(
        cluster: PrivateCluster, tmp_path: Path) -> None:
    """The source got ``audit_trail`` from template1, so the dump creates it: a database
    copied from template1 would already hold it ("already exists"). Same for the drill."""
    drop_all(cluster)
    psql(cluster.address, "template1", "CREATE TABLE audit_trail (id int); "
         "CREATE FUNCTION audit_version() RETURNS int LANGUAGE sql AS 'SELECT 3';")
    try:
        psql(cluster.address, "postgres", "CREATE DATABASE inheritor")
        psql(cluster.address, "inheritor", "INSERT INTO audit_trail VALUES (1), (2)")
        env = cluster_env(cluster, "inheritor", tmp_path / "b")
        backup = take_backup(env)

        into_new = run_backupd(["restore", backup.name, "--target-db", "restored", "--yes"],
                               env)
        replaced = run_backupd(["restore", backup.name, "--replace", "--yes"], env)
        drill = run_backupd(["drill"], env)

        assert into_new.returncode == 0, into_new.stderr
        assert psql(cluster.address, "restored",
                    "SELECT count(*) FROM audit_trail").strip() == "2"
        assert replaced.returncode == 0, replaced.stderr
        assert psql(cluster.address, "inheritor",
                    "SELECT count(*) FROM audit_trail").strip() == "2"
        assert drill.returncode == 0, drill.stderr
    finally:
        psql(cluster.address, "template1",
             "DROP TABLE IF EXISTS audit_trail; DROP FUNCTION IF EXISTS audit_version();")
        drop_all(cluster)


def drill_result(stderr: str) -> dict[str, Any]:
    results = jobs_finished(stderr)
    assert results, stderr
    return dict(results[-1])


def test_the_drill_compares_the_database_properties(
        cluster: PrivateCluster, source: str, tmp_path: Path) -> None:
    env = cluster_env(cluster, source, tmp_path / "b")
    backup = take_backup(env)

    clean = run_backupd(["drill"], env)
    assert clean.returncode == 0, clean.stderr
    details = drill_result(clean.stderr)["outcome"]
    assert details["differences"] == [] and details["drift"] == []
    assert "database properties" in details["comparison_summary"]

    # Changed on the live database since the backup: drift, named.
    psql(cluster.address, "postgres", f"COMMENT ON DATABASE {source} IS 'renamed app'")
    drifted = run_backupd(["drill"], env)
    assert drifted.returncode == 0, drifted.stderr
    drift = drill_result(drifted.stderr)["outcome"]["drift"]
    assert drift == ["database comment: \"the app's data\" in the backup, 'renamed app' in "
                     "the live database"]

    # A property of the backup that the restore cannot reproduce here (its role is gone)
    # fails the drill, naming it.
    manifest = read_manifest(backup)
    manifest["database_properties"]["grants"].append(
        {"grantee": "ghost", "privilege": "CONNECT", "grantable": False})
    write_manifest(backup, manifest)
    failed = run_backupd(["drill"], env)
    assert failed.returncode == 1, failed.stderr
    differences = drill_result(failed.stderr)["outcome"]["differences"]
    assert differences == ["database privilege CONNECT to ghost: in the backup, not in the "
                           "restore"]
    # The scratch database is gone every time, and the live database untouched.
    with connect(cluster.address) as conn:
        names = {str(r[0]) for r in conn.execute("SELECT datname FROM pg_database")}
    assert f"{source}_drill" not in names
    assert not public_may_connect(cluster, source)


def test_a_sql_ascii_database_backs_up_and_restores_with_its_properties(
        cluster: PrivateCluster, tmp_path: Path) -> None:
    """psycopg hands bytes, not text, to a SQL_ASCII session: the properties must still be
    recorded as the names they are."""
    name = "ascii_db"
    drop_all(cluster)
    psql(cluster.address, "postgres", f"""
        CREATE DATABASE {name} OWNER app ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C'
            TEMPLATE template0;
        COMMENT ON DATABASE {name} IS 'bytes as they come';
        ALTER DATABASE {name} SET work_mem = '3MB';
        ALTER ROLE reader IN DATABASE {name} SET statement_timeout = '9s';""")
    psql(cluster.address, name, "CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2);")
    try:
        env = cluster_env(cluster, name, tmp_path / "b")
        at_backup = properties(cluster, name)
        backup = take_backup(env)
        recorded = read_manifest(backup)["database_properties"]
        assert (recorded["owner"], recorded["encoding"]) == ("app", "SQL_ASCII")
        assert {(s["role"], s["name"], s["value"]) for s in recorded["settings"]} == {
            (None, "work_mem", "3MB"), ("reader", "statement_timeout", "9s")}

        proc = run_backupd(["restore", backup.name, "--replace", "--yes"], env)

        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert properties(cluster, name) == at_backup
        with connect(cluster.address, name) as conn:
            assert conn.execute("SELECT count(*) FROM t").fetchone() == (2,)
    finally:
        drop_all(cluster)


def test_a_sql_ascii_database_whose_comment_is_not_utf8_is_backed_up_without_properties(
        cluster: PrivateCluster, tmp_path: Path) -> None:
    """Latin-1 bytes in a legacy SQL_ASCII database's comment cannot be recorded as text: the
    dump is still taken and verified, and its result says what was left out."""
    name = "latin1_db"
    drop_all(cluster)
    psql(cluster.address, "postgres", f"CREATE DATABASE {name} ENCODING 'SQL_ASCII' "
                                      "LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0;")
    with psycopg.connect(cluster.address.conninfo(name), autocommit=True) as conn:
        conn.execute(f"COMMENT ON DATABASE {name} IS 'caf\xe9'".encode("latin-1"))
    psql(cluster.address, name, "CREATE TABLE t (x int); INSERT INTO t VALUES (1);")
    try:
        env = cluster_env(cluster, name, tmp_path / "b")
        backup = take_backup(env)
        assert read_manifest(backup)["database_properties"] is None
        log = (tmp_path / "b" / "backup_log.txt").read_text()
        assert "hold bytes that are not UTF-8" in log and "no database properties" in log
    finally:
        drop_all(cluster)

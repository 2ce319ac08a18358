"""Issue 14's proof: a cluster with an application role that owns everything, a reader role,
role settings, two databases with their properties, grants, RLS and default privileges,
backed up, then restored with ONE command onto a second, freshly initialised cluster (scram),
from DB_BACKUP_DIR and from S3 alone into an empty directory. Everything is compared, and
the owner logs in on the new server with its old password."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.age import make_age_keys
from helpers.backups import back_up, path_with, read_manifest, write_manifest
from helpers.cli import run_backupd, server_env
from helpers.cluster import PrivateCluster
from helpers.offsite import object_keys, s3_env
from helpers.pg import ServerAddress, connect
from helpers.s3server import S3Server
from helpers.slow_restore import meddling_psql
from helpers.whole_restore import naming, warnings_of

pytestmark = pytest.mark.slow

APP_PASSWORD = "app-old-Pw'9"
DATABASES = ("appdb", "otherdb")
BOTH_DATABASES = ",".join(DATABASES)  # as POSTGRES_DB takes them

SETUP_GLOBALS = [
    f"CREATE ROLE app LOGIN PASSWORD '{APP_PASSWORD.replace(chr(39), chr(39) * 2)}'",
    "CREATE ROLE reader NOLOGIN IN ROLE app",
    "ALTER ROLE app SET statement_timeout = '33s'",
    "CREATE DATABASE appdb OWNER app",
    "CREATE DATABASE otherdb",
    "COMMENT ON DATABASE appdb IS 'the application''s data'",
    "ALTER DATABASE appdb SET work_mem = '5MB'",
    "REVOKE CONNECT ON DATABASE appdb FROM PUBLIC",
    "GRANT CONNECT ON DATABASE appdb TO app, reader",
]
SETUP_APPDB = [
    "SET ROLE app",
    "CREATE SCHEMA app",
    "ALTER DEFAULT PRIVILEGES IN SCHEMA app GRANT SELECT ON TABLES TO reader",
    "CREATE TABLE app.items (id int PRIMARY KEY, owner_name text, note text)",
    "INSERT INTO app.items SELECT g, CASE WHEN g % 2 = 0 THEN 'reader' ELSE 'app' END, "
    "'note ' || g FROM generate_series(1, 500) g",
    "ALTER TABLE app.items ENABLE ROW LEVEL SECURITY",
    "CREATE POLICY reader_sees_own ON app.items FOR SELECT TO reader "
    "USING (owner_name = 'reader')",
    "CREATE TABLE app.later (x int)",  # its SELECT for reader comes from default privileges
    "INSERT INTO app.later VALUES (1), (2)",
]
SETUP_OTHERDB = [
    "CREATE TABLE public.plain (id int, t text)",
    "INSERT INTO public.plain SELECT g, md5(g::text) FROM generate_series(1, 300) g",
    "ALTER TABLE public.plain OWNER TO app",
    "GRANT SELECT ON public.plain TO reader",
]


def run_sql(server: ServerAddress, database: str, statements: list[str]) -> None:
    with connect(server, database) as conn:
        for statement in statements:
            conn.execute(statement)


def cluster_picture(server: ServerAddress) -> dict[str, Any]:
    """Everything the proof compares, read from the catalogs and the data."""
    picture: dict[str, Any] = {}
    with connect(server) as conn:
        picture["roles"] = conn.execute(
            "SELECT rolname, rolcanlogin, rolsuper, rolconfig, ARRAY(SELECT b.rolname FROM "
            "pg_auth_members m JOIN pg_roles b ON b.oid = m.roleid WHERE m.member = r.oid) "
            "FROM pg_roles r WHERE rolname IN ('app', 'reader') ORDER BY 1").fetchall()
        picture["databases"] = conn.execute(
            "SELECT datname, pg_get_userbyid(datdba), datacl::text[], "
            "shobj_description(oid, 'pg_database'), "
            "(SELECT setconfig FROM pg_db_role_setting s WHERE s.setdatabase = d.oid "
            " AND s.setrole = 0) FROM pg_database d WHERE datname = ANY(%s) ORDER BY 1",
            (list(DATABASES),)).fetchall()
    with connect(server, "appdb") as conn:
        picture["appdb"] = [
            conn.execute("SELECT c.relname, pg_get_userbyid(c.relowner), c.relacl::text[], "
                         "c.relrowsecurity FROM pg_class c JOIN pg_namespace n ON n.oid = "
                         "c.relnamespace WHERE n.nspname = 'app' AND c.relkind = 'r' "
                         "ORDER BY 1").fetchall(),
            conn.execute("SELECT policyname, roles::text[], qual FROM pg_policies "
                         "ORDER BY 1").fetchall(),
            conn.execute("SELECT pg_get_userbyid(defaclrole), defaclacl::text[] "
                         "FROM pg_default_acl").fetchall(),
            conn.execute("SELECT count(*), sum(id), string_agg(note, ',' ORDER BY id) "
                         "FROM app.items").fetchall(),
            conn.execute("SELECT count(*) FROM app.later").fetchall(),
        ]
    with connect(server, "otherdb") as conn:
        picture["otherdb"] = [
            conn.execute("SELECT pg_get_userbyid(relowner), relacl::text[] FROM pg_class "
                         "WHERE relname = 'plain'").fetchall(),
            conn.execute("SELECT count(*), string_agg(t, ',' ORDER BY id) "
                         "FROM public.plain").fetchall(),
        ]
    return picture


@pytest.fixture(scope="module")
def source() -> Iterator[PrivateCluster]:
    with PrivateCluster("source-pw") as cluster:
        cluster.start()
        run_sql(cluster.address, "postgres", SETUP_GLOBALS)
        run_sql(cluster.address, "appdb", SETUP_APPDB)
        run_sql(cluster.address, "otherdb", SETUP_OTHERDB)
        yield cluster


def restore_env(target: PrivateCluster, directory: Path, **extra: str) -> dict[str, str]:
    return server_env(target.address, BOTH_DATABASES, directory, **extra)


def assert_cluster_came_back(source: PrivateCluster, target: PrivateCluster,
                             proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert cluster_picture(target.address) == cluster_picture(source.address)
    # The owner logs in on the new server with its old password; its settings came along.
    owner = ServerAddress(target.address.host, target.port, "app", APP_PASSWORD)
    with connect(owner, "appdb") as conn:
        row = conn.execute("SELECT current_setting('statement_timeout'), "
                           "current_setting('work_mem'), count(*) FROM app.items").fetchone()
        assert row == ("33s", "5MB", 500)
    assert "total:" in proc.stdout and "appdb: ok" in proc.stdout and "otherdb: ok" in proc.stdout
    assert "kept as they were: postgres" in proc.stdout


def test_whole_cluster_restores_onto_a_fresh_server_with_one_command(
        source: PrivateCluster, tmp_path: Path) -> None:
    directory = tmp_path / "backups"
    directory.mkdir()
    back_up(source.address, BOTH_DATABASES, directory)
    with PrivateCluster("target-pw") as target:
        target.start()
        proc = run_backupd(["restore", "--latest", "--yes"], restore_env(target, directory),
                           timeout=300)
        assert_cluster_came_back(source, target, proc)


def test_whole_cluster_restores_from_s3_alone_into_an_empty_directory(
        source: PrivateCluster, tmp_path: Path, s3_server: S3Server, s3_bucket: str) -> None:
    directory = tmp_path / "backups"
    directory.mkdir()
    offsite = s3_env(s3_server, s3_bucket)
    back_up(source.address, BOTH_DATABASES, directory, **offsite)
    keys = object_keys(s3_server, s3_bucket)
    assert any(k.startswith("globals_") and k.endswith(".globals.sql.gz") for k in keys), keys
    empty = tmp_path / "new-machine"
    with PrivateCluster("target2-pw") as target:
        target.start()
        proc = run_backupd(["restore", "--latest", "--yes", "--from-s3"],
                           restore_env(target, empty, **offsite), timeout=300)
        assert_cluster_came_back(source, target, proc)


def test_an_incomplete_newest_run_restores_each_database_newest_complete_state(
        source: PrivateCluster, tmp_path: Path) -> None:
    directory = tmp_path / "backups"
    directory.mkdir()
    # postgres too: the new server's own is swapped for it
    back_up(source.address, "*", directory)
    assert {p.name.split("_")[0] for p in directory.glob("*.sql.gz")} == {
        "appdb", "otherdb", "postgres", "globals"}
    [older_otherdb] = [p.name for p in directory.glob("otherdb_*.sql.gz")]
    time.sleep(1.1)  # backup names and run ids count whole seconds
    # The next run: appdb and the globals made it, otherdb did not (nothing of it written).
    newest_run = back_up(source.address, "appdb", directory)
    newer_appdb = max(p.name for p in directory.glob("appdb_*.sql.gz"))
    # A run of `*` records every database it set out to back up, otherdb's failure included,
    # and that it was of `*` (a list's run's list judges no database of `*`). One on the list
    # with no backup at all stops the restore: test_cluster_restore_every_database.py.
    newest_globals = max(directory.glob("globals_*.sql.gz"), key=lambda p: p.name)
    manifest = read_manifest(newest_globals)
    assert manifest["run_databases"] == ["appdb"] and manifest["run_of_every"] is False
    write_manifest(newest_globals, {**manifest, "run_of_every": True,
                                    "run_databases": ["appdb", "otherdb", "postgres"]})
    with PrivateCluster("target3-pw") as target:
        target.start()
        proc = run_backupd(["restore", "--latest", "--yes"],
                           server_env(target.address, "*", directory), timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "appdb: ok" in proc.stdout and newer_appdb in proc.stdout
        assert ("otherdb: ok" in proc.stdout and older_otherdb in proc.stdout
                and f"not in the newest run {newest_run}" in proc.stdout)
        assert cluster_picture(target.address) == cluster_picture(source.address)
        assert "postgres: ok" in proc.stdout


def test_no_owner_no_privileges_restore_creates_no_role_and_is_refused_for_plain_sql(
        source: PrivateCluster, tmp_path: Path) -> None:
    directory = tmp_path / "backups"
    directory.mkdir()
    back_up(source.address, BOTH_DATABASES, directory, DB_BACKUP_FORMAT="custom")
    with PrivateCluster("target4-pw") as target:
        target.start()
        env = server_env(target.address, "otherdb", directory)
        proc = run_backupd(["restore", "--latest", "--yes", "--database", "otherdb",
                            "--no-owner", "--no-privileges"], env, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        with connect(target.address, "otherdb") as conn:
            assert conn.execute("SELECT count(*) FROM pg_roles WHERE rolname IN "
                                "('app', 'reader')").fetchone() == (0,)
            assert conn.execute("SELECT pg_get_userbyid(relowner), relacl FROM pg_class "
                                "WHERE relname = 'plain'").fetchone() == ("postgres", None)
            assert conn.execute("SELECT count(*) FROM public.plain").fetchone() == (300,)
        plain = tmp_path / "plain"
        plain.mkdir()
        back_up(source.address, "appdb", plain)
        proc = run_backupd(["restore", "--latest", "--yes", "--database", "appdb",
                            "--no-owner"], server_env(target.address, "appdb", plain))
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "--no-owner" in proc.stderr and "plain SQL" in proc.stderr
        with connect(target.address) as conn:
            assert conn.execute("SELECT count(*) FROM pg_database WHERE datname = 'appdb'"
                                ).fetchone() == (0,)


def test_encrypted_run_restores_with_the_identity_alone(source: PrivateCluster,
                                                        tmp_path: Path) -> None:
    keys = make_age_keys(tmp_path / "keys")
    directory = tmp_path / "backups"
    directory.mkdir()
    back_up(source.address, BOTH_DATABASES, directory,
            DB_BACKUP_AGE_RECIPIENTS_FILE=str(keys.recipients_file))
    stored = sorted(p.name for p in directory.glob("*_*.gz*") if p.suffix != ".json")
    assert len(stored) == 3 and all(name.endswith(".age") for name in stored), stored
    with PrivateCluster("target5-pw") as target:
        target.start()
        missing_key = run_backupd(["restore", "--latest", "--yes"],
                                  restore_env(target, directory))
        assert missing_key.returncode == 2 and "DB_BACKUP_AGE_IDENTITY_FILE" in missing_key.stderr
        proc = run_backupd(["restore", "--latest", "--yes"], restore_env(
            target, directory, DB_BACKUP_AGE_IDENTITY_FILE=str(keys.identity_file)),
            timeout=300)
        assert_cluster_came_back(source, target, proc)


def test_restoring_every_database_brings_back_one_dropped_since_the_newest_run(
        tmp_path: Path) -> None:
    """POSTGRES_DB='*': a database dropped (with its owner) after a run still has that run's
    backup, kept by DB_BACKUP_KEEP_MIN. It looks dropped (not in the newest run of '*'), but
    that rule also left out live databases, so it is restored all the same, with one
    warning saying what to do were it dropped. Its owner is in no globals any more, so its
    restore fails, said and named, after the others came back: loud, never a live database
    left out with exit 0. It was left out on the old code ("not restoring olddb")."""
    directory = tmp_path / "backups"
    directory.mkdir()
    with PrivateCluster("source-pw") as old_source, PrivateCluster("target-pw") as target:
        old_source.start()
        run_sql(old_source.address, "postgres", [
            "CREATE ROLE leaver LOGIN", "CREATE DATABASE olddb OWNER leaver",
            "CREATE DATABASE keptdb"])
        run_sql(old_source.address, "olddb", ["SET ROLE leaver", "CREATE TABLE t (x int)"])
        run_sql(old_source.address, "keptdb", ["CREATE TABLE k (x int)",
                                               "INSERT INTO k VALUES (1)"])
        back_up(old_source.address, "*", directory)
        run_sql(old_source.address, "postgres", ["DROP DATABASE olddb", "DROP ROLE leaver"])
        time.sleep(1.1)  # the next run's name, to the second, is a new one
        back_up(old_source.address, "*", directory)
        assert list(directory.glob("olddb_*.sql.gz"))  # still kept
        target.start()
        proc = run_backupd(["restore", "--latest", "--yes"],
                           server_env(target.address, "*", directory), timeout=300)
        said = proc.stdout + proc.stderr
        assert proc.returncode == 1, said
        assert "not restoring olddb" not in said, said
        [warning] = naming("olddb looks dropped", warnings_of(proc))
        assert "drop it again after this restore" in warning, warning
        assert "restore of 1 of 3 database(s) failed (olddb: " in said, said
        assert 'role "leaver" does not exist' in said, said
        with connect(target.address, "keptdb") as conn:
            assert conn.execute("SELECT x FROM k").fetchall() == [(1,)]


def test_a_target_that_gains_tables_after_the_first_check_is_refused_in_its_turn(
        source: PrivateCluster, tmp_path: Path) -> None:
    """The check before anything changes is not the last word: otherdb is empty then, and
    gains a table while appdb restores (its application reconnecting, say). In its turn,
    under its lock, it is refused like any target holding tables without --replace, and
    left as it is: not swapped out, its table there, no copy of it made."""
    directory = tmp_path / "backups"
    directory.mkdir()
    back_up(source.address, BOTH_DATABASES, directory)
    with PrivateCluster("target6-pw") as target:
        target.start()
        run_sql(target.address, "postgres", ["CREATE DATABASE otherdb"])
        meddler = meddling_psql(tmp_path / "bin", target.address, "otherdb",
                                "CREATE TABLE arrived (x int); INSERT INTO arrived VALUES (7)")
        proc = run_backupd(["restore", "--latest", "--yes"],
                           restore_env(target, directory, PATH=path_with(meddler)), timeout=300)
        assert (tmp_path / "bin" / "meddled").exists()  # after the first check: appdb's load
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "appdb: ok" in proc.stdout
        assert "otherdb" in proc.stderr and "already holds tables" in proc.stderr
        with connect(target.address, "otherdb") as conn:
            assert conn.execute("SELECT x FROM arrived").fetchall() == [(7,)]
            assert conn.execute("SELECT to_regclass('public.plain')").fetchone() == (None,)
        with connect(target.address) as conn:
            assert conn.execute("SELECT datname FROM pg_database WHERE datname LIKE "
                                "'otherdb%' ORDER BY 1").fetchall() == [("otherdb",)]

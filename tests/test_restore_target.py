"""``--target-db`` must name a real, ordinary database: an empty name is not POSTGRES_DB, a
template is never restored into, and the maintenance database needs --replace."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers.backups import take_backup
from helpers.cli import (
    NOT_UTF8,
    NOT_UTF8_SHOWN,
    EnvFactory,
    one_error_line,
    run_backupd,
    server_env,
)
from helpers.cluster import PrivateCluster
from helpers.logs import jobs_finished
from helpers.pg import ServerAddress, connect, drop_database, fingerprint, pg_binary, psql


def drop_databases_named(server: ServerAddress, prefix: str) -> list[str]:
    """Drop (and return) every database whose name starts with ``prefix``: what a restore
    kept or left behind, so that each test cleans up whatever it asserts about."""
    names = psql(server, "postgres", "SELECT datname FROM pg_database WHERE "
                 f"starts_with(datname, '{prefix}')").split()
    for name in names:
        drop_database(server, name)
    return names


@pytest.mark.parametrize("name", ["", "   ", "\t"], ids=["empty", "spaces", "tab"])
def test_empty_target_db_is_bad_input_not_postgres_db(
    pg_server: ServerAddress, small_db: str, backupd_env: EnvFactory, name: str,
) -> None:
    env = backupd_env(small_db)
    backup = take_backup(env)
    psql(pg_server, small_db, "DELETE FROM items WHERE id > 10")
    live = fingerprint(pg_server, small_db)

    proc = run_backupd(["restore", backup.name, "--target-db", name, "--replace", "--yes"], env)

    kept = psql(pg_server, "postgres", "SELECT datname FROM pg_database WHERE datname LIKE "
                f"'{small_db}%' AND datname <> '{small_db}'").split()
    for leftover in kept:
        drop_database(pg_server, leftover)
    assert proc.returncode == 2, proc.stderr
    assert "--target-db" in one_error_line(proc.stderr)
    assert kept == []
    assert fingerprint(pg_server, small_db) == live


def test_a_target_db_not_in_utf8_is_bad_input_naming_it(
    pg_server: ServerAddress, small_db: str, backupd_env: EnvFactory,
) -> None:
    # A Latin-1 terminal's "café" (b"caf\xe9"): the length check encoded it, an internal error.
    env = backupd_env(small_db)
    backup = take_backup(env)
    live = fingerprint(pg_server, small_db)

    proc = run_backupd(["restore", backup.name, "--target-db", NOT_UTF8, "--yes"], env)

    assert proc.returncode == 2, proc.stderr
    line = one_error_line(proc.stderr)
    assert line.startswith(f"backupd: error: --target-db: {NOT_UTF8_SHOWN} is not UTF-8"), line
    assert "UTF-8" in line.split("is not UTF-8", 1)[1], line  # and how to give it
    assert "internal error" not in proc.stderr and "Traceback" not in proc.stderr
    assert fingerprint(pg_server, small_db) == live
    assert psql(pg_server, "postgres", "SELECT count(*) FROM pg_database WHERE datname LIKE "
                "'caf%' AND (datname LIKE '%restoring%' OR datname LIKE '%before_restore%')"
                ).strip() == "0"


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivateCluster]:
    """Templates are global: a test that could pollute template1 gets its own server."""
    with PrivateCluster("tpl-pw") as private:
        private.start()
        yield private


def cluster_env(cluster: PrivateCluster, database: str, directory: Path) -> dict[str, str]:
    return server_env(cluster.address, database, directory)

def backup_of_fresh_src(cluster: PrivateCluster, tmp_path: Path,
                        sql: str) -> tuple[dict[str, str], Path]:
    """A new database ``src`` on the private cluster holding ``sql``, and its backup."""
    with connect(cluster.address) as conn:
        conn.execute("DROP DATABASE IF EXISTS src")
        conn.execute("CREATE DATABASE src")
    psql(cluster.address, "src", sql)
    env = cluster_env(cluster, "src", tmp_path / "b")
    return env, take_backup(env)


def _user_tables(cluster: PrivateCluster, database: str) -> int:
    with connect(cluster.address, database) as conn:
        row = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize("template", ["template1", "template0"])
@pytest.mark.parametrize("replace", [False, True], ids=["plain", "replace"])
def test_templates_are_refused(cluster: PrivateCluster, tmp_path: Path, template: str,
                               replace: bool) -> None:
    env, backup = backup_of_fresh_src(cluster, tmp_path,
                                      "CREATE TABLE t (id int); INSERT INTO t VALUES (1);")

    args = ["restore", backup.name, "--target-db", template, "--yes"]
    proc = run_backupd([*args, "--replace"] if replace else args, env)

    assert proc.returncode == 2, proc.stderr
    line = one_error_line(proc.stderr)
    assert "--target-db" in line and "template" in line
    if template == "template1":
        assert _user_tables(cluster, "template1") == 0
    with connect(cluster.address) as conn:
        names = {str(r[0]) for r in conn.execute("SELECT datname FROM pg_database")}
    assert names == {"postgres", "template0", "template1", "src"}


def test_a_database_marked_as_template_is_refused(cluster: PrivateCluster,
                                                  tmp_path: Path) -> None:
    with connect(cluster.address) as conn:
        conn.execute("DROP DATABASE IF EXISTS shared_tpl")
        conn.execute("CREATE DATABASE shared_tpl IS_TEMPLATE true")
    env, backup = backup_of_fresh_src(cluster, tmp_path, "CREATE TABLE t (id int);")

    proc = run_backupd(["restore", backup.name, "--target-db", "shared_tpl", "--yes"], env)

    assert proc.returncode == 2, proc.stderr
    assert "template" in one_error_line(proc.stderr)
    assert _user_tables(cluster, "shared_tpl") == 0


def test_the_maintenance_database_needs_replace(cluster: PrivateCluster,
                                                tmp_path: Path) -> None:
    env, backup = backup_of_fresh_src(cluster, tmp_path,
                                      "CREATE TABLE t (id int); INSERT INTO t VALUES (1);")

    proc = run_backupd(["restore", backup.name, "--target-db", "postgres", "--yes"], env)

    assert proc.returncode == 2, proc.stderr
    line = one_error_line(proc.stderr)
    assert "--target-db" in line and "--replace" in line and "maintenance" in line
    assert _user_tables(cluster, "postgres") == 0


def test_the_maintenance_database_is_replaced_with_replace(cluster: PrivateCluster,
                                                           tmp_path: Path) -> None:
    with connect(cluster.address) as conn:
        conn.execute("DROP DATABASE IF EXISTS src")
        conn.execute("CREATE DATABASE src")
    psql(cluster.address, "src", "CREATE TABLE t (id int); INSERT INTO t VALUES (1);")
    psql(cluster.address, "postgres", "CREATE TABLE old_stuff (id int)")
    env = cluster_env(cluster, "src", tmp_path / "b")
    backup = take_backup(env)

    proc = run_backupd(["restore", backup.name, "--target-db", "postgres", "--replace",
                        "--yes"], env)

    assert proc.returncode == 0, proc.stderr
    assert _user_tables(cluster, "postgres") == 1
    with connect(cluster.address) as conn:
        kept = [str(r[0]) for r in conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE 'postgres_before_restore_%'")]
        assert len(kept) == 1
        assert _user_tables(cluster, kept[0]) == 1  # old_stuff: kept, not lost
        conn.execute(f'DROP DATABASE "{kept[0]}"')
        conn.execute("DROP TABLE t")


@pytest.mark.parametrize("holding", [
    "SELECT lo_from_bytea(0, 'the only copy of a scanned contract')",
    "CREATE PUBLICATION everything FOR ALL TABLES",
    "CREATE COLLATION public.german (provider = icu, locale = 'de-DE')",
], ids=["large-object", "publication", "collation"])
def test_a_previous_database_holding_only_what_is_not_a_table_is_kept(
        pg_server: ServerAddress, small_db: str, backupd_env: EnvFactory,
        make_db: Callable[..., str], holding: str) -> None:
    # No table, so it may be restored into; but it is not empty, so it must not be dropped.
    target = make_db()
    psql(pg_server, target, holding)
    backup = take_backup(backupd_env(small_db))

    proc = run_backupd(["restore", backup.name, "--target-db", target, "--yes"],
                       backupd_env(small_db))

    kept = drop_databases_named(pg_server, f"{target}_before_restore_")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(kept) == 1, proc.stderr[-2000:]
    assert "kept as" in proc.stderr


def test_a_previous_database_holding_nothing_is_dropped(
        pg_server: ServerAddress, small_db: str, backupd_env: EnvFactory,
        make_db: Callable[..., str]) -> None:
    target = make_db()
    backup = take_backup(backupd_env(small_db))

    proc = run_backupd(["restore", backup.name, "--target-db", target, "--yes"],
                       backupd_env(small_db))

    kept = drop_databases_named(pg_server, f"{target}_before_restore_")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert kept == [] and "held nothing; it was dropped" in proc.stderr


def test_replacing_a_database_that_takes_no_connections_succeeds_and_keeps_it(
        pg_server: ServerAddress, small_db: str, backupd_env: EnvFactory,
        make_db: Callable[..., str]) -> None:
    # Nobody can connect to the previous database to see whether it held anything: it is
    # kept (it did hold tables), and the restore that did succeed is reported as such.
    backup = take_backup(backupd_env(small_db))
    target = make_db()
    psql(pg_server, target, "CREATE TABLE precious (id int); INSERT INTO precious VALUES (1)")
    psql(pg_server, "postgres", f'ALTER DATABASE "{target}" ALLOW_CONNECTIONS false')

    proc = run_backupd(["restore", backup.name, "--target-db", target, "--replace", "--yes"],
                       backupd_env(small_db))

    kept = drop_databases_named(pg_server, f"{target}_before_restore_")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(kept) == 1 and "kept as" in proc.stderr


def test_a_failed_restore_whose_cleanup_fails_still_says_why_it_failed(
        pg_server: ServerAddress, small_db: str, backupd_env: EnvFactory,
        make_db: Callable[..., str], tmp_path: Path) -> None:
    # psql fails, and the administrative session that would drop the scratch database is
    # gone too (a server restart, a network cut): the failure reported is psql's, and the
    # scratch database left behind is named (the next restore into the target drops it).
    from backupd.postgres.connection import lock_key
    backup = take_backup(backupd_env(small_db))
    target = make_db()
    key = lock_key("restore", target)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "psql").write_text(
        "#!/bin/sh\ncat > /dev/null\n"
        f"'{pg_binary('psql')}' -d postgres -Atqc \"SELECT pg_terminate_backend(pid) FROM "
        "pg_locks WHERE locktype = 'advisory' AND ((classid::bigint << 32) | objid::bigint) "
        f"= {key}\" > /dev/null\n"
        "echo 'ERROR:  the restore broke here' >&2\nexit 3\n")
    (bin_dir / "psql").chmod(0o755)
    # One session: this psql reads everything and executes nothing, so with worker sessions
    # (DB_RESTORE_JOBS > 1) the stream would wait before post-data for data commits that a
    # real psql makes as it reads, until the stall watchdog ended the job.
    env = backupd_env(small_db, PATH=f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
                      DB_RESTORE_JOBS="1")

    proc = run_backupd(["restore", backup.name, "--target-db", target, "--yes"], env)

    left = drop_databases_named(pg_server, f"{target}__restoring_")
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "the restore broke here" in proc.stderr.splitlines()[-1]
    assert "internal error" not in proc.stderr
    assert len(left) == 1 and left[0] in proc.stderr


def test_a_locale_the_maintenance_database_cannot_hold_fails_naming_the_database_creation(
        tmp_path: Path) -> None:
    """Creating the scratch database is the one step of a restore that sends what no step
    before it sent: the backed-up database's locale (the names it sends, the target's and
    those made from it, went out first when the target was locked). A LATIN1 cluster whose
    maintenance database's sessions speak UTF8 (ALTER DATABASE postgres SET client_encoding),
    restoring a UTF8 database of ICU locale 'de-日本': the server cannot take 日 into LATIN1,
    and the failure says it was creating the database (restore_target's as_text texts: this
    one can show), and why: the maintenance database's encoding lacks 日 (it said the name
    was not UTF-8, and to rename it). Nothing is left."""
    with PrivateCluster("icu-locale-pw", encoding="LATIN1") as cluster:
        cluster.start()
        psql(cluster.address, "postgres", "CREATE DATABASE u8 ENCODING 'UTF8' "
             "LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
        with connect(cluster.address, "u8") as conn:  # a UTF8 database's session can send 日
            conn.execute("CREATE DATABASE app ENCODING 'UTF8' LOCALE_PROVIDER icu "
                         "ICU_LOCALE 'de-日本' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
        psql(cluster.address, "app", "CREATE TABLE t (x int); INSERT INTO t VALUES (1);")
        psql(cluster.address, "postgres",
             "ALTER DATABASE postgres SET client_encoding = 'UTF8'")
        env = server_env(cluster.address, "app", tmp_path / "b", HEALTH_PORT="0")
        backup = take_backup(env)

        proc = run_backupd(["restore", backup.name, "--target-db", "app_copy", "--yes"], env,
                           timeout=300)

        said = proc.stdout + proc.stderr
        assert proc.returncode == 1, said
        assert "internal error" not in said and "Traceback" not in said, said
        [failed] = jobs_finished(proc.stderr, "restore", "failed")
        assert "for creating database 'app_copy__restoring_" in failed["error"], failed
        assert "ICU locale 'de-日本'" in failed["error"], failed
        assert ("database 'postgres' (the session it is sent on) is LATIN1, which cannot "
                "hold its character '日'") in failed["error"], failed
        assert "not UTF-8" not in failed["error"], failed
        assert drop_databases_named(cluster.address, "app_copy") == []

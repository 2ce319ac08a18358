"""A restore onto a LATIN1 cluster (initdb --encoding=LATIN1 --locale=C) of a UTF8 database
whose locale, default tablespace or target name holds a character Latin-1 lacks.

A restore sends those on its maintenance database's session ('postgres', LATIN1 here).
psycopg encoded them in the session's client encoding (LATIN1 by default) and failed before
sending: `internal error: UnicodeEncodeError`. With the session's client encoding UTF8 the
server refused them (22P05), and the failure said a name "is not UTF-8" and to rename it.
Either way the real cause is that database's encoding: the failure says so, in one line,
naming what was sent and the way out. On a UTF8 server, a session whose client encoding is
LATIN1 sends what the server can hold (backupd.postgres.connection.as_text)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.backups import take_backup
from helpers.cli import run_backupd, server_env
from helpers.cluster import PrivateCluster
from helpers.logs import jobs_finished, warnings_logged
from helpers.pg import ServerAddress, connect, drop_database, fingerprint, psql
from helpers.tablespaces import tablespace_directory

pytestmark = pytest.mark.slow

SPACE = "espace_日"  # made from a UTF8 database's session, as its bytes are UTF-8
# The client encodings of backupd's sessions: the default (the database's, LATIN1) and UTF8.
CLIENT_ENCODINGS = [pytest.param({}, id="default"),
                    pytest.param({"PGCLIENTENCODING": "UTF8"}, id="utf8")]


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivateCluster]:
    with PrivateCluster("latin1-pw", encoding="LATIN1") as cluster:
        cluster.start()
        psql(cluster.address, "postgres", "CREATE DATABASE u8 ENCODING 'UTF8' "
             "LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
        directory = tablespace_directory(cluster, "ts_utf8")
        with connect(cluster.address, "u8") as conn:  # a UTF8 database's session can send 日
            conn.execute("CREATE DATABASE icu ENCODING 'UTF8' LOCALE_PROVIDER icu "
                         "ICU_LOCALE 'de-日本' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
            conn.execute(f"CREATE TABLESPACE \"{SPACE}\" LOCATION '{directory}'")
            conn.execute("CREATE DATABASE spaced ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' "
                         f"TEMPLATE template0 TABLESPACE \"{SPACE}\"")
            conn.execute("CREATE DATABASE commented ENCODING 'UTF8' LC_COLLATE 'C' "
                         "LC_CTYPE 'C' TEMPLATE template0")
            conn.execute("COMMENT ON DATABASE commented IS 'été 日本'")
        for database in ("icu", "spaced", "commented"):
            psql(cluster.address, database, "CREATE TABLE t (x int); INSERT INTO t VALUES (1);")
        yield cluster


def restore_failure(cluster: PrivateCluster, tmp_path: Path, database: str, target: str,
                    client: dict[str, str]) -> str:
    """The one-line error of a restore of ``database`` into ``target`` that failed cleanly
    (exit 1, no internal error), having left no database behind."""
    env = server_env(cluster.address, database, tmp_path / "b", HEALTH_PORT="0")
    backup = take_backup(env)
    before = databases(cluster.address)
    proc = run_backupd(["restore", backup.name, "--target-db", target, "--yes"],
                       {**env, **client}, timeout=300)
    said = proc.stdout + proc.stderr
    assert proc.returncode == 1, said
    assert "internal error" not in said and "Traceback" not in said, said
    [failed] = jobs_finished(proc.stderr, "restore", "failed")
    error = str(failed["error"])
    assert "\n" not in error, error
    assert "not UTF-8" not in error, error  # the name is UTF-8: the encoding is the cause
    assert databases(cluster.address) == before
    return error


def databases(server: ServerAddress) -> list[str]:
    return sorted(psql(server, "postgres", "SELECT datname FROM pg_database").split())


@pytest.mark.parametrize("client", CLIENT_ENCODINGS)
def test_a_locale_latin1_cannot_hold_fails_saying_so(
        cluster: PrivateCluster, tmp_path: Path, client: dict[str, str]) -> None:
    error = restore_failure(cluster, tmp_path, "icu", "icu_copy", client)
    assert "ICU locale 'de-日本'" in error, error
    assert "creating database 'icu_copy__restoring_" in error, error
    assert "database 'postgres'" in error and "LATIN1" in error, error
    assert "cannot hold its character '日' (U+65E5)" in error, error
    assert "ENCODING 'UTF8'" in error, error  # the way out: a UTF8 maintenance database


def test_a_tablespace_name_latin1_cannot_hold_fails_saying_so(
        cluster: PrivateCluster, tmp_path: Path) -> None:
    """On a LATIN1 session the tablespace's UTF-8 bytes read as the backup's name, so the
    restore means to create the database there. (A UTF8 session reads them converted from
    Latin-1, matching no name: the database goes to the default tablespace, with a
    warning, as before.)"""
    error = restore_failure(cluster, tmp_path, "spaced", "spaced_copy", {})
    assert f"tablespace '{SPACE}'" in error, error
    assert "database 'postgres'" in error and "LATIN1" in error, error
    assert "cannot hold its character '日' (U+65E5)" in error, error
    assert "ALTER TABLESPACE" in error and "ENCODING 'UTF8'" in error, error


@pytest.mark.parametrize("client", CLIENT_ENCODINGS)
def test_a_target_name_latin1_cannot_hold_fails_saying_so(
        cluster: PrivateCluster, tmp_path: Path, client: dict[str, str]) -> None:
    error = restore_failure(cluster, tmp_path, "spaced", "copie_日", client)
    assert "database name 'copie_日'" in error, error
    assert "the restore into 'copie_日'" in error, error
    assert "database 'postgres'" in error and "LATIN1" in error, error
    assert "cannot hold its character '日' (U+65E5)" in error, error
    assert "--target-db" in error, error


def test_a_comment_latin1_cannot_hold_is_a_property_not_restored(
        cluster: PrivateCluster, tmp_path: Path) -> None:
    """A database property the maintenance database cannot hold is what any property the
    server refuses is: one warning, the database restored (psycopg's UnicodeEncodeError
    escaped the property's savepoint: an internal error, the restore undone)."""
    env = server_env(cluster.address, "commented", tmp_path / "b", HEALTH_PORT="0")
    backup = take_backup(env)
    try:
        proc = run_backupd(["restore", backup.name, "--target-db", "commented_copy", "--yes"],
                           env, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        [warning] = [w for w in warnings_logged(proc.stderr) if "not restored" in w]
        assert warning.startswith("database property not restored: comment: "), warning
        assert 'has no equivalent in encoding "LATIN1"' in warning, warning
        assert psql(cluster.address, "commented_copy", "SELECT x FROM t").split() == ["1"]
    finally:
        drop_database(cluster.address, "commented_copy")


def test_a_client_encoding_that_cannot_hold_a_name_on_sql_ascii_says_so(
        tmp_path: Path) -> None:
    """A SQL_ASCII server converts nothing, so a session whose client encoding is LATIN1
    stays so (as_text switches only a SQL_ASCII client to UTF8 there): psycopg cannot encode
    日, which was an internal error. The failure names the client encoding instead."""
    with PrivateCluster("ascii-pw", encoding="SQL_ASCII") as cluster:
        cluster.start()
        psql(cluster.address, "postgres", "CREATE DATABASE app")
        psql(cluster.address, "app", "CREATE TABLE t (x int); INSERT INTO t VALUES (1);")
        error = restore_failure(cluster, tmp_path, "app", "copie_日",
                                {"PGCLIENTENCODING": "LATIN1"})
    assert "database name 'copie_日'" in error, error
    assert "the session's client encoding is LATIN1" in error, error
    assert "cannot hold its character '日' (U+65E5)" in error, error
    assert "PGCLIENTENCODING" in error, error


def test_a_latin1_session_sends_what_a_utf8_server_holds(
        pg_server: ServerAddress, small_db: str, tmp_path: Path) -> None:
    """The client encoding is not the server's: on a UTF8 server, a session whose client
    encoding is LATIN1 could not send 'copie_日' (psycopg's UnicodeEncodeError), though the
    server holds it. as_text sends it as UTF8, and the restore completes."""
    target = "copie_日"
    env = server_env(pg_server, small_db, tmp_path / "b")
    backup = take_backup(env)
    try:
        proc = run_backupd(["restore", backup.name, "--target-db", target, "--yes"],
                           {**env, "PGCLIENTENCODING": "LATIN1"}, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert fingerprint(pg_server, target) == fingerprint(pg_server, small_db)
    finally:
        drop_database(pg_server, target)

"""Names that are not UTF-8 on a UTF8 cluster with one SQL_ASCII database (a mixed cluster):
a session on the SQL_ASCII database takes any bytes for a name of the server's (a database,
a role), and a UTF8 session then receives those bytes as they are -- psycopg's UnicodeDecodeError,
not the server's refusal a SQL_ASCII session gets. The step that needs the name still fails in
one line naming the object, its bytes escaped, and saying to rename it (R17)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers.backups import back_up
from helpers.cli import drill_server_env, not_utf8_failure, run_backupd, server_env
from helpers.cluster import PrivateCluster
from helpers.pg import connect, psql

pytestmark = pytest.mark.slow

LEGACY = ("CREATE DATABASE legacy TEMPLATE template0 ENCODING 'SQL_ASCII' "
          "LC_COLLATE 'C' LC_CTYPE 'C'")
SHOWN_DATABASE = 'database "caf\\xe9"'
SHOWN_ROLE = 'role "r\\xf4le"'


@contextmanager
def mixed(password: str, *statements: bytes) -> Iterator[PrivateCluster]:
    """A UTF8 cluster whose database ``legacy`` is SQL_ASCII, where ``statements`` (bytes as
    a Latin-1 client sends them) were run."""
    with PrivateCluster(password) as cluster:
        cluster.start()
        psql(cluster.address, "postgres", LEGACY + "; CREATE DATABASE app;")
        psql(cluster.address, "app", "CREATE TABLE t (x int); INSERT INTO t VALUES (7);")
        for statement in statements:
            in_legacy(cluster, statement)
        yield cluster


def in_legacy(cluster: PrivateCluster, statement: bytes) -> None:
    """``statement`` sent as it is on a session of the SQL_ASCII database, which takes any
    bytes for a name, the server's (a database's, a role's) too."""
    with connect(cluster.address, "legacy") as conn:
        conn.execute(statement)


@pytest.fixture(scope="module")
def clean() -> Iterator[PrivateCluster]:
    with PrivateCluster("clean-pw") as cluster:
        cluster.start()
        psql(cluster.address, "postgres", "CREATE DATABASE plain;")
        psql(cluster.address, "plain", "CREATE TABLE t (x int); INSERT INTO t VALUES (7);")
        yield cluster


def the_failure(proc: subprocess.CompletedProcess[str], shown: str) -> str:
    line = not_utf8_failure(proc)
    assert shown in line and "on the server" in line, line
    return line


def test_a_drill_server_holding_a_database_named_in_latin1_fails_naming_it(
        clean: PrivateCluster, tmp_path: Path) -> None:
    back_up(clean.address, "plain", tmp_path)
    with mixed("drill-pw", b'CREATE DATABASE "caf\xe9"') as drill:
        proc = run_backupd(["drill"], drill_server_env(
            clean.address, "plain", tmp_path, drill.address, BACKUPD_LOG_FORMAT="console"),
            timeout=300)

    assert "drill server's inventory" in the_failure(proc, SHOWN_DATABASE)


def test_a_live_role_named_in_latin1_fails_the_comparison_of_roles_naming_it(
        clean: PrivateCluster, tmp_path: Path) -> None:
    """pg_dumpall cannot dump such a role (the globals fail naming the bytes), so it came
    after the last backup: the drill's comparison of the live server's roles meets it."""
    with mixed("live-pw") as live:
        back_up(live.address, "app", tmp_path)
        in_legacy(live, b'CREATE ROLE "r\xf4le"')
        proc = run_backupd(["drill"], drill_server_env(
            live.address, "app", tmp_path, clean.address, BACKUPD_LOG_FORMAT="console"),
            timeout=300)

    assert "comparison of roles" in the_failure(proc, SHOWN_ROLE)


def _backup_failure(live: PrivateCluster, directory: Path, shown: str) -> str:
    proc = run_backupd(["backup", "--no-prune"], server_env(
        live.address, "app", directory, DB_BACKUP_GLOBALS="on",
        BACKUPD_LOG_FORMAT="console"), timeout=300)
    line = the_failure(proc, shown)
    assert "pg_dumpall --globals-only" in line, line
    return line


def test_a_role_named_in_latin1_fails_the_globals_naming_it_and_the_rename(
        tmp_path: Path) -> None:
    """pg_dumpall reads every role as UTF-8 text and stops on these bytes, saying only
    ``invalid byte sequence``: the globals' failure names the role and the fix."""
    with mixed("globals-pw", b'CREATE ROLE "r\xf4le"') as live:
        line = _backup_failure(live, tmp_path, SHOWN_ROLE)

    assert "ALTER ROLE … RENAME TO …" in line, line


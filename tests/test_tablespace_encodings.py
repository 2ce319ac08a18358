"""Tablespace names read on sessions whose encoding is not UTF-8, against a real cluster.

pg_tablespace is the whole cluster's: a name is stored in the bytes of the session that
made it. Read on a LATIN1 database's session, a Latin-1 name is decoded as Latin-1 (it was
read as UTF-8 with replacement: ``espace_\\ufffd``, recorded so in the backup's manifest and
matching nothing at restore). A name that cannot be read in the session's encoding (bytes
replaced by U+FFFD) is never taken for one the restore may use: two such names read alike."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.backups import only_backup, read_manifest
from helpers.cli import run_backupd, server_env
from helpers.cluster import PrivateCluster
from helpers.logs import jobs_finished
from helpers.pg import connect, psql
from helpers.tablespaces import relation_tablespaces, tablespace_directory

from backupd.pipeline.tablespace_sets import TablespaceSets
from backupd.postgres.tablespaces import name_codec, object_tablespaces, server_tablespaces

pytestmark = pytest.mark.slow

FALLBACK = "was restored without some of its tablespaces"
LATIN = "latindb"


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivateCluster]:
    with PrivateCluster("names-pw") as cluster:
        cluster.start()
        psql(cluster.address, "postgres", f"CREATE DATABASE {LATIN} ENCODING 'LATIN1' "
             "LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
        with connect(cluster.address, LATIN) as conn:
            assert conn.info.parameter_status("client_encoding") == "LATIN1"
            for name in ("espace_é", "espace_è"):  # stored as \xe9 and \xe8
                directory = tablespace_directory(cluster, f"ts_{name.encode().hex()}")
                conn.execute(f"CREATE TABLESPACE \"{name}\" LOCATION '{directory}'")
            conn.execute('CREATE TABLE here (x int) TABLESPACE "espace_é"')
            conn.execute("INSERT INTO here VALUES (1), (2)")
        yield cluster


def test_a_latin1_session_reads_the_names_in_latin1(cluster: PrivateCluster) -> None:
    with connect(cluster.address, LATIN) as conn:
        found = server_tablespaces(conn)
        assert {"espace_é", "espace_è"} <= found.creatable, found
        assert object_tablespaces(conn) == ["espace_é"]


def test_names_read_in_the_sessions_encoding_say_which_it_was(cluster: PrivateCluster) -> None:
    """With no encoding asked for (a backup older than its database properties), the names
    are read in the session's, which is recorded: a plain dump's are then decoded in that
    same one, so espace_é is kept, not taken for a tablespace the server lacks."""
    with connect(cluster.address, LATIN) as conn:
        spaces = server_tablespaces(conn)
    assert spaces.encoding == "LATIN1"
    sets = TablespaceSets(spaces.present, name_codec(spaces.encoding))
    assert sets.rewrite('SET default_tablespace = "espace_é";\n'.encode("latin-1"), 0) is None
    assert not sets.left_out


@pytest.mark.parametrize("backup_format", ["custom", "plain"])
def test_a_backup_of_a_latin1_database_restores_into_its_tablespace(
        cluster: PrivateCluster, tmp_path: Path, backup_format: str) -> None:
    env = server_env(cluster.address, LATIN, tmp_path / "b", DB_BACKUP_FORMAT=backup_format)
    backed_up = run_backupd(["backup"], env, timeout=300)
    assert backed_up.returncode == 0, backed_up.stdout + backed_up.stderr
    dump = only_backup(tmp_path / "b")
    assert read_manifest(dump)["object_tablespaces"] == ["espace_é"]
    try:
        proc = run_backupd(["restore", dump.name, "--target-db", "latin_copy", "--yes"], env,
                           timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        [result] = jobs_finished(proc.stderr, "restore")
        assert [w for w in result["warnings"] if FALLBACK in w] == []
        assert relation_tablespaces(cluster.address, "latin_copy") == {"here": "espace_é"}
    finally:
        psql(cluster.address, "postgres", "DROP DATABASE IF EXISTS latin_copy")


def test_a_name_that_cannot_be_read_is_never_one_the_restore_uses(
        cluster: PrivateCluster, tmp_path: Path) -> None:
    """A SQL_ASCII database's table is in ``gone_\xe9``: its backup records
    ``gone_\ufffd``. By restore time that tablespace is gone and ``gone_\xe8``, which reads
    the same, is there: taken for the backup's, the restore failed on the missing one. It
    goes to the default tablespace, and the warning says the name could not be read."""
    psql(cluster.address, "postgres", "CREATE DATABASE legacy ENCODING 'SQL_ASCII' "
         "LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
    directories = [tablespace_directory(cluster, f"ts_gone_{n}") for n in ("e9", "e8")]
    try:
        with connect(cluster.address, "legacy") as conn:
            for raw, directory in zip((b"\xe9", b"\xe8"), directories, strict=True):
                conn.execute(b'CREATE TABLESPACE "gone_' + raw + b'" LOCATION '
                             + f"'{directory}'".encode())
            conn.execute(b'CREATE TABLE t (x int) TABLESPACE "gone_\xe9"')
            conn.execute("INSERT INTO t VALUES (3)")
            assert object_tablespaces(conn) == ["gone_\ufffd"]
        env = server_env(cluster.address, "legacy", tmp_path / "b", DB_BACKUP_FORMAT="custom")
        backed_up = run_backupd(["backup"], env, timeout=300)
        assert backed_up.returncode == 0, backed_up.stdout + backed_up.stderr
        dump = only_backup(tmp_path / "b")
        assert read_manifest(dump)["object_tablespaces"] == ["gone_\ufffd"]
        with connect(cluster.address, "legacy") as conn:
            conn.execute("DROP TABLE t")
            conn.execute(b'DROP TABLESPACE "gone_\xe9"')

        proc = run_backupd(["restore", dump.name, "--target-db", "legacy_copy", "--yes"], env,
                           timeout=300)

        assert proc.returncode == 0, proc.stdout + proc.stderr
        with connect(cluster.address, "legacy_copy") as conn:
            assert conn.execute("SELECT x, pg_relation_filepath('t') LIKE 'base/%' FROM t"
                                ).fetchone() == (3, True)  # in pg_default
        [result] = jobs_finished(proc.stderr, "restore")
        [warning] = [w for w in result["warnings"] if FALLBACK in w]
        assert "could not be read reliably" in warning, warning
        assert "make 'gone_" not in warning, warning
    finally:
        with connect(cluster.address, "legacy") as conn:
            for raw in (b"\xe9", b"\xe8"):
                conn.execute(b'DROP TABLESPACE IF EXISTS "gone_' + raw + b'"')
        psql(cluster.address, "postgres", "DROP DATABASE IF EXISTS legacy_copy; "
                                          "DROP DATABASE legacy")

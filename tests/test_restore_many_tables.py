"""A database of thousands of tables restores at default server settings: one transaction
over the whole restore would hold a lock per table, index and sequence and exhaust the
server's lock table ("out of shared memory"). Private cluster, at PostgreSQL's default
max_connections and max_locks_per_transaction (the lock table's size): running out of
shared lock memory would hurt every other session on the shared server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.backups import sql_of, take_backup
from helpers.cli import run_backupd, server_env
from helpers.cluster import PrivateCluster
from helpers.pg import connect, psql

TABLES = 3000
pytestmark = pytest.mark.slow  # about 40 s: 3,000 tables created, dumped and restored twice


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivateCluster]:
    with PrivateCluster("many-pw", server_settings={"max_connections": "100"}) as private:
        private.start()
        psql(private.address, "postgres", "CREATE DATABASE many")
        psql(private.address, "many", f"""
            DO $$ BEGIN FOR i IN 1..{TABLES} LOOP
                EXECUTE format('CREATE TABLE t%s (id serial PRIMARY KEY, v text)', i);
                EXECUTE format('INSERT INTO t%s (v) VALUES (%L)', i, 'row of ' || i);
                IF i % 500 = 0 THEN COMMIT; END IF;
            END LOOP; END $$;""")
        yield private


def table_count(cluster: PrivateCluster, database: str) -> int:
    with connect(cluster.address, database) as conn:
        row = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
                           ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize("args", [["--target-db", "many_copy"], ["--replace"]],
                         ids=["new", "replace"])
def test_thousands_of_tables_restore_at_default_settings(
        cluster: PrivateCluster, tmp_path: Path, args: list[str]) -> None:
    env = server_env(cluster.address, "many", tmp_path / "b")
    backup = take_backup(env)
    target = "many_copy" if "--target-db" in args else "many"

    proc = run_backupd(["restore", backup.name, "--yes", *args], env, timeout=600)

    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "out of shared memory" not in proc.stderr
    assert table_count(cluster, target) == TABLES
    assert psql(cluster.address, target, f"SELECT v FROM t{TABLES}").strip() == f"row of {TABLES}"
    with connect(cluster.address) as conn:
        leftovers = [str(r[0]) for r in conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE '%\\_\\_restoring\\_%'")]
        assert leftovers == []
        if target == "many_copy":
            conn.execute("DROP DATABASE many_copy")
        else:
            for (kept,) in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE "
                                        "'many_before_restore_%'").fetchall():
                conn.execute(f'DROP DATABASE "{kept}"')
    assert b"Data for Name: t1;" in sql_of(backup)  # pg_dump's headers, where commits go

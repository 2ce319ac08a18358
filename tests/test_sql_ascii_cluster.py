"""A legacy cluster made with ``initdb -E SQL_ASCII --locale=C``: psycopg hands every name
it reads from the catalogs back as bytes there, as it cannot know their encoding. Each
command must read them as text (backupd.postgres.connection.as_text): a restore over the
live database, a drill beside it and a whole-cluster drill onto a SQL_ASCII drill server
all succeed, where they failed with "internal error" (role "b'postgres'" does not exist;
SQL identifier parts must be strings, got b'public'). A database named in UTF-8 that is
not ASCII (``café``) is backed up, verified, restored and drilled like the others: psycopg
cannot send its name on a SQL_ASCII session (UnicodeEncodeError, 'ascii' codec)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from helpers.backups import back_up, read_manifest, take_backup
from helpers.cli import run_backupd, server_env, start_backupd, stop_backupd
from helpers.cluster import PrivateCluster
from helpers.faults import wait_until
from helpers.logs import jobs_finished, log_events
from helpers.pg import connect, psql
from helpers.recovered import pitr_cluster, wait_first_base_backup
from helpers.wal import holds, spool_dir

from backupd.archive.server import create_slot, drop_slot, slot_state

pytestmark = pytest.mark.slow

CAFE = "café"  # UTF-8 bytes, which a SQL_ASCII cluster keeps as they are
DATABASES = f"appdb,second,{CAFE}"


def legacy_cluster(password: str) -> PrivateCluster:
    return PrivateCluster(password, encoding="SQL_ASCII")


def text_connect(cluster: PrivateCluster, database: str = "postgres",
                 ) -> psycopg.Connection[tuple[Any, ...]]:
    """The test's own reads, as text (the names here are all ASCII)."""
    conn = connect(cluster.address, database)
    conn.execute("SET client_encoding = 'UTF8'")
    return conn


@pytest.fixture(scope="module")
def live() -> Iterator[PrivateCluster]:
    with legacy_cluster("live-pw") as cluster:
        cluster.start()
        psql(cluster.address, "postgres", """
            CREATE ROLE app LOGIN;
            CREATE DATABASE appdb OWNER app;
            CREATE DATABASE second;""")
        with connect(cluster.address) as conn:  # psql would send the name as SQL_ASCII too
            conn.execute(f'CREATE DATABASE "{CAFE}"'.encode())
        with connect(cluster.address, CAFE) as conn:
            conn.execute(b"CREATE TABLE menu (id int PRIMARY KEY, dish text); "
                         b"INSERT INTO menu SELECT i, 'dish ' || i FROM generate_series(1, 20) i")
        psql(cluster.address, "appdb", """
            SET ROLE app;
            CREATE TABLE notes (id int PRIMARY KEY, body text);
            INSERT INTO notes SELECT i, 'note ' || i FROM generate_series(1, 50) i;""")
        psql(cluster.address, "second", "CREATE TABLE t (x int); INSERT INTO t VALUES (7);")
        with connect(cluster.address) as conn:
            assert conn.info.parameter_status("server_encoding") == "SQL_ASCII"
            assert conn.info.parameter_status("client_encoding") == "SQL_ASCII"
        yield cluster


def menu(cluster: PrivateCluster, database: str = CAFE) -> tuple[object, ...] | None:
    with text_connect(cluster, database) as conn:
        return conn.execute("SELECT count(*), sum(id) FROM menu").fetchone()


def notes(cluster: PrivateCluster) -> tuple[object, ...] | None:
    with text_connect(cluster, "appdb") as conn:
        return conn.execute("SELECT count(*), sum(id), pg_get_userbyid(relowner) "
                            "FROM notes, pg_class WHERE relname = 'notes' "
                            "GROUP BY relowner").fetchone()


def test_a_restore_over_the_live_database_succeeds(live: PrivateCluster,
                                                    tmp_path: Path) -> None:
    back_up(live.address, DATABASES, tmp_path / "b")
    with connect(live.address, "appdb") as conn:
        conn.execute("DELETE FROM notes WHERE id > 10")  # what the restore must bring back
    with text_connect(live, CAFE) as conn:
        conn.execute("DELETE FROM menu WHERE id > 5")

    proc = run_backupd(["restore", "--latest", "--replace", "--yes"],
                       server_env(live.address, DATABASES, tmp_path / "b"), timeout=300)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert notes(live) == (50, 1275, "app")
    assert menu(live) == (20, 210)
    with text_connect(live) as conn:
        kept = [str(r[0]) for r in conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE '%\\_before\\_restore\\_%'")]
        for name in kept:
            conn.execute(f'DROP DATABASE "{name}"')
    assert sorted(name.split("_before_")[0] for name in kept) == ["appdb", CAFE, "second"]


def test_a_database_named_in_utf8_verifies_and_restores_into_a_new_database(
        live: PrivateCluster, tmp_path: Path) -> None:
    env = server_env(live.address, CAFE, tmp_path)
    backup = take_backup(env)

    verified = run_backupd(["verify", backup.name], env, timeout=300)
    restored = run_backupd(["restore", "--latest", "--target-db", "copié", "--yes"], env,
                           timeout=300)

    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert menu(live, "copié") == (20, 210)
    with text_connect(live) as conn:
        conn.execute('DROP DATABASE "copié"')


def test_a_drill_beside_a_database_named_in_utf8_passes(live: PrivateCluster,
                                                         tmp_path: Path) -> None:
    env = server_env(live.address, CAFE, tmp_path)
    take_backup(env)

    proc = run_backupd(["drill"], env, timeout=300)

    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_drill_beside_the_live_database_passes(live: PrivateCluster, tmp_path: Path) -> None:
    back_up(live.address, "appdb", tmp_path / "b")

    proc = run_backupd(["drill"], server_env(live.address, "appdb", tmp_path / "b"),
                       timeout=300)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "internal error" not in proc.stderr


def test_a_whole_cluster_drill_onto_a_sql_ascii_drill_server_passes(
        live: PrivateCluster, tmp_path: Path) -> None:
    back_up(live.address, DATABASES, tmp_path / "b")
    with legacy_cluster("drill-pw") as drill:
        drill.start()
        proc = run_backupd(["drill"], server_env(
            live.address, DATABASES, tmp_path / "b", DRILL_POSTGRES_HOST=drill.address.host,
            DRILL_POSTGRES_PORT=str(drill.port), DRILL_POSTGRES_PASSWORD="drill-pw"),
            timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        with text_connect(drill) as conn:  # left as it was found
            assert {str(r[0]) for r in conn.execute("SELECT datname FROM pg_database")} == {
                "postgres", "template0", "template1"}


LSN = re.compile(r"[0-9A-F]+/[0-9A-F]+")


def test_a_backup_records_the_servers_wal_position_as_text(live: PrivateCluster,
                                                          tmp_path: Path) -> None:
    back_up(live.address, "appdb", tmp_path / "b")
    [dump] = (tmp_path / "b").glob("appdb_*.sql.gz")
    wal_lsn = read_manifest(dump)["wal_lsn"]
    assert isinstance(wal_lsn, str) and LSN.fullmatch(wal_lsn), wal_lsn


def test_mark_reports_the_restore_points_position_as_text(live: PrivateCluster,
                                                          tmp_path: Path) -> None:
    proc = run_backupd(["mark", "sql-ascii-point"],
                       server_env(live.address, "appdb", tmp_path / "b"), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    said = re.search(r"restore point 'sql-ascii-point' at (\S+) ", proc.stdout + proc.stderr)
    assert said is not None, proc.stdout + proc.stderr
    assert LSN.fullmatch(said.group(1)), said.group(1)


def test_the_wal_streamers_own_physical_slot_is_read_as_text(live: PrivateCluster) -> None:
    """Read on every start of the WAL streamer: a slot_type of b'physical' was taken for
    someone else's slot (WAL_SLOT_NAME refused)."""
    with connect(live.address) as conn:
        create_slot(conn, "backupd_sql_ascii")
        try:
            state = slot_state(conn, "backupd_sql_ascii")
        finally:
            drop_slot(conn, "backupd_sql_ascii")
    assert state is not None and state.restart_lsn is not None


def test_a_pitr_drill_of_a_database_named_in_utf8_passes(tmp_path: Path) -> None:
    """`backupd drill` with WAL_ARCHIVE=on: the dump drill, then the PITR drill (recover the
    archive, start a scratch server on it, compare "café" with the live one, find the newest
    durable commit there: its status read as text, not b'committed')."""
    with pitr_cluster("pitr-pw", encoding="SQL_ASCII") as pitr:
        with connect(pitr.cluster.address) as conn:
            conn.execute(f'CREATE DATABASE "{CAFE}"'.encode())
        cafe = connect(pitr.cluster.address, CAFE)
        with cafe:
            cafe.execute(b"CREATE TABLE menu (id int PRIMARY KEY, dish text)")
        daemon = start_backupd(["run"], pitr.env, log_dir=pitr.work / "daemon")
        try:
            wait_first_base_backup(pitr.backup_dir)
            marker = "dish-after-the-base-backup"
            with connect(pitr.cluster.address, CAFE) as conn:
                conn.execute("INSERT INTO menu SELECT i, %s FROM generate_series(1, 20) i",
                             (marker,))
            wait_until(lambda: any(holds(p, marker)
                                   for p in spool_dir(pitr.backup_dir).glob("*.partial")),
                       60, "the rows durable in the local partial")
        finally:
            stop_backupd(daemon, timeout=60)
        env = {**pitr.env, "POSTGRES_DB": CAFE}
        backed_up = run_backupd(["backup", "--no-prune"], env, timeout=300)
        assert backed_up.returncode == 0, backed_up.stdout + backed_up.stderr

        proc = run_backupd(["drill"], env, timeout=600)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    [drill] = jobs_finished(proc.stderr, "drill")
    assert drill["outcome"]["pitr_error"] is None, drill
    assert drill["outcome"]["pitr"]["base_backup"].startswith("base_"), drill
    assert not [w for w in drill["warnings"] if "not checked" in w], drill["warnings"]
    said = [str(event.get("event")) for event in log_events(proc.stderr)]
    assert [line for line in said if line.startswith(f"PITR drill, {CAFE!r}: matches")], said

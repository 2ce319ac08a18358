"""restore --latest of POSTGRES_DB='*' with DB_BACKUP_GLOBALS=off: no globals manifest lists the
newest run's databases, so every database with a verified backup is restored, one dropped
since too (leaving a live one out would lose data; two attempts to tell them apart did).
Each database without a dump in the newest run of '*' is warned of instead, by name, in the
job's result and on the console. Private clusters: a whole-system restore needs a new server."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.backups import read_manifest, write_manifest
from helpers.cli import run_backupd, server_env
from helpers.cluster import PrivateCluster
from helpers.logs import jobs_finished, log_events
from helpers.pg import connect, psql
from helpers.template1 import restore_onto_new

pytestmark = pytest.mark.slow

ClusterFactory = Callable[..., PrivateCluster]

# What the warning says of a database with no dump in the newest run of '*'.
NOT_IN_RUN = "has no backup from the newest run of every database"


def backup_run(env: dict[str, str]) -> None:
    proc = run_backupd(["backup", "--no-prune"], env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def two_databases(cluster: PrivateCluster, directory: Path) -> dict[str, str]:
    """keptdb (one row) and olddb on ``cluster``, and a first run of '*' with the globals
    off into ``directory``; that run's settings."""
    psql(cluster.address, "postgres", "CREATE DATABASE keptdb; CREATE DATABASE olddb;")
    psql(cluster.address, "keptdb", "CREATE TABLE k (x int); INSERT INTO k VALUES (1);")
    psql(cluster.address, "olddb", "CREATE TABLE t (x int); INSERT INTO t VALUES (7);")
    env = server_env(cluster.address, "*", directory, DB_BACKUP_GLOBALS="off")
    backup_run(env)
    return env


def warned(proc: subprocess.CompletedProcess[str]) -> tuple[list[str], list[str]]:
    """The restore's lines saying a database has no backup from the newest run of '*': as
    the job's result has them (every notifier's), and as the console's warnings."""
    [result] = jobs_finished(proc.stderr, job="restore")
    in_result = [str(w) for w in result["warnings"] if NOT_IN_RUN in str(w)]
    on_console = [str(e["event"]) for e in log_events(proc.stderr)
                  if e.get("level") == "warning" and NOT_IN_RUN in str(e.get("event"))]
    return in_result, on_console


def databases_of(cluster: PrivateCluster) -> set[str]:
    with connect(cluster.address) as conn:
        return {str(r[0]) for r in conn.execute("SELECT datname FROM pg_database")}


def test_a_database_dropped_since_is_restored_and_warned_of_with_the_globals_off(
        private_cluster: ClusterFactory, tmp_path: Path) -> None:
    directory = tmp_path / "backups"
    source = private_cluster("source-pw")
    env = two_databases(source, directory)
    [old_dump] = [p.name for p in directory.glob("olddb_*.sql.gz")]
    psql(source.address, "postgres", "DROP DATABASE olddb;")
    psql(source.address, "keptdb", "INSERT INTO k VALUES (2);")
    backup_run(env)
    assert list(directory.glob("globals_*")) == []
    newest_run = read_manifest(max(directory.glob("keptdb_*.sql.gz")))["run_id"]
    target, proc, said = restore_onto_new(private_cluster, directory)
    # Nothing is left out: the rule telling a dropped database from a live one can be wrong.
    assert {"keptdb", "olddb"} <= databases_of(target), said
    with connect(target.address, "keptdb") as conn:
        assert conn.execute("SELECT count(*) FROM k").fetchone() == (2,)
    with connect(target.address, "olddb") as conn:
        assert conn.execute("SELECT x FROM t").fetchall() == [(7,)]
    in_result, on_console = warned(proc)
    assert in_result == on_console and len(in_result) == 1, said
    [line] = in_result
    assert "olddb" in line and "keptdb" not in line, line
    # That one line says why olddb comes from an older run, not also one calling the newest
    # run incomplete: nothing shows it was.
    assert [w for w in jobs_finished(proc.stderr, job="restore")[0]["warnings"]
            if "olddb" in str(w)] == [line], said
    assert "incomplete" not in said, said
    # Which run, its newest backup's time, and what to do if it was dropped.
    stamp = old_dump.removeprefix("olddb_").removesuffix(".sql.gz")
    when = f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]} {stamp[9:11]}:{stamp[11:13]}:{stamp[13:15]}"
    assert when in line and "--database" in line and "delete" in line, line
    run_when = f"{newest_run[:4]}-{newest_run[4:6]}-{newest_run[6:8]} {newest_run[9:11]}:"
    assert run_when in line, line


def test_no_database_is_warned_of_when_none_was_dropped_with_the_globals_off(
        private_cluster: ClusterFactory, tmp_path: Path) -> None:
    directory = tmp_path / "backups"
    source = private_cluster("source-pw")
    env = two_databases(source, directory)
    psql(source.address, "keptdb", "INSERT INTO k VALUES (2);")
    backup_run(env)
    # keptdb's dump of the newest run failed verification (as its manifest records): it was
    # in that run all the same, so it is no database dropped since; restored from the run
    # before, as an incomplete run's database is.
    newest_kept = max(directory.glob("keptdb_*.sql.gz"), key=lambda p: p.name)
    write_manifest(newest_kept, {**read_manifest(newest_kept), "verified": False,
                                 "verify_error": "checksum mismatch"})
    target, proc, said = restore_onto_new(private_cluster, directory)
    assert {"keptdb", "olddb"} <= databases_of(target), said
    with connect(target.address, "keptdb") as conn:
        assert conn.execute("SELECT count(*) FROM k").fetchone() == (1,)
    assert warned(proc) == ([], []), said

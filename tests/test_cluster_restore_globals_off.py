"""restore --latest of POSTGRES_DB='*' with DB_BACKUP_GLOBALS=off: no globals manifest lists
the newest run's databases, so the dumps' own manifests (their run_id) say which databases
that run took. A database dropped since keeps its old dumps (DB_BACKUP_KEEP_MIN), but is not
part of the cluster to bring back; one whose dump in the newest run failed verification is.
Private clusters: a whole-system restore needs a new server."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.backups import read_manifest, write_manifest
from helpers.cli import run_backupd, server_env
from helpers.cluster import PrivateCluster
from helpers.logs import log_events
from helpers.pg import connect, psql

pytestmark = pytest.mark.slow


def backup_run(env: dict[str, str]) -> None:
    proc = run_backupd(["backup", "--no-prune"], env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_database_dropped_since_the_newest_run_is_not_restored_with_the_globals_off(
        tmp_path: Path) -> None:
    directory = tmp_path / "backups"
    with PrivateCluster("source-pw") as source, PrivateCluster("target-pw") as target:
        source.start()
        psql(source.address, "postgres", "CREATE DATABASE keptdb; CREATE DATABASE olddb;")
        psql(source.address, "keptdb", "CREATE TABLE k (x int); INSERT INTO k VALUES (1);")
        psql(source.address, "olddb", "CREATE TABLE t (x int);")
        env = server_env(source.address, "*", directory, DB_BACKUP_GLOBALS="off")
        backup_run(env)
        [first_kept] = [p.name for p in directory.glob("keptdb_*.sql.gz")]
        psql(source.address, "postgres", "DROP DATABASE olddb;")
        psql(source.address, "keptdb", "INSERT INTO k VALUES (2);")
        backup_run(env)
        assert list(directory.glob("olddb_*.sql.gz"))  # still kept
        assert list(directory.glob("globals_*")) == []
        # keptdb's dump of the newest run failed verification (as its manifest records one):
        # it is part of that run, so its previous good dump is restored.
        newest_kept = max(directory.glob("keptdb_*.sql.gz"), key=lambda p: p.name)
        write_manifest(newest_kept, {**read_manifest(newest_kept), "verified": False,
                                     "verify_error": "checksum mismatch"})
        target.start()
        proc = run_backupd(["restore", "--latest", "--yes"],
                           server_env(target.address, "*", directory), timeout=300)
        said = proc.stdout + proc.stderr
        assert proc.returncode == 0, said
        lines = [str(e["event"]) for e in log_events(proc.stderr)
                 if "not restoring olddb" in str(e.get("event"))]
        assert len(lines) == 1 and "not in the newest backup run" in lines[0], said
        assert "--database olddb" in lines[0], lines[0]
        assert "keptdb: ok" in proc.stdout and first_kept in proc.stdout, said
        with connect(target.address) as conn:
            names = {str(r[0]) for r in conn.execute("SELECT datname FROM pg_database")}
        assert "keptdb" in names and "olddb" not in names
        with connect(target.address, "keptdb") as conn:
            assert conn.execute("SELECT count(*) FROM k").fetchone() == (1,)

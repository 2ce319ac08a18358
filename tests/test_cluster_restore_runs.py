"""restore --latest of POSTGRES_DB='*': which run decides the databases to bring back. Only a
run of '*' says what the cluster held: one that did not finish still says what it set out to
take (each of its dump manifests records the list), and a run of another configuration
sharing DB_BACKUP_DIR (a list of databases) says nothing about the others. Private clusters:
a whole-system restore needs a new server."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.backups import MANIFEST_SUFFIX, manifest_path, read_manifest
from helpers.cli import run_backupd, server_env
from helpers.cluster import PrivateCluster
from helpers.pg import ServerAddress, connect, psql
from helpers.template1 import restore_latest

pytestmark = pytest.mark.slow

DATABASES = ("aa_first", "bb_second", "cc_third")  # '*' dumps them in this order, postgres last


def backup_run(server: ServerAddress, databases: str, directory: Path, **extra: str) -> str:
    """One run of ``databases`` into ``directory`` (kept: no prune); it must succeed. Its
    run id, read from its newest dump's manifest."""
    env = server_env(server, databases, directory, **extra)
    proc = run_backupd(["backup", "--no-prune"], env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    newest = max((p for p in directory.glob("*.sql.gz")), key=lambda p: p.name.rsplit("_", 2)[1:])
    run_id = read_manifest(newest)["run_id"]
    assert isinstance(run_id, str)
    return run_id


def rows(server: ServerAddress, database: str) -> int:
    with connect(server, database) as conn:
        row = conn.execute("SELECT count(*) FROM t").fetchone()
    assert row is not None
    return int(row[0])


def databases_on(server: ServerAddress) -> set[str]:
    with connect(server) as conn:
        return {str(r[0]) for r in conn.execute("SELECT datname FROM pg_database")}


def make_databases(server: ServerAddress, names: tuple[str, ...]) -> None:
    for name in names:
        psql(server, "postgres", f"CREATE DATABASE {name};")
        psql(server, name, "CREATE TABLE t (x int); INSERT INTO t VALUES (1);")


def remove_run_artifacts(directory: Path, pattern: str, run_id: str) -> list[str]:
    """What a run killed before it reached them never wrote: the artifacts of ``run_id``
    matching ``pattern``, with their manifests. Their names."""
    gone = []
    for data in directory.glob(pattern):
        if data.name.endswith(MANIFEST_SUFFIX) or read_manifest(data)["run_id"] != run_id:
            continue
        manifest_path(data).unlink()
        data.unlink()
        gone.append(data.name)
    return gone


def test_a_run_of_every_database_killed_part_way_still_brings_back_all_it_set_out_to_take(
        tmp_path: Path) -> None:
    """A run of '*' (globals on) killed after dumping aa_first: its dump of aa_first is the
    newest verified dump, and there are no globals of that run. Its list still names
    bb_second and cc_third: restored from the run before ("incomplete"), not left out."""
    directory = tmp_path / "backups"
    with PrivateCluster("source-pw") as source, PrivateCluster("target-pw") as target:
        source.start()
        make_databases(source.address, DATABASES)
        backup_run(source.address, "*", directory, DB_BACKUP_GLOBALS="on")
        for name in DATABASES:
            psql(source.address, name, "INSERT INTO t VALUES (2);")
        killed = backup_run(source.address, "*", directory, DB_BACKUP_GLOBALS="on")
        # Killed after aa_first: no dump of the later databases, no globals of that run.
        gone = [name for pattern in ("bb_second_*", "cc_third_*", "postgres_*", "globals_*")
                for name in remove_run_artifacts(directory, pattern, killed)]
        assert len(gone) == 4, gone
        target.start()
        proc = restore_latest(target.address, directory)
        said = proc.stdout + proc.stderr
        assert "not restoring" not in said, said
        assert set(DATABASES) <= databases_on(target.address), said
        assert rows(target.address, "aa_first") == 2
        assert rows(target.address, "bb_second") == 1 and rows(target.address, "cc_third") == 1
        assert "that run was incomplete" in said, said


def test_a_list_configuration_sharing_the_directory_does_not_decide_a_restore_of_every(
        tmp_path: Path) -> None:
    """A run of '*' (globals on), then runs of POSTGRES_DB=aa_first,bb_second into the same
    directory, with the globals off and on: neither is a run of '*', so cc_third, in the
    newest run of '*', is restored too (they left it out on the old code)."""
    directory = tmp_path / "backups"
    with PrivateCluster("source-pw") as source, PrivateCluster("target-pw") as target:
        source.start()
        make_databases(source.address, DATABASES)
        backup_run(source.address, "*", directory, DB_BACKUP_GLOBALS="on")
        psql(source.address, "aa_first", "INSERT INTO t VALUES (2);")
        backup_run(source.address, "aa_first,bb_second", directory, DB_BACKUP_GLOBALS="off")
        backup_run(source.address, "aa_first,bb_second", directory, DB_BACKUP_GLOBALS="on")
        target.start()
        proc = restore_latest(target.address, directory)
        said = proc.stdout + proc.stderr
        assert "not restoring" not in said, said
        assert set(DATABASES) <= databases_on(target.address), said
        # Each database from its newest verified dump: aa_first's from the list's run.
        assert rows(target.address, "aa_first") == 2 and rows(target.address, "cc_third") == 1
        assert "incomplete" not in said, said

"""restore --latest of POSTGRES_DB='*' when the newest verified globals manifest is older than
a database's newest backup: the globals were turned off since (DB_BACKUP_GLOBALS=off), or
another configuration sharing the backups (a list) took them. That run's list does not decide
for a database backed up later: it was live after that run, so it is restored, with one
warning saying why. Once a run of '*' is newer than the list's (the globals turned off
since), that run decides the warnings instead, as with the globals off. Private clusters: a
whole-system restore needs a new server."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.backups import back_up, back_up_without_globals, read_manifest, write_manifest
from helpers.cluster import PrivateCluster, databases_on
from helpers.pg import psql
from helpers.template1 import restore_latest, restore_onto_new
from helpers.whole_restore import (
    naming,
    restore_refused,
    rows_of,
    run_as_printed,
    the_way_through,
    warnings_of,
)

pytestmark = pytest.mark.slow

ClusterFactory = Callable[..., PrivateCluster]

# What the warning says of a database the newest globals' run does not list, backed up later.
STALE = "is not in the newest globals backup's run"
# What it says of one not listed there whose newest backup is older than that run.
LOOKS_DROPPED = "looks dropped: it is not in the newest backup run of every database"
# What the globals-off rule says of a database with no backup from the newest run of '*'.
NOT_IN_NEWEST = "has no backup from the newest run of every database"


def globals_then_newdb_without(source: PrivateCluster, directory: Path) -> tuple[str, str]:
    """keptdb and a run of '*' with the globals on; then newdb (rows 7, 8), a row more in
    keptdb, and a run of '*' with the globals off. Both runs' ids."""
    psql(source.address, "postgres", "CREATE DATABASE keptdb;")
    psql(source.address, "keptdb", "CREATE TABLE k (x int); INSERT INTO k VALUES (1);")
    globals_run = back_up(source.address, "*", directory)
    psql(source.address, "postgres", "CREATE DATABASE newdb;")
    psql(source.address, "newdb", "CREATE TABLE n (x int); INSERT INTO n VALUES (7), (8);")
    psql(source.address, "keptdb", "INSERT INTO k VALUES (2);")
    later_run = back_up_without_globals(source.address, "*", directory)
    assert later_run > globals_run
    return globals_run, later_run


def test_a_database_created_after_the_globals_were_turned_off_is_restored(
        private_cluster: ClusterFactory, tmp_path: Path) -> None:
    """newdb is in the newest run of '*', newer than the globals' list: that run decides,
    and newdb, in it, is warned of by no rule."""
    directory = tmp_path / "backups"
    source = private_cluster("source-pw")
    globals_then_newdb_without(source, directory)
    target, proc, said = restore_onto_new(private_cluster, directory)
    assert rows_of(target, "newdb", "n") == [(7,), (8,)], said
    assert rows_of(target, "keptdb", "k") == [(1,), (2,)], said
    warnings = warnings_of(proc)
    assert naming("newdb", warnings) == naming("keptdb", warnings) == [], warnings


def test_one_backed_up_after_the_globals_and_dropped_since_gets_one_warning(
        private_cluster: ClusterFactory, tmp_path: Path) -> None:
    """newdb is in no run after its own, so not in the newest run of '*' (which decides,
    newer than the globals' list): restored all the same, with the one warning, not also
    one calling the newest run incomplete."""
    directory = tmp_path / "backups"
    source = private_cluster("source-pw")
    globals_then_newdb_without(source, directory)
    psql(source.address, "postgres", "DROP DATABASE newdb;")
    back_up_without_globals(source.address, "*", directory)
    target, proc, said = restore_onto_new(private_cluster, directory)
    assert rows_of(target, "newdb", "n") == [(7,), (8,)], said
    [line] = naming("newdb", warnings_of(proc))
    assert NOT_IN_NEWEST in line and "dropped since" in line, line
    assert "incomplete" not in said, said


def test_a_dump_of_another_run_in_the_globals_run_second_is_restored(
        private_cluster: ClusterFactory, tmp_path: Path) -> None:
    """Run ids count whole seconds: a dump recording the globals' run id, of a database that
    run does not list, is of another run (an older version's, or another machine's into
    the same bucket) started in that second, maybe after the list was made: not provably
    older, so restored. Here a list's run (POSTGRES_DB=newdb, globals off) took it: the
    globals' run stays the newest of '*', so its list decides."""
    directory = tmp_path / "backups"
    source = private_cluster("source-pw")
    psql(source.address, "postgres", "CREATE DATABASE keptdb;")
    psql(source.address, "keptdb", "CREATE TABLE k (x int); INSERT INTO k VALUES (1);")
    globals_run = back_up(source.address, "*", directory)
    psql(source.address, "postgres", "CREATE DATABASE newdb;")
    psql(source.address, "newdb", "CREATE TABLE n (x int); INSERT INTO n VALUES (7), (8);")
    back_up_without_globals(source.address, "newdb", directory)
    [newdb_dump] = directory.glob("newdb_*.sql.gz")
    write_manifest(newdb_dump, {**read_manifest(newdb_dump), "run_id": globals_run})
    target, proc, said = restore_onto_new(private_cluster, directory)
    assert rows_of(target, "newdb", "n") == [(7,), (8,)], said
    [line] = naming("newdb", warnings_of(proc))
    assert STALE in line and "same second" in line, line


def three_databases(source: PrivateCluster) -> None:
    """keptdb (row 1), otherdb (row 2) and thirddb (row 3) on ``source``."""
    for name, value in (("keptdb", 1), ("otherdb", 2), ("thirddb", 3)):
        psql(source.address, "postgres", f"CREATE DATABASE {name};")
        psql(source.address, name, f"CREATE TABLE t (x int); INSERT INTO t VALUES ({value});")


def assert_three_came_back(target: PrivateCluster, said: str) -> None:
    for name, value in (("keptdb", 1), ("otherdb", 2), ("thirddb", 3)):
        assert rows_of(target, name, "t") == [(value,)], said


def test_a_database_only_in_a_run_of_every_database_after_a_list_run_is_restored(
        private_cluster: ClusterFactory, tmp_path: Path) -> None:
    """A list configuration with the globals on and a '*' one with them off share the
    directory; the list's run has the newest globals, the '*' run comes after it. A list's
    globals do not decide for '*', and no run of '*' wrote globals: every database comes
    back, and thirddb, in the newest run of '*', is warned of by neither rule."""
    directory = tmp_path / "backups"
    source = private_cluster("source-pw")
    three_databases(source)
    list_run = back_up(source.address, "keptdb,otherdb", directory)
    every_run = back_up_without_globals(source.address, "*", directory)
    assert every_run > list_run
    target, proc, said = restore_onto_new(private_cluster, directory)
    assert_three_came_back(target, said)
    warnings = warnings_of(proc)
    assert [naming(name, warnings) for name in ("keptdb", "otherdb", "thirddb")] == [
        [], [], []], warnings


def test_a_list_run_s_newer_globals_do_not_decide_for_every_database(
        private_cluster: ClusterFactory, tmp_path: Path) -> None:
    """A '*' configuration and a list one, both with the globals on, share the directory;
    the list's run is the newest. Its globals record a run of a list, so the newest globals
    of a run of '*' decide: thirddb, which only '*' backs up, is live and comes back. The
    roles still come from the newest globals (the list's: roles are cluster-wide). Globals
    written before a run recorded whether it was of '*' (an older backupd) may be a list's:
    thirddb and postgres, not on it, are restored all the same, each warned of as looking
    dropped. Review finding (4): the old rule let those globals decide and left both out,
    exit 0."""
    directory = tmp_path / "backups"
    source = private_cluster("source-pw")
    three_databases(source)
    every_run = back_up(source.address, "*", directory)
    list_run = back_up(source.address, "keptdb,otherdb", directory)
    assert list_run > every_run
    target, proc, said = restore_onto_new(private_cluster, directory)
    assert_three_came_back(target, said)
    # thirddb and postgres are in the newest run of '*': nothing to warn of, the list's run
    # after it did not leave them out by being incomplete.
    assert warnings_of(proc) == [], said
    assert f"globals restored from globals_{list_run}" in said, said
    # The same backups as an older version wrote them: no globals says whether it was '*'.
    for globals_file in directory.glob("globals_*.sql.gz"):
        manifest = read_manifest(globals_file)
        manifest.pop("run_of_every", None)
        write_manifest(globals_file, manifest)
    older = private_cluster("older-pw")
    proc = restore_latest(older.address, directory)
    said = proc.stdout + proc.stderr
    assert_three_came_back(older, said)
    warnings = warnings_of(proc)
    for name in ("thirddb", "postgres"):
        [line] = naming(f"'*': {name} ", warnings)
        assert LOOKS_DROPPED in line and f"globals_{list_run}" in line, line
        assert "older backupd" in line and "--database NAME" in line, line
    assert naming("keptdb", warnings) == naming("otherdb", warnings) == [], warnings
    assert "not restoring" not in said, said


def test_a_list_run_s_globals_after_a_run_of_every_database_without_do_not_decide(
        private_cluster: ClusterFactory, tmp_path: Path) -> None:
    """A run of '*' with the globals off, then a list's run with them on: the list's
    globals are the only ones, and do not decide for '*': every database with a backup
    comes back, none warned of (all are in the newest run of '*')."""
    directory = tmp_path / "backups"
    source = private_cluster("source-pw")
    three_databases(source)
    every_run = back_up_without_globals(source.address, "*", directory)
    list_run = back_up(source.address, "keptdb,otherdb", directory)
    assert list_run > every_run
    target, proc, said = restore_onto_new(private_cluster, directory)
    assert_three_came_back(target, said)
    assert warnings_of(proc) == [], said


def test_a_database_whose_dump_after_the_globals_failed_verification_is_restored(
        private_cluster: ClusterFactory, tmp_path: Path) -> None:
    """newdb's only dump after the newest globals' run (a list's, written before runs
    recorded whether they were of '*', so it decides: the run of '*' is older) failed
    verification: its manifest still shows newdb was live after that list was made, so its
    older verified backup is restored, and the one warning says the newest failed
    verification. That dump is a list's run's (POSTGRES_DB=keptdb,newdb): a run of '*'
    after the globals' would decide instead."""
    directory = tmp_path / "backups"
    source = private_cluster("source-pw")
    psql(source.address, "postgres", "CREATE DATABASE keptdb; CREATE DATABASE newdb;")
    psql(source.address, "keptdb", "CREATE TABLE k (x int); INSERT INTO k VALUES (1);")
    psql(source.address, "newdb", "CREATE TABLE n (x int); INSERT INTO n VALUES (7), (8);")
    back_up_without_globals(source.address, "*", directory)
    [verified_dump] = [p.name for p in directory.glob("newdb_*.sql.gz")]
    globals_run = back_up(source.address, "keptdb", directory)
    [globals_file] = directory.glob("globals_*.sql.gz")
    manifest = read_manifest(globals_file)
    manifest.pop("run_of_every", None)
    write_manifest(globals_file, manifest)
    psql(source.address, "newdb", "INSERT INTO n VALUES (9);")
    later_run = back_up_without_globals(source.address, "keptdb,newdb", directory)
    assert later_run > globals_run
    failed = max(directory.glob("newdb_*.sql.gz"), key=lambda p: p.name)
    assert failed.name != verified_dump
    write_manifest(failed, {**read_manifest(failed), "verified": False,
                            "verify_error": "checksum mismatch"})
    target, proc, said = restore_onto_new(private_cluster, directory)
    assert rows_of(target, "newdb", "n") == [(7,), (8,)], said
    assert rows_of(target, "keptdb", "k") == [(1,)], said
    [line] = naming("newdb", warnings_of(proc))
    assert STALE in line and globals_run in line and later_run in line, line
    assert failed.name in line and "did not pass verification" in line, line
    assert verified_dump in line and "--database" in line, line


def test_a_database_live_after_the_globals_with_no_verified_backup_stops_the_restore(
        private_cluster: ClusterFactory, tmp_path: Path) -> None:
    """newdb's only dump, after the globals' run, failed verification: newdb was live then,
    and cannot be brought back. Said as "no longer in the cluster" and left out, a whole-
    system restore would report success without it; it fails before any change instead,
    naming newdb, as for any database of '*' with no verified backup."""
    directory = tmp_path / "backups"
    source = private_cluster("source-pw")
    globals_then_newdb_without(source, directory)
    [only_dump] = directory.glob("newdb_*.sql.gz")
    write_manifest(only_dump, {**read_manifest(only_dump), "verified": False,
                               "verify_error": "checksum mismatch"})
    target, said = restore_refused(private_cluster, directory)
    assert "no verified backup of 'newdb'" in said and "nothing was changed" in said, said
    # In the newest run of '*': not said to look dropped; the others in one command first.
    assert "looks dropped" not in said, said
    way_through = the_way_through(said)
    assert way_through == "backupd restore --latest --skip newdb", said
    assert said.index(way_through) < said.index("see `backupd"), said
    assert "no longer in the cluster" not in said, said
    assert not {"keptdb", "newdb"} & databases_on(target), said
    proc = run_as_printed(target, directory, way_through)
    assert rows_of(target, "keptdb", "k") == [(1,), (2,)], proc.stdout + proc.stderr
    assert "newdb" not in databases_on(target), proc.stdout + proc.stderr


def olddb_dropped_after_the_globals_were_turned_off(source: PrivateCluster,
                                                     directory: Path) -> str:
    """keptdb and olddb (rows 7, 8) in a run of '*' with the globals on (its list names
    olddb); olddb dropped; a run of '*' with the globals off. The later run's id."""
    psql(source.address, "postgres", "CREATE DATABASE keptdb; CREATE DATABASE olddb;")
    psql(source.address, "keptdb", "CREATE TABLE k (x int); INSERT INTO k VALUES (1);")
    psql(source.address, "olddb", "CREATE TABLE n (x int); INSERT INTO n VALUES (7), (8);")
    globals_run = back_up(source.address, "*", directory)
    psql(source.address, "postgres", "DROP DATABASE olddb;")
    later_run = back_up_without_globals(source.address, "*", directory)
    assert later_run > globals_run
    return later_run


def test_a_database_dropped_after_the_globals_were_turned_off_looks_dropped(
        private_cluster: ClusterFactory, tmp_path: Path) -> None:
    """The old globals' list names olddb, but a run of '*' after it (globals off) did not
    take it: that newer run decides the warning, so olddb is restored with the one warning
    that it may have been dropped, not called the victim of an incomplete run."""
    directory = tmp_path / "backups"
    source = private_cluster("source-pw")
    later_run = olddb_dropped_after_the_globals_were_turned_off(source, directory)
    target, proc, said = restore_onto_new(private_cluster, directory)
    assert rows_of(target, "olddb", "n") == [(7,), (8,)], said
    assert rows_of(target, "keptdb", "k") == [(1,)], said
    [line] = naming("olddb", warnings_of(proc))
    assert NOT_IN_NEWEST in line and later_run in line and "dropped since" in line, line
    assert "incomplete" not in said, said


def test_deleting_the_backups_of_one_dropped_after_the_globals_were_turned_off(
        private_cluster: ClusterFactory, tmp_path: Path) -> None:
    """The docs' advice for a dropped database: delete its backups. The old globals' list
    still names olddb, but a newer run of '*' did not take it: the restore brings back the
    others and succeeds, rather than stop for good (the globals, off, never replace that
    list)."""
    directory = tmp_path / "backups"
    source = private_cluster("source-pw")
    olddb_dropped_after_the_globals_were_turned_off(source, directory)
    removed = [path for path in directory.glob("olddb_*") if path.is_file()]
    assert removed
    for path in removed:
        path.unlink()
    target, _proc, said = restore_onto_new(private_cluster, directory)
    assert rows_of(target, "keptdb", "k") == [(1,)], said
    assert "olddb" not in databases_on(target), said

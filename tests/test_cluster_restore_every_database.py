"""restore --latest of POSTGRES_DB='*' restores every database with a backup (but this
configuration's DB_BACKUP_EXCLUDE): a database that looks dropped (not on the newest run of
'*''s list) is restored all the same, with one warning; one that cannot be restored (no
verified backup, only future-dated ones, or none at all though the newest run set out to
take it) stops the restore before any change, naming it. Each test is a review finding
where the rule of the newest run's list left a live database out with exit 0. Private
clusters: a whole-system restore needs a new server."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from helpers.backups import back_up, read_manifest, write_manifest
from helpers.cli import one_error_line, run_backupd, server_env
from helpers.cluster import PrivateCluster, databases_on
from helpers.faketime import clock_at
from helpers.pg import LOCAL, psql
from helpers.template1 import restore_onto_new
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


def keptdb_and(source: PrivateCluster, other: str) -> None:
    """keptdb (row 1) and ``other`` (rows 7, 8) on ``source``."""
    psql(source.address, "postgres", f"CREATE DATABASE keptdb; CREATE DATABASE {other};")
    psql(source.address, "keptdb", "CREATE TABLE t (x int); INSERT INTO t VALUES (1);")
    psql(source.address, other, "CREATE TABLE t (x int); INSERT INTO t VALUES (7), (8);")


def test_a_database_another_configuration_backs_up_is_restored_with_a_warning(
        private_cluster: ClusterFactory, tmp_path: Path) -> None:
    """Review finding (1): configuration B (POSTGRES_DB=big) and A ('*', DB_BACKUP_EXCLUDE=
    big, globals on) share the directory, A's run the newer. big is not on A's list, and
    was left out as "no longer in the cluster", exit 0; it is live, and comes back now,
    with one warning naming it and what to do were it dropped."""
    directory = tmp_path / "backups"
    source = private_cluster("source-pw")
    keptdb_and(source, "big")
    back_up(source.address, "big", directory)
    every_run = back_up(source.address, "*", directory, DB_BACKUP_EXCLUDE="big")
    target, proc, said = restore_onto_new(private_cluster, directory)
    assert rows_of(target, "big", "t") == [(7,), (8,)], said
    assert rows_of(target, "keptdb", "t") == [(1,)], said
    [line] = naming("big", warnings_of(proc))
    assert "big looks dropped" in line and every_run in line, line
    [big_dump] = directory.glob("big_*.sql.gz")
    assert big_dump.name in line and "drop it again" in line, line
    assert "--database NAME" in line and "delete its backups" in line, line
    assert "no longer in the cluster" not in said, said


def test_a_database_with_only_future_dated_backups_stops_the_restore(
        private_cluster: ClusterFactory, tmp_path: Path) -> None:
    """Review finding (3): futuredb's only backup was taken by a machine whose clock is two
    days ahead (or: this DR host's is behind). No backup of it has a time that can be
    true, so none counts as verified-newest; it was left out with exit 0. The restore now
    stops before any change, naming it and the clock (chosen over restoring the future-
    dated backup: every other choice of the newest backup refuses one, and a clock that
    wrong misjudges the other databases' newest too)."""
    directory = tmp_path / "backups"
    source = private_cluster("source-pw")
    keptdb_and(source, "futuredb")
    back_up(source.address, "*", directory, DB_BACKUP_EXCLUDE="futuredb")
    back_up(source.address, "futuredb", directory,
            **clock_at(datetime.now(UTC) + timedelta(days=2)))
    target, said = restore_refused(private_cluster, directory)
    assert "no verified backup of 'futuredb'" in said, said
    assert "dated in the future" in said and "nothing was changed" in said, said
    # Not in the newest run of '*' (its DB_BACKUP_EXCLUDE left it out): said to look dropped.
    assert "futuredb looks dropped" in said, said
    assert not {"keptdb", "futuredb"} & databases_on(target), said
    assert_the_way_through(target, said, "futuredb", "set this host's clock right", directory)


def assert_the_way_through(target: PrivateCluster, said: str, stopped: str, other: str,
                           directory: Path) -> None:
    """The stop says first (before ``other``) the one command restoring every database
    but ``stopped``; run as printed (a host's DB_BACKUP_EXCLUDE never reaches the compose
    container, so the command carries it), it restores keptdb onto ``target``, saying once
    that ``stopped`` was left out as asked."""
    command = the_way_through(said)
    assert command == f"backupd restore --latest --skip {stopped}", said
    assert said.index(command) < said.index(other), said
    proc = run_as_printed(target, directory, command)
    assert rows_of(target, "keptdb", "t") == [(1,)], proc.stdout + proc.stderr
    assert stopped not in databases_on(target), proc.stdout + proc.stderr
    assert naming(stopped, warnings_of(proc)) == [
        f"not restored, as asked: --skip {stopped}"], proc.stderr


def test_a_database_of_the_newest_run_without_any_backup_stops_the_restore(
        private_cluster: ClusterFactory, tmp_path: Path) -> None:
    """Review finding (5): gonedb is on the newest run of '*''s list, but its dump failed
    before writing anything (here: its files removed, what such a run leaves). It was
    "never backed up: not restored" with exit 0; the restore now stops before any change,
    naming it and saying why."""
    directory = tmp_path / "backups"
    source = private_cluster("source-pw")
    keptdb_and(source, "gonedb")
    back_up(source.address, "*", directory)
    removed = [path for path in directory.glob("gonedb_*") if path.is_file()]
    assert removed
    for path in removed:
        path.unlink()
    target, said = restore_refused(private_cluster, directory)
    assert "gonedb in the newest backup run of every database" in said, said
    assert "no backup in" in said and "dump failed before writing anything" in said, said
    assert "nothing was changed" in said, said
    assert "looks dropped" not in said, said  # on the newest run's list: it was live
    assert not {"keptdb", "gonedb"} & databases_on(target), said
    assert_the_way_through(target, said, "gonedb", "take a backup of it", directory)


def test_one_command_gets_past_both_kinds_of_stopped_database(
        private_cluster: ClusterFactory, tmp_path: Path) -> None:
    """Review finding: gonedb has no backup file (stopped while choosing the databases),
    baddb no verified backup (stopped later): the printed command left out only the first
    kind, so run as printed it stopped again on the second. One stop now names both, and
    its one command restores keptdb."""
    directory = tmp_path / "backups"
    source = private_cluster("source-pw")
    keptdb_and(source, "gonedb")
    psql(source.address, "postgres", "CREATE DATABASE baddb;")
    back_up(source.address, "*", directory)
    for path in [p for p in directory.glob("gonedb_*") if p.is_file()]:
        path.unlink()
    [bad] = directory.glob("baddb_*.sql.gz")
    write_manifest(bad, {**read_manifest(bad), "verified": False,
                         "verify_error": "checksum mismatch"})
    target, said = restore_refused(private_cluster, directory)
    assert "gonedb in the newest backup run of every database" in said, said
    assert "no verified backup of 'baddb'" in said and "nothing was changed" in said, said
    command = the_way_through(said)
    assert command == "backupd restore --latest --skip baddb --skip gonedb", said
    assert not {"keptdb", "gonedb", "baddb"} & databases_on(target), said
    proc = run_as_printed(target, directory, command)
    assert rows_of(target, "keptdb", "t") == [(1,)], proc.stdout + proc.stderr
    assert not {"gonedb", "baddb"} & databases_on(target), proc.stdout + proc.stderr
    assert "not restored, as asked: --skip baddb --skip gonedb" in warnings_of(proc)


def test_a_stopped_database_whose_name_holds_a_comma_is_skipped_as_printed(
        private_cluster: ClusterFactory, tmp_path: Path) -> None:
    """DB_BACKUP_EXCLUDE is a comma list with edge spaces trimmed: 'gone, db ' could not be
    written in it. --skip takes one name each, never split; the stop prints it quoted."""
    directory = tmp_path / "backups"
    source = private_cluster("source-pw")
    keptdb_and(source, "other")
    psql(source.address, "postgres", 'CREATE DATABASE "gone, db ";')
    back_up(source.address, "*", directory)
    removed = [p for p in directory.iterdir() if p.is_file() and p.name.startswith("gone")]
    assert removed, sorted(p.name for p in directory.iterdir())
    for path in removed:
        path.unlink()
    target, said = restore_refused(private_cluster, directory)
    command = the_way_through(said)
    assert command == "backupd restore --latest --skip 'gone, db '", said
    proc = run_as_printed(target, directory, command)
    assert rows_of(target, "keptdb", "t") == [(1,)], proc.stdout + proc.stderr
    assert rows_of(target, "other", "t") == [(7,), (8,)], proc.stdout + proc.stderr
    assert "gone, db " not in databases_on(target), proc.stdout + proc.stderr


def test_skip_of_a_name_without_a_backup_is_refused(
        private_cluster: ClusterFactory, tmp_path: Path) -> None:
    """A mistyped --skip would otherwise be ignored and the restore stop again (or restore
    what was meant to be left out): one line naming it, exit 2, nothing changed."""
    directory = tmp_path / "backups"
    source = private_cluster("source-pw")
    keptdb_and(source, "other")
    back_up(source.address, "*", directory)
    target = private_cluster("target-pw")
    proc = run_backupd(["restore", "--latest", "--skip", "othr", "--yes"],
                       server_env(target.address, "*", directory))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "--skip: no backup of 'othr'" in one_error_line(proc.stderr), proc.stderr
    assert not {"keptdb", "other"} & databases_on(target), proc.stderr


def test_skip_goes_only_with_every_database_and_latest(tmp_path: Path) -> None:
    """--skip leaves databases out of the whole-system restore of '*'; with a list, one
    database or a NAME there is nothing it could mean: exit 2 before anything is read."""
    for args, database in ((["--latest"], "app,billing"), (["some.sql.gz"], "*"),
                           (["--latest", "--database", "app"], "*"),
                           (["--latest", "--target-db", "x"], "*")):
        proc = run_backupd(["restore", *args, "--skip", "x", "--yes"],
                           server_env(LOCAL, database, tmp_path / "backups"))
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "--skip: leaves databases out of the whole-system restore" in one_error_line(
            proc.stderr), proc.stderr


def test_restore_help_says_every_database_with_a_backup_is_restored(tmp_path: Path) -> None:
    """`restore --help` described the removed rule ("`*`: those of the newest backup run")."""
    proc = run_backupd(["restore", "--help"], server_env(
        LOCAL, "*", tmp_path / "backups"))
    shown = " ".join(proc.stdout.split())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "`*`: every database with a backup but DB_BACKUP_EXCLUDE's" in shown, shown
    assert "looks dropped" in shown and "those of the newest backup run" not in shown, shown
    # --skip, the option the stops print: one name each, never split on commas.
    assert "--skip NAME" in shown and "one name per --skip, taken whole" in shown, shown

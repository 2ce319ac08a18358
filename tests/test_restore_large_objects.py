"""Large objects (the fixture's issuer logos) and the one-transaction restore.

pg_dump's plain SQL wraps the large objects' data in its own ``BEGIN;`` ... ``COMMIT;``.
Streamed into psql inside backupd's transaction, that COMMIT ends backupd's transaction
half-way: everything after it (indexes, constraints, triggers) runs outside it, and a restore
that fails after that point would leave the tables and large objects behind although it
reported "rolled back". Found with the project's own fixture. Every restore now goes into a new
scratch database that is dropped on failure, so nothing of a failed restore stays, whatever
COMMITs the dump itself carries.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from helpers.backups import path_with, take_backup
from helpers.cli import EnvFactory, run_backupd
from helpers.pg import ServerAddress, pg_binary, psql


def psql_that_dies_after_the_large_objects(directory: Path) -> Path:
    """A psql stand-in passing the dump through until the first CREATE INDEX (after the
    large objects, in post-data), then ending its input and failing: as a crash would."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "psql"
    script.write_text(
        "#!/bin/sh\n"
        "awk '{ print; fflush() } /^CREATE INDEX / { exit }' "
        f"| '{pg_binary('psql')}' \"$@\"\n"
        "exit 1\n"
    )
    script.chmod(0o755)
    return directory


def test_fixture_backup_carries_its_large_objects(
        pg_server: ServerAddress, fixture_db: str, backupd_env: EnvFactory,
        make_db: Callable[..., str]) -> None:
    backup = take_backup(backupd_env(fixture_db))
    target = make_db()
    restored = run_backupd(["restore", backup.name, "--target-db", target, "--yes"],
                           backupd_env(fixture_db))
    assert restored.returncode == 0, restored.stderr
    query = "SELECT count(*), md5(string_agg(md5(lo_get(oid)), ',' ORDER BY oid)) " \
            "FROM pg_largeobject_metadata"
    assert psql(pg_server, target, query) == psql(pg_server, fixture_db, query)
    assert psql(pg_server, target, "SELECT count(*) FROM pg_largeobject_metadata").strip() == "40"


def test_failed_restore_into_an_empty_database_leaves_nothing_behind(
        pg_server: ServerAddress, fixture_db: str, backupd_env: EnvFactory,
        make_db: Callable[..., str], tmp_path: Path) -> None:
    backup = take_backup(backupd_env(fixture_db))
    target = make_db()  # exists and is empty: restored into in one transaction, not dropped
    env = backupd_env(fixture_db, PATH=path_with(psql_that_dies_after_the_large_objects(
        tmp_path / "bin")))

    failed = run_backupd(["restore", backup.name, "--target-db", target, "--yes"], env)

    assert failed.returncode == 1, failed.stderr
    assert "rolled back" in failed.stderr
    tables = psql(pg_server, target,
                  "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").strip()
    large_objects = psql(pg_server, target, "SELECT count(*) FROM pg_largeobject_metadata")
    assert (tables, large_objects.strip()) == ("0", "0")
    leftovers = psql(pg_server, "postgres", "SELECT count(*) FROM pg_database WHERE "
                     f"starts_with(datname, '{target}__restoring_')")
    assert leftovers.strip() == "0"  # the incomplete scratch database was dropped

"""A restore whose input stops early must never leave a half-restored database.

backupd can be SIGKILLed mid-restore. psql then sees end of input (or dies with backupd);
if that end falls on a statement boundary, psql's --single-transaction would COMMIT what it
got; backupd sends COMMIT only after the last byte, so PostgreSQL rolls the partial restore
back. A killed custom-format, age-encrypted restore leaves no plaintext behind and no
pg_restore running on (issue 13, "Killed mid-restore").
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from helpers.age import make_age_keys
from helpers.backups import path_with, take_backup
from helpers.cli import kill_group, run_backupd, start_backupd
from helpers.faults import wait_until
from helpers.pg import ServerAddress, drop_database, psql
from helpers.procs import (
    PLAINTEXT_MAGIC,
    files_starting_with,
    kill_processes,
    processes_with_env,
)
from helpers.slow_restore import cut_at_statement_psql, pausing_pg_restore


def test_input_ending_mid_restore_commits_nothing(
        pg_server: ServerAddress, fixture_db: str, make_db: Callable[..., str],
        backupd_env: Callable[..., dict[str, str]], tmp_path: Path) -> None:
    env = backupd_env(fixture_db)
    backup = take_backup(env)
    target = make_db()  # empty, so restore is allowed without --replace
    psql_exited = tmp_path / "psql-exited"
    shim = cut_at_statement_psql(tmp_path / "shim", psql_exited)
    proc = start_backupd(["restore", backup.name, "--yes", "--target-db", target],
                         {**env, "PATH": path_with(shim)}, log_dir=tmp_path / "log")
    try:
        deadline = time.monotonic() + 60
        while not psql_exited.exists():
            assert time.monotonic() < deadline, "psql never reached the cut"
            time.sleep(0.05)
        assert proc.poll() is None, "backupd should still be feeding the (stalled) restore"
        tables = psql(pg_server, target,
                      "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").strip()
        assert tables == "0", "a partial restore was committed"
    finally:
        kill_group(proc)  # SIGKILL backupd and the stalled shim, as `docker kill` would
        proc.wait()
    # The killed restore went into a scratch database; the next restore of the same target
    # drops it (it carries backupd's mark) and succeeds.
    again = run_backupd(["restore", backup.name, "--yes", "--target-db", target], env)
    assert again.returncode == 0, again.stderr
    assert "left behind by an interrupted restore" in again.stderr
    assert psql(pg_server, "postgres", "SELECT count(*) FROM pg_database WHERE datname LIKE "
                f"'{target}__restoring_%'").strip() == "0"


def test_psql_that_stops_early_without_error_is_a_failed_restore(
        pg_server: ServerAddress, fixture_db: str, make_db: Callable[..., str],
        backupd_env: Callable[..., dict[str, str]], tmp_path: Path) -> None:
    """psql exiting 0 before it confirmed the COMMIT is a failure, never a success."""
    env = backupd_env(fixture_db)
    backup = take_backup(env)
    target = make_db()
    shim_dir = tmp_path / "shim"
    shim_dir.mkdir()
    fake_psql = shim_dir / "psql"
    # Reads nothing and exits 0: a client that "succeeds" without restoring anything.
    fake_psql.write_text("#!/bin/sh\nexit 0\n")
    fake_psql.chmod(0o755)

    result = run_backupd(["restore", backup.name, "--yes", "--target-db", target],
                         {**env, "PATH": path_with(shim_dir)})

    assert result.returncode == 1, result.stderr
    assert "did not confirm" in result.stderr


def test_sigkill_mid_encrypted_custom_restore_leaves_no_plaintext_and_no_pg_restore(
        pg_server: ServerAddress, fixture_db: str, make_db: Callable[..., str],
        backupd_env: Callable[..., dict[str, str]], backup_dir: Path, tmp_path: Path) -> None:
    keys = make_age_keys(tmp_path / "keys")
    env = backupd_env(fixture_db, DB_BACKUP_FORMAT="custom",
                      DB_BACKUP_AGE_RECIPIENTS_FILE=str(keys.recipients_file))
    backup = take_backup(env)
    assert backup.name.endswith(".dump.age")
    target = make_db()  # empty: restored by way of a scratch database, then swapped in
    scratch_dir = tmp_path / "tmp"  # the only other place backupd could write a file
    scratch_dir.mkdir()
    paused = tmp_path / "pg_restore-paused"
    shim = pausing_pg_restore(tmp_path / "shim", paused)
    restore_env = {**env, "DB_BACKUP_AGE_IDENTITY_FILE": str(keys.identity_file),
                   "PATH": path_with(shim), "TMPDIR": str(scratch_dir)}
    proc = start_backupd(["restore", backup.name, "--yes", "--target-db", target],
                         restore_env, log_dir=tmp_path / "log")
    try:
        deadline = time.monotonic() + 120
        while not paused.exists():
            assert proc.poll() is None, proc.read_stderr()[-3000:]
            assert time.monotonic() < deadline, "pg_restore never got its first bytes"
            time.sleep(0.05)
        restoring = psql(pg_server, "postgres", "SELECT datname FROM pg_database WHERE "
                         f"datname LIKE '{target}\\_\\_restoring\\_%'").split()
        assert len(restoring) == 1, restoring
        into = restoring[0]
        assert processes_with_env("PGDATABASE", into), "the restoring pg_restore runs"
        assert files_starting_with(tmp_path, PLAINTEXT_MAGIC) == [], "plaintext mid-restore"

        proc.kill()  # SIGKILL backupd alone, as the OOM killer would
        proc.wait()

        wait_until(lambda: not processes_with_env("PGDATABASE", into), 10,
                   "pg_restore (the shim and the real one) to die with backupd")
        wait_until(lambda: psql(pg_server, "postgres",
                                "SELECT count(*) FROM pg_stat_activity WHERE datname = "
                                f"'{into}'").strip() == "0", 30,
                   "the restore's session to end")
    finally:
        for database in psql(pg_server, "postgres", "SELECT datname FROM pg_database WHERE "
                             f"datname LIKE '{target}\\_\\_restoring\\_%'").split():
            kill_processes(processes_with_env("PGDATABASE", database))
        kill_group(proc)
        proc.wait()
        for database in psql(pg_server, "postgres", "SELECT datname FROM pg_database WHERE "
                             f"datname LIKE '{target}\\_\\_restoring\\_%'").split():
            drop_database(pg_server, database)
    assert files_starting_with(tmp_path, PLAINTEXT_MAGIC) == [], "plaintext left on disk"
    assert [p.name for p in backup_dir.iterdir() if p.name.endswith(".partial")] == []
    tables = psql(pg_server, target,
                  "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").strip()
    assert tables == "0", "the killed restore went on and restored the target"

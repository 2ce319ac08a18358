"""A restore whose input stops early must never leave a half-restored database.

backupd can be SIGKILLed mid-restore while psql, in its own session, lives on and sees
end of input. If that end falls on a statement boundary, psql's --single-transaction
would COMMIT what it got; backupd sends COMMIT only after the last byte, so PostgreSQL
rolls the partial restore back.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from helpers.backups import path_with, take_backup
from helpers.cli import kill_group, run_backupd, start_backupd
from helpers.pg import ServerAddress, psql
from helpers.slow_restore import cut_at_statement_psql


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

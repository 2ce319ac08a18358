"""Restore loads inside a session tuned for a bulk load (issue 18): synchronous_commit=off
and maintenance_work_mem (DB_RESTORE_MAINTENANCE_WORK_MEM), given through PGOPTIONS to psql
and pg_restore, never by editing the SQL; and the pre-verify, overlapped with creating the
scratch database, still stops a damaged file before anything is restored."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.backups import flip_byte, take_backup, tool_wrapper_dir
from helpers.cli import EnvFactory, run_backupd
from helpers.pg import ServerAddress, drop_database, fingerprint, pg_binary, psql, unique_db_name

from backupd.pipeline.config import bulk_load_session


@pytest.mark.parametrize(("fmt", "tool", "memory"), [
    ("plain", "psql", None), ("custom", "pg_restore", "1GB"), ("directory", "pg_restore", None)
])
def test_the_loading_session_is_tuned_for_a_bulk_load(
    pg_server: ServerAddress, small_db: str, backupd_env: EnvFactory, tmp_path: Path,
    fmt: str, tool: str, memory: str | None,
) -> None:
    """The tool that loads asks the server, in its own environment, what the session got."""
    seen = tmp_path / "session.txt"
    show = (f"'{pg_binary('psql')}' -XAt -c 'SHOW synchronous_commit' "
            f"-c 'SHOW maintenance_work_mem' >> '{seen}' 2>/dev/null")
    wrappers = tool_wrapper_dir(tmp_path / "bin", tmp_path / "tools.log", (tool,),
                                extra_shell=f'[ -n "$PGOPTIONS" ] && {show}\n')
    env = backupd_env(small_db, DB_BACKUP_FORMAT=fmt, PATH=f"{wrappers}:/usr/bin:/bin",
                      **({"DB_RESTORE_MAINTENANCE_WORK_MEM": memory} if memory else {}))
    backup = take_backup(env)
    target = unique_db_name("tuned")
    try:
        proc = run_backupd(["restore", "--yes", "--target-db", target, backup.name], env)
        assert proc.returncode == 0, proc.stderr
        assert fingerprint(pg_server, target) == fingerprint(pg_server, small_db)
    finally:
        drop_database(pg_server, target)
    assert seen.read_text().split() == ["off", memory or "256MB"]


def test_off_leaves_maintenance_work_mem_to_the_server() -> None:
    assert bulk_load_session(None) == (("synchronous_commit", "off"),)
    assert bulk_load_session("2GB")[1] == ("maintenance_work_mem", "2GB")


def test_a_damaged_file_leaves_no_scratch_database_behind(
    pg_server: ServerAddress, small_db: str, env: dict[str, str], backup: Path,
) -> None:
    """The scratch database is made while the file is verified: when the verdict is a
    failure, it is dropped, and the failure reported is the verification's."""
    flip_byte(backup)
    target = unique_db_name("damaged")

    proc = run_backupd(["restore", "--yes", "--target-db", target, backup.name], env)

    assert proc.returncode == 1
    assert "failed verification" in proc.stderr
    left = psql(pg_server, "postgres",
                f"SELECT datname FROM pg_database WHERE datname LIKE '{target}%'")
    assert left.strip() == ""

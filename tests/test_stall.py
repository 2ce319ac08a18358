"""The stall watchdog and the job timeout (issue 17) against the real server: a dump behind
an ACCESS EXCLUSIVE lock, a frozen server backend, a job that runs too long. Each ends in a
reported failure naming what the job waited on, and nothing partial stays behind."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from helpers.backups import backup_files
from helpers.cli import run_backupd
from helpers.logs import human_lines, jobs_finished
from helpers.pg import ServerAddress

EnvFactory = Callable[..., dict[str, str]]
LOCKER_APP = "stall-test-locker"


@contextmanager
def table_locked(server: ServerAddress, database: str, table: str) -> Iterator[int]:
    """``table`` held in ACCESS EXCLUSIVE mode by another session (its pid), until the end."""
    with psycopg.connect(server.conninfo(database), application_name=LOCKER_APP) as locker:
        locker.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        row = locker.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        try:
            yield int(row[0])
        finally:
            locker.rollback()


def nothing_partial(directory: Path) -> list[str]:
    """Whatever in DB_BACKUP_DIR could pass for (part of) a backup."""
    if not directory.is_dir():
        return []
    return [p.name for p in directory.iterdir()
            if "partial" in p.name or p.name.endswith(".manifest.json")] + backup_files(directory)


def test_a_dump_behind_an_exclusive_lock_fails_naming_the_lock_and_its_holder(
        pg_server: ServerAddress, small_db: str, backup_dir: Path,
        backupd_env: EnvFactory) -> None:
    with table_locked(pg_server, small_db, "public.items") as holder:
        proc = run_backupd(["backup"], backupd_env(small_db, DB_BACKUP_STALL_SECONDS="5"),
                           timeout=180)
    assert proc.returncode == 1, proc.stderr
    (line,) = [ln for ln in human_lines(proc.stderr) if "stalled" in ln]
    print(line)
    assert "no data moved" in line and "DB_BACKUP_STALL_SECONDS=5" in line, line
    assert "pg_dump output" in line, line  # what it was waiting on
    assert "table items" in line or "table public.items" in line, line
    assert "AccessShareLock" in line and "AccessExclusiveLock" in line, line
    assert f"pid {holder}" in line and LOCKER_APP in line, line
    (finished,) = jobs_finished(proc.stderr, "backup")
    assert finished["status"] == "failed" and "stalled" in finished["error"]
    assert nothing_partial(backup_dir) == []

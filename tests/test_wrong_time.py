"""Issue 13, "Wrong time": one backup taken while the clock was a year ahead (a bad RTC, an NTP
glitch later corrected) must not break a year of backups. It is reported, and it never counts
as the newest backup, as the schedule slot's cover, or as one of DB_BACKUP_KEEP_MIN.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from helpers.backups import backup_files, read_manifest, redate, take_backup
from helpers.cli import run_backupd
from helpers.pg import ServerAddress, drop_database, unique_db_name

from backupd.commands import backup as backup_cmd
from backupd.job import run_job
from backupd.notify.base import NotifierChain
from backupd.settings import load_settings

A_YEAR = timedelta(days=365)


@pytest.fixture
def backups(env: dict[str, str]) -> tuple[Path, Path, Path]:
    """(from the future, the genuinely newest, an older one): all real and verified."""
    newest = take_backup(env)
    future = redate(newest, datetime.now(UTC) + A_YEAR)
    older = redate(newest, datetime.now(UTC) - timedelta(days=2))
    assert read_manifest(future)["verified"] and read_manifest(older)["verified"]
    return future, newest, older


def test_restore_latest_takes_the_newest_real_backup(
    pg_server: ServerAddress, env: dict[str, str], backups: tuple[Path, Path, Path],
) -> None:
    future, newest, _ = backups
    target = unique_db_name("target")
    proc = run_backupd(["restore", "--latest", "--yes", "--target-db", target], env)
    try:
        assert proc.returncode == 0, proc.stderr
        assert f"restore of {newest.name}" in proc.stderr
        assert f"backup {future.name} is dated" in proc.stderr  # reported, not used
    finally:
        drop_database(pg_server, target)


def test_a_future_backup_does_not_cover_the_schedule_slot(
    env: dict[str, str], backups: tuple[Path, Path, Path],
) -> None:
    future, _, _ = backups
    # The daemon passes the slot's time; a backup "taken" a year from now covers nothing.
    slot = datetime.now(UTC) + timedelta(minutes=1)
    result = run_job("backup", load_settings(**env),
                     lambda ctx: backup_cmd.run(ctx, apply_retention=False, not_before=slot),
                     NotifierChain([]))
    assert result.status.value == "success", result.summary()
    assert result.backup_name and result.backup_name != future.name
    assert any(future.name in warning for warning in result.warnings)  # reaches Slack


def test_health_reports_it_and_ages_the_real_backup(
    env: dict[str, str], backups: tuple[Path, Path, Path],
) -> None:
    future, newest, _ = backups
    proc = run_backupd(["health", "--json"], {**env, "BACKUP_MAX_AGE_HOURS": "24"})
    report = json.loads(proc.stdout)
    assert proc.returncode == 1, proc.stdout  # unhealthy: a clock went wrong
    assert report["facts"]["newest_verified_backup"] == newest.name
    assert report["facts"]["newest_verified_backup_age_hours"] >= 0
    assert any(future.name in reason and "future" in reason for reason in report["reasons"])


def test_prune_keeps_the_genuinely_newest_not_the_future_one(
    env: dict[str, str], backups: tuple[Path, Path, Path],
) -> None:
    future, newest, older = backups
    proc = run_backupd(["prune"], {**env, "DB_BACKUP_RETENTION_DAYS": "0",
                                   "DB_BACKUP_KEEP_MIN": "1"})
    assert proc.returncode == 0, proc.stderr
    left = backup_files(Path(env["DB_BACKUP_DIR"]))
    assert newest.name in left, "retention deleted the genuinely newest backup"
    assert older.name not in left
    assert future.name in left  # nothing is deleted for being dated in the future
    assert f"backup {future.name} is dated" in proc.stderr


def test_list_marks_it(env: dict[str, str], backups: tuple[Path, Path, Path]) -> None:
    future, newest, _ = backups
    rows = {r["name"]: r for r in json.loads(run_backupd(["list", "--json"], env).stdout)}
    assert rows[future.name]["dated_in_future"] and not rows[newest.name]["dated_in_future"]

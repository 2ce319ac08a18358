"""``backupd status`` from another process while the daemon runs, and after it stopped."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from helpers.cli import BackupdProcess, run_backupd, stop_backupd
from helpers.daemon import FAST, finished
from helpers.faults import wait_until
from helpers.s3server import S3Server


def test_status_shows_next_runs_last_results_newest_backup_and_health(
    fixture_db: str, backup_dir: Path, backupd_env: Callable[..., dict[str, str]],
    backupd_daemon: Callable[..., BackupdProcess],
) -> None:
    env = backupd_env(fixture_db, BACKUP_SCHEDULE="*/2 * * * * *", BACKUP_ON_START="false",
                      **FAST)
    daemon = backupd_daemon(["run"], env)
    wait_until(lambda: any(r["status"] == "success" for r in finished(daemon)), 30,
               "a scheduled backup")

    asked = datetime.now(UTC)
    proc = run_backupd(["status", "--json"], env)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["daemon"]["running"] is True
    assert [i["pid"] for i in data["daemon"]["instances"]] == [daemon.pid]
    jobs = {job["job"]: job for job in data["jobs"]}
    backup = jobs["backup"]
    assert backup["schedule"] == "*/2 * * * * *"
    next_run = datetime.fromisoformat(backup["next_run"])
    # In the future (not a stale view) and on the schedule; no bound on how far: under load
    # status may answer seconds later than asked.
    assert next_run > asked
    assert (next_run.second % 2, next_run.microsecond) == (0, 0)
    assert backup["last_result"]["status"] == "success"
    names = {p.name for p in backup_dir.glob("*.sql.gz")}
    assert backup["last_result"]["backup_name"] in names
    assert jobs["verify"]["schedule"] is None and jobs["prune"]["schedule"] is None
    assert data["newest_verified_backup"]["name"] == max(names)
    assert data["health"]["ok"] is True

    text = run_backupd(["status"], env)
    assert text.returncode == 0
    assert f"pid {daemon.pid}" in text.stdout
    assert "verify  off (VERIFY_SCHEDULE not set)" in text.stdout
    assert "last: success" in text.stdout and "health: ok" in text.stdout

    assert stop_backupd(daemon, timeout=15) == 0
    after = json.loads(run_backupd(["status", "--json"], env).stdout)
    assert after["daemon"]["running"] is False
    # Survives the daemon, exactly: the last backup it reported (a success, or the run its
    # stop cancelled: every 2 s a backup may be under way when SIGTERM comes).
    reported = finished(daemon)[-1]
    kept = after["jobs"][0]["last_result"]
    assert (kept["status"], kept["started_at"]) == (reported["status"], reported["started_at"])
    assert reported["status"] in ("success", "cancelled")
    assert after["jobs"][0]["last_outcome"]["status"] == reported["status"]


def test_status_without_a_daemon_computes_next_runs_from_the_settings(
    backupd_env: Callable[..., dict[str, str]], backup_dir: Path,
) -> None:
    env = backupd_env("postgres", BACKUP_SCHEDULE="30 2 * * 0", TZ="Europe/Berlin",
                      DB_BACKUP_KEEP_DAILY="7", DB_BACKUP_KEEP_MONTHLY="12")
    proc = run_backupd(["status", "--json"], env)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    prune = next(job for job in data["jobs"] if job["job"] == "prune")
    assert prune["keeps"] == ("retention 7 days, keeping at least 3 verified backups and "
                              "7 daily, 12 monthly")
    backup = next(job for job in data["jobs"] if job["job"] == "backup")
    when = datetime.fromisoformat(backup["next_run"]).astimezone(ZoneInfo("Europe/Berlin"))
    assert (when.strftime("%a"), when.hour, when.minute) == ("Sun", 2, 30)
    assert backup["last_result"] is None
    assert data["daemon"]["running"] is False
    assert data["newest_verified_backup"] is None and data["health"]["ok"] is False

    bad = run_backupd(["status"], {**env, "BACKUP_SCHEDULE": "0 2 * * 9"})
    assert bad.returncode == 2 and bad.stderr.startswith("backupd: error: BACKUP_SCHEDULE:")


def test_status_shows_the_offsite_state(
        fixture_db: str, backupd_env: Callable[..., dict[str, str]], s3_server: S3Server,
        s3_bucket: str,
) -> None:
    """Last upload and pending uploads: a backup taken before S3 was configured is owed."""
    from helpers.backups import take_backup

    local_only = backupd_env(fixture_db)
    take_backup(local_only)  # no S3 yet: this backup is not offsite
    with_s3 = {**local_only, **s3_server.env(), "DB_BACKUP_S3_BUCKET": s3_bucket}

    before = json.loads(run_backupd(["status", "--json"], with_s3).stdout)["offsite"]
    assert before == {"bucket": s3_bucket, "prefix": "", "last_upload": None,
                      "pending_uploads": 1}
    assert json.loads(run_backupd(["status", "--json"], local_only).stdout)["offsite"] is None

    assert run_backupd(["upload"], with_s3).returncode == 0
    after = json.loads(run_backupd(["status", "--json"], with_s3).stdout)["offsite"]
    assert after["pending_uploads"] == 0 and after["last_upload"] is not None
    text = run_backupd(["status"], with_s3).stdout
    assert f"offsite: s3://{s3_bucket}/ last upload" in text and "0 pending upload(s)" in text

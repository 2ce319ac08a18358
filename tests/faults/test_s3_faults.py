"""S3 failing in each way: the local backup is kept and verified, the failure is reported,
and `backupd upload` (what the next run does) delivers it once S3 works again."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.cli import run_backupd
from helpers.http_receiver import HttpReceiver
from helpers.s3server import S3Server, strict_s3_server


@pytest.mark.parametrize("fault", ["refused", "http-500", "hang", "bucket-missing"])
def test_s3_failure_keeps_the_local_backup_reports_and_retries(
    fault: str, s3_server: S3Server, s3_bucket: str, http_receiver: HttpReceiver,
    make_db: Callable[..., str], backupd_env: Callable[..., dict[str, str]], backup_dir: Path,
) -> None:
    good = {**s3_server.env(), "DB_BACKUP_S3_BUCKET": s3_bucket, "S3_TIMEOUT_SECONDS": "2"}
    broken = dict(good)
    if fault == "refused":
        broken["S3_ENDPOINT_URL"] = http_receiver.refused_url().removesuffix("/hook")
    elif fault in ("http-500", "hang"):
        http_receiver.set_behaviour("error" if fault == "http-500" else "hang")
        broken["S3_ENDPOINT_URL"] = f"http://127.0.0.1:{http_receiver.port}"
    else:
        broken["DB_BACKUP_S3_BUCKET"] = s3_bucket + "-missing"
    database = make_db()

    proc = run_backupd(["backup"], backupd_env(database, **broken), timeout=120)

    assert proc.returncode == 0, proc.stderr  # the local backup is the job; it succeeded
    env = backupd_env(database, **good)
    rows = json.loads(run_backupd(["list", "--json"], env).stdout)
    assert [(r["state"], r["uploaded"]) for r in rows] == [("verified", False)]
    assert "offsite" in proc.stdout + proc.stderr and (backup_dir / "backup_log.txt").is_file()
    summary = proc.stdout.strip().splitlines()[-1]
    assert "offsite=" in summary, summary  # the upload failure is part of the one-line result

    retry = run_backupd(["upload"], env)
    assert retry.returncode == 0, retry.stderr
    rows = json.loads(run_backupd(["list", "--json"], env).stdout)
    assert [r["uploaded"] for r in rows] == [True]
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(
        Bucket=s3_bucket).get("Contents", [])]
    assert any(k.endswith(rows[0]["name"]) for k in keys)


def test_s3_rejecting_the_credentials_keeps_the_local_backup_and_reports_it(
    s3_server: S3Server, s3_bucket: str, make_db: Callable[..., str],
    backupd_env: Callable[..., dict[str, str]],
) -> None:
    """A store that authenticates (moto with IAM auth on) rejects our access key: 403."""
    database = make_db()
    with strict_s3_server() as endpoint:
        rejecting = {**s3_server.env(), "S3_ENDPOINT_URL": endpoint,
                     "DB_BACKUP_S3_BUCKET": s3_bucket, "S3_TIMEOUT_SECONDS": "2"}
        proc = run_backupd(["backup"], backupd_env(database, **rejecting), timeout=120)

    assert proc.returncode == 0, proc.stderr  # the local backup is the job; it succeeded
    summary = proc.stdout.strip().splitlines()[-1]
    assert "offsite=pending" in summary, summary
    assert "InvalidAccessKeyId" in proc.stdout + proc.stderr  # the reason, not just "failed"
    env = backupd_env(database, **s3_server.env(), DB_BACKUP_S3_BUCKET=s3_bucket)
    rows = json.loads(run_backupd(["list", "--json"], env).stdout)
    assert [(r["state"], r["uploaded"]) for r in rows] == [("verified", False)]
    assert run_backupd(["upload"], env).returncode == 0  # good credentials: delivered
    assert [r["uploaded"] for r in json.loads(run_backupd(["list", "--json"], env).stdout)] \
        == [True]

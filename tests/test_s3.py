"""Offsite copies in S3 (issue 4), against moto in server mode over real HTTP.

backupd runs as a subprocess with S3_ENDPOINT_URL pointing at the moto server; the tests
look into the bucket with their own boto3 client.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from helpers.backups import backup_files, read_manifest, redate, take_backup, write_manifest
from helpers.cli import run_backupd
from helpers.offsite import get_bytes, object_keys, put_bytes, remote_manifest, s3_env, sha256
from helpers.pg import ServerAddress, psql
from helpers.s3server import S3Server

from backupd.storage.s3 import MAX_PARTS, MIN_PART_SIZE, part_size_for

MiB = 1024 * 1024


def test_part_size_keeps_any_backup_under_the_part_limit() -> None:
    for size in (0, 1, 12 * MiB, 80 * 1024 * MiB, 10**12, 5 * 1024**4):
        part = part_size_for(size)
        assert part >= MIN_PART_SIZE and part % MiB == 0
        assert -(-size // part) <= MAX_PARTS, f"{size} bytes would need too many parts"
    assert part_size_for(10**12) < 128 * MiB  # 1 TB: ~106 MiB parts, bounded memory


def test_kms_key_without_kms_encryption_is_refused_before_dumping(
    backupd_env: Callable[..., dict[str, str]], backup_dir: Path, s3_server: S3Server,
    s3_bucket: str,
) -> None:
    env = backupd_env("postgres", **s3_env(s3_server, s3_bucket, S3_SSE="AES256",
                                           S3_SSE_KMS_KEY_ID="arn:aws:kms:eu:1:key/abcd1234"))
    proc = run_backupd(["backup"], env)
    assert proc.returncode == 2, proc.stderr
    assert "S3_SSE_KMS_KEY_ID" in proc.stderr
    assert backup_files(backup_dir) == []
    assert object_keys(s3_server, s3_bucket) == []


def test_large_backup_takes_the_multipart_path_and_round_trips_byte_identical(
    pg_server: ServerAddress, make_db: Callable[..., str],
    backupd_env: Callable[..., dict[str, str]], s3_server: S3Server, s3_bucket: str,
) -> None:
    db = make_db()
    # ~12 MiB of random bytes: the gzip'd dump stays above the 8 MiB multipart threshold.
    psql(pg_server, db, """
        CREATE TABLE blobs (id int PRIMARY KEY, data bytea);
        INSERT INTO blobs
        SELECT g, decode(string_agg(md5(random()::text || g || '.' || h), ''), 'hex')
        FROM generate_series(1, 12) g, generate_series(1, 65536) h GROUP BY g;
    """)
    env = backupd_env(db, **s3_env(s3_server, s3_bucket, "nightly/pg"))
    local = take_backup(env)
    assert local.stat().st_size > MIN_PART_SIZE  # above the multipart threshold
    key = f"nightly/pg/{local.name}"
    assert object_keys(s3_server, s3_bucket) == [key, key + ".manifest.json"]

    head = s3_server.client().head_object(Bucket=s3_bucket, Key=key)
    assert head["ETag"].strip('"').endswith("-2"), "expected a 2-part multipart upload"
    remote = get_bytes(s3_server, s3_bucket, key)
    assert remote == local.read_bytes()
    manifest = remote_manifest(s3_server, s3_bucket, key)
    assert manifest["sha256"] == sha256(remote) and manifest["verified"]
    assert manifest["uploaded_at"] and read_manifest(local)["uploaded_at"]

    listed = run_backupd(["list", "--remote", "--json"], env)
    assert listed.returncode == 0, listed.stderr
    assert [(row["name"], row["state"]) for row in json.loads(listed.stdout)] == [
        (local.name, "verified")]
    verified = run_backupd(["verify", "--remote", "--json"], env)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert [r["name"] for r in json.loads(verified.stdout)] == [local.name]
    assert backup_files(Path(env["DB_BACKUP_DIR"])) == [local.name]  # download removed


def test_s3_dying_mid_upload_leaves_a_verified_pending_backup_uploaded_by_the_next_run(
    fixture_db: str, backupd_env: Callable[..., dict[str, str]], backup_dir: Path,
    s3_server: S3Server, s3_bucket: str, backupd_daemon: Callable[..., object],
) -> None:
    env = backupd_env(fixture_db, **s3_env(s3_server, s3_bucket))
    # The data upload reaches S3, which then hangs on it; S3 is stopped while it hangs.
    arrived = s3_server.hold_requests(
        lambda method, target: method == "PUT" and ".manifest.json" not in target)
    proc = backupd_daemon(["backup", "--no-prune"], env)
    assert arrived.wait(60), "the upload never reached S3"
    s3_server.stop()
    assert proc.wait(90) == 0, proc.read_stderr()  # type: ignore[attr-defined]
    summary = proc.read_stdout()  # type: ignore[attr-defined]
    assert "backup success" in summary and "offsite=pending" in summary

    first = backup_dir / backup_files(backup_dir)[0]
    manifest = read_manifest(first)
    assert manifest["verified"] and manifest["sha256"] == sha256(first.read_bytes())
    assert manifest["uploaded_at"] is None and manifest["upload_error"]
    log = (backup_dir / "backup_log.txt").read_text()
    assert "offsite copy failed" in log and "pending" in log

    s3_server.start()
    assert object_keys(s3_server, s3_bucket) == []  # nothing committed by the failed run
    second = take_backup(env)
    keys = object_keys(s3_server, s3_bucket)
    for backup in (first, second):
        assert backup.name in keys and backup.name + ".manifest.json" in keys
        assert get_bytes(s3_server, s3_bucket, backup.name) == backup.read_bytes()
        assert read_manifest(backup)["uploaded_at"] and not read_manifest(backup)["upload_error"]


def test_retention_on_s3_deletes_only_this_databases_own_expired_backups(
    fixture_db: str, backupd_env: Callable[..., dict[str, str]], backup_dir: Path,
    s3_server: S3Server, s3_bucket: str,
) -> None:
    prefix = "prod/"
    env = backupd_env(fixture_db, **s3_env(s3_server, s3_bucket, prefix),
                      DB_BACKUP_RETENTION_DAYS="7", DB_BACKUP_KEEP_MIN="3")
    newest = take_backup(env)
    now = datetime.now(UTC)
    # Older copies of the real backup, not yet uploaded: the next run uploads them as pending.
    old = []
    for days in (10, 20, 30):
        copy = redate(newest, now - timedelta(days=days))
        manifest = read_manifest(copy)
        manifest["uploaded_at"] = None
        write_manifest(copy, manifest)
        old.append(copy.name)
    another = take_backup(env)
    ours = {newest.name, another.name, *old}
    keys = object_keys(s3_server, s3_bucket)
    assert all(prefix + name + ".manifest.json" in keys for name in ours)

    # Things that are not ours: a foreign object, another database's (expired) backup under
    # the same prefix, and an object outside the prefix that looks like one of ours.
    expired = (now - timedelta(days=400)).strftime("%Y%m%d_%H%M%S")
    strangers = [prefix + "README.txt", f"{prefix}otherdb_{expired}.sql.gz",
                 f"{prefix}otherdb_{expired}.sql.gz.manifest.json",
                 f"elsewhere/{newest.name.rsplit('_', 2)[0]}_{expired}.sql.gz"]
    other_manifest = read_manifest(newest) | {"name": f"otherdb_{expired}.sql.gz",
                                              "database": "otherdb"}
    for key in strangers:
        body = json.dumps(other_manifest).encode() if key.endswith(".json") else b"not ours"
        put_bytes(s3_server, s3_bucket, key, body)

    proc = run_backupd(["prune"], env)
    assert proc.returncode == 0, proc.stderr
    remaining = object_keys(s3_server, s3_bucket)
    # KEEP_MIN=3 protects the two new backups and the 10-day-old one, expired or not.
    kept = {newest.name, another.name, old[0]}
    for name in kept:
        assert prefix + name in remaining and prefix + name + ".manifest.json" in remaining
    for name in old[1:]:
        assert prefix + name not in remaining and prefix + name + ".manifest.json" not in remaining
        assert f"deleted s3://{s3_bucket}/{prefix}{name}" in proc.stdout
    assert all(key in remaining for key in strangers)

"""Disaster recovery from S3 alone (issue 4): a new machine with nothing but the bucket's
settings restores the latest backup in one command; S3 copies that are incomplete or do not
match their manifest are refused by restore and reported by verify --remote."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from helpers.backups import backup_files, flip_byte, take_backup
from helpers.cli import run_backupd
from helpers.offsite import get_bytes, object_keys, put_bytes, s3_env
from helpers.pg import ServerAddress, database_exists, fingerprint
from helpers.s3server import S3Server


def test_new_machine_restores_the_latest_backup_from_s3_alone(
    pg_server: ServerAddress, fixture_db: str, make_db: Callable[..., str],
    backupd_env: Callable[..., dict[str, str]], tmp_path: Path, s3_server: S3Server,
    s3_bucket: str,
) -> None:
    old_machine = backupd_env(fixture_db, **s3_env(s3_server, s3_bucket, "prod/db"))
    uploaded = take_backup(old_machine)

    # The new machine: the same database settings and bucket settings, an empty (absent)
    # backup directory, and an empty database to restore into.
    empty_dir = tmp_path / "new-machine" / "backups"
    new_machine = {**old_machine, "DB_BACKUP_DIR": str(empty_dir)}
    target = make_db()
    proc = run_backupd(["restore", "--from-s3", "--latest", "--target-db", target, "--yes"],
                       new_machine)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert uploaded.name in proc.stdout
    assert fingerprint(pg_server, target) == fingerprint(pg_server, fixture_db)
    # The download was verified and then removed: nothing but the log is left behind.
    assert [p.name for p in empty_dir.iterdir()] == ["restore_log.txt"]
    log = (empty_dir / "restore_log.txt").read_text()
    # Verified first; the restore is logged as begun only after that (and every refusal).
    assert f"{uploaded.name} verified" in log
    assert log.index(f"{uploaded.name} verified") < log.index(
        f"restoring {uploaded.name} into database {target!r}")


def test_incomplete_or_corrupted_s3_copies_are_refused_and_reported(
    pg_server: ServerAddress, fixture_db: str, backupd_env: Callable[..., dict[str, str]],
    tmp_path: Path, s3_server: S3Server, s3_bucket: str, backup_dir: Path,
) -> None:
    env = backupd_env(fixture_db, **s3_env(s3_server, s3_bucket))
    good = take_backup(env)
    corrupted = take_backup(env)
    # A corrupted S3 copy: one byte flipped, same size, manifest untouched.
    damaged = tmp_path / "damaged"
    damaged.write_bytes(get_bytes(s3_server, s3_bucket, corrupted.name))
    flip_byte(damaged)
    put_bytes(s3_server, s3_bucket, corrupted.name, damaged.read_bytes())
    # An incomplete upload: the data object without its manifest (the commit marker).
    incomplete = good.name.replace(good.name.rsplit("_", 1)[1][:6], "000000", 1)
    assert incomplete != good.name
    put_bytes(s3_server, s3_bucket, incomplete, good.read_bytes())

    listed = run_backupd(["list", "--remote", "--json"], env)
    assert listed.returncode == 0, listed.stderr
    assert {row["name"] for row in json.loads(listed.stdout)} == {good.name, corrupted.name}

    fresh_dir = tmp_path / "dr"
    dr_env = {**env, "DB_BACKUP_DIR": str(fresh_dir)}
    for name, reason in ((corrupted.name, "sha256"), (incomplete, "no manifest")):
        target = f"{fixture_db}_dr"
        proc = run_backupd(["restore", "--from-s3", name, "--target-db", target, "--yes"],
                           dr_env)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "refusing to restore" in proc.stdout + proc.stderr
        assert reason in proc.stdout + proc.stderr
        assert not database_exists(pg_server, target)
    assert backup_files(fresh_dir) == []
    assert not [p for p in fresh_dir.iterdir() if p.name.endswith(".partial")]

    proc = run_backupd(["verify", "--remote", "--json"], env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    reports = {r["name"]: r for r in json.loads(proc.stdout)}
    assert set(reports) == {good.name, corrupted.name, incomplete}
    assert reports[good.name]["ok"]
    assert not reports[corrupted.name]["ok"]
    assert "sha256" in [c["check"] for c in reports[corrupted.name]["checks"] if not c["ok"]]
    assert not reports[incomplete]["ok"]
    # verify recorded the outcome in S3, so retention never counts the bad copy as good.
    remote = json.loads(get_bytes(s3_server, s3_bucket, corrupted.name + ".manifest.json"))
    assert remote["verified"] is False and "checksum" in remote["verify_error"]
    # The local backups were never touched by any of this.
    assert set(backup_files(backup_dir)) == {good.name, corrupted.name}
    assert incomplete not in {k for k in object_keys(s3_server, s3_bucket) if "manifest" in k}

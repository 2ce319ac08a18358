"""Manifests keep the fields this version does not know (a later version's) through every
rewrite: a verify verdict recorded beside the backup or in S3, an upload to S3. Dropping
them made an older version undo what a newer one recorded (``run_of_every`` in a globals
manifest once decided which databases a restore of `*` brings back)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from helpers.backups import read_manifest, write_manifest
from helpers.cli import run_backupd
from helpers.offsite import remote_manifest, s3_env
from helpers.s3server import S3Server

from backupd.commands.listing import ListRow
from backupd.manifest import Manifest

# What a later version might add: a value of its own shape, not one of this version's types.
LATER = {"recorded_by_a_later_version": {"kind": "something new", "count": 3, "at": None}}


def from_a_later_version(backup: Path) -> dict[str, Any]:
    manifest = {**read_manifest(backup), **LATER}
    write_manifest(backup, manifest)
    return manifest


def test_a_verify_verdict_keeps_fields_this_version_does_not_know(
        env: dict[str, str], backup: Path) -> None:
    before = from_a_later_version(backup)
    proc = run_backupd(["verify", backup.name], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    after = read_manifest(backup)
    assert after["verified_at"] != before["verified_at"], "the verdict was not recorded"
    assert after["recorded_by_a_later_version"] == LATER["recorded_by_a_later_version"]


def test_an_upload_and_a_remote_verify_keep_fields_this_version_does_not_know(
        env: dict[str, str], backup: Path, s3_server: S3Server, s3_bucket: str) -> None:
    from_a_later_version(backup)
    with_s3 = {**env, **s3_env(s3_server, s3_bucket)}
    proc = run_backupd(["upload"], with_s3)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    local, remote = read_manifest(backup), remote_manifest(s3_server, s3_bucket, backup.name)
    assert local["uploaded_at"] and remote["uploaded_at"], "not uploaded"
    for manifest in (local, remote):
        assert manifest["recorded_by_a_later_version"] == LATER["recorded_by_a_later_version"]

    verified_at = remote["verified_at"]
    proc = run_backupd(["verify", "--remote", backup.name], with_s3)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    remote = remote_manifest(s3_server, s3_bucket, backup.name)
    assert remote["verified_at"] != verified_at, "the remote verdict was not recorded"
    assert remote["recorded_by_a_later_version"] == LATER["recorded_by_a_later_version"]


def test_fields_a_later_version_adds_to_wal_and_base_backup_facts_are_kept() -> None:
    """Those two records live only in manifests (the database properties do not: they are
    compared with a live database's, so stay as this version reads them)."""
    facts = {"system_identifier": 7, "timeline": 1, "start_timeline": 1,
             "start_lsn": "0/2000028", "stop_lsn": "0/2000100", "wal_segment_size": 16777216,
             "checkpoint_kind": "spread"}
    wal = {"wal_file": "000000010000000000000002", "timeline": 1, "start_lsn": "0/2000000",
           "segment_size": 16777216, "system_identifier": "7", "raw_sha256": "00",
           "compressed_with": "lz4"}
    document = {"name": "x", "database": "d", "started_at": "2026-01-01T00:00:00Z",
                "finished_at": "2026-01-01T00:00:01Z", "raw_bytes": 1, "stored_bytes": 1,
                "sha256": "00", "base_backup": facts, "wal": wal}
    written = json.loads(Manifest.from_json(json.dumps(document).encode()).to_json())
    assert written["base_backup"]["checkpoint_kind"] == "spread"
    assert written["wal"]["compressed_with"] == "lz4"


def test_list_json_shows_its_own_columns_not_a_manifests_unknown_fields(
        env: dict[str, str], backup: Path) -> None:
    """`list --json` is an interface of its own (ListRow), not the manifest: what a later
    version records does not appear in it unannounced."""
    from_a_later_version(backup)
    proc = run_backupd(["list", "--json"], env)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [row["name"] for row in rows] == [backup.name]
    assert set(rows[0]) == set(ListRow.model_fields)

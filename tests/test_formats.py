"""Every combination of format, compression and encryption, against the real PostgreSQL:
backup → list → verify → restore into a new database gives back identical data, and each
file is what its suffix promises (readable by the plain tool: gunzip, zstd, pg_restore).
"""

from __future__ import annotations

import gzip
import json
import subprocess
from pathlib import Path

import pytest
from helpers.age import AgeKeys
from helpers.backups import read_manifest, refresh_manifest, take_backup, truncate
from helpers.cli import EnvFactory, run_backupd
from helpers.offsite import get_bytes, s3_env
from helpers.pg import (
    ServerAddress,
    database_exists,
    fingerprint,
    pg_binary,
    psql,
    unique_db_name,
)
from helpers.s3server import S3Server

# (DB_BACKUP_FORMAT, DB_BACKUP_COMPRESSION, suffix without .age)
FORMATS = [("plain", "gzip", ".sql.gz"), ("plain", "zstd", ".sql.zst"), ("custom", "gzip", ".dump")]
AGE_MAGIC = b"age-encryption.org/v1\n"




def _plaintext_of(path: Path, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.decompress(path.read_bytes())[:64]
    out = subprocess.run(["zstd", "-dc", str(path)], capture_output=True, check=True).stdout
    return out[:64]


@pytest.mark.parametrize("encrypted", [False, True], ids=["clear", "age"])
@pytest.mark.parametrize(("fmt", "compression", "suffix"), FORMATS,
                         ids=[f"{f}-{c}" for f, c, _ in FORMATS])
def test_round_trip_every_format_compression_and_encryption(
    pg_server: ServerAddress, fixture_db: str, target_db: str, backupd_env: EnvFactory,
    keys: AgeKeys, fmt: str, compression: str, suffix: str, encrypted: bool,
) -> None:
    before = fingerprint(pg_server, fixture_db)
    settings = {"DB_BACKUP_FORMAT": fmt, "DB_BACKUP_COMPRESSION": compression}
    # The sidecar holds the public key only.
    sidecar = backupd_env(fixture_db, **settings, **(
        {"DB_BACKUP_AGE_RECIPIENTS_FILE": str(keys.recipients_file)} if encrypted else {}))
    backup = take_backup(sidecar)

    assert backup.name.endswith(suffix + (".age" if encrypted else ""))
    manifest = read_manifest(backup)
    assert manifest["verified"] is True
    assert manifest["format"] == fmt
    assert manifest["encrypted"] is encrypted
    assert manifest["age_recipients"] == ([keys.public] if encrypted else [])
    head = backup.read_bytes()[:64]
    if encrypted:
        assert head.startswith(AGE_MAGIC)
        assert b"PostgreSQL" not in backup.read_bytes()  # nothing readable without the key
    elif fmt == "custom":
        assert head.startswith(b"PGDMP")
    else:
        assert _plaintext_of(backup, compression).startswith(b"--\n-- PostgreSQL database dump")

    listed = run_backupd(["list", "--json"], sidecar)
    assert listed.returncode == 0, listed.stderr
    assert backup.name in listed.stdout

    # The restoring machine has the identity; restore verifies fully, then restores.
    restorer = backupd_env(fixture_db, **settings, DB_RESTORE_JOBS="2", **(
        {"DB_BACKUP_AGE_IDENTITY_FILE": str(keys.identity_file)} if encrypted else {}))
    verified = run_backupd(["verify", "--json", backup.name], restorer)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    report = json.loads(verified.stdout)[0]
    assert report["content_checked"] is True
    checks = {c["check"] for c in report["checks"]}
    assert ("pg_restore --list" in checks) if fmt == "custom" else ("sql content" in checks)

    restored = run_backupd(["restore", "--yes", "--target-db", target_db, backup.name], restorer)
    assert restored.returncode == 0, restored.stderr
    assert fingerprint(pg_server, target_db) == before


def test_default_backup_is_plain_sql_gz_that_gunzip_reads(
    fixture_db: str, backupd_env: EnvFactory,
) -> None:
    backup = take_backup(backupd_env(fixture_db))

    assert backup.name.endswith(".sql.gz")
    out = subprocess.run(["gunzip", "-c", str(backup)], capture_output=True, check=True).stdout
    assert out.startswith(b"--\n-- PostgreSQL database dump")
    assert b"-- PostgreSQL database dump complete" in out[-4096:]


def test_custom_archive_is_read_by_pg_restore_list_and_its_level_is_applied(
    fixture_db: str, backupd_env: EnvFactory,
) -> None:
    stored = take_backup(backupd_env(fixture_db, DB_BACKUP_FORMAT="custom",
                                     DB_BACKUP_COMPRESSION_LEVEL="0"))
    toc = subprocess.run([pg_binary("pg_restore"), "--list", str(stored)], capture_output=True,
                         text=True, check=True).stdout
    assert "TABLE DATA public certificates" in toc
    # Level 0 means pg_dump stored the data uncompressed (a readable COPY stream).
    assert b"COPY public.certificates" in stored.read_bytes()


def test_verify_reads_every_data_block_of_a_custom_archive(
    fixture_db: str, backupd_env: EnvFactory,
) -> None:
    """A truncated archive whose manifest was rewritten to match still fails verify:
    its table of contents is intact, but pg_restore cannot read the data."""
    env = backupd_env(fixture_db, DB_BACKUP_FORMAT="custom")
    backup = take_backup(env)
    truncate(backup, keep=0.6)
    refresh_manifest(backup)

    proc = run_backupd(["verify", "--json", backup.name], env)

    assert proc.returncode == 1
    report = json.loads(proc.stdout)[0]
    failed = {c["check"]: c["detail"] for c in report["checks"] if not c["ok"]}
    assert "archive data" in failed, report
    assert "pg_restore" in failed["archive data"]


def test_failed_custom_restore_drops_the_database_it_created(
    pg_server: ServerAddress, fixture_db: str, target_db: str, backupd_env: EnvFactory,
) -> None:
    """Parallel pg_restore cannot run in one transaction: a failure must not leave a
    half-restored database behind. A role the archive needs is missing at restore time."""
    role = unique_db_name("owner")
    psql(pg_server, fixture_db, f"CREATE ROLE {role}; ALTER TABLE certificates OWNER TO {role};")
    try:
        env = backupd_env(fixture_db, DB_BACKUP_FORMAT="custom", DB_RESTORE_JOBS="2")
        backup = take_backup(env)
    finally:
        psql(pg_server, fixture_db, f"ALTER TABLE certificates OWNER TO postgres; "
                                    f"DROP ROLE {role};")

    proc = run_backupd(["restore", "--yes", "--target-db", target_db, backup.name], env)

    assert proc.returncode == 1
    assert "pg_restore" in proc.stderr or "role" in proc.stderr
    assert not database_exists(pg_server, target_db)


@pytest.mark.parametrize("encrypted", [False, True], ids=["clear", "age"])
@pytest.mark.parametrize(("fmt", "compression", "suffix"), FORMATS,
                         ids=[f"{f}-{c}" for f, c, _ in FORMATS])
def test_round_trip_through_s3_every_format_compression_and_encryption(
    pg_server: ServerAddress, fixture_db: str, target_db: str, backupd_env: EnvFactory,
    keys: AgeKeys, tmp_path: Path, s3_server: S3Server, s3_bucket: str,
    fmt: str, compression: str, suffix: str, encrypted: bool,
) -> None:
    """The sidecar uploads; a new machine with only the bucket settings (and the identity)
    restores with --from-s3. The bucket holds nothing readable without the identity."""
    before = fingerprint(pg_server, fixture_db)
    settings = {"DB_BACKUP_FORMAT": fmt, "DB_BACKUP_COMPRESSION": compression,
                **s3_env(s3_server, s3_bucket, "formats")}
    sidecar = backupd_env(fixture_db, **settings, **(
        {"DB_BACKUP_AGE_RECIPIENTS_FILE": str(keys.recipients_file)} if encrypted else {}))
    backup = take_backup(sidecar)
    assert backup.name.endswith(suffix + (".age" if encrypted else ""))
    stored = get_bytes(s3_server, s3_bucket, f"formats/{backup.name}")
    assert stored == backup.read_bytes()
    if encrypted:
        assert stored.startswith(AGE_MAGIC)

    new_machine = backupd_env(fixture_db, **settings, DB_BACKUP_DIR=str(tmp_path / "new"),
                              DB_RESTORE_JOBS="2", **(
        {"DB_BACKUP_AGE_IDENTITY_FILE": str(keys.identity_file)} if encrypted else {}))
    proc = run_backupd(["restore", "--from-s3", "--latest", "--target-db", target_db, "--yes"],
                       new_machine)

    assert proc.returncode == 0, proc.stderr
    assert fingerprint(pg_server, target_db) == before

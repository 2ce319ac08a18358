"""Encryption at rest with age: the sidecar needs only the public key; a wrong, missing or
mismatched identity and a tampered file each end in one clear line with the target database
untouched; the identity never shows up in output or logs.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers.age import AgeKeys, make_age_keys
from helpers.backups import backup_files, flip_byte, read_manifest, refresh_manifest, take_backup
from helpers.cli import EnvFactory, run_backupd
from helpers.logs import human_lines
from helpers.pg import (
    ServerAddress,
    connect,
    drop_database,
    fingerprint,
    psql,
    unique_db_name,
)
from helpers.procs import PLAINTEXT_MAGIC, files_starting_with


@pytest.fixture
def encrypted_backup(fixture_db: str, backupd_env: EnvFactory, keys: AgeKeys) -> Path:
    return take_backup(backupd_env(fixture_db,
                                   DB_BACKUP_AGE_RECIPIENTS_FILE=str(keys.recipients_file)))


@pytest.fixture
def occupied_target(pg_server: ServerAddress, make_db: Callable[..., str]) -> Iterator[str]:
    """An existing database holding data: a restore with --replace must leave it as it is."""
    name = make_db()
    psql(pg_server, name, "CREATE TABLE keepme (id int); INSERT INTO keepme VALUES (1), (2);")
    yield name


def _databases(pg_server: ServerAddress, target: str) -> set[str]:
    """The target and any scratch/kept database derived from its name (other tests run
    concurrently on the same server, so only these are compared)."""
    with connect(pg_server) as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE starts_with(datname, %s)",
                            (target,))
        return {row[0] for row in rows}


def _snapshot(pg_server: ServerAddress, target: str) -> tuple[dict[str, str], set[str]]:
    return fingerprint(pg_server, target), _databases(pg_server, target)


def _assert_refused_and_untouched(
    proc: subprocess.CompletedProcess[str], pg_server: ServerAddress, target: str,
    before: dict[str, str], databases: set[str], expected: str, code: int,
) -> None:
    assert proc.returncode == code, proc.stderr
    lines = human_lines(proc.stderr)
    assert len(lines) == 1, lines
    assert expected in lines[0], lines[0]
    assert fingerprint(pg_server, target) == before
    assert _databases(pg_server, target) == databases  # no scratch/renamed one left


def test_sidecar_without_identity_verifies_size_and_checksum_and_says_content_unchecked(
    fixture_db: str, backupd_env: EnvFactory, keys: AgeKeys, encrypted_backup: Path,
) -> None:
    manifest = read_manifest(encrypted_backup)
    assert manifest["verified"] is True and manifest["encrypted"] is True

    proc = run_backupd(["verify", encrypted_backup.name], backupd_env(fixture_db))

    assert proc.returncode == 0, proc.stderr
    assert "ok   sha256" in proc.stdout and "ok   size" in proc.stdout
    assert "content not checked" in proc.stdout
    assert "DB_BACKUP_AGE_IDENTITY_FILE" in proc.stdout


def test_tampering_with_an_encrypted_file_is_caught_without_the_identity(
    fixture_db: str, backupd_env: EnvFactory, encrypted_backup: Path,
) -> None:
    flip_byte(encrypted_backup)

    proc = run_backupd(["verify", "--json", encrypted_backup.name], backupd_env(fixture_db))

    assert proc.returncode == 1
    failed = [c["check"] for c in json.loads(proc.stdout)[0]["checks"] if not c["ok"]]
    assert failed == ["sha256"]


def test_wrong_identity_refuses_restore_and_leaves_the_target_untouched(
    pg_server: ServerAddress, fixture_db: str, backupd_env: EnvFactory, tmp_path: Path,
    encrypted_backup: Path, occupied_target: str,
) -> None:
    wrong = make_age_keys(tmp_path / "other", "wrong")
    before, databases = _snapshot(pg_server, occupied_target)
    env = backupd_env(fixture_db, DB_BACKUP_AGE_IDENTITY_FILE=str(wrong.identity_file))

    proc = run_backupd(["restore", "--yes", "--replace", "--target-db", occupied_target,
                        encrypted_backup.name], env)

    _assert_refused_and_untouched(proc, pg_server, occupied_target, before, databases,
                                  "no identity in DB_BACKUP_AGE_IDENTITY_FILE matches", 1)
    # A wrong key says nothing about the file: it must not be marked as failed.
    assert read_manifest(encrypted_backup)["verified"] is True
    assert wrong.secret not in proc.stdout + proc.stderr


def test_missing_identity_refuses_restore_with_exit_2_naming_the_setting(
    pg_server: ServerAddress, fixture_db: str, backupd_env: EnvFactory,
    encrypted_backup: Path, occupied_target: str,
) -> None:
    before, databases = _snapshot(pg_server, occupied_target)

    proc = run_backupd(["restore", "--yes", "--replace", "--target-db", occupied_target,
                        encrypted_backup.name], backupd_env(fixture_db))

    _assert_refused_and_untouched(proc, pg_server, occupied_target, before, databases,
                                  "DB_BACKUP_AGE_IDENTITY_FILE", 2)


def test_unreadable_identity_file_is_a_config_error(
    pg_server: ServerAddress, fixture_db: str, backupd_env: EnvFactory, tmp_path: Path,
    encrypted_backup: Path, occupied_target: str,
) -> None:
    before, databases = _snapshot(pg_server, occupied_target)
    env = backupd_env(fixture_db, DB_BACKUP_AGE_IDENTITY_FILE=str(tmp_path / "absent.txt"))

    proc = run_backupd(["restore", "--yes", "--replace", "--target-db", occupied_target,
                        encrypted_backup.name], env)

    _assert_refused_and_untouched(proc, pg_server, occupied_target, before, databases,
                                  "DB_BACKUP_AGE_IDENTITY_FILE: cannot read", 2)


@pytest.mark.parametrize("vouched", [False, True], ids=["manifest-mismatch", "manifest-rewritten"])
def test_tampered_encrypted_file_refuses_restore_and_leaves_the_target_untouched(
    pg_server: ServerAddress, fixture_db: str, backupd_env: EnvFactory, keys: AgeKeys,
    encrypted_backup: Path, occupied_target: str, vouched: bool,
) -> None:
    """Flip one byte of ciphertext. Even when the attacker rewrote the manifest to match,
    age's per-chunk authentication refuses the file before the database is touched."""
    flip_byte(encrypted_backup)
    if vouched:
        refresh_manifest(encrypted_backup)
    before, databases = _snapshot(pg_server, occupied_target)
    env = backupd_env(fixture_db, DB_BACKUP_AGE_IDENTITY_FILE=str(keys.identity_file))

    proc = run_backupd(["restore", "--yes", "--replace", "--target-db", occupied_target,
                        encrypted_backup.name], env)

    expected = "tampered with" if vouched else "checksum does not match"
    _assert_refused_and_untouched(proc, pg_server, occupied_target, before, databases,
                                  expected, 1)


def test_identity_never_appears_in_output_or_logs(
    fixture_db: str, backupd_env: EnvFactory, keys: AgeKeys, backup_dir: Path,
    encrypted_backup: Path,
) -> None:
    env = backupd_env(fixture_db, DB_BACKUP_AGE_IDENTITY_FILE=str(keys.identity_file))
    outputs = [run_backupd(["verify", encrypted_backup.name], env)]
    # A private key pasted where the public key belongs: refused, and not echoed.
    outputs.append(run_backupd(["backup", "--no-prune"],
                               backupd_env(fixture_db, DB_BACKUP_AGE_RECIPIENTS=keys.secret)))

    assert outputs[0].returncode == 0, outputs[0].stderr
    assert outputs[1].returncode == 2
    assert "private key" in human_lines(outputs[1].stderr)[-1]
    texts = [p.stdout + p.stderr for p in outputs]
    texts += [p.read_text() for p in backup_dir.glob("*_log.txt")]
    texts += [p.read_text() for p in backup_dir.glob("*.manifest.json")]
    assert all(keys.secret not in text for text in texts)


@pytest.mark.parametrize("value", ["age1notakey", "ssh-rsa AAAA"])
def test_invalid_recipient_is_one_line_exit_2_and_writes_nothing(
    fixture_db: str, backupd_env: EnvFactory, backup_dir: Path, value: str,
) -> None:
    proc = run_backupd(["backup", "--no-prune"],
                       backupd_env(fixture_db, DB_BACKUP_AGE_RECIPIENTS=value))

    assert proc.returncode == 2
    lines = human_lines(proc.stderr)
    assert len(lines) == 1 and "DB_BACKUP_AGE_RECIPIENTS" in lines[0], lines
    assert backup_files(backup_dir) == []


def test_several_recipients_each_can_decrypt(
    pg_server: ServerAddress, fixture_db: str, backupd_env: EnvFactory, tmp_path: Path,
) -> None:
    first, second = make_age_keys(tmp_path / "a", "a"), make_age_keys(tmp_path / "b", "b")
    backup = take_backup(backupd_env(
        fixture_db, DB_BACKUP_AGE_RECIPIENTS=f"{first.public}, {second.public}"))

    assert read_manifest(backup)["age_recipients"] == [first.public, second.public]
    for keys in (first, second):
        proc = run_backupd(["verify", "--json", backup.name], backupd_env(
            fixture_db, DB_BACKUP_AGE_IDENTITY_FILE=str(keys.identity_file)))
        assert proc.returncode == 0, proc.stdout
        assert json.loads(proc.stdout)[0]["content_checked"] is True


@pytest.mark.parametrize("target_exists", [False, True], ids=["new-target", "empty-target"])
def test_encrypted_custom_archive_restores_streamed_into_pg_restore(
    pg_server: ServerAddress, fixture_db: str, backupd_env: EnvFactory, keys: AgeKeys,
    make_db: Callable[..., str], backup_dir: Path, target_exists: bool,
) -> None:
    """Decrypted straight into pg_restore's stdin: a new target and an existing empty one (both
    restored by way of a new scratch database, where parallel jobs do not apply to an encrypted
    archive, and the restore says so) come out equal to the source, and nothing decrypted is
    ever written."""
    backup = take_backup(backupd_env(fixture_db, DB_BACKUP_FORMAT="custom",
                                     DB_BACKUP_AGE_RECIPIENTS_FILE=str(keys.recipients_file)))
    assert backup.name.endswith(".dump.age")
    target = make_db() if target_exists else unique_db_name("age_custom")
    env = backupd_env(fixture_db, DB_BACKUP_AGE_IDENTITY_FILE=str(keys.identity_file),
                      DB_RESTORE_JOBS="4")
    try:
        proc = run_backupd(["restore", "--yes", "--target-db", target, backup.name], env)
        assert proc.returncode == 0, proc.stderr
        assert fingerprint(pg_server, target) == fingerprint(pg_server, fixture_db)
    finally:
        if not target_exists:
            drop_database(pg_server, target)
    said = "decrypted straight into one pg_restore job, never to disk (DB_RESTORE_JOBS=4"
    assert said in proc.stdout + proc.stderr
    assert files_starting_with(backup_dir, PLAINTEXT_MAGIC) == []

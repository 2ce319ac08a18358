"""Retention (``backupd prune``) on real backup files re-dated into the past: it keeps enough good
backups, never anything it does not own, and never trusts a file that no longer matches."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from helpers.backups import (
    backup_files,
    flip_byte,
    read_manifest,
    redate,
    take_backup,
    write_manifest,
)
from helpers.cli import EnvFactory, run_backupd
from helpers.wal import put_base_backup_record

from backupd.storage.local import LocalRepository


def aged(source: Path, *days: float) -> list[Path]:
    """Copies of a real backup (and manifest) taken ``days`` ago each, newest first."""
    now = datetime.now(UTC)
    return [redate(source, now - timedelta(days=d)) for d in sorted(days)]


def prune(env: dict[str, str], *args: str, **settings: str) -> tuple[int, str]:
    proc = run_backupd(["prune", *args], {**env, **settings})
    return proc.returncode, proc.stdout + proc.stderr


def test_keeps_keep_min_verified_backups_when_all_are_expired(
    small_db: str, backupd_env: EnvFactory, backup: Path, backup_dir: Path
) -> None:
    env = backupd_env(small_db)
    backups = aged(backup, 10, 20, 30, 40, 50)
    backup.unlink()
    backup.with_name(backup.name + ".manifest.json").unlink()

    code, output = prune(env, DB_BACKUP_RETENTION_DAYS="7", DB_BACKUP_KEEP_MIN="3")

    assert code == 0, output
    assert backup_files(backup_dir) == sorted(p.name for p in backups[:3])
    # Deleted backups take their manifests with them.
    for gone in backups[3:]:
        assert not gone.with_name(gone.name + ".manifest.json").exists()
        assert f"deleted {gone.name}" in output


def test_leaves_foreign_files_alone(
    small_db: str, backupd_env: EnvFactory, backup: Path, backup_dir: Path
) -> None:
    env = backupd_env(small_db)
    aged(backup, 30, 40)
    old = datetime.now(UTC) - timedelta(days=400)
    foreign = {
        "notes.txt": b"keep me",
        "other_db_20200101_000000.sql.gz": backup.read_bytes(),  # another database's
        f"{small_db}.sql.gz": backup.read_bytes(),  # no timestamp: not ours
        f"{small_db}_20200101_000000.sql.gz.bak": b"x",
        f"{small_db}_2020-01-01.sql.gz": b"x",
    }
    for name, data in foreign.items():
        (backup_dir / name).write_bytes(data)
    (backup_dir / "subdir").mkdir()
    for path in backup_dir.iterdir():  # old mtimes too: age must come from the name only
        os.utime(path, (old.timestamp(), old.timestamp()))

    code, output = prune(env, DB_BACKUP_RETENTION_DAYS="1", DB_BACKUP_KEEP_MIN="1")

    assert code == 0, output
    for name, data in foreign.items():
        assert (backup_dir / name).read_bytes() == data
    assert (backup_dir / "subdir").is_dir()
    # It did prune its own: only the newest (keep_min=1) is left of this database's.
    mine = [n for n in backup_files(backup_dir) if n.startswith(f"{small_db}_20")
            and n not in foreign]
    assert mine == [backup.name]


def test_keeps_the_last_good_backup_before_an_unverified_one(
    small_db: str, backupd_env: EnvFactory, backup: Path, backup_dir: Path
) -> None:
    env = backupd_env(small_db)
    unverified, last_good_before, oldest = aged(backup, 10, 20, 30)
    manifest = read_manifest(unverified)
    manifest.update(verified=False, verify_error="gzip integrity: truncated")
    write_manifest(unverified, manifest)

    code, output = prune(env, DB_BACKUP_RETENTION_DAYS="7", DB_BACKUP_KEEP_MIN="1")

    assert code == 0, output
    left = backup_files(backup_dir)
    assert backup.name in left  # the newest verified (keep_min)
    assert last_good_before.name in left
    assert oldest.name not in left


def test_corrupted_backup_is_not_counted_as_good(
    small_db: str, backupd_env: EnvFactory, backup: Path, backup_dir: Path
) -> None:
    """A flipped byte keeps the size, so only the checksum tells; the manifest still says
    verified. Two good backups must survive besides it."""
    env = backupd_env(small_db)
    corrupt, good1, good2 = aged(backup, 10, 20, 30)
    backup.unlink()
    backup.with_name(backup.name + ".manifest.json").unlink()
    flip_byte(corrupt)
    assert read_manifest(corrupt)["verified"] is True

    code, output = prune(env, DB_BACKUP_RETENTION_DAYS="7", DB_BACKUP_KEEP_MIN="2")

    assert code == 0, output
    left = backup_files(backup_dir)
    assert good1.name in left and good2.name in left
    # The user is told which file no longer matches, and why.
    assert any(corrupt.name in line and "checksum" in line for line in output.splitlines())


def test_dry_run_deletes_nothing(
    small_db: str, backupd_env: EnvFactory, backup: Path, backup_dir: Path
) -> None:
    env = backupd_env(small_db)
    backups = aged(backup, 10, 20, 30)
    before = sorted(p.name for p in backup_dir.iterdir())

    code, output = prune(env, "--dry-run", DB_BACKUP_RETENTION_DAYS="7", DB_BACKUP_KEEP_MIN="1")

    assert code == 0, output
    assert sorted(p.name for p in backup_dir.iterdir()) == before
    for path in backups:
        assert f"would delete {path.name}" in output


def test_backup_applies_retention_after_a_verified_backup(
    small_db: str, backupd_env: EnvFactory, backup: Path, backup_dir: Path
) -> None:
    env = backupd_env(small_db, DB_BACKUP_RETENTION_DAYS="7", DB_BACKUP_KEEP_MIN="2")
    old = aged(backup, 10, 20)
    new = take_backup(env, prune=True)
    left = backup_files(backup_dir)
    assert new.name in left and backup.name in left
    assert old[0].name not in left and old[1].name not in left


def test_old_script_backups_count_as_good_only_when_their_content_verifies(
    small_db: str, backupd_env: EnvFactory, backup: Path, backup_dir: Path
) -> None:
    """Backups from the old scripts have no manifest. Right after switching to backupd they
    may be the only backups there are: retention must not wipe them all, yet a broken one
    must not count towards DB_BACKUP_KEEP_MIN."""
    env = backupd_env(small_db)
    broken, good1, good2, oldest = aged(backup, 10, 20, 30, 40)
    for path in (backup, broken, good1, good2, oldest):
        path.with_name(path.name + ".manifest.json").unlink()
    backup.unlink()
    broken.write_bytes(b"not gzip at all")

    code, output = prune(env, DB_BACKUP_RETENTION_DAYS="7", DB_BACKUP_KEEP_MIN="2")

    assert code == 0, output
    left = backup_files(backup_dir)
    assert good1.name in left and good2.name in left
    assert oldest.name not in left
    assert any(broken.name in line and "not counted as a good backup" in line
               for line in output.splitlines())


def _closing_line(output: str) -> str:
    [line] = [x for x in output.splitlines() if "retention: nothing to delete" in x]
    return line


def test_nothing_to_delete_names_the_base_backup_policy_when_base_backups_are_judged(
    small_db: str, backupd_env: EnvFactory, backup: Path, backup_dir: Path, tmp_path: Path
) -> None:
    """The closing line says which rules found nothing to delete: the dumps' alone without
    base backups; with them, BASEBACKUP_KEEP's and BASEBACKUP_MAX_AGE_DAYS' too, which
    judged them (a line naming only the dumps' rules would be untrue)."""
    env = backupd_env(small_db, DB_BACKUP_RETENTION_DAYS="7", DB_BACKUP_KEEP_MIN="3")
    dumps_only = _closing_line(prune(env, "--dry-run")[1])
    assert "retention 7 days, keeping at least 3 verified backups" in dumps_only, dumps_only
    assert "base backup" not in dumps_only, dumps_only

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    base = put_base_backup_record(LocalRepository(backup_dir), scratch, timeline=1, segno=2)
    archive_env = {**env, "WAL_ARCHIVE": "on", "BASEBACKUP_KEEP": "2"}
    for args, settings in ((("--dry-run",), {}), ((), {"BASEBACKUP_MAX_AGE_DAYS": "30"})):
        code, output = prune(archive_env, *args, **settings)
        assert code == 0, output
        assert f"base backup {base}" in output or not args, output  # judged
        line = _closing_line(output)
        assert "dumps: retention 7 days, keeping at least 3 verified backups" in line, line
        assert "base backups: the newest 2 verified (BASEBACKUP_KEEP)" in line, line
        assert ("younger than 30 days (BASEBACKUP_MAX_AGE_DAYS)" in line) == bool(settings), \
            line

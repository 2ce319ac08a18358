"""The parallel directory format (issue 18): DB_BACKUP_FORMAT=directory runs pg_dump -Fd -j N,
stores the directory as ONE uncompressed tar (``.dir.tar``, ``.age`` when encrypted), verifies
it in the one verification stream and restores it with pg_restore -j, locally and from S3.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from helpers.age import AgeKeys
from helpers.backups import (
    pg_dump_runs,
    read_manifest,
    read_tool_log,
    redate,
    refresh_manifest,
    take_backup,
    tool_wrapper_dir,
)
from helpers.cli import EnvFactory, run_backupd
from helpers.offsite import get_bytes, s3_env
from helpers.pg import (
    ServerAddress,
    database_exists,
    fingerprint,
    pg_binary,
)
from helpers.s3server import S3Server

AGE_MAGIC = b"age-encryption.org/v1\n"




def _age(keys: AgeKeys, side: str, encrypted: bool) -> dict[str, str]:
    if not encrypted:
        return {}
    if side == "sidecar":
        return {"DB_BACKUP_AGE_RECIPIENTS_FILE": str(keys.recipients_file)}
    return {"DB_BACKUP_AGE_IDENTITY_FILE": str(keys.identity_file)}


def _members(backup: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(backup) as tar:
        return tar.getmembers()


def _rewrite_tar(backup: Path, change: Callable[[str, bytes], bytes | None]) -> None:
    """Rebuild the tar with each member's data passed through ``change`` (None drops it)."""
    out = io.BytesIO()
    with tarfile.open(backup) as source, tarfile.open(fileobj=out, mode="w",
                                                      format=tarfile.USTAR_FORMAT) as target:
        for info in source.getmembers():
            handle = source.extractfile(info)
            assert handle is not None
            data = change(info.name, handle.read())
            if data is not None:
                info.size = len(data)
                target.addfile(info, io.BytesIO(data))
    backup.write_bytes(out.getvalue())


def _failed_checks(proc_stdout: str) -> dict[str, str]:
    report = json.loads(proc_stdout)[0]
    return {c["check"]: c["detail"] for c in report["checks"] if not c["ok"]}


@pytest.mark.parametrize("encrypted", [False, True], ids=["clear", "age"])
def test_directory_backup_is_one_verified_tar_that_restores_in_parallel(
    pg_server: ServerAddress, fixture_db: str, target_db: str, backupd_env: EnvFactory,
    keys: AgeKeys, tmp_path: Path, encrypted: bool,
) -> None:
    before = fingerprint(pg_server, fixture_db)
    log = tmp_path / "tools.log"
    wrappers = tool_wrapper_dir(tmp_path / "bin", log, ("pg_dump", "pg_restore"))
    settings = {"DB_BACKUP_FORMAT": "directory", "DB_BACKUP_JOBS": "3",
                "PATH": f"{wrappers}:/usr/bin:/bin"}
    backup = take_backup(backupd_env(fixture_db, **settings, **_age(keys, "sidecar", encrypted)))

    assert backup.name.endswith(".dir.tar.age" if encrypted else ".dir.tar")
    manifest = read_manifest(backup)
    assert manifest["verified"] is True
    assert manifest["format"] == "directory"
    assert manifest["compression"] == "none"
    dumps = pg_dump_runs(log)
    assert len(dumps) == 1 and {"--format=directory", "--jobs=3"} <= set(dumps[0])
    if encrypted:
        assert backup.read_bytes().startswith(AGE_MAGIC)
        assert b"toc.dat" not in backup.read_bytes()
    else:
        names = [m.name for m in _members(backup)]
        assert names[0] == "toc.dat"  # verify reads the table of contents first
        assert any(n.endswith(".dat.gz") for n in names), names  # compressed by pg_dump
        assert all(m.isreg() for m in _members(backup))
    # Nothing but the backup and its manifest is left in DB_BACKUP_DIR (no scratch directory).
    assert sorted(p.name for p in backup.parent.iterdir() if p.name.startswith(".")
                  and p.name.endswith(".partial")) == []

    restorer = backupd_env(fixture_db, **settings, DB_RESTORE_JOBS="2",
                           **_age(keys, "restorer", encrypted))
    verified = run_backupd(["verify", "--json", backup.name], restorer)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    report = json.loads(verified.stdout)[0]
    assert report["content_checked"] is True
    assert {"tar archive", "data files", "pg_restore --list", "sha256"} <= {
        c["check"] for c in report["checks"]}

    restored = run_backupd(["restore", "--yes", "--target-db", target_db, backup.name], restorer)
    assert restored.returncode == 0, restored.stderr
    assert fingerprint(pg_server, target_db) == before
    restores = [call["argv"] for call in read_tool_log(log) if call["tool"] == "pg_restore"
                and not {"--list", "--version"} & set(call["argv"])]
    assert len(restores) == 1 and "--jobs=2" in restores[0]
    assert not [p for p in backup.parent.iterdir() if p.name.endswith(".partial")]


@pytest.mark.parametrize("encrypted", [False, True], ids=["clear", "age"])
def test_directory_backup_round_trips_through_s3(
    pg_server: ServerAddress, fixture_db: str, target_db: str, backupd_env: EnvFactory,
    keys: AgeKeys, tmp_path: Path, s3_server: S3Server, s3_bucket: str, encrypted: bool,
) -> None:
    before = fingerprint(pg_server, fixture_db)
    settings = {"DB_BACKUP_FORMAT": "directory", "DB_BACKUP_JOBS": "2",
                **s3_env(s3_server, s3_bucket, "dirfmt")}
    backup = take_backup(backupd_env(fixture_db, **settings, **_age(keys, "sidecar", encrypted)))
    stored = get_bytes(s3_server, s3_bucket, f"dirfmt/{backup.name}")
    assert stored == backup.read_bytes()
    assert stored.startswith(AGE_MAGIC) if encrypted else stored[257:262] == b"ustar"

    new_machine = backupd_env(fixture_db, **settings, DB_BACKUP_DIR=str(tmp_path / "new"),
                              DB_RESTORE_JOBS="2", **_age(keys, "restorer", encrypted))
    proc = run_backupd(["restore", "--from-s3", "--latest", "--target-db", target_db, "--yes"],
                       new_machine)

    assert proc.returncode == 0, proc.stderr
    assert fingerprint(pg_server, target_db) == before


def test_a_damaged_member_file_fails_verify_and_is_never_restored(
    pg_server: ServerAddress, fixture_db: str, target_db: str, backupd_env: EnvFactory,
) -> None:
    """One byte of a table's data file changed inside the tar, and the manifest rewritten to
    vouch for the new file: only the content check can catch it, and it does."""
    env = backupd_env(fixture_db, DB_BACKUP_FORMAT="directory")
    backup = take_backup(env)
    largest = max((m for m in _members(backup) if m.name.endswith(".dat.gz")),
                  key=lambda m: m.size)

    def damage(name: str, data: bytes) -> bytes:
        if name != largest.name:
            return data
        middle = len(data) // 2
        return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]

    _rewrite_tar(backup, damage)
    refresh_manifest(backup)

    proc = run_backupd(["verify", "--json", backup.name], env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    failed = _failed_checks(proc.stdout)
    assert "data files" in failed, failed
    assert largest.name in failed["data files"]
    assert "sha256" not in failed  # the manifest vouches for the bytes: the content caught it

    restored = run_backupd(["restore", "--yes", "--target-db", target_db, backup.name], env)
    assert restored.returncode == 1
    assert "failed verification" in restored.stderr
    assert not database_exists(pg_server, target_db)


def test_a_missing_member_file_fails_verify(
    fixture_db: str, backupd_env: EnvFactory,
) -> None:
    env = backupd_env(fixture_db, DB_BACKUP_FORMAT="directory")
    backup = take_backup(env)
    dropped = next(m.name for m in _members(backup) if m.name.endswith(".dat.gz")
                   and not m.name.startswith("blob_"))
    _rewrite_tar(backup, lambda name, data: None if name == dropped else data)
    refresh_manifest(backup)

    proc = run_backupd(["verify", "--json", backup.name], env)

    assert proc.returncode == 1
    failed = _failed_checks(proc.stdout)
    assert dropped.removesuffix(".gz") in failed.get("pg_restore --list", ""), failed


def test_a_truncated_tar_fails_verify(fixture_db: str, backupd_env: EnvFactory) -> None:
    env = backupd_env(fixture_db, DB_BACKUP_FORMAT="directory")
    backup = take_backup(env)
    backup.write_bytes(backup.read_bytes()[: backup.stat().st_size * 2 // 3])
    refresh_manifest(backup)

    proc = run_backupd(["verify", "--json", backup.name], env)

    assert proc.returncode == 1
    assert "truncated" in _failed_checks(proc.stdout).get("tar archive", ""), proc.stdout


def test_a_directory_backup_drills_clean(fixture_db: str, backupd_env: EnvFactory) -> None:
    env = backupd_env(fixture_db, DB_BACKUP_FORMAT="directory", DB_BACKUP_JOBS="2")
    backup = take_backup(env)

    proc = run_backupd(["drill"], env)

    assert proc.returncode == 0, proc.stderr
    assert read_manifest(backup)["drill_ok"] is True


def test_a_failed_directory_dump_leaves_no_scratch_directory(
    fixture_db: str, backupd_env: EnvFactory, backup_dir: Path, tmp_path: Path,
) -> None:
    """pg_dump wrote its whole directory, then failed: nothing is stored, nothing left."""
    fails_after = f"'{pg_binary('pg_dump')}' \"$@\"; echo 'pg_dump: error: gone' >&2; exit 3\n"
    wrappers = tool_wrapper_dir(tmp_path / "bin", tmp_path / "tools.log", ("pg_dump",),
                                extra_shell=f'[ "$1" = --version ] || {{ {fails_after}}}\n')
    proc = run_backupd(["backup"], backupd_env(fixture_db, DB_BACKUP_FORMAT="directory",
                                               PATH=f"{wrappers}:/usr/bin:/bin"))

    assert proc.returncode == 1, proc.stderr
    assert "pg_dump failed" in proc.stderr
    assert [p.name for p in backup_dir.iterdir() if "partial" in p.name or ".dir" in p.name] == []


def test_retention_prunes_directory_backups_like_any_other(
    small_db: str, backupd_env: EnvFactory, backup_dir: Path,
) -> None:
    env = backupd_env(small_db, DB_BACKUP_FORMAT="directory")
    backup = take_backup(env)
    now = datetime.now(UTC)
    old = [redate(backup, now - timedelta(days=d)) for d in (10, 20)]

    proc = run_backupd(["prune"], {**env, "DB_BACKUP_RETENTION_DAYS": "7",
                                   "DB_BACKUP_KEEP_MIN": "1"})

    assert proc.returncode == 0, proc.stderr
    assert backup.exists()
    assert not any(p.exists() for p in old)
    assert not any(p.name.endswith(".manifest.json") and p.name.startswith(o.name)
                   for o in old for p in backup_dir.iterdir())

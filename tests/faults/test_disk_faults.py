"""The backup directory failing: the disk fills up mid-write (a real ENOSPC on a small tmpfs),
the directory is read-only, or it cannot be created at start-up.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

from helpers.backups import backup_files, read_manifest, take_backup
from helpers.cli import run_backupd
from helpers.faults import fill_up, partial_files, place_copy
from helpers.pg import ServerAddress, drop_database, psql, unique_db_name


def digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in directory.iterdir() if p.name.endswith((".sql.gz", ".manifest.json"))}


def test_disk_full_during_write(
    pg_server: ServerAddress, make_db: Callable[..., str],
    backupd_env: Callable[..., dict[str, str]], small_fs: Callable[..., Path],
) -> None:
    directory = small_fs("1m")
    database = make_db()
    psql(pg_server, database, "CREATE TABLE t (id int, v text); INSERT INTO t VALUES (1, 'a');")
    env = backupd_env(database, DB_BACKUP_DIR=str(directory),
                      DB_BACKUP_RETENTION_DAYS="1", DB_BACKUP_KEEP_MIN="1")
    first = run_backupd(["backup"], env)
    assert first.returncode == 0, first.stderr
    (current,) = [p for p in directory.iterdir() if p.name.endswith(".sql.gz")]
    # An old backup that retention would delete after any successful backup (keep_min=1).
    old = place_copy(current, directory, "20200101_000000")
    before = digests(directory)
    # ~4 MB of random hex: compresses to about twice the size of the filesystem.
    psql(pg_server, database, "INSERT INTO t SELECT g, md5(random()::text) || "
                              "md5(random()::text) FROM generate_series(1, 60000) g;")

    proc = run_backupd(["backup"], env)

    assert proc.returncode == 1, proc.stderr
    error_line = proc.stderr.strip().splitlines()[-1]
    assert "No space left on device" in error_line, proc.stderr
    assert "DB_BACKUP_DIR" in error_line and "internal error" not in error_line
    assert partial_files(directory) == []
    assert digests(directory) == before, "an existing backup changed or retention ran"
    assert old.exists()
    rows = json.loads(run_backupd(["list", "--json"], env).stdout)
    assert {r["name"] for r in rows} == {current.name, old.name}
    assert all(r["state"] == "verified" for r in rows)


def test_backup_dir_full_before_the_dump_is_said_as_such(
    make_db: Callable[..., str], backupd_env: Callable[..., dict[str, str]],
    small_fs: Callable[..., Path],
) -> None:
    # The directory probe's file cannot be created: the environment's failure (exit 1), not
    # an owner or mode to fix (it used to say "fix its owner or permissions", exit 2).
    directory = small_fs("64k", inodes=16)
    fill_up(directory, 16)

    proc = run_backupd(["backup"], backupd_env(make_db(), DB_BACKUP_DIR=str(directory)))

    assert proc.returncode == 1, proc.stderr
    error_line = proc.stderr.strip().splitlines()[-1]
    assert f"DB_BACKUP_DIR: {directory} cannot take a new file (No space left on device)" \
        in error_line, proc.stderr
    assert "owner or permissions" not in proc.stderr, proc.stderr
    assert backup_files(directory) == []


def test_backup_dir_read_only(
    make_db: Callable[..., str], backupd_env: Callable[..., dict[str, str]],
    small_fs: Callable[..., Path],
) -> None:
    directory = small_fs("1m", readonly=True)
    proc = run_backupd(["backup"], backupd_env(make_db(), DB_BACKUP_DIR=str(directory)))
    assert proc.returncode == 2
    assert "DB_BACKUP_DIR" in proc.stderr and "not writable" in proc.stderr
    assert "Read-only file system" in proc.stderr


def test_backup_dir_cannot_be_created(
    make_db: Callable[..., str], backupd_env: Callable[..., dict[str, str]],
    small_fs: Callable[..., Path],
) -> None:
    directory = small_fs("1m", readonly=True) / "backups"  # missing, and cannot be made
    proc = run_backupd(["backup"], backupd_env(make_db(), DB_BACKUP_DIR=str(directory)))
    assert proc.returncode == 2
    assert "DB_BACKUP_DIR: cannot create" in proc.stderr


def test_backup_dir_missing_is_created_private(
    make_db: Callable[..., str], backupd_env: Callable[..., dict[str, str]], tmp_path: Path,
) -> None:
    directory = tmp_path / "not" / "yet" / "there"
    proc = run_backupd(["backup"], backupd_env(make_db(), DB_BACKUP_DIR=str(directory)))
    assert proc.returncode == 0, proc.stderr
    assert directory.stat().st_mode & 0o777 == 0o700


def test_manifest_that_does_not_fit_removes_its_backup(
    pg_server: ServerAddress, make_db: Callable[..., str],
    backupd_env: Callable[..., dict[str, str]], small_fs: Callable[..., Path],
) -> None:
    """Issue 13: the data file fits, its manifest does not (ENOSPC). Out of inodes is the
    deterministic way to get there: the root directory, backup_log.txt and the data file
    take all three, so the manifest's temporary file cannot be created."""
    directory = small_fs("8m", inodes=3)
    database = make_db()
    psql(pg_server, database, "CREATE TABLE t (id int); INSERT INTO t VALUES (1);")

    proc = run_backupd(["backup"], backupd_env(database, DB_BACKUP_DIR=str(directory)))

    assert proc.returncode == 1, proc.stderr
    error_line = proc.stderr.strip().splitlines()[-1]
    assert "No space left on device" in error_line and "manifest" in error_line, proc.stderr
    assert "DB_BACKUP_DIR" in error_line and "internal error" not in error_line
    assert "Traceback" not in proc.stderr
    assert backup_files(directory) == [], "a backup without its manifest was left behind"
    assert partial_files(directory) == []


def test_read_only_backup_dir_lists_verifies_and_restores(
    pg_server: ServerAddress, small_db: str, backupd_env: Callable[..., dict[str, str]],
    small_fs: Callable[..., Path],
) -> None:
    """Issue 13: a restore host mounting the backups read-only. Reading never needs a write;
    recording a verdict there is skipped with a note."""
    directory = small_fs("16m")
    env = backupd_env(small_db, DB_BACKUP_DIR=str(directory))
    backup = take_backup(env)
    before = digests(directory)
    subprocess.run(["mount", "-o", "remount,ro", str(directory)], check=True)

    listed = run_backupd(["list", "--json"], env)
    assert listed.returncode == 0, listed.stderr
    assert [r["state"] for r in json.loads(listed.stdout)] == ["verified"]

    verified = run_backupd(["verify"], env)
    assert verified.returncode == 0, verified.stderr
    assert "internal error" not in verified.stderr
    assert "not recorded" in verified.stderr and "read-only" in verified.stderr

    target = unique_db_name("ro_target")
    try:
        restored = run_backupd(["restore", backup.name, "--yes", "--target-db", target], env)
        assert restored.returncode == 0, restored.stderr
    finally:
        drop_database(pg_server, target)

    drilled = run_backupd(["drill"], env)
    assert drilled.returncode == 0, drilled.stderr
    assert "not recorded" in drilled.stderr
    assert digests(directory) == before and read_manifest(backup)["verified"]

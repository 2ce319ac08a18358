"""Settings that name a file (POSTGRES_PASSWORD_FILE, DB_BACKUP_AGE_RECIPIENTS_FILE,
DB_BACKUP_AGE_IDENTITY_FILE) pointed at something that is not a small regular file: /dev/zero
(it once grew backupd to 7 GB), a FIFO nobody writes (it hung every command, `list`
included), a directory, a file too large to be a secret. Each is exit 2 at once, in one line
naming the setting, with nothing written."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from helpers.backups import backup_files
from helpers.cli import EnvFactory, run_backupd
from helpers.logs import human_lines

from backupd.secret_files import MAX_BYTES

KINDS = {
    # kind -> what the error line says about it
    "dev-zero": "character device",
    "fifo": "FIFO",
    "directory": "directory",
    "oversized": f"at most {MAX_BYTES}",
}
# Far beyond what backupd needs; a read of /dev/zero without a cap reaches it within seconds.
MEMORY_LIMIT = 2 << 30
# A FIFO without a writer blocks open() forever: a hang shows as this timeout, not a stall.
HANG_TIMEOUT = 60


def bad_file(kind: str, directory: Path) -> Path:
    if kind == "dev-zero":
        return Path("/dev/zero")
    path = directory / f"setting-{kind}"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    else:
        path.write_text("x" * (MAX_BYTES + 1) + "\n")
    return path


def run_bounded(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    try:
        return run_backupd(args, env, timeout=HANG_TIMEOUT, memory_limit=MEMORY_LIMIT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"backupd {' '.join(args)} hung for {HANG_TIMEOUT} s reading the file")


def assert_refused(proc: subprocess.CompletedProcess[str], setting: str, kind: str) -> None:
    assert proc.returncode == 2, proc.stderr
    (line,) = human_lines(proc.stderr)
    assert line.startswith(f"backupd: error: {setting}: "), line
    assert KINDS[kind] in line, line
    assert "x" * 100 not in proc.stdout + proc.stderr  # the file's content is never echoed


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_password_file_that_is_not_a_small_regular_file_is_exit_2(
    kind: str, backupd_env: EnvFactory, backup_dir: Path, tmp_path: Path,
) -> None:
    env = backupd_env("postgres", POSTGRES_PASSWORD_FILE=str(bad_file(kind, tmp_path)))
    assert_refused(run_bounded(["list"], env), "POSTGRES_PASSWORD_FILE", kind)
    assert not backup_dir.exists()


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_recipients_file_that_is_not_a_small_regular_file_is_exit_2(
    kind: str, env: dict[str, str], backup_dir: Path, tmp_path: Path,
) -> None:
    path = bad_file(kind, tmp_path)
    proc = run_bounded(["backup"], {**env, "DB_BACKUP_AGE_RECIPIENTS_FILE": str(path)})
    assert_refused(proc, "DB_BACKUP_AGE_RECIPIENTS_FILE", kind)
    assert backup_files(backup_dir) == []


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_identity_file_that_is_not_a_small_regular_file_is_exit_2(
    kind: str, env: dict[str, str], backup: Path, tmp_path: Path,
) -> None:
    path = bad_file(kind, tmp_path)
    proc = run_bounded(["verify", backup.name], {**env, "DB_BACKUP_AGE_IDENTITY_FILE": str(path)})
    assert_refused(proc, "DB_BACKUP_AGE_IDENTITY_FILE", kind)


def test_a_secret_mounted_as_a_symlink_to_a_regular_file_is_read(
    backupd_env: EnvFactory, tmp_path: Path,
) -> None:
    """Docker and Kubernetes mount secrets as symlinks: the target is what must be regular."""
    target = tmp_path / "..data" / "postgres_password"
    target.parent.mkdir()
    target.write_text("from-the-mounted-secret\n")
    link = tmp_path / "postgres_password"
    link.symlink_to(target)
    proc = run_bounded(["list"], backupd_env("postgres", POSTGRES_PASSWORD_FILE=str(link)))
    assert proc.returncode == 0, proc.stderr


def test_a_secret_file_at_the_size_cap_is_read(backupd_env: EnvFactory, tmp_path: Path) -> None:
    path = tmp_path / "long-secret"
    path.write_text("p" * MAX_BYTES)
    proc = run_bounded(["list"], backupd_env("postgres", POSTGRES_PASSWORD_FILE=str(path)))
    assert proc.returncode == 0, proc.stderr

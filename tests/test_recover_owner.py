"""``recover --owner UID:GID``: checked before the archive is read, and whatever the check
meets, nothing of it is left behind.

The check (``recovery_dir._probe``) makes a directory where recover will write, gives it to
UID:GID and back, and removes it. Every way that chown can fail is one line naming --owner
(exit 2), and the probe is removed whatever happened: a missing --target-dir is not left
created, and an existing one is not left holding ``.backupd-recover-incomplete`` (which the
next recover took for an incomplete recover: "run again with --force").

* An id out of range (``99999999999``, which Python's chown cannot even pass to the system,
  or 4294967295, which chown reads as "leave it as it is") is refused as it is read.
* An id the system cannot map (root in a user namespace whose map holds only root, as in a
  container started with few ids): chown fails with EINVAL, for real here (``unshare``).
* A probe that cannot be removed after a refused chown (its directory append-only, chattr
  +a, which binds root too): the --owner error is the one said, not the rmdir's.

No server and no archive: each case is refused before either is looked at.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.cli import run_backupd
from helpers.logs import human_lines

from backupd.archive.recovery_dir import STAGING_NAME, check_target
from backupd.errors import ConfigError


def _env(tmp_path: Path) -> dict[str, str]:
    # Nothing listens here: a case that wrongly got as far as the archive fails differently.
    return {"POSTGRES_HOST": "127.0.0.1", "POSTGRES_PORT": "1", "POSTGRES_DB": "db",
            "DB_BACKUP_DIR": str(tmp_path / "backups"), "BACKUPD_LOG_FORMAT": "json"}


def _target(tmp_path: Path, exists: bool) -> Path:
    target = tmp_path / "volumes" / "data"
    target.mkdir(parents=True) if exists else target.parent.mkdir()
    return target


def _left_as_it_was(target: Path, existed: bool) -> None:
    if existed:
        assert list(target.iterdir()) == []
    else:
        assert not target.exists() and list(target.parent.iterdir()) == []


@pytest.mark.parametrize("existed", [False, True], ids=["new-dir", "empty-dir"])
@pytest.mark.parametrize("owner", ["99999999999:1", "1:99999999999", "4294967295:0"])
def test_an_owner_id_out_of_range_is_exit_2_naming_it_and_nothing_is_made(
        tmp_path: Path, owner: str, existed: bool) -> None:
    # 99999999999 was an OverflowError in the probe's chown: "internal error" with a
    # traceback (exit 1), the probe left behind. 4294967295 is chown's "unchanged".
    target = _target(tmp_path, existed)
    proc = run_backupd(["recover", "--target-dir", str(target), "--owner", owner],
                       _env(tmp_path), timeout=60)
    assert proc.returncode == 2, proc.stderr
    [line] = human_lines(proc.stderr)
    assert line.startswith("backupd: error: --owner: "), line
    assert "0 to 4294967294" in line, line
    _left_as_it_was(target, existed)
    assert not (tmp_path / "backups").exists()


@pytest.mark.parametrize("existed", [False, True], ids=["new-dir", "empty-dir"])
def test_a_chown_that_raises_anything_still_removes_the_probe(tmp_path: Path,
                                                             existed: bool) -> None:
    # The check called directly with an id no chown takes (the CLI refuses it as it reads
    # it): the probe is removed in any case, and the failure names --owner.
    target = _target(tmp_path, existed)
    with pytest.raises(ConfigError, match=r"^--owner: "):
        check_target(target, force=False, owner=(2**40, 1))
    _left_as_it_was(target, existed)
    # The next recover (without --owner) is not told of an incomplete recover.
    check_target(target, force=False)


@contextlib.contextmanager
def _append_only(directory: Path) -> Iterator[None]:
    """``directory`` append-only (chattr +a): entries can be made in it, but not removed,
    not even by root. Skipped where chattr is not installed, or where the filesystem or the
    container does not allow it (no CAP_LINUX_IMMUTABLE)."""
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not installed (Debian package e2fsprogs)")
    made = subprocess.run(["chattr", "+a", str(directory)], capture_output=True, text=True,
                          check=False)
    if made.returncode != 0:
        pytest.skip(f"chattr +a not possible here: {made.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-a", str(directory)], check=True)


@pytest.mark.parametrize("existed", [False, True], ids=["new-dir", "empty-dir"])
def test_a_probe_that_cannot_be_removed_does_not_hide_why_the_owner_was_refused(
        tmp_path: Path, existed: bool) -> None:
    # The probe is made, the chown refused, and then the probe cannot be removed (the
    # directory it is in is append-only): the rmdir's error replaced the --owner one. The
    # --owner error comes first, and then the leftover probe, named: in an existing
    # directory it is the incomplete-recover mark, so the next recover would ask for --force.
    target = _target(tmp_path, existed)
    probe = target / STAGING_NAME if existed else target
    with _append_only(target if existed else target.parent), \
            pytest.raises(ConfigError, match=r"^--owner: 1099511627776:1 is not a UID:GID") \
            as raised:
        check_target(target, force=False, owner=(2**40, 1))
    assert probe.is_dir()
    assert (f"; and the probe {probe} could not be removed (Operation not permitted); "
            "remove it by hand") in str(raised.value), str(raised.value)


@pytest.mark.parametrize("existed", [False, True], ids=["new-dir", "empty-dir"])
def test_an_owner_the_user_namespace_cannot_map_is_exit_2_and_nothing_is_left(
        tmp_path: Path, existed: bool) -> None:
    # Root in a user namespace that maps only root: chown to 12345 fails with EINVAL. It
    # escaped the probe as "--target-dir: ... cannot be used: Invalid argument" (exit 1),
    # the probe directory (or .backupd-recover-incomplete) left behind.
    target = _target(tmp_path, existed)
    proc = run_backupd(["recover", "--target-dir", str(target), "--owner", "12345:12345"],
                       _env(tmp_path), timeout=60, own_user_namespace=True)
    assert proc.returncode == 2, proc.stderr
    [line] = human_lines(proc.stderr)
    assert line.startswith("backupd: error: --owner: "), line
    assert "12345:12345" in line and "Invalid argument" in line, line
    _left_as_it_was(target, existed)
    assert STAGING_NAME not in line

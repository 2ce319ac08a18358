"""``backupd recover`` and ``backupd mark`` where the place they write cannot be used, and over
an archive whose files are damaged: every one ends in one clear line, never an internal error,
and leaves nothing half-done behind.

* A --target-dir backupd cannot create or write (a parent, or the directory itself, it may not
  write: as the image's uid 10001 finds a volume root left by root; a read-only mount) is bad
  input: exit 2, before the archive is read. A DB_BACKUP_DIR mark cannot make its scratch
  directory in, the same (exit 2).
* A write that fails part way (a full disk: a small tmpfs that fills up, of space or of
  inodes; and RLIMIT_FSIZE's "File too large", the WAL copy or a base backup file larger
  than the limit) is exit 1, naming the file, with the target directory left as it was
  (and mark's scratch directory gone).
* A WAL file whose stored size no longer matches its manifest is damage, named as such by
  recover, mark and `verify --wal` (exit 1), never a gap (recover) or a check skipped with a
  warning and a restore point made anyway (mark).

* What backupd cannot use or do is bad input said before any work (exit 2, one line): an
  encrypted archive without a usable age identity (DB_BACKUP_AGE_IDENTITY_FILE not set, for
  recover, or naming a file that is not there), a --owner it may not give files to, a
  --target-dir of another user's it cannot make 0700.

One private cluster and one daemon run for the module: a table of about 30 MiB (so the base
backup holds a file larger than a WAL segment), the daemon's base backup, rows, and a few
completed segments, all encrypted with age (the identity in the module's environment).
Each test works on a copy of DB_BACKUP_DIR in its own tmp_path (which backupd can reach
without root's file override; the cluster's directory it cannot).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers.age import make_age_keys
from helpers.cli import as_a_user_sees_it, run_backupd, start_backupd, stop_backupd
from helpers.cluster import AS_ROOT
from helpers.faults import small_filesystems
from helpers.pg import connect
from helpers.recovered import (
    PitrCluster,
    copy_archive,
    insert_batch,
    pitr_cluster,
    recovery_plan,
    wait_first_base_backup,
)
from helpers.wal import (
    archived,
    restore_points_in_pg_wal,
    switch_wal,
    wait_archived,
)

from backupd.archive.recovery import RecoveryTarget
from backupd.archive.recovery_dir import STAGING_NAME, WAL_COPY_NAME, check_target
from backupd.archive.walstore import WAL_SUBDIRECTORY, ArchivedWal
from backupd.commands.mark import SCRATCH_PREFIX

pytestmark = pytest.mark.slow
PASSWORD = "recover-failures-pw"
MiB = 1024 * 1024
# RLIMIT_FSIZE for a write that fails in the WAL copy (a segment is 16 MiB), and for one
# that fails in the base backup only (its big table's file is larger; no WAL file is).
WAL_COPY_FAILS, BASE_BACKUP_FAILS = 8 * MiB, 24 * MiB


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PitrCluster]:
    keys = make_age_keys(tmp_path_factory.mktemp("age"))
    with pitr_cluster(PASSWORD) as plain:
        pitr = dataclasses.replace(plain, env={
            **plain.env, "DB_BACKUP_AGE_RECIPIENTS_FILE": str(keys.recipients_file),
            "DB_BACKUP_AGE_IDENTITY_FILE": str(keys.identity_file)})
        cluster, work, backup_dir, env = pitr.cluster, pitr.work, pitr.backup_dir, pitr.env
        with connect(cluster.address) as conn:
            conn.execute("CREATE TABLE big AS SELECT g, repeat(md5(g::text), 8) AS pad "
                         "FROM generate_series(1, 110000) g")
            row = conn.execute("SELECT pg_relation_size('big')").fetchone()
        assert row is not None and row[0] > BASE_BACKUP_FAILS
        daemon = start_backupd(["run"], env, log_dir=work / "daemon")
        try:
            wait_first_base_backup(backup_dir)
            insert_batch(cluster.address, "A")
            wait_archived(backup_dir, switch_wal(cluster.address, 2), 90)
            insert_batch(cluster.address, "B")
        finally:
            stop_backupd(daemon, timeout=60)
        yield pitr


def _failure_line(stderr: str) -> str:
    """The last line (the job's verdict) as a user sees it; never an internal error."""
    line = stderr.strip().splitlines()[-1]
    assert "internal error" not in stderr and "Traceback" not in stderr, stderr
    return line


# --- a place backupd cannot write ----------------------------------------------------------

@pytest.mark.parametrize("unwritable", ["parent", "itself", "read-only-mount"])
def test_a_target_dir_backupd_cannot_write_is_refused_before_the_archive_is_read(
        archive: PitrCluster, tmp_path: Path, unwritable: str) -> None:
    """A new directory in a parent backupd may not write, an existing empty one it may not
    write, or one on a read-only mount: exit 2, one line naming the place and how to fix
    it, before the archive is read; nothing changed."""
    copy = copy_archive(archive.backup_dir, tmp_path / "backups")
    with small_filesystems(tmp_path) as mount:
        if unwritable == "read-only-mount":
            place = mount("1m", readonly=True)
        else:
            place = tmp_path / "volumes"
            place.mkdir()
        target = place / "data"
        if unwritable == "itself":
            target.mkdir()
            target.chmod(0o555)
            place.chmod(0o555)
            place = target
        elif unwritable == "parent":
            place.chmod(0o555)
        before = sorted(p.name for p in target.parent.iterdir())
        proc = run_backupd(["recover", "--target-dir", str(target)],
                           as_a_user_sees_it(archive.env, DB_BACKUP_DIR=str(copy)),
                           timeout=300, obey_file_modes=True)
        after = sorted(p.name for p in target.parent.iterdir())
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, (proc.returncode, proc.stderr)
    why = "Read-only file system" if unwritable == "read-only-mount" else "Permission denied"
    assert "--target-dir" in lines[0] and f"cannot write in {place} ({why})" in lines[0], \
        lines[0]
    assert "owner or permissions" in lines[0], lines[0]
    assert after == before
    if unwritable == "itself":
        assert not list(target.iterdir())


@pytest.mark.parametrize("phase", ["wal", "base-backup"])
def test_a_write_that_fails_mid_recover_names_the_file_and_leaves_the_target_as_it_was(
        archive: PitrCluster, tmp_path: Path, phase: str) -> None:
    """A file too large to write (as on a full disk) while the WAL is copied, or while the
    base backup is unpacked: exit 1 naming the file and the OS error; the directory recover
    made is gone, and an existing (empty) one is left empty."""
    target = tmp_path / "recovered"
    if phase == "base-backup":
        target.mkdir()  # a volume's mount point, say
    proc = run_backupd(["recover", "--target-dir", str(target)],
                       as_a_user_sees_it(archive.env), timeout=300,
                       file_size_limit=WAL_COPY_FAILS if phase == "wal" else BASE_BACKUP_FAILS)
    assert proc.returncode == 1, proc.stderr
    line = _failure_line(proc.stderr)
    assert f"writing the recovered data directory {target} failed: " in line, line
    staged = target / STAGING_NAME
    where = f"{staged / WAL_COPY_NAME}/" if phase == "wal" else f"{staged / 'base'}/"
    assert where in line and "File too large" in line, line
    assert "left as it was" in line, line
    if phase == "wal":
        assert not target.exists()
    else:
        assert not list(target.iterdir())


@pytest.mark.parametrize("phase", ["wal", "base-backup", "base-backup-inodes"])
def test_a_target_dir_that_fills_up_mid_recover_names_the_file_and_is_left_empty(
        archive: PitrCluster, small_fs: Callable[..., Path], phase: str) -> None:
    """--target-dir is a volume that fills up (a real tmpfs: ENOSPC from the kernel) while
    the WAL is copied (smaller than one segment), or while the base backup is unpacked (room
    for the WAL copy, not for the big table; or room, but inodes for a few dozen files):
    exit 1 naming the file and the disk's error, no hang, and the volume empty again (no
    PG_VERSION, no staging, its space given back)."""
    _, chosen = recovery_plan(archive.backup_dir, RecoveryTarget())
    wal_copy = (len(chosen.segments) + len(chosen.history)) * chosen.segment_size
    if phase == "wal":
        target = small_fs(f"{8 * MiB}")
    elif phase == "base-backup":
        target = small_fs(f"{wal_copy + 8 * MiB}")
    else:
        target = small_fs(f"{wal_copy + 256 * MiB}", inodes=40)
    proc = run_backupd(["recover", "--target-dir", str(target)],
                       as_a_user_sees_it(archive.env), timeout=300)
    assert proc.returncode == 1, proc.stderr
    line = _failure_line(proc.stderr)
    assert f"writing the recovered data directory {target} failed: " in line, line
    wal_dir = f"{target / STAGING_NAME / WAL_COPY_NAME}/"
    assert f"{target / STAGING_NAME}/" in line and "No space left on device" in line, line
    assert (wal_dir in line) == (phase == "wal"), line
    assert "left as it was" in line, line
    assert not list(target.iterdir())
    assert shutil.disk_usage(target).used < MiB


def test_mark_with_a_backup_dir_it_cannot_write_is_refused_naming_it(
        archive: PitrCluster, tmp_path: Path) -> None:
    """mark reads the archive's WAL into a scratch directory in DB_BACKUP_DIR: one it may
    not write is a setting to fix (exit 2), said before any WAL is copied; no restore point
    is made."""
    copy = copy_archive(archive.backup_dir, tmp_path / "backups")
    copy.chmod(0o555)
    proc = run_backupd(["mark", "read-only-dir"],
                       as_a_user_sees_it(archive.env, DB_BACKUP_DIR=str(copy)), timeout=300,
                       obey_file_modes=True)
    assert proc.returncode == 2, proc.stderr
    line = _failure_line(proc.stderr)
    assert f"DB_BACKUP_DIR: {copy} is not writable" in line, line
    assert "Permission denied" in line and "owner or permissions" in line, line
    # The other line: the job's log file (in DB_BACKUP_DIR too) could not be written.
    others = [x for x in proc.stderr.strip().splitlines()[:-1] if "job log file" not in x]
    assert not others, proc.stderr
    assert restore_points_in_pg_wal(archive.cluster, "read-only-dir") == 0


def test_a_write_that_fails_in_marks_scratch_directory_names_it_and_makes_no_point(
        archive: PitrCluster, tmp_path: Path) -> None:
    copy = copy_archive(archive.backup_dir, tmp_path / "backups")
    proc = run_backupd(["mark", "too-large"],
                       as_a_user_sees_it(archive.env, DB_BACKUP_DIR=str(copy)), timeout=300,
                       file_size_limit=WAL_COPY_FAILS)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, (proc.returncode, proc.stderr)
    line = _failure_line(proc.stderr)
    assert "restore point 'too-large' not made" in line, line
    assert f"{copy / SCRATCH_PREFIX}" in line and "File too large" in line, line
    assert not list(copy.glob(f"{SCRATCH_PREFIX}*"))
    assert restore_points_in_pg_wal(archive.cluster, "too-large") == 0


# --- what backupd cannot use or do, said before any work-------------------------------

@pytest.mark.parametrize(("command", "identity"), [("recover", "unset"),
                                                   ("recover", "not-there"),
                                                   ("mark", "not-there")])
def test_an_identity_file_missing_is_refused_naming_it_before_any_work(
        archive: PitrCluster, tmp_path: Path, command: str, identity: str) -> None:
    """The archive is encrypted, and DB_BACKUP_AGE_IDENTITY_FILE is not set (the sidecar's
    own settings: public keys only) or names a file that is not there (a secret not
    mounted): the setting to fix, in one line (no plan printed), before any file of the
    archive is fetched; no directory made, no restore point. (mark without the setting
    warns and makes the point: tests/test_recover_identity.py.)"""
    copy = copy_archive(archive.backup_dir, tmp_path / "backups")
    missing = tmp_path / "secrets" / "age_identity"
    env = {**as_a_user_sees_it(archive.env, DB_BACKUP_DIR=str(copy)),
           "DB_BACKUP_AGE_IDENTITY_FILE": str(missing)}
    if identity == "unset":
        del env["DB_BACKUP_AGE_IDENTITY_FILE"]
    target = tmp_path / "recovered"
    args = (["recover", "--target-dir", str(target)] if command == "recover"
            else ["mark", "no-identity"])
    proc = run_backupd(args, env, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, (proc.returncode, proc.stderr)
    if identity == "unset":
        assert ("DB_BACKUP_AGE_IDENTITY_FILE: not set, and the archive's files this "
                "recovery reads are encrypted") in lines[0], lines[0]
        assert "set it to the age identity file" in lines[0], lines[0]
    else:
        assert f"DB_BACKUP_AGE_IDENTITY_FILE: cannot read {missing}: No such file" in lines[0]
    assert not target.exists()
    assert not list(copy.glob(f"{SCRATCH_PREFIX}*"))
    assert restore_points_in_pg_wal(archive.cluster, "no-identity") == 0


@pytest.mark.skipif(not AS_ROOT, reason="makes a directory of another user's, and runs backupd "
                    "without root's power over ownership")
@pytest.mark.parametrize("case", ["owner", "target-of-another-user"])
def test_what_only_root_may_do_is_refused_before_the_base_backup_is_unpacked(
        archive: PitrCluster, tmp_path: Path, case: str) -> None:
    """As the image's uid 10001 (file modes and ownership bind it): --owner giving the files
    to another user, or an empty --target-dir of another user's (writable to all) that it
    cannot make 0700, failed only at the last step, after the whole base backup was
    unpacked (exit 1). Both are exit 2 before the archive is read, nothing changed."""
    copy = copy_archive(archive.backup_dir, tmp_path / "backups")
    target = tmp_path / "recovered"
    args = ["recover", "--target-dir", str(target)]
    if case == "owner":
        args += ["--owner", "12345:12345"]
    else:
        target.mkdir()
        os.chown(target, 12345, 12345)
        target.chmod(0o777)
    proc = run_backupd(args, as_a_user_sees_it(archive.env, DB_BACKUP_DIR=str(copy)),
                       timeout=300, obey_file_modes=True, obey_ownership=True)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, (proc.returncode, proc.stderr)
    if case == "owner":
        assert "--owner: backupd (uid 0) may not give files to 12345:12345" in lines[0], \
            lines[0]
        assert not target.exists()
    else:
        assert f"--target-dir: {target} is owned by uid 12345" in lines[0], lines[0]
        info = target.stat()
        assert (info.st_uid, info.st_mode & 0o777) == (12345, 0o777)
        assert not list(target.iterdir())


# --- a WAL file whose stored size no longer matches its manifest ---------------------------

def _cut_short(archive: PitrCluster, tmp_path: Path) -> tuple[Path, ArchivedWal]:
    """A copy of the archive whose middle committed segment lost the second half of its
    stored file (a copy that stopped part way, a disk that lost its tail): its manifest
    records the size it had. That segment, as the archive listed it before."""
    copy = copy_archive(archive.backup_dir, tmp_path / "backups")
    committed = [w for w in archived(copy) if w.artifact is not None and w.wal.kind == "segment"]
    assert len(committed) >= 3, committed
    victim = committed[len(committed) // 2]
    assert victim.artifact is not None
    stored = copy / WAL_SUBDIRECTORY / victim.artifact
    with stored.open("r+b") as handle:
        handle.truncate(victim.stored_size // 2)
    return copy, victim


def _says_damage(line: str, copy: Path, victim: ArchivedWal) -> None:
    assert victim.artifact is not None
    assert f"WAL file {victim.name} is damaged: " in line, line
    assert (f"{copy / WAL_SUBDIRECTORY / victim.artifact} is {victim.stored_size // 2} bytes, "
            f"its manifest records {victim.stored_size}") in line, line
    assert "gap" not in line and "missing" not in line, line


def test_recover_over_a_wal_file_cut_short_fails_naming_the_damage_not_a_gap(
        archive: PitrCluster, tmp_path: Path) -> None:
    copy, victim = _cut_short(archive, tmp_path)
    target = tmp_path / "recovered"
    proc = run_backupd(["recover", "--target-dir", str(target)],
                       as_a_user_sees_it(archive.env, DB_BACKUP_DIR=str(copy)), timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, (proc.returncode, proc.stderr)
    _says_damage(_failure_line(proc.stderr), copy, victim)
    assert not target.exists()


def test_mark_over_a_wal_file_cut_short_fails_naming_it_and_makes_no_point(
        archive: PitrCluster, tmp_path: Path) -> None:
    """Not "not looked for" and a restore point made anyway (as for a gap): the same file
    would fail `recover --to-name`, so mark fails, as for a corrupt file of the same size."""
    copy, victim = _cut_short(archive, tmp_path)
    proc = run_backupd(["mark", "cut-short"],
                       as_a_user_sees_it(archive.env, DB_BACKUP_DIR=str(copy)), timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, (proc.returncode, proc.stderr)
    line = _failure_line(proc.stderr)
    assert "restore point 'cut-short' not made" in line, line
    _says_damage(line, copy, victim)
    assert restore_points_in_pg_wal(archive.cluster, "cut-short") == 0
    assert not list(copy.glob(f"{SCRATCH_PREFIX}*"))


def test_verify_wal_names_a_wal_file_cut_short_as_damaged_not_missing(
        archive: PitrCluster, tmp_path: Path) -> None:
    copy, victim = _cut_short(archive, tmp_path)
    proc = run_backupd(["verify", "--wal", "--json"],
                       as_a_user_sees_it(archive.env, DB_BACKUP_DIR=str(copy)), timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    [verdict] = json.loads(proc.stdout)
    assert not verdict["pitr"] and verdict["missing"] == [], verdict
    assert victim.artifact is not None
    [damaged] = verdict["damaged"]
    assert damaged.startswith(f"{victim.name} (") and victim.artifact in damaged, damaged
    line = _failure_line(proc.stderr)
    assert f"damaged {victim.name} (" in line and "missing" not in line, line


def test_a_probe_left_by_a_killed_check_does_not_block_force(tmp_path: Path) -> None:
    # A recover killed between the writability probe's mkdir and rmdir (with an incomplete
    # recover there) left the probe: every `recover --force` then failed on "File exists".
    target = tmp_path / "data"
    (target / STAGING_NAME).mkdir(parents=True)
    (target / f"{STAGING_NAME}.probe").mkdir()
    check_target(target, force=True)
    # The probe's own leftover is gone with its check; the incomplete recover is --force's.
    assert [p.name for p in target.iterdir()] == [STAGING_NAME]

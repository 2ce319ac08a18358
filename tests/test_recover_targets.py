"""``backupd recover`` decides where replay stops, whatever the base backup carries.

The primary keeps recovery settings in its postgresql.auto.conf (as a primary that was itself
recovered, and never reset them, does): a ``recovery_target_time`` long past with
``recovery_target_action = 'promote'``; and, as a server that once was a delayed standby keeps,
``recovery_min_apply_delay`` and a ``recovery_end_command``. They travel inside every later
base backup. One private cluster, one daemon run, one archive for the module: the table ``t``
exists before the base backup, then rows in batches A, B, C, D are committed after it, with
restore points between them: ``twice`` after A (`backupd mark`) and again after B
(pg_create_restore_point from psql, which nothing can stop), ``once`` after C.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from helpers.cli import as_a_user_sees_it, run_backupd, start_backupd, stop_backupd
from helpers.cluster import PrivateCluster
from helpers.faults import wait_until
from helpers.pg import connect, pg_binary
from helpers.recovered import (
    copy_archive,
    insert_batch,
    pitr_cluster,
    recover,
    recovered_batches,
    recovery_plan,
    wait_first_base_backup,
)
from helpers.wal import (
    holds,
    restore_points_in_pg_wal,
    spool_dir,
)

from backupd.archive import restore_points
from backupd.archive.recovery import RecoveryTarget
from backupd.archive.walnames import format_lsn, parse_lsn
from backupd.archive.walstore import ArchivedWal
from backupd.commands.mark import SCRATCH_PREFIX
from backupd.errors import JobFailed

pytestmark = pytest.mark.slow
PASSWORD = "recover-targets-pw"
# What a primary recovered to a point in time (and never reset) keeps in postgresql.auto.conf.
LEFTOVER = {"recovery_target_time": "2001-01-01 00:00:00+00", "recovery_target_action": "promote",
            # Honoured in archive recovery too: every commit of the last hour would wait.
            "recovery_min_apply_delay": "1h",
            # Run by the server (in its data directory) when recovery ends.
            "recovery_end_command": "touch recovery_end_command_ran"}


@dataclass
class Archive:
    cluster: PrivateCluster
    backup_dir: Path
    env: dict[str, str]
    work: Path
    c_lsn: str  # the end of the WAL after batch C's commit
    twice: list[str]  # where the two restore points named "twice" end (as made)
    marks_between: tuple[datetime, datetime]  # before the first "twice", after the second


@pytest.fixture(scope="module")
def archive() -> Iterator[Archive]:
    with pitr_cluster(PASSWORD) as pitr:
        cluster, work, backup_dir, env = pitr.cluster, pitr.work, pitr.backup_dir, pitr.env
        with connect(cluster.address) as conn:
            for key, value in LEFTOVER.items():
                conn.execute(f"ALTER SYSTEM SET {key} = '{value}'")
        daemon = start_backupd(["run"], env, log_dir=work / "daemon")
        try:
            wait_first_base_backup(backup_dir)
            before = datetime.now(UTC)
            insert_batch(cluster.address, "A")
            marked = run_backupd(["mark", "twice"], env)
            assert marked.returncode == 0, marked.stderr
            said = re.search(r"restore point 'twice' at ([0-9A-F]+/[0-9A-F]+)",
                             marked.stdout + marked.stderr)
            assert said is not None, marked.stdout + marked.stderr
            insert_batch(cluster.address, "B")
            with connect(cluster.address) as conn:
                again = conn.execute("SELECT pg_create_restore_point('twice')::text").fetchone()
                conn.execute("SELECT pg_current_xact_id()")  # flushes the restore point
            after = datetime.now(UTC)
            c_lsn = insert_batch(cluster.address, "C")
            marked = run_backupd(["mark", "once"], env)
            assert marked.returncode == 0, marked.stderr
            marker = f"d-marker-{secrets.token_hex(6)}"
            insert_batch(cluster.address, "D", marker)
            wait_until(lambda: any(holds(p, marker) for p in spool_dir(backup_dir).glob(
                "*.partial")), 60, "D durable in the local partial")
        finally:
            stop_backupd(daemon, timeout=60)
        assert again is not None
        yield Archive(cluster, backup_dir, env, work, c_lsn, [said.group(1), str(again[0])],
                      (before, after))


def test_a_leftover_target_in_the_base_backup_does_not_stop_a_recover_to_the_end(
        archive: Archive) -> None:
    target_dir = archive.work / "to-end"
    out = recover(archive.env, target_dir)
    assert "target: the end of the archive" in out
    auto = (target_dir / "postgresql.auto.conf").read_text()
    assert f"recovery_target_time = '{LEFTOVER['recovery_target_time']}'" in auto  # carried
    assert f"recovery_min_apply_delay = '{LEFTOVER['recovery_min_apply_delay']}'" in auto
    assert recovered_batches(target_dir, PASSWORD) == {"A": 40, "B": 40, "C": 40, "D": 40}
    assert not (target_dir / "recovery_end_command_ran").exists()


def test_a_leftover_target_does_not_clash_with_the_requested_one(archive: Archive) -> None:
    # A second kind of target beside the leftover time is "multiple recovery targets
    # specified" to the server unless the leftover is cleared.
    target_dir = archive.work / "to-lsn"
    recover(archive.env, target_dir, "--to-lsn", archive.c_lsn)
    assert recovered_batches(target_dir, PASSWORD) == {"A": 40, "B": 40, "C": 40}


def test_recover_to_a_name_made_once_stops_there(archive: Archive) -> None:
    target_dir = archive.work / "to-once"
    out = recover(archive.env, target_dir, "--to-name", "once")
    assert "target: restore point 'once'" in out
    assert recovered_batches(target_dir, PASSWORD) == {"A": 40, "B": 40, "C": 40}


def _user_env(archive: Archive, **extra: str) -> dict[str, str]:
    return as_a_user_sees_it(archive.env, **extra)


def _refused(archive: Archive, args: list[str], **extra: str) -> str:
    """The one line a refused command (exit 2) wrote, as a user sees it."""
    proc = run_backupd(args, _user_env(archive, **extra), timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, (proc.returncode, proc.stderr)
    return lines[0]


def test_a_name_made_twice_is_refused_naming_both_and_the_way_out(archive: Archive) -> None:
    target_dir = archive.work / "to-twice"
    line = _refused(archive, ["recover", "--target-dir", str(target_dir), "--to-name", "twice"])
    assert "--to-name" in line and "--to-lsn" in line
    # Each at its record's start: before where pg_create_restore_point said it ended, and
    # the first ends before the second starts.
    listed = [parse_lsn(lsn) for lsn in re.findall(r"([0-9A-F]+/[0-9A-F]+) \(", line)]
    ends = [parse_lsn(lsn) for lsn in archive.twice]
    assert len(listed) == 2 and listed[0] < ends[0] <= listed[1] < ends[1], line
    times = [datetime.fromisoformat(t) for t in re.findall(r"\((\S+)\)", line)]
    assert len(times) == 2 and archive.marks_between[0] <= times[0] <= times[1] <= \
        archive.marks_between[1], line
    assert not target_dir.exists()
    # The way out the line names: the second one by its LSN.
    recover(archive.env, target_dir, "--to-lsn", format_lsn(listed[1]))
    assert recovered_batches(target_dir, PASSWORD) == {"A": 40, "B": 40}


def test_a_name_not_in_the_archive_or_empty_is_refused(archive: Archive) -> None:
    target_dir = archive.work / "to-nowhere"
    line = _refused(archive, ["recover", "--target-dir", str(target_dir), "--to-name",
                              "never-marked"])
    assert "--to-name" in line and "never-marked" in line
    line = _refused(archive, ["recover", "--target-dir", str(target_dir), "--to-name", ""])
    assert "--to-name" in line and "empty" in line
    assert not target_dir.exists()


def test_mark_refuses_a_name_already_in_the_archive(archive: Archive) -> None:
    before = _points_in_the_servers_wal(archive, "once")
    assert before >= 1  # the fixture's own mark: the count sees restore points
    line = _refused(archive, ["mark", "once"])
    assert "NAME" in line and "'once'" in line and "already" in line
    assert _points_in_the_servers_wal(archive, "once") == before  # none made


@pytest.mark.parametrize("damage", ["unreadable", "corrupt"])
def test_mark_over_a_damaged_archive_fails_naming_the_file_and_makes_no_point(
        archive: Archive, tmp_path: Path, damage: str) -> None:
    """A WAL file mark's check reads that cannot be read (mode 0, as a file root left behind
    is to the image's uid 10001) or is corrupt (its bytes changed, not its size): exit 1, one
    line naming it, and no restore point."""
    copy = copy_archive(archive.backup_dir, tmp_path / "backups")
    _, chosen = recovery_plan(copy, RecoveryTarget(name="x"))
    artifact = next(w.artifact for w in chosen.segments if isinstance(w, ArchivedWal))
    assert artifact is not None  # committed, not the spool's
    path = copy / "wal" / artifact
    if damage == "unreadable":
        path.chmod(0)
    else:
        data = bytearray(path.read_bytes())
        middle = len(data) // 2
        data[middle:middle + 64] = bytes(byte ^ 0xFF for byte in data[middle:middle + 64])
        path.write_bytes(bytes(data))
    name = f"after-{damage}"
    proc = run_backupd(["mark", name], _user_env(archive, DB_BACKUP_DIR=str(copy)),
                       timeout=300, obey_file_modes=True)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, (proc.returncode, proc.stderr)
    assert f"restore point {name!r} not made" in lines[0] and artifact in lines[0], lines[0]
    assert "internal error" not in lines[0], lines[0]
    assert _points_in_the_servers_wal(archive, name) == 0
    assert not list(copy.glob(f"{SCRATCH_PREFIX}*"))  # the fetched WAL removed


def _server_major(archive: Archive) -> int:
    with connect(archive.cluster.address) as conn:
        row = conn.execute("SHOW server_version_num").fetchone()
    assert row is not None
    return int(row[0]) // 10000


def test_mark_without_the_archives_pg_waldump_warns_naming_it_and_still_marks(
        archive: Archive, tmp_path: Path) -> None:
    """The check cannot run; the restore point is still made (recover refuses a name that is
    there twice), and the warning says which pg_waldump is missing and how to get it."""
    empty = tmp_path / "no-server-binaries"
    empty.mkdir()
    proc = run_backupd(["mark", "unchecked"],
                       _user_env(archive, PG_SERVER_ROOT=str(empty)), timeout=300)
    assert proc.returncode == 0, proc.stderr
    major = _server_major(archive)
    [warning] = [line for line in proc.stderr.splitlines() if "[warning" in line]
    assert "'unchecked' not looked for" in warning and "PG_SERVER_ROOT" in warning, warning
    assert f"postgresql-{major}" in warning and str(empty / str(major) / "bin") in warning
    assert _points_in_the_servers_wal(archive, "unchecked") == 1


def test_recover_to_a_name_without_the_archives_pg_waldump_is_refused_naming_it(
        archive: Archive, tmp_path: Path) -> None:
    """Unchecked, a name there twice would stop replay at the first, and one not there at all
    would make a directory no server starts on: refused, nothing written."""
    empty = tmp_path / "no-server-binaries"
    empty.mkdir()
    target_dir = archive.work / "to-once-unchecked"
    line = _refused(archive, ["recover", "--target-dir", str(target_dir), "--to-name", "once"],
                    PG_SERVER_ROOT=str(empty))
    major = _server_major(archive)
    assert "--to-name" in line and "'once'" in line, line
    assert "PG_SERVER_ROOT" in line and f"postgresql-{major}" in line and "--to-lsn" in line
    assert not target_dir.exists()


def _points_in_the_servers_wal(archive: Archive, name: str) -> int:
    return restore_points_in_pg_wal(archive.cluster, name)


def test_the_scan_a_window_at_a_time_finds_each_restore_point_once(
        archive: Archive, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # What `backupd mark` runs over a large archive, with a window of one segment (plus the
    # one after it) so the small archive spans windows.
    source, chosen = recovery_plan(archive.backup_dir, RecoveryTarget(name="twice"))
    assert len(chosen.segments) >= 2
    monkeypatch.setattr(restore_points, "WINDOW_SEGMENTS", 1)
    found = restore_points.find(chosen, tmp_path, Path(pg_binary("pg_waldump")), "twice",
                                fetch=lambda wal, dest: source.fetch_segment(
                                    wal, dest, chosen.segment_size))
    ends = [parse_lsn(lsn) for lsn in archive.twice]
    assert [p.lsn < end for p, end in zip(found, ends, strict=True)] == [True, True]
    assert found[0].lsn < found[1].lsn
    assert not list(tmp_path.iterdir())  # each window's files removed once read


def test_a_scan_that_pg_waldump_cannot_finish_fails_instead_of_finding_fewer(
        archive: Archive, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A segment pg_waldump cannot read, before the window's last one: the scan would end
    there and report fewer restore points than the WAL holds (one "twice" where there are
    two, so --to-name would go ahead). It fails, naming where it stopped."""
    source, chosen = recovery_plan(archive.backup_dir, RecoveryTarget(name="twice"))
    assert len(chosen.segments) >= 2
    for wal in chosen.segments:
        source.fetch_segment(wal, tmp_path / chosen.file_name(wal), chosen.segment_size)
    first = tmp_path / chosen.file_name(chosen.segments[0])
    first.write_bytes(bytes(first.stat().st_size))  # zeros: "invalid magic number 0000"
    monkeypatch.setattr(restore_points, "WINDOW_SEGMENTS", 1)
    with pytest.raises(JobFailed, match=f"pg_waldump stopped reading the archive's WAL before "
                                        f"{chosen.file_name(chosen.segments[1])}"):
        restore_points.find(chosen, tmp_path, Path(pg_binary("pg_waldump")), "twice")

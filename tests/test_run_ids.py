"""A backup run's id (manifest.run_id) names one run only: restore, drill and health take "the
newest run" by it. With DB_BACKUP_GLOBALS=off no globals file is ever written, so the
globals name cannot be what keeps two runs' ids apart."""

from __future__ import annotations

import gzip
import os
import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from helpers.backups import (
    backup_files,
    manifest_path,
    read_manifest,
    seed_small_db,
    sha256_file,
)
from helpers.cli import BackupdProcess, EnvFactory, run_backupd, start_backupd, stop_backupd
from helpers.faketime import library
from helpers.faults import SlowDump, dump_partials, fill_up, wait_until
from helpers.logs import jobs_finished
from helpers.pg import ServerAddress, unique_db_name

from backupd.errors import JobFailed
from backupd.manifest import Manifest
from backupd.naming import RUN_RESERVATION, run_id, run_reservation_name
from backupd.storage.local import LocalRepository


def _same_second_clock() -> dict[str, str]:
    """Every backupd started with this starts its clock at the same second, running at a
    tenth of the real rate: two runs started one after the other begin within one second
    (the test does not depend on how fast this machine is), and a wait for the next second
    still ends (in ten real ones)."""
    lib = library()
    if lib is None:
        pytest.skip("libfaketime is not installed (Debian package 'faketime')")
    start = datetime.now(UTC).replace(microsecond=0)
    # TZ=UTC: libfaketime reads an absolute date in the process's local time zone.
    return {"LD_PRELOAD": lib, "FAKETIME": f"@{start:%Y-%m-%d %H:%M:%S} x0.1",
            "FAKETIME_NO_CACHE": "1", "TZ": "UTC"}


def _run_ids(directory: Path) -> dict[str, set[str]]:
    """Each run id recorded in ``directory`` -> the databases of its dumps."""
    runs: dict[str, set[str]] = {}
    for name in backup_files(directory):
        manifest = read_manifest(directory / name)
        runs.setdefault(manifest["run_id"], set()).add(manifest["database"])
    return runs


def _reservations(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.startswith(RUN_RESERVATION)]


def _seeded(pg_server: ServerAddress, make_db: Callable[..., str]) -> str:
    db = make_db()
    seed_small_db(pg_server, db)
    return db


def test_two_runs_in_one_second_with_the_globals_off_get_two_run_ids(
        pg_server: ServerAddress, make_db: Callable[..., str], backupd_env: EnvFactory,
        backup_dir: Path) -> None:
    first, second = _seeded(pg_server, make_db), _seeded(pg_server, make_db)
    env = backupd_env(f"{first}, {second}", DB_BACKUP_GLOBALS="off", **_same_second_clock())
    for _ in range(2):
        proc = run_backupd(["backup", "--no-prune"], env, timeout=240)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(backup_files(backup_dir)) == 4
    assert sorted(_run_ids(backup_dir).values(), key=sorted) == [
        {first, second}, {first, second}]


def test_a_run_does_not_reuse_the_id_of_another_configs_run_in_the_same_directory(
        pg_server: ServerAddress, make_db: Callable[..., str], backupd_env: EnvFactory,
        backup_dir: Path) -> None:
    # Two configurations sharing DB_BACKUP_DIR, of different databases: each run's id is
    # its own, though neither config lists the other's databases.
    dbs = [_seeded(pg_server, make_db) for _ in range(4)]
    clock = _same_second_clock()
    for pair in (dbs[:2], dbs[2:]):
        env = backupd_env(", ".join(pair), DB_BACKUP_GLOBALS="off", **clock)
        proc = run_backupd(["backup", "--no-prune"], env, timeout=240)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(_run_ids(backup_dir).values(), key=sorted) == sorted(
        [set(dbs[:2]), set(dbs[2:])], key=sorted)


def test_two_configs_starting_runs_at_once_in_one_second_get_two_run_ids(
        pg_server: ServerAddress, make_db: Callable[..., str], backupd_env: EnvFactory,
        backup_dir: Path, tmp_path: Path) -> None:
    # Two configurations on one schedule, sharing DB_BACKUP_DIR: both runs start before
    # either has written a manifest, so only a reservation taken at the start parts them.
    dbs = [_seeded(pg_server, make_db) for _ in range(4)]
    clock = _same_second_clock()
    procs = [start_backupd(["backup", "--no-prune"],
                           backupd_env(", ".join(pair), DB_BACKUP_GLOBALS="off", **clock),
                           log_dir=tmp_path / f"config{index}")
             for index, pair in enumerate((dbs[:2], dbs[2:]))]
    for proc in procs:
        assert proc.wait(timeout=240) == 0, proc.read_stdout() + proc.read_stderr()
    assert sorted(_run_ids(backup_dir).values(), key=sorted) == sorted(
        [set(dbs[:2]), set(dbs[2:])], key=sorted)
    assert not _reservations(backup_dir)


def test_the_start_up_cleanup_removes_a_killed_runs_reservation_only_once_a_day_old(
        tmp_path: Path) -> None:
    # A live run of another process holds a fresh one: the cleanup, which does not wait for
    # runs, must leave it.
    killed, live = (tmp_path / run_reservation_name(rid)
                    for rid in ("20260101_000000", "20260102_000000"))
    for path in (killed, live):
        path.touch()
    two_days_ago = time.time() - 2 * 86400
    os.utime(killed, (two_days_ago, two_days_ago))

    assert LocalRepository(tmp_path).remove_leftovers() == [killed.name]
    assert live.exists() and not killed.exists()


def test_a_stale_reservation_the_cleanup_cannot_delete_does_not_stop_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A directory by a stale reservation's name (unlink fails: EISDIR or EPERM) raised out
    of the cleanup, and the daemon exited with an internal error on every start. It is
    left with a warning naming it; the rest of the cleanup goes on."""
    stuck, killed = (tmp_path / run_reservation_name(rid)
                     for rid in ("20260101_000000", "20260101_000001"))
    stuck.mkdir()
    killed.touch()
    partial = tmp_path / ".db-20260101_000000.sql.gz.partial"
    partial.touch()
    two_days_ago = time.time() - 2 * 86400
    for path in (stuck, killed):
        os.utime(path, (two_days_ago, two_days_ago))

    removed = LocalRepository(tmp_path).remove_leftovers()

    assert removed == sorted([killed.name, partial.name])
    assert stuck.is_dir()
    said = capsys.readouterr()
    assert stuck.name in said.out + said.err


def test_a_directory_that_cannot_be_listed_fails_the_run_in_one_line(
        pg_server: ServerAddress, make_db: Callable[..., str], backupd_env: EnvFactory,
        backup_dir: Path) -> None:
    """DB_BACKUP_DIR writable but not readable (wx, another owner; modes and ownership bind
    backupd as they bind the image's uid): the probe write passes, listing the manifests for
    the run id does not. One line naming DB_BACKUP_DIR, not an internal error."""
    db = _seeded(pg_server, make_db)
    backup_dir.mkdir()
    shutil.chown(backup_dir, "postgres", "postgres")
    backup_dir.chmod(0o333)
    proc = run_backupd(["backup", "--no-prune"], backupd_env(db, DB_BACKUP_GLOBALS="on"),
                       timeout=240, obey_file_modes=True, obey_ownership=True)
    said = proc.stdout + proc.stderr
    assert proc.returncode == 1, said
    assert "internal error" not in said and "Traceback" not in said, said
    assert f"DB_BACKUP_DIR: cannot list {backup_dir}" in said, said
    assert "Permission denied" in said, said


def test_a_reservation_the_full_directory_cannot_hold_fails_in_one_line_naming_it(
        small_fs: Callable[..., Path]) -> None:
    """DB_BACKUP_DIR full (a real tmpfs, filled: no block and no inode left; an empty
    reservation file needs an inode): the reservation fails with JobFailed naming the file
    and the kernel's reason, not an OSError, and holds nothing. Called directly: a run's
    directory probe (LocalRepository.prepare) creates a file the same way just before, so a
    directory that refuses the one refuses the other first."""
    directory = small_fs("64k", inodes=16)
    fill_up(directory, 16)

    with pytest.raises(JobFailed) as failed, \
            LocalRepository(directory).reserved_run_start(lambda at: []):
        pytest.fail("a run id was reserved in a full directory")
    said = str(failed.value)
    assert said.startswith(f"DB_BACKUP_DIR: cannot create {directory / RUN_RESERVATION}"), said
    assert "(No space left on device)" in said and "free space" in said, said
    assert "\n" not in said, said
    assert not _reservations(directory)


def test_a_run_that_fails_lets_go_of_its_reservation_and_says_why_in_one_line(
        pg_server: ServerAddress, make_db: Callable[..., str], backupd_env: EnvFactory,
        backup_dir: Path) -> None:
    # A database POSTGRES_DB lists and the server lacks: the run has its id reserved (the
    # other database is dumped under it), then fails. Left behind, the reservation would
    # hold that second for a day.
    db, missing = _seeded(pg_server, make_db), unique_db_name("missing")
    proc = run_backupd(["backup", "--no-prune"],
                       backupd_env(f"{db}, {missing}", DB_BACKUP_GLOBALS="off"), timeout=240)
    said = proc.stdout + proc.stderr
    assert proc.returncode == 1, said
    assert "internal error" not in said and "Traceback" not in said, said
    [refused, run] = jobs_finished(proc.stderr, "backup", "failed")
    assert refused["database"] == missing, refused
    assert refused["error"].startswith(f"database {missing!r} (listed in POSTGRES_DB) does "
                                       "not exist on "), refused
    rid = run["outcome"]["run_id"]
    assert run["error"] == f"backup run {rid}: 1 of 2 databases failed: {missing!r}", run
    assert _run_ids(backup_dir) == {rid: {db}}
    assert not _reservations(backup_dir)


def test_a_run_the_daemon_cancels_mid_dump_lets_go_of_its_reservation(
        make_db: Callable[..., str], pg_server: ServerAddress, backupd_env: EnvFactory,
        backup_dir: Path, tmp_path: Path,
        backupd_daemon: Callable[..., BackupdProcess]) -> None:
    # SIGTERM to the daemon while the run's first dump runs (pg_dump slowed down): the run
    # is cancelled, and ends by an exception out of the reservation's ``with``, not by its
    # failures' summary. (A one-off backup has no handler: SIGTERM kills it, as kill -9
    # does, and the start-up cleanup removes its reservation a day later.)
    first, second = _seeded(pg_server, make_db), _seeded(pg_server, make_db)
    slow = SlowDump(tmp_path / "slow-bin", chunk=64, delay=0.5)
    daemon = backupd_daemon(["run"], backupd_env(
        f"{first}, {second}", DB_BACKUP_GLOBALS="off", BACKUP_SCHEDULE="0 0 1 1 *",
        DRILL_SCHEDULE="off", PATH=slow.path()))  # no backup yet: it dumps at once
    wait_until(lambda: dump_partials(backup_dir), timeout=60, what="the first dump")
    assert _reservations(backup_dir)  # held while the run lasts
    assert stop_backupd(daemon, timeout=60) == 0, daemon.read_stderr()
    [run] = [event for event in jobs_finished(daemon.read_stderr(), "backup", "cancelled")
             if event["database"] == f"{first}, {second}"]
    assert "cancelled" in run["error"], run
    assert not backup_files(backup_dir)
    assert not _reservations(backup_dir)


def test_a_symlink_named_like_a_backup_holds_no_run_id(
        pg_server: ServerAddress, make_db: Callable[..., str], backupd_env: EnvFactory,
        backup_dir: Path, tmp_path: Path) -> None:
    """A symbolic link is never one of our backups (LocalRepository.scan passes over it), so
    the manifest beside one keeps no run from taking the second it records. The run ids were
    read by a listing of their own, without scan's guard: the run took the next second."""
    first, second = _seeded(pg_server, make_db), _seeded(pg_server, make_db)
    clock = _same_second_clock()
    start = datetime.strptime(clock["FAKETIME"], "@%Y-%m-%d %H:%M:%S x0.1").replace(tzinfo=UTC)
    taken = start - timedelta(days=1)
    outside = tmp_path / "outside.sql.gz"
    outside.write_bytes(gzip.compress(b"SELECT 1;\n"))
    linked = backup_dir / f"elsewhere_{run_id(taken)}.sql.gz"
    backup_dir.mkdir()
    linked.symlink_to(outside)
    manifest_path(linked).write_bytes(Manifest(
        name=linked.name, database="elsewhere", run_id=run_id(start), started_at=taken,
        finished_at=taken, raw_bytes=10, stored_bytes=outside.stat().st_size,
        sha256=sha256_file(outside), verified=True).to_json())

    env = backupd_env(f"{first}, {second}", DB_BACKUP_GLOBALS="off", **clock)
    proc = run_backupd(["backup", "--no-prune"], env, timeout=240)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    linked.unlink()  # the run's own dumps left
    assert _run_ids(backup_dir) == {run_id(start): {first, second}}

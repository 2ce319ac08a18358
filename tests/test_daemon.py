"""``backupd run`` as a real subprocess against real PostgreSQL: bad schedules, SIGTERM in the
middle of a dump, cleanup at the next start, two daemons sharing one database, and runs
missed while the daemon was down."""

from __future__ import annotations

import fcntl
import functools
import json
import os
import shutil
import signal
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from helpers.cli import BackupdProcess, run_backupd, stop_backupd
from helpers.daemon import FAST, NEVER_DURING_TEST, finished, started
from helpers.faketime import movable_clock, move_clock
from helpers.faults import SlowDump, dump_partials, partial_files, wait_until
from helpers.logs import log_events
from helpers.pg import ServerAddress, connect

from backupd.commands.mark import SCRATCH_PREFIX
from backupd.commands.pitr_scratch import scratch_directory
from backupd.daemon.state import LOCK_FILE, JobRecord, StateFile, read_state, update_state
from backupd.naming import parse_backup_name
from backupd.scratch import OWNER_LOCK, owned

# --- start-up validation ---------------------------------------------------------------------


@pytest.mark.parametrize(("variable", "value"), [
    ("BACKUP_SCHEDULE", "0 2 * *"),
    ("BACKUP_SCHEDULE", "0 2 * * 8"),
    ("VERIFY_SCHEDULE", "every day"),
    ("RETENTION_SCHEDULE", "0 25 * * *"),
    ("DRILL_SCHEDULE", "0 4 31 2 *"),
    ("TZ", "Mars/Olympus_Mons"),
])
def test_bad_schedule_or_zone_is_one_line_and_exit_2(
    backupd_env: Callable[..., dict[str, str]], backup_dir: Path, variable: str, value: str
) -> None:
    proc = run_backupd(["run"], backupd_env("postgres", **{variable: value}), timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"backupd: error: {variable}: ")
    assert not backup_dir.exists() or not any(backup_dir.iterdir())  # nothing half-done


# --- SIGTERM and leftovers ---------------------------------------------------------------------


def slow_env(backupd_env: Callable[..., dict[str, str]], db: str, tmp_path: Path,
             **extra: str) -> dict[str, str]:
    env = backupd_env(db, BACKUP_SCHEDULE=NEVER_DURING_TEST, **FAST, **extra)
    # ~100 KiB/s (4 KiB every 40 ms): the fixture's dump takes far longer than the test waits.
    env["PATH"] = SlowDump(tmp_path / "shim", chunk=4096, delay=0.04).path()
    return env


def dump_sessions(server: ServerAddress, db: str) -> int:
    with connect(server) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = "
            "'backupd' AND pid <> pg_backend_pid()", (db,)).fetchone()
    return int(row[0]) if row else 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["sigterm", "sighup"])
def test_sigterm_mid_dump_exits_in_time_and_leaves_no_backup(
    pg_server: ServerAddress, fixture_db: str, backup_dir: Path, tmp_path: Path,
    backupd_env: Callable[..., dict[str, str]],
    backupd_daemon: Callable[..., BackupdProcess], sig: signal.Signals,
) -> None:
    """SIGHUP (the terminal it ran in closed; there is no reload) stops it as SIGTERM does."""
    env = slow_env(backupd_env, fixture_db, tmp_path, SHUTDOWN_TIMEOUT_SECONDS="8")
    daemon = backupd_daemon(["run"], env)  # BACKUP_ON_START: no backup yet -> dump at once
    wait_until(lambda: dump_partials(backup_dir), 30, "the dump to start")
    time.sleep(1)  # well into the dump: the shim makes it last minutes
    began = time.monotonic()
    code = stop_backupd(daemon, sig=sig, timeout=15)
    elapsed = time.monotonic() - began
    assert code == 0, daemon.read_stderr()[-3000:]
    assert elapsed < 8, f"took {elapsed:.1f}s, SHUTDOWN_TIMEOUT_SECONDS is 8"

    # Nothing that looks like a backup, nothing temporary, pg_dump gone from the server.
    assert partial_files(backup_dir) == []
    assert [p.name for p in backup_dir.iterdir() if parse_backup_name(p.name)] == []
    listed = run_backupd(["list", "--json"], env)
    assert listed.returncode == 0 and json.loads(listed.stdout) == []
    verified = run_backupd(["verify"], env)
    assert verified.returncode == 1 and "no backups" in verified.stderr
    wait_until(lambda: dump_sessions(pg_server, fixture_db) == 0, 10,
               "pg_dump's session to end")

    # The cancellation was reported, not swallowed.
    results = finished(daemon)
    assert [r["status"] for r in results] == ["cancelled"]
    last = read_state(backup_dir).jobs["backup"].last_result
    assert last is not None and last.status == "cancelled"
    assert "backup cancelled" in (backup_dir / "backup_log.txt").read_text()


def test_next_start_removes_leftovers_of_a_killed_dump(
    fixture_db: str, backup_dir: Path, tmp_path: Path,
    backupd_env: Callable[..., dict[str, str]],
    backupd_daemon: Callable[..., BackupdProcess],
) -> None:
    env = slow_env(backupd_env, fixture_db, tmp_path)
    first = backupd_daemon(["run"], env)
    wait_until(lambda: dump_partials(backup_dir), 30, "the dump to start")
    stop_backupd(first, sig=signal.SIGKILL, timeout=10)  # what `docker kill` leaves behind
    leftovers = [p.name for p in dump_partials(backup_dir)]
    assert leftovers

    second = backupd_daemon(["run"], {**env, "BACKUP_ON_START": "false"})
    wait_until(lambda: started(second), 30, "the second daemon to start")
    assert partial_files(backup_dir) == []
    logged = {e.get("file") for e in log_events(second.read_stderr())
              if e.get("event") == "removed leftover of an interrupted run"}
    assert logged == set(leftovers)
    assert stop_backupd(second, timeout=15) == 0


def test_next_start_removes_a_killed_pitr_drills_scratch_directory(
    fixture_db: str, backup_dir: Path, backupd_env: Callable[..., dict[str, str]],
    backupd_daemon: Callable[..., BackupdProcess],
) -> None:
    """A PITR drill killed with backupd leaves its scratch directory: a decrypted copy of the
    cluster. The next start removes it (its server died with the killed backupd), and says so."""
    scratch = scratch_directory(backup_dir)
    data = scratch / "data" / "base" / "16384"
    data.mkdir(parents=True)
    (data / "2619").write_bytes(b"plaintext of an encrypted backup")
    (scratch / "drill_hba.conf").write_text("local all all trust\n")
    (scratch / OWNER_LOCK).touch()  # its owner's lock file, no longer locked: it was killed
    # `backupd mark`'s scan: decrypted WAL. A killed one's goes; a live one's (ours) stays.
    dead = backup_dir / f"{SCRATCH_PREFIX}dead"
    dead.mkdir(parents=True)
    (dead / OWNER_LOCK).touch()
    with owned(backup_dir / f"{SCRATCH_PREFIX}live") as live:
        for directory in (dead, live):
            (directory / "000000010000000000000003").write_bytes(b"decrypted WAL")
        _start_and_check_the_sweep(fixture_db, backup_dir, backupd_env, backupd_daemon,
                                   scratch, dead, live)


def _start_and_check_the_sweep(
    fixture_db: str, backup_dir: Path, backupd_env: Callable[..., dict[str, str]],
    backupd_daemon: Callable[..., BackupdProcess], scratch: Path, dead: Path, live: Path,
) -> None:
    try:
        env = backupd_env(fixture_db, BACKUP_SCHEDULE=NEVER_DURING_TEST,
                          BACKUP_ON_START="false", **FAST)
        daemon = backupd_daemon(["run"], env)
        wait_until(lambda: started(daemon), 30, "the daemon to start")
        assert not scratch.exists()
        logged = [e for e in log_events(daemon.read_stderr())
                  if e.get("event") == "removed the scratch directory of an interrupted "
                                       "PITR drill"]
        assert [e.get("directory") for e in logged] == [str(scratch)]
        assert not dead.exists() and live.exists()
        assert [e.get("directory") for e in log_events(daemon.read_stderr()) if e.get("event")
                == "removed the scratch directory of a killed `backupd mark`"] == [str(dead)]
        assert stop_backupd(daemon, timeout=15) == 0
    finally:
        shutil.rmtree(scratch, ignore_errors=True)  # outside tmp_path when run as root


# --- two daemons, one database -------------------------------------------------------------------

SLOT_SECONDS = 4


def test_two_daemons_take_exactly_one_backup_per_slot(
    fixture_db: str, backup_dir: Path, backupd_env: Callable[..., dict[str, str]],
    backupd_daemon: Callable[..., BackupdProcess],
) -> None:
    env = backupd_env(fixture_db, BACKUP_SCHEDULE=f"*/{SLOT_SECONDS} * * * * *",
                      BACKUP_ON_START="false", **FAST)
    daemons = [backupd_daemon(["run"], env), backupd_daemon(["run"], env)]
    for daemon in daemons:
        wait_until(functools.partial(started, daemon), 30, "both daemons to start")
    both_up = datetime.now(UTC)
    first_slot = _slot_of(both_up) + timedelta(seconds=SLOT_SECONDS)
    slots = [first_slot + timedelta(seconds=SLOT_SECONDS * i) for i in range(3)]
    # Wait until both daemons have reported on the third slot.
    wait_until(lambda: all(
        any(_slot_of(_time(r["started_at"])) == slots[-1] for r in finished(d)) for d in daemons),
        SLOT_SECONDS * 5 + 10, "both daemons to finish three slots")
    for daemon in daemons:
        assert stop_backupd(daemon, timeout=15) == 0

    taken: dict[datetime, list[str]] = defaultdict(list)
    for path in backup_dir.iterdir():
        parsed = parse_backup_name(path.name)
        if parsed is not None:
            taken[_slot_of(parsed.taken_at)].append(path.name)
    for slot in slots:
        assert len(taken[slot]) == 1, f"slot {slot:%H:%M:%S}: {taken[slot]}"

    # (status, error): a failure says why (a skip's reason, a failed run's cause).
    outcomes: dict[datetime, list[tuple[str, str | None]]] = defaultdict(list)
    for daemon in daemons:
        for result in finished(daemon):
            outcomes[_slot_of(_time(result["started_at"]))].append(
                (result["status"], result["error"]))
    for slot in slots:
        statuses = sorted(status for status, _error in outcomes[slot])
        assert statuses == ["skipped", "success"], (slot, outcomes[slot])


def _slot_of(moment: datetime) -> datetime:
    moment = moment.astimezone(UTC).replace(microsecond=0)
    return moment - timedelta(seconds=moment.second % SLOT_SECONDS)


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)


# --- runs missed while the daemon was down ---------------------------------------------


@pytest.mark.parametrize(("grace", "expected"), [("7200", "success"), ("60", "missed")])
def test_run_missed_while_down_is_caught_up_or_reported_once(
    fixture_db: str, backup_dir: Path, backupd_env: Callable[..., dict[str, str]],
    backupd_daemon: Callable[..., BackupdProcess], grace: str, expected: str,
) -> None:
    # An hourly schedule whose last slot was ~30 minutes ago; the state file says the
    # daemon last dealt with a slot two hours back, so two slots passed while it was down.
    now = datetime.now(UTC)
    minute = (now.minute + 30) % 60
    backup_dir.mkdir(mode=0o700)

    def down_since_two_hours(state: StateFile) -> None:
        state.jobs["backup"] = JobRecord(last_slot=now - timedelta(hours=2))

    update_state(backup_dir, down_since_two_hours)
    env = backupd_env(fixture_db, BACKUP_SCHEDULE=f"{minute} * * * *", BACKUP_ON_START="false",
                      SCHEDULE_MISFIRE_GRACE_SECONDS=grace, **FAST)
    daemon = backupd_daemon(["run"], env)
    wait_until(lambda: finished(daemon), 30, "the missed run to be dealt with")
    time.sleep(0.5)  # a second (wrong) catch-up would show up by now
    assert stop_backupd(daemon, timeout=15) == 0

    results = finished(daemon)
    assert [r["status"] for r in results] == [expected]  # two missed slots -> one result
    backups = [p for p in backup_dir.iterdir() if parse_backup_name(p.name)]
    assert len(backups) == (1 if expected == "success" else 0)
    if expected == "missed":
        assert "missed while backupd was not running" in results[0]["error"]
        assert "SCHEDULE_MISFIRE_GRACE_SECONDS" in (backup_dir / "backup_log.txt").read_text()
    record = read_state(backup_dir).jobs["backup"]
    assert record.last_slot is not None and now - record.last_slot < timedelta(hours=1)


@pytest.mark.slow  # it waits for a schedule slot: about 30 s
def test_a_clock_stepped_forward_fires_the_next_run_at_its_new_time_not_late(
    small_db: str, backup_dir: Path, tmp_path: Path,
    backupd_env: Callable[..., dict[str, str]],
    backupd_daemon: Callable[..., BackupdProcess],
) -> None:
    """NTP steps the clock forward (or a VM resumes) while the daemon waits for its slot:
    the scheduler, asleep for the span it computed before the step, must not fire that many
    seconds late. Here the step leaves 10 s to the slot; the grace is 30 s. The old daemon
    slept on and reported the run missed about two minutes later."""
    clock = tmp_path / "clock"
    slot = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=150)
    env = backupd_env(small_db, **FAST, **movable_clock(clock), TZ="UTC",
                      BACKUP_ON_START="false", SCHEDULE_MISFIRE_GRACE_SECONDS="30",
                      BACKUP_SCHEDULE=f"{slot.second} {slot.minute} {slot.hour} * * *")
    daemon = backupd_daemon(["run"], env)
    wait_until(lambda: started(daemon), 30, "the daemon to start")
    move_clock(clock, round((slot - datetime.now(UTC)).total_seconds()) - 10)
    wait_until(lambda: finished(daemon), 60, "the run of the slot")
    assert [r["status"] for r in finished(daemon)] == ["success"], daemon.read_stderr()[-3000:]


@pytest.mark.slow  # it waits for schedule slots and a heartbeat: about a minute
def test_a_clock_stepped_back_keeps_the_schedule_and_the_state_file_on_the_new_clock(
    small_db: str, backup_dir: Path, tmp_path: Path,
    backupd_env: Callable[..., dict[str, str]],
    backupd_daemon: Callable[..., BackupdProcess],
) -> None:
    """NTP steps the clock back two hours between two runs (it had been ahead). The next run
    is the schedule's next slot by the clock as it now reads, not two hours later (the time
    the scheduler had computed before the step); the state file's slot and next run follow
    the new clock too, so a restart judges missed slots by it, and health finds the daemon
    alive and the new backup the newest."""
    clock = tmp_path / "clock"
    env = backupd_env(small_db, **FAST, **movable_clock(clock), TZ="UTC",
                      BACKUP_ON_START="false", BACKUP_SCHEDULE="*/15 * * * * *")
    daemon = backupd_daemon(["run"], env)
    wait_until(lambda: finished(daemon), 40, "the first scheduled run")
    move_clock(clock, -7200)
    stepped_at = datetime.now(UTC) - timedelta(hours=2)  # the daemon's clock, now

    wait_until(lambda: len(finished(daemon)) >= 2, 75, "a run after the step back")

    first, second = (_time(r["scheduled_for"]) for r in finished(daemon)[:2])
    assert [r["status"] for r in finished(daemon)[:2]] == ["success", "success"]
    assert stepped_at < second < stepped_at + timedelta(seconds=60), (first, second)
    state = read_state(backup_dir)
    assert state.jobs["backup"].last_slot == second  # not the slot from before the step
    [entry] = state.daemons.values()
    next_run = entry.next_runs["backup"]
    assert next_run is not None and next_run - second <= timedelta(seconds=15), next_run
    health = run_backupd(["health", "--json"], env)
    report = json.loads(health.stdout)
    assert 0 <= report["facts"]["daemon_state_age_seconds"] < 60, report
    assert not [r for r in report["reasons"] if "has not updated its state" in r], report
    newest = parse_backup_name(report["facts"]["newest_verified_backup"])
    assert newest is not None and newest.taken_at > stepped_at, report
    assert stop_backupd(daemon, timeout=15) == 0


@pytest.mark.slow  # it waits for the first heartbeat under libfaketime: about 30 s
def test_a_clock_step_while_the_daemon_starts_is_seen_by_its_first_heartbeat(
    small_db: str, backup_dir: Path, tmp_path: Path,
    backupd_env: Callable[..., dict[str, str]],
    backupd_daemon: Callable[..., BackupdProcess],
) -> None:
    """The clock is stepped back 6 h (a boot-time NTP correction) after the scheduler planned
    its runs and before the daemon's first write of the state file (held up here by the
    test holding the file's lock). The daemon measures steps from one reading taken with
    the plan, so its first heartbeat re-times the job by the corrected clock; measured from
    after the start, the step was seen by nothing and the plan stayed 6 h off. A daily job
    whose slot an hour from now is already in the state file: the start writes nothing."""
    slot = (datetime.now(UTC) + timedelta(hours=1)).replace(second=0, microsecond=0)

    def ran_ahead(state: StateFile) -> None:
        state.jobs["backup"] = JobRecord(last_slot=slot)
    backup_dir.mkdir(parents=True, exist_ok=True)
    update_state(backup_dir, ran_ahead)
    clock = tmp_path / "clock"
    env = backupd_env(small_db, **FAST, **movable_clock(clock), TZ="UTC",
                      BACKUP_ON_START="false",
                      BACKUP_SCHEDULE=f"0 {slot.minute} {slot.hour} * * *")
    lock = os.open(backup_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        daemon = backupd_daemon(["run"], env)
        wait_until(lambda: any(e.get("event") == "job scheduled"
                               for e in log_events(daemon.read_stderr())), 30,
                   "the scheduler's plan")
        move_clock(clock, -6 * 3600)
    finally:
        os.close(lock)

    def next_run() -> datetime | None:
        entries = list(read_state(backup_dir).daemons.values())
        return entries[0].next_runs.get("backup") if entries else None

    wait_until(lambda: next_run() == slot, 45, f"the next run re-timed to {slot}")
    assert any(e.get("event") == "the clock was stepped back: the next run goes by it as it "
               "now reads" for e in log_events(daemon.read_stderr()))
    assert stop_backupd(daemon, timeout=15) == 0

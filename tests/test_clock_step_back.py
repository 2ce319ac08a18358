"""The daemon's schedule when the wall clock is stepped back (it had been ahead: NTP, a
host's RTC), on the real scheduler and state file, at chosen clock readings a day ahead of
the real one (so nothing fires while the test runs). The whole daemon across a real step:
tests/test_daemon.py::test_a_clock_stepped_back_keeps_the_schedule_and_the_state_file_on_the_new_clock.

The rule (docs/reliability.md, T12): runs go by the clock as it now reads, as cron(8) does;
a fixed-time job (no '*' in minute or hour) does not run again a slot it already ran when
the step is under three hours; no job repeats a slot for a step of a few seconds."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from helpers.clock_daemon import DAILY, HOURLY, H, at
from helpers.notifiers import RecordingNotifier

from backupd.daemon.clock import ClockStep, ClockWatch
from backupd.daemon.health import read_daemon_state
from backupd.daemon.scheduler import Daemon
from backupd.daemon.state import (
    DaemonRecord,
    DaemonState,
    JobRecord,
    ResultRecorder,
    StateFile,
    read_state,
    remember,
    update_state,
)
from backupd.result import JobResult, Status

HEARTBEAT = timedelta(seconds=30)


def planned(daemon: Daemon, when: datetime) -> None:
    """The next run APScheduler computed before the step."""
    daemon.scheduler.modify_job("backup", next_run_time=when)


def stepped(now: datetime, back: timedelta) -> ClockStep:
    """The heartbeat's measurement at ``now``: the clock was stepped back by ``back`` in
    the 30 s since the previous one."""
    watch = ClockWatch(wall=now + back - HEARTBEAT, mono=1000.0)
    return watch.measure(wall=now, mono=1000.0 + HEARTBEAT.total_seconds())


@pytest.mark.parametrize(("expression", "before", "now", "back", "expected"), [
    # Hourly, ran at 10:00, stepped back from 10:30 to 08:30: on at 09:00, not at 11:00.
    (HOURLY, at(11), at(8.5), H(2), at(9)),
    # Daily at 02:00, ran, stepped back from 02:30 to 00:30: not again today (cron(8)).
    (DAILY, at(2, day=1), at(0.5), H(2), at(2, day=1)),
    # The same after a step of six hours: a correction, and the new time is used.
    (DAILY, at(2, day=1), at(-4), H(6), at(2)),
    # A step of two seconds right after the 10:00 run repeats nothing.
    (HOURLY, at(11), at(10) - timedelta(seconds=2), timedelta(seconds=2), at(11)),
    # 12 h ahead, ran its 02:00 slot; corrected 10 h later, so it reads 00:00: a step of
    # 12 h, though the slot is only 2 h ahead of the clock. 02:00 runs (else 36 h between).
    (DAILY, at(2, day=1), at(0), H(12), at(2)),
], ids=["hourly-goes-on", "daily-not-again", "daily-after-a-correction", "seconds-step",
        "daily-step-larger-than-the-slot-lead"])
def test_after_a_step_back_the_next_run_goes_by_the_clock(
        clock_daemon: Callable[..., Daemon], expression: str, before: datetime, now: datetime,
        back: timedelta, expected: datetime) -> None:
    started = clock_daemon(expression)
    planned(started, before)

    started.follow_clock(stepped(now, back))

    assert started.next_runs()["backup"] == expected


def test_a_slot_come_due_between_the_step_and_the_heartbeat_is_not_dropped(
        clock_daemon: Callable[..., Daemon]) -> None:
    """Hourly, stepped back from 10:30 to 08:59:45; APScheduler still holds 11:00, so
    nothing fires at 09:00. The heartbeat at 09:00:10 re-times the job to 09:00, now past:
    it runs within the misfire grace, or is reported MISSED, not skipped for 10:00."""
    started = clock_daemon(HOURLY)
    planned(started, at(11))

    started.follow_clock(stepped(at(9) + timedelta(seconds=10), H(1.5)))

    assert started.next_runs()["backup"] == at(9)


def test_the_step_is_wall_clock_moved_less_real_time_passed() -> None:
    watch = ClockWatch(wall=at(10), mono=500.0)
    assert watch.measure(wall=at(10) + HEARTBEAT, mono=530.0).back == timedelta(0)
    # Stepped back 2 h during the next 30 s.
    assert watch.measure(wall=at(8) + 2 * HEARTBEAT, mono=560.0).back == H(2)
    # Forward 1 h: a negative step back.
    assert watch.measure(wall=at(9) + 3 * HEARTBEAT, mono=590.0).back == -H(1)


def test_the_real_clocks_show_no_step() -> None:
    watch = ClockWatch()
    assert abs(watch.measure().back) < timedelta(seconds=1)


def test_a_monotonic_clock_stepped_with_the_wall_clock_still_shows_the_step() -> None:
    """libfaketime (how tests/test_daemon.py steps the daemon's clock) moves the monotonic
    clock with the wall clock: its difference says nothing then, and the wall clock's move
    is the step (short by the real time passed, at most a heartbeat)."""
    watch = ClockWatch(wall=at(10), mono=10_000.0)
    step = watch.measure(wall=at(8) + timedelta(seconds=10), mono=10_000.0 - 7200 + 10)
    assert step.back == H(2) - timedelta(seconds=10)


def test_a_restart_after_a_step_back_judges_slots_by_the_new_clock(
        clock_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    """The state file says the 10:00 slot was dealt with; the clock now reads 08:30, 1.5 h
    back at least. An hourly job goes by the new clock: its 08:00 slot came due with
    nothing on this clock saying it ran, so it is caught up (within the grace), not hidden
    behind a slot still ahead of the clock."""
    def change(state: StateFile) -> None:
        state.jobs["backup"] = JobRecord(last_slot=at(10))
    update_state(tmp_path, change)

    started = clock_daemon(HOURLY, at(8.5))

    assert started.next_runs()["backup"] == at(8.5)


def test_a_restart_after_a_step_back_does_not_run_a_fixed_time_slot_again(
        clock_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    def change(state: StateFile) -> None:
        state.jobs["backup"] = JobRecord(last_slot=at(2))
    update_state(tmp_path, change)

    started = clock_daemon(DAILY, at(0.5))

    assert started.next_runs()["backup"] == at(2, day=1)
    assert read_state(tmp_path).jobs["backup"].last_slot == at(2)


def test_a_restart_takes_the_step_from_the_last_run_start_not_only_the_slot(
        clock_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    """The 02:00 slot was dealt with at 04:00 by the clock (a run started late); it now
    reads 00:30. The slot is 1.5 h ahead, but the clock went back at least 3.5 h: a
    correction, so 02:00 runs today."""
    def change(state: StateFile) -> None:
        late = JobResult(job="backup", database="clock_probe", started_at=at(4),
                         scheduled_for=at(2))
        state.jobs["backup"] = JobRecord(last_slot=at(2), last_result=late)
    update_state(tmp_path, change)

    started = clock_daemon(DAILY, at(0.5))

    assert started.next_runs()["backup"] == at(2)


def _ran_ahead_then_went_down(tmp_path: Path, last_heartbeat: datetime) -> None:
    """An hourly job ran its 10:00 slot on a clock 2 h ahead (really 08:00); its daemon's
    last heartbeat read ``last_heartbeat`` on that clock, then it went down."""
    def change(state: StateFile) -> None:
        ran = JobResult(job="backup", database="clock_probe", started_at=at(10),
                        scheduled_for=at(10))
        state.jobs["backup"] = JobRecord(last_slot=at(10), last_result=ran)
        state.daemons["old"] = DaemonRecord(instance="old", host="h", pid=1,
                                            started_at=at(9), updated_at=last_heartbeat,
                                            stopped_at=last_heartbeat)
    update_state(tmp_path, change)


def test_a_restart_after_a_step_back_catches_up_a_slot_missed_while_down(
        clock_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    """Back at 09:50 after the clock was corrected: the 09:00 slot passed while down. The
    10:00 slot, dealt with before the step, does not cover it: it runs (within grace)."""
    _ran_ahead_then_went_down(tmp_path, at(10))

    started = clock_daemon(HOURLY, at(9) + timedelta(minutes=50))

    assert started.next_runs()["backup"] == at(9) + timedelta(minutes=50)


def test_a_restart_after_a_step_back_reports_a_slot_missed_beyond_grace(
        clock_daemon: Callable[..., Daemon], clock_heard: RecordingNotifier,
        tmp_path: Path) -> None:
    _ran_ahead_then_went_down(tmp_path, at(10))

    clock_daemon(HOURLY, at(9) + timedelta(minutes=50), grace=600)

    assert [(r.status, r.scheduled_for) for r in clock_heard.results] == [(Status.MISSED, at(9))]
    assert read_state(tmp_path).jobs["backup"].last_slot == at(9)


def test_a_restart_takes_the_step_from_the_last_heartbeat_too(
        clock_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    """Back at 09:58: the 10:00 slot is only 2 min ahead, but the previous daemon's last
    heartbeat read 10:10, so the clock went back at least 12 min: not an NTP wobble. The
    09:00 slot runs, rather than nothing until 11:00 (3 h without an hourly backup)."""
    _ran_ahead_then_went_down(tmp_path, at(10) + timedelta(minutes=10))

    started = clock_daemon(HOURLY, at(9) + timedelta(minutes=58))

    assert started.next_runs()["backup"] == at(9) + timedelta(minutes=58)


def test_another_daemons_write_does_not_shrink_the_step_a_restart_measures(
        clock_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    """As above, but another daemon sharing the state file (a replica, another
    configuration's daemon) wrote its entry between the step and the restart. The dead
    daemon's 10:10 heartbeat is the step's evidence: rewritten to that writer's now, the
    restart saw a 2 min step, waited for 11:00 and reported nothing."""
    _ran_ahead_then_went_down(tmp_path, at(10) + timedelta(minutes=10))
    DaemonState(tmp_path).persist()

    started = clock_daemon(HOURLY, at(9) + timedelta(minutes=58))

    assert started.next_runs()["backup"] == at(9) + timedelta(minutes=58)


def test_after_a_step_back_the_newest_result_is_the_one_just_recorded(tmp_path: Path) -> None:
    """A drill succeeded on a clock 2 h ahead; the clock was corrected, and the next drill
    failed. Its finish reads earlier than the old one's, yet it is the newest: status and
    health's drill check see the failure, not the old success, for the step's length."""
    ahead = datetime.now(UTC) + H(2)
    old = JobResult(job="drill", database="clock_probe", started_at=ahead - H(0.1))
    old.finish(Status.SUCCESS)
    old.finished_at = ahead

    def change(state: StateFile) -> None:
        remember(state, old)
    update_state(tmp_path, change)

    failed = JobResult(job="drill", database="clock_probe")
    failed.finish(Status.FAILED, error="restore failed")
    ResultRecorder(tmp_path).notify(failed)

    record = read_state(tmp_path).jobs["drill"]
    assert record.last_result is not None and record.last_result.status == Status.FAILED
    assert record.last_outcome is not None and record.last_outcome.status == Status.FAILED
    seen = read_daemon_state(tmp_path)
    assert seen is not None and [r.ok for r in seen.drill_records] == [False]


def test_a_replica_result_a_little_ahead_still_counts_as_newer(tmp_path: Path) -> None:
    """Clocks that differ by less than CLOCK_TOLERANCE are no step: a replica's result
    stamped a minute ahead stays the newest over an older one recorded now."""
    soon = datetime.now(UTC) + timedelta(minutes=1)
    replica = JobResult(job="drill", database="clock_probe", started_at=soon)
    replica.finish(Status.SUCCESS)
    replica.finished_at = soon

    def change(state: StateFile) -> None:
        remember(state, replica)
    update_state(tmp_path, change)

    late = JobResult(job="drill", database="clock_probe",
                     started_at=datetime.now(UTC) - H(1))
    late.finish(Status.FAILED)
    late.finished_at = datetime.now(UTC) - H(0.5)
    ResultRecorder(tmp_path).notify(late)

    record = read_state(tmp_path).jobs["drill"]
    assert record.last_result is not None and record.last_result.status == Status.SUCCESS


def test_a_heartbeat_held_up_does_not_take_slots_already_fired_for_due(
        clock_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    """The heartbeat was held up 2 h (the state file's lock on NFS). Meanwhile the hourly job
    went on firing, the last time just now (10:00 on a clock 2 h ahead), and then the clock
    was stepped back 2 h: it reads 08:00:30. The previous heartbeat, 2 h of real time ago,
    is 06:00:30 by the new clock, but the 07:00 and 08:00 slots by it passed while the job
    was firing (as 09:00 and 10:00): from the last run on, the next slot is 09:00."""
    started = clock_daemon(HOURLY, body=lambda ctx, slot: None)
    planned(started, at(11))
    started._fire("backup")  # what APScheduler calls at a slot: the run just now
    planned(started, at(11))
    now, mono = at(8) + HEARTBEAT, time.monotonic()
    watch = ClockWatch(wall=now, mono=mono - 2 * 3600)

    started.follow_clock(watch.measure(wall=now, mono=mono))

    assert started.next_runs()["backup"] == at(9)

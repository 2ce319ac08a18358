"""The daemon's schedule when the wall clock is stepped back (it had been ahead: NTP, a
host's RTC), on the real scheduler and state file, at chosen clock readings a day ahead of
the real one (so nothing fires while the test runs). The whole daemon across a real step:
tests/test_daemon.py::test_a_clock_stepped_back_keeps_the_schedule_and_the_state_file_on_the_new_clock.

The rule (docs/reliability.md, T12): runs go by the clock as it now reads, as cron(8) does;
a fixed-time job (no '*' in minute or hour) does not run again a slot it already ran when
the step is under three hours; no job repeats a slot for a step of a few seconds."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backupd.daemon.cron import parse_cron
from backupd.daemon.scheduler import Daemon, JobSpec, ScheduledJob
from backupd.daemon.state import DaemonState, JobRecord, StateFile, read_state, update_state
from backupd.job import JobContext
from backupd.notify.base import NotifierChain
from backupd.settings import Settings

# Tomorrow at midnight: every clock reading below is after the real now.
DAY = (datetime.now(UTC) + timedelta(days=1)).replace(hour=0, minute=0, second=0,
                                                      microsecond=0)
HOURLY, DAILY = "0 * * * *", "0 2 * * *"


def at(hours: float, day: int = 0) -> datetime:
    return DAY + timedelta(days=day, hours=hours)


def _body(ctx: JobContext, slot: datetime | None) -> None:
    raise AssertionError("no run is due while the test runs")


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """``daemon(expression, now=None)``: a started daemon with one backup job."""
    made: list[Daemon] = []

    def make(expression: str, now: datetime | None = None) -> Daemon:
        settings = Settings(_env_file=None, POSTGRES_DB="clock_probe",  # type: ignore[call-arg]
                            DB_BACKUP_DIR=str(tmp_path), HEALTH_PORT="0",
                            BACKUP_ON_START="false")
        job = ScheduledJob(JobSpec("backup", "backup_schedule", _body),
                           parse_cron(expression, "BACKUP_SCHEDULE", UTC))
        started = Daemon(settings, [job], NotifierChain([]), DaemonState(tmp_path))
        made.append(started)
        started.start(now)
        return started

    yield make
    for started in made:
        assert started.shutdown(5)


def planned(daemon: Daemon, when: datetime) -> None:
    """The next run APScheduler computed before the step."""
    daemon.scheduler.modify_job("backup", next_run_time=when)


@pytest.mark.parametrize(("expression", "before", "now", "expected"), [
    # Hourly, ran at 10:00, stepped back from 10:30 to 08:30: on at 09:00, not at 11:00.
    (HOURLY, at(11), at(8.5), at(9)),
    # Daily at 02:00, ran, stepped back from 02:30 to 00:30: not again today (cron(8)).
    (DAILY, at(2, day=1), at(0.5), at(2, day=1)),
    # The same after a step of six hours: a correction, and the new time is used.
    (DAILY, at(2, day=1), at(-4), at(2)),
    # A step of two seconds right after the 10:00 run repeats nothing.
    (HOURLY, at(11), at(10) - timedelta(seconds=2), at(11)),
], ids=["hourly-goes-on", "daily-not-again", "daily-after-a-correction", "seconds-step"])
def test_after_a_step_back_the_next_run_goes_by_the_clock(
        daemon: Callable[..., Daemon], expression: str, before: datetime, now: datetime,
        expected: datetime) -> None:
    started = daemon(expression)
    planned(started, before)

    started.follow_clock(now)

    assert started.next_runs()["backup"] == expected


def test_a_restart_after_a_step_back_judges_slots_by_the_new_clock(
        daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    """The state file says the 10:00 slot was dealt with; the clock now reads 08:30. An
    hourly job starts from there: its slot becomes 08:00, so a later restart finds the 09:00
    slot missed, not hidden behind a slot still ahead of the clock."""
    def dealt_with(slot: datetime) -> None:
        def change(state: StateFile) -> None:
            state.jobs["backup"] = JobRecord(last_slot=slot)
        update_state(tmp_path, change)

    dealt_with(at(10))
    daemon(HOURLY, at(8.5))
    assert read_state(tmp_path).jobs["backup"].last_slot == at(8)


def test_a_restart_after_a_step_back_does_not_run_a_fixed_time_slot_again(
        daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    def change(state: StateFile) -> None:
        state.jobs["backup"] = JobRecord(last_slot=at(2))
    update_state(tmp_path, change)

    started = daemon(DAILY, at(0.5))

    assert started.next_runs()["backup"] == at(2, day=1)
    assert read_state(tmp_path).jobs["backup"].last_slot == at(2)

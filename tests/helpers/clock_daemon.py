"""The clock-step tests' daemon (tests/test_clock_step_back*.py; docs/reliability.md, T12):
in process, with one backup job, on the real scheduler and state file, started at a chosen
clock reading a day ahead of the real one, so that nothing fires while a test runs. The
fixtures are made available to every test by tests/conftest.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backupd.daemon.clock import BootReading
from backupd.daemon.cron import parse_cron
from backupd.daemon.scheduler import Daemon, JobSpec, ScheduledJob
from backupd.daemon.state import DaemonState
from backupd.job import JobContext
from backupd.notify.base import NotifierChain
from backupd.settings import Settings
from helpers.notifiers import RecordingNotifier

# Tomorrow at midnight: every clock reading below is after the real now.
DAY = (datetime.now(UTC) + timedelta(days=1)).replace(hour=0, minute=0, second=0,
                                                      microsecond=0)
HOURLY, DAILY = "0 * * * *", "0 2 * * *"


def H(hours: float) -> timedelta:  # reads as the unit: H(2)
    return timedelta(hours=hours)


def at(hours: float, day: int = 0) -> datetime:
    return DAY + timedelta(days=day, hours=hours)


def _body(ctx: JobContext, slot: datetime | None) -> None:
    raise AssertionError("no run is due while the test runs")


@pytest.fixture
def clock_heard() -> RecordingNotifier:
    """The results the daemons of :func:`clock_daemon` report."""
    return RecordingNotifier()


@pytest.fixture
def clock_daemon(tmp_path: Path,
                 clock_heard: RecordingNotifier) -> Iterator[Callable[..., Daemon]]:
    """``clock_daemon(expression, now=None, grace=3600, body=..., boot=None)``: a started
    daemon with one backup job (``boot``: this boot's reading at the start, read there when
    None), whose results (a MISSED report) the state file in ``tmp_path`` records, as in the
    real daemon, and ``clock_heard`` keeps."""
    made: list[Daemon] = []

    def make(expression: str, now: datetime | None = None, grace: int = 3600,
             body: Callable[[JobContext, datetime | None], None] = _body,
             boot: BootReading | None = None) -> Daemon:
        settings = Settings(_env_file=None, POSTGRES_DB="clock_probe",  # type: ignore[call-arg]
                            DB_BACKUP_DIR=str(tmp_path), HEALTH_PORT="0",
                            BACKUP_ON_START="false",
                            SCHEDULE_MISFIRE_GRACE_SECONDS=str(grace))
        job = ScheduledJob(JobSpec("backup", "backup_schedule", body),
                           parse_cron(expression, "BACKUP_SCHEDULE", UTC))
        state = DaemonState(tmp_path)
        started = Daemon(settings, [job], NotifierChain([state, clock_heard]), state)
        made.append(started)
        started.start(now, boot)
        return started

    yield make
    for started in made:
        assert started.shutdown(5)

"""``backupd run`` as the tests drive it: settings that make a daemon quick to test, what
its log says it did, and the smallest scheduler state its HTTP server can be given."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from backupd.result import JobResult

from .cli import BackupdProcess
from .logs import LogEvent, jobs_finished, log_events

# Schedules with a seconds field; no drill unless a test asks for one.
FAST = {"SCHEDULE_SECONDS_FIELD": "1", "DRILL_SCHEDULE": "off"}
# Far from any test's runtime: the schedule never fires during a test.
NEVER_DURING_TEST = "0 0 1 1 *"


def finished(proc: BackupdProcess, job: str = "backup") -> list[LogEvent]:
    return jobs_finished(proc.read_stderr(), job=job)


def started(proc: BackupdProcess) -> bool:
    return any(e.get("event") == "backupd daemon started" for e in log_events(proc.read_stderr()))


@dataclass
class SchedulerStub:
    """The smallest real SchedulerState: what the daemon's DaemonState offers the server."""

    alive: bool = True
    last_results: dict[str, JobResult] = field(default_factory=dict)
    runs: dict[str, datetime | None] = field(default_factory=dict)

    def scheduler_alive(self) -> bool:
        return self.alive

    def next_runs(self) -> dict[str, datetime | None]:
        return self.runs

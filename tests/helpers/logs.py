"""backupd's structured log as tests read it: with BACKUPD_LOG_FORMAT=json, stderr holds one
JSON object a line (the events), mixed with the lines meant for a person ("backupd: error: ...").
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

LogEvent = dict[str, Any]


def parse_event(line: str) -> LogEvent | None:
    """The JSON object on ``line``, or None when the line is not one (a human line)."""
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def log_events(stderr: str) -> list[LogEvent]:
    """Every structured event in ``stderr``, in order; other lines are skipped."""
    return [event for event in map(parse_event, stderr.splitlines()) if event is not None]


def warnings_logged(stderr: str) -> list[str]:
    """The text of every warning event in ``stderr``, in order."""
    return [str(event["event"]) for event in log_events(stderr)
            if event.get("level") == "warning"]


def human_lines(stderr: str) -> list[str]:
    """``stderr`` without the JSON events and blank lines: what a person reads."""
    return [line for line in stderr.splitlines() if line.strip() and parse_event(line) is None]


def jobs_finished(stderr: str, job: str | None = None,
                  status: str | None = None) -> list[LogEvent]:
    """The "job finished" events (the result every notifier received), optionally only those
    of one job and/or with one status."""
    return [
        event for event in log_events(stderr)
        if event.get("event") == "job finished"
        and (job is None or event.get("job") == job)
        and (status is None or event.get("status") == status)
    ]


def job_finished_at(stderr: str) -> float:
    """When the first "job finished" event was logged (Unix time)."""
    for event in jobs_finished(stderr):
        return datetime.fromisoformat(event["timestamp"]).timestamp()
    raise AssertionError(f"no 'job finished' line in:\n{stderr}")

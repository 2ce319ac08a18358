"""``backupd health``: the /healthz check from the command line (a Docker HEALTHCHECK).

This process cannot see the daemon's scheduler thread. It checks what it can: the
newest verified backup's age, a recent drill when DRILL_MAX_AGE_DAYS asks for one,
and, when the daemon's state file exists, that the daemon refreshed it recently.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from backupd.daemon.health import HealthReport, evaluate, read_daemon_state
from backupd.log import redact
from backupd.settings import Settings
from backupd.storage.local import LocalStore


def run(settings: Settings, *, as_json: bool = False) -> int:
    """Print the report; 0 when healthy, 1 when not."""
    report = check(settings)
    text = json.dumps(report.to_dict(), indent=2) + "\n" if as_json else report.render_text()
    print(redact(text), end="")
    return 0 if report.ok else 1


def check(settings: Settings) -> HealthReport:
    now = datetime.now(UTC)
    state = read_daemon_state(settings.backup_dir, now)
    return evaluate(
        settings, LocalStore(settings.backup_dir), scheduler_alive=None, now=now,
        daemon_updated_at=state.updated_at if state else None,
        drill_records=state.drill_records if state else (),
    )

"""Slack and the heartbeat endpoint failing (refused, 500, 429 with Retry-After, hanging):
the backup is unaffected and the delay they add is bounded by NOTIFY_TIMEOUT_SECONDS each."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.cli import run_backupd
from helpers.http_receiver import HttpReceiver
from helpers.logs import job_finished_at, log_events

NOTIFY_TIMEOUT = 2.0
SLACK_PATH = "/services/T000/B000/XXXXSECRETXXXX"
HEARTBEAT_PATH = "/ping/hb-SECRET-token-0001"


@pytest.mark.parametrize("behaviour", ["refuse", "error", "ratelimit", "hang"])
def test_failing_slack_and_heartbeat_never_fail_or_stall_a_backup(
    behaviour: str, http_receiver: HttpReceiver, make_db: Callable[..., str],
    backupd_env: Callable[..., dict[str, str]], backup_dir: Path,
) -> None:
    base = f"http://127.0.0.1:{http_receiver.port}"
    # Retry-After far beyond the budget: backupd must give up, not wait 60 s.
    http_receiver.set_behaviour(behaviour, retry_after=60, times=100)  # type: ignore[arg-type]
    env = backupd_env(make_db(), SLACK_WEBHOOK_URL=base + SLACK_PATH,
                      HEARTBEAT_URL=base + HEARTBEAT_PATH,
                      NOTIFY_TIMEOUT_SECONDS=str(NOTIFY_TIMEOUT))

    proc = run_backupd(["backup"], env)
    exited = time.time()

    assert proc.returncode == 0, proc.stderr
    rows = json.loads(run_backupd(["list", "--json"], env).stdout)
    assert [r["state"] for r in rows] == ["verified"]
    if behaviour != "refuse":
        paths = {r.path.split("?")[0] for r in http_receiver.requests}
        assert any(p.startswith(HEARTBEAT_PATH) for p in paths), paths
        assert SLACK_PATH in paths, paths
    # Two network notifiers, each bounded by the timeout, plus interpreter exit.
    assert exited - job_finished_at(proc.stderr) < 2 * NOTIFY_TIMEOUT + 1.5
    # Each failure is reported, not swallowed, naming the notifier that failed.
    reported = {event.get("notifier") for event in log_events(proc.stderr)
                if event.get("event") in ("notifier failed", "notifier timed out")}
    assert reported == {"slack", "heartbeat"}, proc.stderr


def test_rate_limited_slack_is_delivered_after_retry_after(
    http_receiver: HttpReceiver, make_db: Callable[..., str],
    backupd_env: Callable[..., dict[str, str]],
) -> None:
    http_receiver.set_behaviour("ratelimit", retry_after=1, times=1)
    env = backupd_env(make_db(), SLACK_WEBHOOK_URL=f"http://127.0.0.1:{http_receiver.port}"
                      + SLACK_PATH, NOTIFY_TIMEOUT_SECONDS="5")
    proc = run_backupd(["backup"], env)
    assert proc.returncode == 0, proc.stderr
    slack = [r for r in http_receiver.requests if r.path == SLACK_PATH]
    assert len(slack) == 2, "429 once, then delivered"
    assert "backup" in json.dumps(slack[-1].json).lower()

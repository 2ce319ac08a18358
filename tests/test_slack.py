"""Slack notifications: the payload an on-call person sees, and delivery that never hurts a backup.

A local HTTP receiver stands in for Slack. Notifiers are exercised directly through a
NotifierChain and end to end through `backupd backup` subprocesses.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers.cli import run_backupd
from helpers.cluster import free_port
from helpers.http_receiver import HttpReceiver
from helpers.logs import job_finished_at

from backupd.log import redact
from backupd.notify.base import NotifierChain
from backupd.notify.slack import SlackDeliveryError, SlackNotifier
from backupd.result import JobResult, Status

MiB = 1024 * 1024


def webhook_url(receiver: HttpReceiver) -> str:
    # Shaped like a real webhook: the path is the credential.
    return f"{receiver.url}/T0001/B0001/{secrets.token_hex(12)}"


def make_result(status: Status, **fields: Any) -> JobResult:
    started = datetime.now(UTC) - timedelta(seconds=12.3)
    result = JobResult(job=fields.pop("job", "backup"), database="certificate_verification",
                       started_at=started)
    for key, value in fields.items():
        setattr(result, key, value)
    result.finish(status, fields.get("error"))
    result.finished_at = started + timedelta(seconds=12.3)
    return result


def payload_text(payload: dict[str, Any]) -> str:
    """Every piece of text in the blocks, in order."""
    out: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("text"), str):
                out.append(node["text"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(payload["blocks"])
    return "\n".join(out)


def deliver(receiver: HttpReceiver, result: JobResult, **kwargs: Any) -> dict[str, Any]:
    NotifierChain([SlackNotifier(webhook_url(receiver), **kwargs)]).deliver(result)
    request = receiver.wait_for(1)[-1]
    assert request.method == "POST"
    assert request.json is not None
    return dict(request.json)


# --- the message -------------------------------------------------------------------------


def test_success_payload_says_what_which_how_big_how_long(http_receiver: HttpReceiver) -> None:
    result = make_result(Status.SUCCESS,
                         backup_name="certificate_verification_20250101_020000.sql.gz",
                         size_bytes=5 * MiB, previous_size_bytes=4 * MiB, deleted=["old.sql.gz"])
    payload = deliver(http_receiver, result)
    text = payload_text(payload)
    assert payload["blocks"][0]["type"] == "header"
    assert "backup succeeded: certificate_verification" in payload["blocks"][0]["text"]["text"]
    assert "certificate_verification_20250101_020000.sql.gz" in text
    assert "5.0 MiB (+25.0% vs previous 4.0 MiB)" in text
    assert "12.3 s" in text
    assert "*Retention deleted*\n1: old.sql.gz" in text
    assert "What went wrong" not in text
    assert "backup succeeded" in payload["text"]  # the notification's fallback line


def test_failure_payload_carries_error_stderr_and_next_step(http_receiver: HttpReceiver) -> None:
    result = make_result(Status.FAILED, error="pg_dump failed: connection refused",
                         stderr_tail="pg_dump: error: connection to server failed")
    payload = deliver(http_receiver, result)
    text = payload_text(payload)
    assert ":x: backup FAILED: certificate_verification" in payload["blocks"][0]["text"]["text"]
    assert "*What went wrong*\n```pg_dump failed: connection refused```" in text
    assert "pg_dump: error: connection to server failed" in text
    assert "backup_log.txt" in text and "`backupd backup`" in text
    assert "connection refused" in payload["text"]


@pytest.mark.parametrize(("status", "header", "hint"), [
    (Status.MISSED, ":alarm_clock: backup MISSED", "did not start in time"),
    (Status.CANCELLED, ":octagonal_sign: backup cancelled", "the run was stopped"),
])
def test_missed_and_cancelled_payloads(http_receiver: HttpReceiver, status: Status, header: str,
                                       hint: str) -> None:
    result = make_result(status, error="scheduled for 02:00, daemon was busy")
    payload = deliver(http_receiver, result)
    assert payload["blocks"][0]["text"]["text"].startswith(header)
    text = payload_text(payload)
    assert "scheduled for 02:00, daemon was busy" in text
    assert hint in text
    assert f"*Status*\n{status.value}" in text


def test_shrink_warning_is_the_first_thing_after_the_header(http_receiver: HttpReceiver) -> None:
    warning = "backup is 80% smaller than the previous one (1.0 MiB vs 5.0 MiB)"
    result = make_result(Status.SUCCESS, size_bytes=MiB, previous_size_bytes=5 * MiB,
                         warnings=[warning])
    payload = deliver(http_receiver, result)
    assert payload["blocks"][1]["text"]["text"] == f":warning: *Warning:* {warning}"
    assert "warning: backup is 80% smaller" in payload["text"]


def test_secrets_urls_and_mentions_never_reach_slack(http_receiver: HttpReceiver) -> None:
    password = f"pw-{secrets.token_hex(8)}"
    redact.add(password)
    url = webhook_url(http_receiver)
    result = make_result(Status.FAILED, error=f"auth failed for password {password} <!channel>",
                         stderr_tail=f"posting to {url} failed")
    NotifierChain([SlackNotifier(url)]).deliver(result)
    body = http_receiver.wait_for(1)[0].body.decode()
    assert password not in body
    assert url not in body and url.rsplit("/", 1)[1] not in body
    assert "<!channel>" not in body and "&lt;!channel&gt;" in body


def test_notify_on_failure_sends_failures_and_first_recovery(
    http_receiver: HttpReceiver, tmp_path: Path
) -> None:
    url = webhook_url(http_receiver)

    def notifier() -> SlackNotifier:  # a new one per run, like separate `backupd backup`s
        return SlackNotifier(url, notify_on="failure", state_dir=tmp_path)

    sequence = [Status.SUCCESS, Status.FAILED, Status.SKIPPED, Status.SUCCESS, Status.SUCCESS,
                Status.MISSED, Status.CANCELLED, Status.SUCCESS]
    for status in sequence:
        NotifierChain([notifier()]).deliver(make_result(status))
    headers = [r.payload["blocks"][0]["text"]["text"] for r in http_receiver.requests]
    assert headers == [
        ":x: backup FAILED: certificate_verification",
        ":white_check_mark: backup succeeded: certificate_verification (recovered)",
        ":alarm_clock: backup MISSED: certificate_verification",
        ":octagonal_sign: backup cancelled: certificate_verification",
        ":white_check_mark: backup succeeded: certificate_verification (recovered)",
    ]


# --- delivery: retries inside the budget, never longer ------------------------------------


def test_rate_limit_honours_retry_after(http_receiver: HttpReceiver) -> None:
    http_receiver.set_behaviour("ratelimit", retry_after=1, times=1)
    started = time.monotonic()
    SlackNotifier(webhook_url(http_receiver), timeout_seconds=5).notify(make_result(Status.SUCCESS))
    elapsed = time.monotonic() - started
    assert len(http_receiver.requests) == 2  # 429, then delivered
    assert 1.0 <= elapsed < 3.0


def test_retry_after_beyond_the_budget_gives_up_at_once(http_receiver: HttpReceiver) -> None:
    http_receiver.set_behaviour("ratelimit", retry_after=60, times=5)
    started = time.monotonic()
    with pytest.raises(SlackDeliveryError, match="HTTP 429"):
        SlackNotifier(webhook_url(http_receiver), timeout_seconds=2).notify(
            make_result(Status.SUCCESS))
    assert time.monotonic() - started < 1.0
    assert len(http_receiver.requests) == 1


def test_server_errors_are_retried_within_the_budget(http_receiver: HttpReceiver) -> None:
    http_receiver.set_behaviour("error")
    started = time.monotonic()
    with pytest.raises(SlackDeliveryError, match="HTTP 500"):
        SlackNotifier(webhook_url(http_receiver), timeout_seconds=2).notify(
            make_result(Status.FAILED, error="x"))
    assert time.monotonic() - started < 2.0
    assert len(http_receiver.requests) >= 2


@pytest.mark.parametrize("behaviour", ["hang", "refuse"])
def test_unreachable_slack_is_bounded_and_never_shows_the_url(
    http_receiver: HttpReceiver, behaviour: str, caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)  # even with debug logging on, slack-sdk must not print it
    url = webhook_url(http_receiver) if behaviour == "hang" else http_receiver.refused_url()
    http_receiver.set_behaviour("hang")
    notifier = SlackNotifier(url, timeout_seconds=1.5)
    started = time.monotonic()
    with pytest.raises(SlackDeliveryError) as caught:
        notifier.notify(make_result(Status.SUCCESS))
    assert time.monotonic() - started < 1.5
    captured = capsys.readouterr()
    for text in (str(caught.value), caplog.text, captured.out, captured.err, repr(notifier)):
        assert url not in text


# --- end to end: `backupd backup` with SLACK_WEBHOOK_URL -----------------------------------


def test_backup_success_posts_the_backup(
    http_receiver: HttpReceiver, fixture_db: str, backupd_env: Callable[..., dict[str, str]],
    backup_dir: Path,
) -> None:
    url = webhook_url(http_receiver)
    proc = run_backupd(["backup"], backupd_env(fixture_db, SLACK_WEBHOOK_URL=url))
    assert proc.returncode == 0, proc.stderr
    (name,) = [p.name for p in backup_dir.glob("*.sql.gz")]
    payload = http_receiver.wait_for(1)[0].payload
    text = payload_text(payload)
    assert f"backup succeeded: {fixture_db}" in payload["blocks"][0]["text"]["text"]
    assert f"`{name}`" in text
    size = (backup_dir / name).stat().st_size
    assert "*Size*\n" in text and "*Duration*\n" in text
    assert str(size) not in url
    assert url not in proc.stdout + proc.stderr


@pytest.mark.parametrize("broken", ["wrong port", "missing database"])
def test_backup_failure_posts_the_error(
    http_receiver: HttpReceiver, make_db: Callable[..., str],
    backupd_env: Callable[..., dict[str, str]], broken: str,
) -> None:
    if broken == "wrong port":
        env = backupd_env(make_db(), POSTGRES_PORT=str(free_port()), POSTGRES_CONNECT_TIMEOUT="2")
    else:
        env = backupd_env(f"missing_{secrets.token_hex(4)}")
    env["SLACK_WEBHOOK_URL"] = webhook_url(http_receiver)
    proc = run_backupd(["backup"], env)
    assert proc.returncode == 1, proc.stderr
    payload = http_receiver.wait_for(1)[0].payload
    assert ":x: backup FAILED" in payload["blocks"][0]["text"]["text"]
    text = payload_text(payload)
    expected = "does not exist" if broken == "missing database" else "onnect"
    error_block = next(t for t in text.split("\n*") if t.startswith("What went wrong"))
    assert expected in error_block, text


@pytest.mark.parametrize("behaviour", ["hang", "error", "ratelimit"])
def test_a_broken_slack_never_fails_or_stalls_the_backup(
    http_receiver: HttpReceiver, make_db: Callable[..., str],
    backupd_env: Callable[..., dict[str, str]], backup_dir: Path, behaviour: str,
) -> None:
    http_receiver.set_behaviour(behaviour, retry_after=30, times=10)  # type: ignore[arg-type]
    env = backupd_env(make_db(), SLACK_WEBHOOK_URL=webhook_url(http_receiver),
                      NOTIFY_TIMEOUT_SECONDS="2")
    proc = run_backupd(["backup"], env)
    exited = time.time()
    assert proc.returncode == 0, proc.stderr
    assert len(list(backup_dir.glob("*.sql.gz"))) == 1
    assert http_receiver.requests, "backupd never tried to reach Slack"
    # From the first notifier to process exit: at most the timeout, plus interpreter exit.
    assert exited - job_finished_at(proc.stderr) < 2 + 1.0
    assert "notifier" in proc.stderr and "slack" in proc.stderr

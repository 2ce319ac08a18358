"""The heartbeat (dead man's switch): healthchecks.io's ``/start`` when a backup starts, the
URL after each good backup, ``/fail`` with the reason after a failed one; or, with
HEARTBEAT_STYLE=plain, only the URL after each good backup.

A local HTTP receiver stands in for healthchecks.io.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from helpers.cli import run_backupd
from helpers.cluster import free_port
from helpers.http_receiver import HttpReceiver

from backupd.notify.base import NotifierChain
from backupd.notify.heartbeat import HeartbeatError, HeartbeatNotifier
from backupd.result import JobResult, Status


def ping_url(receiver: HttpReceiver) -> str:
    return f"{receiver.url}/{secrets.token_hex(8)}"  # healthchecks: the uuid is the secret


def result_of(status: Status, job: str = "backup", error: str | None = None) -> JobResult:
    result = JobResult(job=job, database="certificate_verification",
                       started_at=datetime.now(UTC))
    result.finish(status, error)
    return result


def test_success_pings_the_url_with_the_summary(http_receiver: HttpReceiver) -> None:
    url = ping_url(http_receiver)
    NotifierChain([HeartbeatNotifier(url)]).deliver(result_of(Status.SUCCESS))
    (request,) = http_receiver.wait_for(1)
    assert request.path == url.split(str(http_receiver.port), 1)[1]
    assert b"backup success database='certificate_verification'" in request.body


@pytest.mark.parametrize("status", [Status.FAILED, Status.MISSED, Status.CANCELLED])
def test_failures_ping_the_fail_endpoint(http_receiver: HttpReceiver, status: Status) -> None:
    url = ping_url(http_receiver) + "?rid=run-1"
    NotifierChain([HeartbeatNotifier(url)]).deliver(result_of(status, error="disk full"))
    (request,) = http_receiver.wait_for(1)
    path = url.split(str(http_receiver.port), 1)[1]
    assert request.path == path.replace("?rid", "/fail?rid")
    assert b"error=disk full" in request.body


def test_skips_and_other_jobs_do_not_ping(http_receiver: HttpReceiver) -> None:
    chain = NotifierChain([HeartbeatNotifier(ping_url(http_receiver))])
    chain.deliver(result_of(Status.SKIPPED))
    chain.deliver(result_of(Status.SUCCESS, job="verify"))  # would hide stopped backups
    chain.deliver(result_of(Status.FAILED, job="drill"))
    assert http_receiver.requests == []


def test_rate_limit_is_honoured_then_delivered(http_receiver: HttpReceiver) -> None:
    http_receiver.set_behaviour("ratelimit", retry_after=1, times=1)
    started = time.monotonic()
    HeartbeatNotifier(ping_url(http_receiver), timeout_seconds=5).notify(result_of(Status.SUCCESS))
    assert time.monotonic() - started >= 1.0
    assert len(http_receiver.requests) == 2


@pytest.mark.parametrize("behaviour", ["error", "hang", "refuse"])
def test_an_unreachable_monitor_is_bounded_and_redacted(
    http_receiver: HttpReceiver, behaviour: str
) -> None:
    url = http_receiver.refused_url() if behaviour == "refuse" else ping_url(http_receiver)
    http_receiver.set_behaviour("hang" if behaviour == "hang" else "error")
    started = time.monotonic()
    with pytest.raises(HeartbeatError) as caught:
        HeartbeatNotifier(url, timeout_seconds=1.5).notify(result_of(Status.SUCCESS))
    # Bounded by its budget: attempts that each took the whole 1.5 s would add up past 3 s.
    # No tighter bound: under load the budget itself runs late.
    assert time.monotonic() - started < 3.0
    assert url not in str(caught.value)


def test_backup_pings_start_then_success_and_start_then_fail_with_the_reason(
    http_receiver: HttpReceiver, make_db: Callable[..., str],
    backupd_env: Callable[..., dict[str, str]],
) -> None:
    url = ping_url(http_receiver)
    db = make_db()
    ok = run_backupd(["backup"], backupd_env(db, HEARTBEAT_URL=url))
    assert ok.returncode == 0, ok.stderr
    port = free_port()
    failed = run_backupd(["backup"], backupd_env(db, HEARTBEAT_URL=url,
                                                 POSTGRES_PORT=str(port)))
    assert failed.returncode == 1
    path = url.split(str(http_receiver.port), 1)[1]
    requests = http_receiver.wait_for(4)
    assert [r.path for r in requests] == [path + "/start", path, path + "/start", path + "/fail"]
    # The success ping says what was backed up; /fail carries the one-line reason.
    assert b"backup success" in requests[1].body
    (reason,) = requests[3].body.decode().splitlines()
    assert "backup failed" in reason and str(port) in reason, reason
    assert url not in ok.stderr + failed.stderr


def test_plain_style_pings_only_the_url_on_success(
    http_receiver: HttpReceiver, make_db: Callable[..., str],
    backupd_env: Callable[..., dict[str, str]],
) -> None:
    url = ping_url(http_receiver)
    db = make_db()
    env = backupd_env(db, HEARTBEAT_URL=url, HEARTBEAT_STYLE="plain")
    assert run_backupd(["backup"], env).returncode == 0
    failed = run_backupd(["backup"], {**env, "POSTGRES_PORT": str(free_port())})
    assert failed.returncode == 1
    path = url.split(str(http_receiver.port), 1)[1]
    # No /start, no /fail: for a plain dead man's switch the silence is the alarm.
    assert [r.path for r in http_receiver.wait_for(1)] == [path]
    time.sleep(1)  # a stray late ping would arrive by now
    assert [r.path for r in http_receiver.requests] == [path]


def test_a_hanging_start_ping_neither_delays_the_job_nor_overtakes_the_end(
    http_receiver: HttpReceiver,
) -> None:
    """The start signal goes out in the background; the success ping follows it, never
    before it, and the whole delivery stays inside the notifier's budget."""
    url = ping_url(http_receiver)
    http_receiver.set_behaviour("hang")
    chain = NotifierChain([HeartbeatNotifier(url, timeout_seconds=2)], timeout_seconds=2)
    result = JobResult(job="backup", database="certificate_verification")
    started = time.monotonic()
    chain.started(result)
    # Returned at once, not after the hanging ping's 2 s timeout: the job is not held up.
    assert time.monotonic() - started < 1.0
    http_receiver.wait_for(1)
    http_receiver.set_behaviour("ok")
    result.finish(Status.SUCCESS)
    chain.deliver(result)
    requests = http_receiver.wait_for(2)
    assert requests[0].path.endswith("/start")
    assert not requests[-1].path.endswith("/start")


def test_a_run_of_several_databases_sends_one_start(
    http_receiver: HttpReceiver, make_db: Callable[..., str],
    backupd_env: Callable[..., dict[str, str]],
) -> None:
    """/start once for the run (not per database), then each database's result and the
    run's summary."""
    url = ping_url(http_receiver)
    databases = [make_db(), make_db()]
    proc = run_backupd(["backup"], backupd_env(",".join(databases), HEARTBEAT_URL=url,
                                               DB_BACKUP_GLOBALS="off"))
    assert proc.returncode == 0, proc.stderr
    path = url.split(str(http_receiver.port), 1)[1]
    requests = http_receiver.wait_for(4)
    assert [r.path for r in requests] == [path + "/start", path, path, path]
    assert f"database='{databases[0]}'".encode() in requests[1].body
    assert b"run_id=" in requests[3].body

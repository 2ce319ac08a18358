"""The heartbeat (dead man's switch): a ping after each backup, ``/fail`` after a failed one.

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
    assert time.monotonic() - started < 1.5
    assert url not in str(caught.value)


def test_backup_pings_and_failed_backup_pings_fail(
    http_receiver: HttpReceiver, make_db: Callable[..., str],
    backupd_env: Callable[..., dict[str, str]],
) -> None:
    url = ping_url(http_receiver)
    db = make_db()
    ok = run_backupd(["backup"], backupd_env(db, HEARTBEAT_URL=url))
    assert ok.returncode == 0, ok.stderr
    failed = run_backupd(["backup"], backupd_env(db, HEARTBEAT_URL=url,
                                                 POSTGRES_PORT=str(free_port())))
    assert failed.returncode == 1
    path = url.split(str(http_receiver.port), 1)[1]
    assert [r.path for r in http_receiver.wait_for(2)] == [path, path + "/fail"]
    assert url not in ok.stderr + failed.stderr

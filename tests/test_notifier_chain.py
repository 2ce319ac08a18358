"""The chain the settings build: which notifiers, in which order, and that one broken notifier
never keeps a result from the others.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

import pytest
import structlog
from helpers.cli import run_backupd
from helpers.http_receiver import HttpReceiver
from helpers.notifiers import RecordingNotifier

from backupd.daemon.state import DaemonState
from backupd.errors import ConfigError
from backupd.log import configure_logging
from backupd.notify import build_chain
from backupd.notify.base import NotifierChain
from backupd.notify.heartbeat import HeartbeatNotifier
from backupd.notify.slack import SlackNotifier
from backupd.result import JobResult, Status
from backupd.settings import Settings


class Exploding:
    name = "exploding"
    remote: ClassVar[bool] = False

    def notify(self, result: JobResult) -> None:
        raise RuntimeError("notifier bug")


def settings(**env: object) -> Settings:
    return Settings(**env)  # type: ignore[arg-type]


def test_chain_holds_what_the_settings_ask_for_in_order(tmp_path: Path) -> None:
    plain = build_chain(settings(HEALTH_PORT=0, DB_BACKUP_DIR=str(tmp_path)))
    # The log file before the "job finished" record: whoever sees the record can read the file.
    assert [n.name for n in plain.notifiers] == ["logfile", "structlog"]
    full = build_chain(settings(
        DB_BACKUP_DIR=str(tmp_path), HEALTH_PORT=9999, NOTIFY_TIMEOUT_SECONDS=3,
        SLACK_WEBHOOK_URL="https://hooks.slack.example/services/T/B/x",
        HEARTBEAT_URL="https://hc-ping.example/abc",
    ), RecordingNotifier())
    assert [n.name for n in full.notifiers] == [
        "logfile", "structlog", "metrics", "heartbeat", "slack", "recorder"]
    assert full.timeout_seconds == 3


@pytest.mark.parametrize("variable", ["SLACK_WEBHOOK_URL", "HEARTBEAT_URL"])
def test_a_url_that_is_not_http_is_a_config_error(variable: str) -> None:
    with pytest.raises(ConfigError, match=f"^{variable}: must be an http"):
        build_chain(settings(HEALTH_PORT=0, **{variable: "hooks.slack.com/services/T/B/x"}))


def test_cli_names_the_bad_url_setting_and_hides_its_value() -> None:
    secret = "file:///services/T000/B000/not-a-web-url"
    proc = run_backupd(["backup"], {"SLACK_WEBHOOK_URL": secret, "HEALTH_PORT": "0",
                                    "DB_BACKUP_DIR": "/nonexistent/backupd-test"})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "backupd: error: SLACK_WEBHOOK_URL: must be an http")
    assert secret not in proc.stderr + proc.stdout


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    """backupd's real log configuration (redaction included), written into a buffer."""
    configure_logging("json")
    buffer = io.StringIO()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=buffer))
    yield buffer
    structlog.reset_defaults()


def test_every_notifier_gets_the_result_despite_broken_ones(
    http_receiver: HttpReceiver, json_logs: io.StringIO
) -> None:
    """A hanging Slack, a refused heartbeat and a raising notifier: the last one still hears."""
    http_receiver.set_behaviour("hang")
    slack_url = f"{http_receiver.url}/T1/B1/secret-token-123"
    heartbeat_url = http_receiver.refused_url()
    recorder = RecordingNotifier()
    chain = NotifierChain([
        Exploding(),
        SlackNotifier(slack_url, timeout_seconds=1.0),
        HeartbeatNotifier(heartbeat_url, timeout_seconds=1.0),
        recorder,
    ], timeout_seconds=1.0)
    result = JobResult(job="backup", database="db", started_at=datetime.now(UTC))
    result.finish(Status.MISSED, "the daemon was down at 02:00")
    started = time.monotonic()
    chain.deliver(result)
    elapsed = time.monotonic() - started
    assert recorder.results == [result]
    assert elapsed < 2 * 1.0 + 0.5  # each network notifier at most its timeout
    err = json_logs.getvalue()
    assert err.count('"notifier failed"') + err.count('"notifier timed out"') == 3
    assert "notifier bug" in err
    assert slack_url not in err and heartbeat_url not in err and "secret-token-123" not in err


def test_the_daemons_state_in_the_chain_takes_no_start_signal(
    tmp_path: Path, json_logs: io.StringIO
) -> None:
    """The daemon's state is in every daemon chain. Its own job_started(job name) once made it
    look like a start listener, so every scheduled job logged "notifier failed at job start"
    (TypeError: unhashable type: 'JobResult')."""
    state = DaemonState(tmp_path)
    recorder = RecordingNotifier()
    chain = NotifierChain([state, recorder], timeout_seconds=1.0)
    result = JobResult(job="backup", database="db", started_at=datetime.now(UTC))
    chain.started(result)
    result.finish(Status.SUCCESS, "done")
    chain.deliver(result)
    assert recorder.results == [result]
    assert state.last_results["backup"] is result
    assert "notifier failed" not in json_logs.getvalue()


class Hanging:
    """A network endpoint that never answers, until the test lets it go."""

    name = "hanging"
    remote: ClassVar[bool] = True

    def __init__(self, release: threading.Event) -> None:
        self.release = release

    def notify(self, result: JobResult) -> None:
        self.release.wait()


class RemoteRecorder(RecordingNotifier):
    name = "remote-recorder"
    remote: ClassVar[bool] = True


def test_hanging_network_notifiers_never_hold_back_the_others() -> None:
    """Two endpoints that hang: the network notifier after them and the local one at the end
    hear the result while both still hang, not one timeout after another (a SIGTERM's
    deadline once ran out before the webhook, behind a hanging heartbeat and Slack)."""
    release = threading.Event()
    remote, local = RemoteRecorder(), RecordingNotifier()
    chain = NotifierChain([Hanging(release), Hanging(release), remote, local],
                          timeout_seconds=60.0)
    result = JobResult(job="backup", database="db", started_at=datetime.now(UTC))
    result.finish(Status.CANCELLED, "backup cancelled by shutdown")
    delivering = threading.Thread(target=chain.deliver, args=(result,), daemon=True)
    delivering.start()
    try:
        assert remote.delivered.wait(20), "the webhook waited behind the hanging endpoints"
        assert local.delivered.wait(20)
        assert delivering.is_alive()  # the chain still gives the hanging ones their time
    finally:
        release.set()
        delivering.join(20)
    assert remote.results == local.results == [result]
    assert not delivering.is_alive()


@pytest.mark.parametrize("variable", ["HEARTBEAT_URL", "SLACK_WEBHOOK_URL", "WEBHOOK_URL"])
def test_a_url_with_a_blank_inside_is_a_config_error(variable: str) -> None:
    with pytest.raises(ConfigError, match=f"^{variable}: the URL holds a space"):
        build_chain(settings(HEALTH_PORT=0, **{variable: "https://ping.example/a b"}))


def test_blanks_around_the_heartbeat_url_never_reach_its_pings(
        http_receiver: HttpReceiver, tmp_path: Path) -> None:
    """A trailing space (a pasted value) once put `/start` and `/fail` after the space: both
    pings failed, and only the success ping, which has no suffix, got through."""
    chain = build_chain(settings(HEALTH_PORT=0, DB_BACKUP_DIR=str(tmp_path),
                                 HEARTBEAT_URL=f" {http_receiver.url}/hb-uuid-1234 \n"))
    result = JobResult(job="backup", database="db", started_at=datetime.now(UTC))
    chain.started(result)
    result.finish(Status.FAILED, "pg_dump failed")
    chain.deliver(result)
    paths = [request.path for request in http_receiver.wait_for(2)]
    assert [path.rsplit("/", 2)[-2:] for path in paths] == [
        ["hb-uuid-1234", "start"], ["hb-uuid-1234", "fail"]]


def test_however_many_network_notifiers_hang_a_result_is_delivered_within_one_timeout(
        json_logs: io.StringIO) -> None:
    """The bound a shutdown counts on: three endpoints that never answer cost one timeout in
    all, not one each (told one after another, they once ran SIGTERM's deadline out)."""
    never = threading.Event()
    chain = NotifierChain([Hanging(never), Hanging(never), Hanging(never)], timeout_seconds=1.0)
    result = JobResult(job="backup", database="db", started_at=datetime.now(UTC))
    result.finish(Status.SUCCESS, "done")
    started = time.monotonic()
    chain.deliver(result)
    assert time.monotonic() - started < 2.5  # one after another: 3 s and more
    assert json_logs.getvalue().count('"notifier timed out"') == 3
    never.set()

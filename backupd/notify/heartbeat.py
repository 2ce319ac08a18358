"""A dead man's switch: a ping per backup, in healthchecks.io's conventions or plainly.

The monitoring service alarms when the pings stop, which is the one failure backupd
cannot report itself: the daemon (or the whole host) being gone. Only backup results
ping: a verify or drill that succeeds must not hide that backups stopped.

``healthchecks`` (HEARTBEAT_STYLE's default): ``<url>/start`` when the job starts (so the
service measures how long it ran, and alarms when it runs too long), ``<url>`` on success,
``<url>/fail`` on failure with the one-line reason as the body. ``plain``: ``<url>`` on
success only, for services that know no ``/start`` or ``/fail`` (any request to the URL
counts as "alive" there, and silence is the alarm).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar, Literal
from urllib.parse import urlsplit, urlunsplit

from backupd.log import redact
from backupd.notify.deadline import BUDGET_SHARE, Deadline, register_secret_url
from backupd.notify.posting import post
from backupd.result import ALERT_STATUSES, JobResult, Status

HeartbeatStyle = Literal["healthchecks", "plain"]

# healthchecks.io keeps the first 100 kB of a ping's body and shows it in its UI.
_BODY_MAX = 10_000


class HeartbeatError(RuntimeError):
    """The ping was not accepted; the text is already redacted."""


class HeartbeatNotifier:
    name = "heartbeat"
    remote: ClassVar[bool] = True  # told at the same time as the other network notifiers

    def __init__(
        self, url: str, *, timeout_seconds: float = 10.0, jobs: Iterable[str] = ("backup",),
        style: HeartbeatStyle = "healthchecks",
    ) -> None:
        register_secret_url(url)
        self._url = url
        self.budget_seconds = timeout_seconds * BUDGET_SHARE
        self.jobs = frozenset(jobs)
        self.style = style

    def __repr__(self) -> str:  # never the URL
        return f"HeartbeatNotifier(jobs={sorted(self.jobs)!r}, style={self.style!r})"

    def job_started(self, result: JobResult) -> None:
        if result.job in self.jobs and self.style == "healthchecks":
            self.ping(endpoint(self._url, "start"), "")

    def notify(self, result: JobResult) -> None:
        if result.job not in self.jobs:
            return
        if result.status == Status.SUCCESS:
            target = self._url
        elif result.status in ALERT_STATUSES and self.style == "healthchecks":
            target = endpoint(self._url, "fail")
        else:
            # Skipped (another backup holds the lock) is neither alive nor failing; with the
            # plain style a failure is silence, which is what the service alarms on.
            return
        self.ping(target, one_line(redact(result.summary()))[:_BODY_MAX])

    def ping(self, url: str, body: str) -> None:
        problem = post(url, body.encode("utf-8"),
                       {"Content-Type": "text/plain; charset=utf-8",
                        "User-Agent": "backupd-heartbeat"},
                       Deadline(self.budget_seconds))
        if problem is not None:
            raise HeartbeatError(f"heartbeat ping failed: {problem}")


def endpoint(url: str, action: str) -> str:
    """``<url>/<action>`` (``start``, ``fail``), keeping any query string (healthchecks'
    ``?rid=`` and friends)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/" + action))


def one_line(text: str) -> str:
    """Several lines (a ConfigError naming several settings) as one: "a; b"."""
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())

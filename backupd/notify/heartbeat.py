"""A dead man's switch (healthchecks.io style): ping after each backup, ``/fail`` after a failure.

The monitoring service alarms when the pings stop, which is the one failure backupd
cannot report itself: the daemon (or the whole host) being gone. Only backup results
ping: a verify or drill that succeeds must not hide that backups stopped.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

from backupd.log import redact
from backupd.notify.deadline import (
    BUDGET_SHARE,
    Deadline,
    register_secret_url,
    retry_after_seconds,
)
from backupd.result import ALERT_STATUSES, JobResult, Status

# healthchecks.io keeps the first 100 kB of a ping's body and shows it in its UI.
_BODY_MAX = 10_000
_MAX_ATTEMPTS = 3
_RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


class HeartbeatError(RuntimeError):
    """The ping was not accepted; the text is already redacted."""


class HeartbeatNotifier:
    name = "heartbeat"

    def __init__(
        self, url: str, *, timeout_seconds: float = 10.0, jobs: Iterable[str] = ("backup",)
    ) -> None:
        register_secret_url(url)
        self._url = url
        self.budget_seconds = timeout_seconds * BUDGET_SHARE
        self.jobs = frozenset(jobs)

    def __repr__(self) -> str:  # never the URL
        return f"HeartbeatNotifier(jobs={sorted(self.jobs)!r})"

    def notify(self, result: JobResult) -> None:
        if result.job not in self.jobs:
            return
        if result.status == Status.SUCCESS:
            target = self._url
        elif result.status in ALERT_STATUSES:
            target = fail_url(self._url)
        else:
            return  # skipped (another backup holds the lock) is neither alive nor failing
        self.ping(target, redact(result.summary())[:_BODY_MAX])

    def ping(self, url: str, body: str) -> None:
        deadline = Deadline(self.budget_seconds)
        problem = "no attempt made"
        for attempt in range(_MAX_ATTEMPTS):
            wait = 0.0
            try:
                request = urllib.request.Request(  # noqa: S310 -- scheme checked in checked_url
                    url, data=body.encode("utf-8"), method="POST",
                    headers={"Content-Type": "text/plain; charset=utf-8",
                             "User-Agent": "backupd-heartbeat"},
                )
                with urllib.request.urlopen(  # noqa: S310
                    request, timeout=deadline.attempt_timeout()
                ) as response:
                    response.read(1024)
                return
            except urllib.error.HTTPError as exc:
                problem = f"HTTP {exc.code}"
                if exc.code not in _RETRY_STATUSES:
                    break
                advised = retry_after_seconds(dict(exc.headers.items())) if exc.headers else None
                wait = advised if advised is not None else 0.5 * 2**attempt
            except (urllib.error.URLError, OSError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
                wait = 0.5 * 2**attempt
            if attempt + 1 == _MAX_ATTEMPTS or not deadline.allows(wait):
                break
            time.sleep(wait)
        raise HeartbeatError(redact(f"heartbeat ping failed: {problem}"))


def fail_url(url: str) -> str:
    """``<url>/fail``, keeping any query string (healthchecks' ``?rid=`` and friends)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/fail"))

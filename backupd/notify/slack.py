"""Slack: one Block Kit message per result, written for the person on call.

The message answers, in this order: what happened to which database, what to look
at first (warnings, the error, pg_dump's last words), how big and how long, and
where to look next. Delivery uses slack-sdk's WebhookClient with retries for
connection errors, 429 (honouring Retry-After) and 5xx, all inside one time budget.

The webhook URL is a credential: slack-sdk logs it at debug/info level, so the
client gets a logger that never formats those lines, and every text that leaves
this module (payload, errors, the SDK's warnings) goes through the redactor.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import socket
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Literal

from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)
from slack_sdk.http_retry.builtin_interval_calculators import BackoffRetryIntervalCalculator
from slack_sdk.http_retry.handler import RetryHandler
from slack_sdk.http_retry.jitter import Jitter
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState
from slack_sdk.webhook import WebhookClient

from backupd import __version__
from backupd.log import JOB_LOG_FILES, get_logger, redact
from backupd.notify.deadline import (
    BUDGET_SHARE,
    Deadline,
    register_secret_url,
    retry_after_seconds,
)
from backupd.outcomes import DrillOutcome, PruneOutcome
from backupd.result import ALERT_STATUSES, JobResult, Status, human_bytes
from backupd.storage.atomic import write_bytes_atomically

NotifyOn = Literal["all", "failure"]

# Statuses that mean "a backup that should exist does not": always worth a message.
# Remembers each job's last outcome, so `failure` mode can announce the recovery even
# when every run is a separate `backupd backup` process.
NOTIFY_STATE_FILE = ".backupd-slack-state.json"

_STYLE: dict[Status, tuple[str, str]] = {
    Status.SUCCESS: (":white_check_mark:", "succeeded"),
    Status.FAILED: (":x:", "FAILED"),
    Status.MISSED: (":alarm_clock:", "MISSED"),
    Status.CANCELLED: (":octagonal_sign:", "cancelled"),
    Status.SKIPPED: (":fast_forward:", "skipped"),
    Status.RUNNING: (":hourglass_flowing_sand:", "running"),
}

# Block Kit limits: header text 150 chars, section text 3000, field text 2000.
_HEADER_MAX = 150
_SECTION_MAX = 2900
_ERROR_MAX = 1500
_STDERR_MAX = 1200
_MAX_RETRIES = 2


class SlackDeliveryError(RuntimeError):
    """Slack did not accept the message; the text is already redacted."""


class SlackNotifier:
    name = "slack"
    remote: ClassVar[bool] = True  # told at the same time as the other network notifiers

    def __init__(
        self,
        url: str,
        *,
        notify_on: NotifyOn = "all",
        timeout_seconds: float = 10.0,
        state_dir: Path | None = None,
    ) -> None:
        register_secret_url(url)
        self._url = url
        self.notify_on = notify_on
        self.budget_seconds = timeout_seconds * BUDGET_SHARE
        self._outcomes = _LastOutcomes(state_dir / NOTIFY_STATE_FILE if state_dir else None)
        self._host = socket.gethostname()

    def __repr__(self) -> str:  # never the URL, even in a debugger or a traceback's locals
        return f"SlackNotifier(notify_on={self.notify_on!r})"

    def notify(self, result: JobResult) -> None:
        previous = self._outcomes.swap(result)
        recovered = result.status == Status.SUCCESS and previous in ALERT_STATUSES
        if not self.wants(result, recovered):
            return
        self.send(build_message(result, recovered=recovered, host=self._host))

    def wants(self, result: JobResult, recovered: bool) -> bool:
        if self.notify_on == "all":
            return result.status != Status.RUNNING
        return result.status in ALERT_STATUSES or recovered

    def send(self, payload: dict[str, Any]) -> None:
        deadline = Deadline(self.budget_seconds)
        client = WebhookClient(self._url, timeout=deadline.attempt_timeout(),  # type: ignore[arg-type]
                               logger=_SDK_LOGGER)

        def before_retry() -> None:
            client.timeout = deadline.attempt_timeout()  # type: ignore[assignment]

        client.retry_handlers = [
            _ConnectionErrors(deadline, before_retry),
            _RateLimited(deadline, before_retry),
            _ServerErrors(deadline, before_retry),
        ]
        try:
            response = client.send_dict(redact.scrub(payload))
        except Exception as exc:
            # `from None`: the original exception may carry the request (and its URL).
            raise SlackDeliveryError(redact(f"{type(exc).__name__}: {exc}")) from None
        if response.status_code != 200:
            body = redact(str(response.body or ""))[:200]
            raise SlackDeliveryError(f"Slack answered HTTP {response.status_code}: {body}")


# --- the message ---------------------------------------------------------------------


def build_message(result: JobResult, *, recovered: bool = False, host: str = "") -> dict[str, Any]:
    """The webhook payload: a plain-text fallback plus Block Kit blocks."""
    emoji, verb = _STYLE[result.status]
    title = f"{result.job} {verb}: {result.database}"
    if result.written_database is not None:
        title = f"{result.job} {verb}: into {result.written_database} (backup of {result.database})"
    if isinstance(result.outcome, PruneOutcome) and result.outcome.dry_run:
        title += " (dry run)"
    if recovered:
        title += " (recovered)"
    blocks: list[dict[str, Any]] = [{
        "type": "header",
        "text": {"type": "plain_text", "text": _clip(f"{emoji} {_one_line(title)}", _HEADER_MAX),
                 "emoji": True},
    }]
    # Warnings first: a backup that "succeeded" but shrank by 90% is the message.
    for warning in result.warnings:
        blocks.append(_section(f":warning: *Warning:* {_escape(warning)}"))
    if recovered:
        blocks.append(_section(":tada: The previous run failed; this one succeeded."))
    blocks.append({"type": "section", "fields": _facts(result)})
    if result.error:
        blocks.append(_section(f"*What went wrong*\n{_code(_clip(result.error, _ERROR_MAX))}"))
    if result.stderr_tail and result.status != Status.SUCCESS:
        tail = result.stderr_tail[-_STDERR_MAX:]
        tool = result.stderr_tool or "child process"
        blocks.append(_section(f"*{tool} stderr (last lines)*\n{_code(tail)}"))
    hint = _next_step(result)
    if hint:
        blocks.append(_section(f"*Next step:* {hint}"))
    context = f"backupd {__version__}"
    if host:
        context += f" on {_escape(host)}"
    context += f" · started {_when(result.started_at)}"
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": context}]})
    fallback = f"{emoji} {_one_line(title)}"
    if result.warnings:
        fallback += f" — warning: {result.warnings[0]}"
    if result.error:
        fallback += f" — {_one_line(result.error)}"
    return {"text": _clip(_escape(fallback), _SECTION_MAX), "blocks": blocks}


def _facts(result: JobResult) -> list[dict[str, str]]:
    facts = [("Database", f"`{_escape(_one_line(result.database))}`"),
             ("Status", result.status.value)]
    if result.written_database is not None:
        facts.insert(0, ("Written into", f"`{_escape(_one_line(result.written_database))}`"))
    if result.backup_name:
        facts.append(("Backup", f"`{_escape(result.backup_name)}`"))
    if result.size_bytes is not None:
        size = human_bytes(result.size_bytes)
        change = result.size_change_percent
        if change is not None:
            size += f" ({change:+.1f}% vs previous {human_bytes(result.previous_size_bytes or 0)})"
        facts.append(("Size", size))
    if result.duration_seconds is not None:
        facts.append(("Duration", _duration(result.duration_seconds)))
    if result.deleted:
        names = ", ".join(result.deleted[:5]) + (" …" if len(result.deleted) > 5 else "")
        facts.append(("Retention deleted", f"{len(result.deleted)}: {_escape(names)}"))
    outcome = result.outcome
    if isinstance(outcome, PruneOutcome) and outcome.dry_run:
        names = ", ".join(outcome.would_delete[:5]) + (" …" if len(outcome.would_delete) > 5
                                                       else "")
        facts.append(("Would delete (dry run)",
                      f"{len(outcome.would_delete)}: {_escape(names)}" if names else "nothing"))
    if result.offsite:
        facts.append(("Offsite copy", _escape(result.offsite)))
    # --- restore drills (issue 7): the measured restore time and the comparison -------
    if isinstance(outcome, DrillOutcome):
        if outcome.cluster_restore_seconds is not None:
            facts.append(("Restore time (whole cluster, RTO)",
                          _duration(outcome.cluster_restore_seconds)))
        elif outcome.restore_seconds is not None:
            facts.append(("Restore time", _duration(outcome.restore_seconds)))
        if outcome.comparison_summary:
            facts.append(("Comparison", _escape(_one_line(outcome.comparison_summary))))
    # --- end restore drills ------------------------------------------------------------
    # Slack allows at most 10 fields per section.
    return [{"type": "mrkdwn", "text": _clip(f"*{k}*\n{v}", 1900)} for k, v in facts[:10]]


def _next_step(result: JobResult) -> str | None:
    log_file = JOB_LOG_FILES.get(result.job, f"{result.job}_log.txt")
    if result.status == Status.FAILED:
        return (f"see `{log_file}` in the backup directory; once fixed, run "
                f"`backupd {result.job}` to retry now instead of waiting for the schedule.")
    if result.status == Status.MISSED:
        return ("the scheduled run did not start in time (daemon down, paused or still busy); "
                f"check `backupd health` and run `backupd {result.job}` by hand.")
    if result.status == Status.CANCELLED:
        return (f"the run was stopped (shutdown or restart); no new {result.job} was made. "
                f"Run `backupd {result.job}` if the next scheduled run is far off.")
    return None


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": _clip(text, _SECTION_MAX)}}


def _escape(text: str) -> str:
    # Slack's mrkdwn control characters; without this a database name or an error
    # holding "<!channel>" or "<http://...|x>" would ping people or hide a link.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _code(text: str) -> str:
    return "```" + _escape(text.replace("```", "'''")) + "```"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S %Z").strip()


# --- remembering the last outcome, for SLACK_NOTIFY_ON=failure -------------------------


class _LastOutcomes:
    """Each (database, job)'s last decisive status, kept in memory and in a small file."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._loaded = False
        self._statuses: dict[str, str] = {}

    def swap(self, result: JobResult) -> Status | None:
        """Record ``result``; return the status it replaces. Skips change nothing."""
        key = f"{result.database}/{result.job}"
        with self._lock:
            self._load()
            previous = self._statuses.get(key)
            if result.status not in (Status.SKIPPED, Status.RUNNING):
                self._statuses[key] = result.status.value
                self._save()
        return Status(previous) if previous in set(Status) else None

    def _load(self) -> None:
        if self._loaded or self.path is None:
            return
        self._loaded = True
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if isinstance(data, dict):
                self._statuses.update({str(k): str(v) for k, v in data.items()})

    def _save(self) -> None:
        if self.path is None or not self.path.parent.is_dir():
            return
        try:
            write_bytes_atomically(self.path, json.dumps(self._statuses, indent=1).encode())
        except OSError as exc:
            # Worst case `failure` mode misses one "recovered" message: not worth failing for.
            get_logger(notifier="slack").warning("cannot save notifier state",
                                                 path=str(self.path), error=exc.strerror)


# --- delivery: slack-sdk's retry handlers, bounded by one deadline ----------------------


class _WithinBudget(RetryHandler):
    """Retry only while the wait plus a useful attempt still fit in the deadline."""

    def __init__(self, deadline: Deadline, before_retry: Any) -> None:
        super().__init__(max_retry_count=_MAX_RETRIES,
                         interval_calculator=BackoffRetryIntervalCalculator(0.5, _SmallJitter()))
        self.deadline = deadline
        self.before_retry = before_retry

    def wait_seconds(self, state: RetryState, response: HttpResponse | None) -> float:
        return float(self.interval_calculator.calculate_sleep_duration(state.current_attempt))

    def can_retry(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        if not super().can_retry(state=state, request=request, response=response, error=error):
            return False
        return self.deadline.allows(self.wait_seconds(state, response))

    def prepare_for_next_attempt(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> None:
        time.sleep(self.wait_seconds(state, response))
        self.before_retry()
        state.next_attempt_requested = True
        state.increment_current_attempt()


class _SmallJitter(Jitter):
    """Up to +20%: slack-sdk's default adds up to a whole second, most of a small budget."""

    def recalculate(self, duration: float) -> float:
        return duration * (1 + 0.2 * random.random())  # noqa: S311 -- not for security


class _ConnectionErrors(_WithinBudget, ConnectionErrorRetryHandler):
    pass


class _RateLimited(_WithinBudget, RateLimitErrorRetryHandler):
    def wait_seconds(self, state: RetryState, response: HttpResponse | None) -> float:
        # Honour Retry-After exactly (never earlier); without one, back off as usual.
        advised = retry_after_seconds(response.headers) if response is not None else None
        return advised if advised is not None else super().wait_seconds(state, response)


class _ServerErrors(_WithinBudget, ServerErrorRetryHandler):
    def _can_retry(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        # slack-sdk retries only 500 and 503; a proxy in front of Slack adds 502 and 504.
        return response is not None and 500 <= response.status_code < 600


class _ToStructlog(logging.Handler):
    """slack-sdk's own warnings, redacted, into backupd's structured log."""

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            get_logger(notifier="slack").warning("slack-sdk: " + redact(record.getMessage()))


# A dedicated logger at WARNING: slack-sdk formats its URL-bearing debug/info lines only
# when `logger.level <= DEBUG`, and a fresh logger's level (NOTSET) would pass that test.
_SDK_LOGGER = logging.getLogger("backupd.slack_sdk")
_SDK_LOGGER.setLevel(logging.WARNING)
_SDK_LOGGER.propagate = False
_SDK_LOGGER.addHandler(_ToStructlog())

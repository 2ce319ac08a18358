"""Logging: structlog on stderr, per-job text files for people.

The daemon logs JSON off a terminal (a container's log collector); a one-off command
logs readable lines, its one-line summary being its result (cron, scripts).

Every line, structured or human, passes through the redactor, so a secret that
ends up in an exception message or a libpq error is masked before it is written.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import MutableMapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO, cast

# structlog is imported without rich: structlog.dev and structlog.tracebacks import rich (and
# through it pygments and attrs) at import time only to offer rich tracebacks, which backupd
# never renders (format_exc_info, then one redacted plain line). That was ~45 ms of every
# command's start-up, before pg_dump starts (issue 18's floor). It relies on structlog
# importing rich inside ``try/except ImportError`` (structlog 24-26); a structlog that does
# otherwise only loses the saving. rich stays importable afterwards (the progress display).
_HIDE_RICH = "rich" not in sys.modules and "structlog" not in sys.modules
if _HIDE_RICH:
    sys.modules["rich"] = None  # type: ignore[assignment]  # `import rich` fails
try:
    import structlog
finally:
    if _HIDE_RICH:
        del sys.modules["rich"]

MASK = "***"

# Each job kind's human log in DB_BACKUP_DIR; people tail these files.
JOB_LOG_FILES = {
    "backup": "backup_log.txt",
    "prune": "backup_log.txt",
    "upload": "backup_log.txt",
    "verify": "verify_log.txt",
    "restore": "restore_log.txt",
    "drill": "drill_log.txt",
}


class Redactor:
    """Masks every registered secret in any text; shared by all sinks."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._lock = threading.Lock()

    def add(self, *secrets: str | None) -> None:
        with self._lock:
            # Very short values would mask ordinary words; a 1-3 char password is
            # already a configuration problem, so only mask 4+ characters.
            self._secrets.update(s for s in secrets if s and len(s) >= 4)

    def __call__(self, text: str) -> str:
        for secret in sorted(self._secrets, key=len, reverse=True):
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {k: self.scrub(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self.scrub(v) for v in value)
        return value


redact = Redactor()


def _redact_processor(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> dict[str, Any]:
    return {key: redact.scrub(value) for key, value in event_dict.items()}


def logs_are_json(log_format: str, *, daemon: bool = False) -> bool:
    """JSON when asked; with ``auto``, for the daemon when stderr is not a terminal.

    A one-off command piped into a script or cron mail is read by a person: readable
    lines and its summary, no JSON records (``--log-format json`` brings them back).
    """
    if log_format == "json":
        return True
    return log_format == "auto" and daemon and not sys.stderr.isatty()


def configure_logging(log_format: str = "auto", level: int = logging.INFO, *,
                      daemon: bool = False) -> None:
    """Structured logs on stderr, JSON or readable per :func:`logs_are_json`."""
    use_json = logs_are_json(log_format, daemon=daemon)
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _redact_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # Whatever sys.stderr is when a line is written: a live progress display on the
        # terminal (cli/progress_display.py) replaces it to print log lines above itself.
        logger_factory=structlog.PrintLoggerFactory(file=cast(TextIO, _CurrentStderr())),
        cache_logger_on_first_use=False,
    )


class _CurrentStderr:
    """sys.stderr as it is when a line is written; a line it cannot take is lost, never the
    job's failure (a full disk behind `2>>file`, a log collector that went away)."""

    def write(self, text: str) -> int:
        try:
            return sys.stderr.write(text)
        except (OSError, ValueError, AttributeError) as exc:  # AttributeError: stderr is None
            STDERR_LOSS.lost(exc)
            return len(text)

    def flush(self) -> None:
        # A failure: the line's write already counted it, or it may still get through.
        with contextlib.suppress(OSError, ValueError, AttributeError):
            sys.stderr.flush()


class StderrLoss:
    """Log lines standard error would not take. The first failure points descriptor 2 at
    /dev/null (what is still buffered for it then drains there, and cannot fail the exit as
    well); lines are lost from then on. Where stderr has no descriptor (closed when backupd
    started), each line is counted. ``news`` says it once, for the next job's result: the
    notifiers and the job logs still reach people."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._first: tuple[datetime, str] | None = None
        self._dropped = 0
        self._reported = 0
        self._silenced = False

    def lost(self, exc: BaseException) -> None:
        with self._lock:
            self._dropped += 1
            if self._first is None:
                reason = (exc.strerror or str(exc)) if isinstance(exc, OSError) else (
                    "standard error is closed")
                self._first = (datetime.now(UTC), reason)
            if not self._silenced:
                self._silenced = _silence_stderr()

    def news(self) -> str | None:
        """One line about lines lost since the last time it was asked; None if none were."""
        with self._lock:
            if self._first is None or self._dropped == self._reported:
                return None
            self._reported = self._dropped
            since, reason = self._first
        lost = ("from then on, until backupd restarts" if self._silenced
                else f"{self._dropped} line(s) so far")
        return (f"standard error could not be written ({reason}) since "
                f"{since:%Y-%m-%d %H:%M:%S} UTC: backupd's log lines there are lost {lost}; "
                "this result still reaches the job logs in DB_BACKUP_DIR and the notifiers")


def _silence_stderr() -> bool:
    try:
        fd = sys.stderr.fileno()
    except (OSError, ValueError, AttributeError):
        return False
    if not point_at_devnull(fd):
        return False
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.flush()  # what is still buffered drains into /dev/null
    return True


def point_at_devnull(fd: int) -> bool:
    """Point descriptor ``fd`` (a broken stdout or stderr) at /dev/null, so what is still
    buffered for it cannot fail again (at exit: Python's "Exception ignored", exit 120)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return False
    try:
        os.dup2(devnull, fd)
    except OSError:
        return False
    finally:
        os.close(devnull)
    return True


def say_on_stderr(line: str) -> None:
    """One line for people on stderr; one it cannot take is lost (StderrLoss), never the
    command's exit code, which is then all that is left to say it."""
    stderr = _CurrentStderr()
    stderr.write(line + "\n")
    stderr.flush()


STDERR_LOSS = StderrLoss()


def get_logger(**context: Any) -> Any:
    return structlog.get_logger("backupd").bind(**context)


def _private_opener(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)


def shown_utc(moment: datetime) -> str:
    """``moment`` as every message, log file and page shows a time: UTC, to the second."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


class JobLogFile:
    """Appends timestamped human-readable lines to a job kind's file in DB_BACKUP_DIR."""

    _lock = threading.Lock()

    def __init__(self, directory: Path, job: str) -> None:
        self.path = directory / JOB_LOG_FILES.get(job, f"{job}_log.txt")

    def write(self, message: str) -> None:
        stamp = shown_utc(datetime.now(UTC))
        # One line per entry, whatever the message holds (database names may hold newlines).
        line = f"[{stamp}] " + redact(message).replace("\r", "\\r").replace("\n", "\\n") + "\n"
        try:
            # 0600 like the backups: the lines name databases and failures.
            with self._lock, open(self.path, "a", encoding="utf-8",
                                  opener=_private_opener) as handle:
                handle.write(line)
        except FileNotFoundError:
            # No DB_BACKUP_DIR yet: a command refused before it created one (bad input) must
            # not create it just for a log line; the refusal itself is on stderr.
            get_logger().debug("job log file skipped: no backup directory", path=str(self.path))
        except OSError as exc:
            # The human log is a convenience; losing it must not fail the job.
            get_logger().warning("job log file not writable", path=str(self.path),
                                 error=exc.strerror)

"""The ``backupd`` Typer application and what every command shares: settings and logging at
the edge (``bootstrap``), running one job through the notifier chain (``execute``), and the
one-line error with exit 2 for bad usage (``fail``).

Exit codes: 0 success, 1 the job failed or was cancelled (a signal: cli.signals), 2 bad usage
or configuration (one line on stderr naming the setting or argument).
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
from collections.abc import Callable
from enum import StrEnum
from typing import Annotated, NoReturn

import typer

from backupd.cancel import CancelToken
from backupd.cli.signals import cancelled_by_signals
from backupd.daemon.state import ResultRecorder
from backupd.errors import ConfigError
from backupd.job import JobContext, run_job
from backupd.log import configure_logging, logs_are_json, redact, say_on_stderr
from backupd.naming import NOT_UTF8_FIX, not_utf8
from backupd.notify import build_chain
from backupd.result import JobResult
from backupd.settings import Settings, load_settings

app = typer.Typer(
    name="backupd",
    help="PostgreSQL backup sidecar: scheduled, verified dumps; retention; offsite copies to S3; "
    "restores; restore drills; with WAL_ARCHIVE=on, base backups, continuous WAL archiving "
    "and point-in-time recovery. `backupd run` is the daemon; every other command is a one-off."
    "\n\nSettings come from environment variables (and ./.env); see docs/configuration.md. "
    "Exit codes: 0 success, 1 the job failed or was cancelled (SIGTERM, SIGHUP or Ctrl-C "
    "cancel a one-off command's job: children stopped, nothing half-done left, the result "
    "reported) or a command's output could not be written, 2 bad usage or configuration.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def fail(message: str, code: int = 2) -> NoReturn:
    say_on_stderr(f"backupd: error: {redact(message)}")
    raise typer.Exit(code)


# NAME is a file backupd wrote, which is always UTF-8: only a mistyped one is not.
NAME_NOT_UTF8_FIX = "backupd's file names are UTF-8: give it as `backupd list` shows it"


def check_utf8(argument: str, *values: str | None, fix: str = NOT_UTF8_FIX) -> None:
    """Exit 2 naming ``argument`` when one of ``values`` is not UTF-8 (naming.not_utf8):
    checked at the edge, before anything encodes it (a length check, a connection)."""
    for value in values:
        problem = None if value is None else not_utf8(value, fix)
        if problem is not None:
            fail(f"{argument}: {problem}")


class LogFormat(StrEnum):
    AUTO = "auto"
    JSON = "json"
    CONSOLE = "console"


@app.callback()
def _options(
    log_format: Annotated[LogFormat | None, typer.Option(
        "--log-format", case_sensitive=False,
        help="Logs on stderr: json (one JSON record per event, with a \"job finished\" record "
        "holding the whole result), console (readable lines) or auto (the daemon: JSON when "
        "stderr is not a terminal; other commands: readable lines and their one-line "
        "summary). Overrides BACKUPD_LOG_FORMAT.")] = None,
    progress: Annotated[bool | None, typer.Option(
        "--progress/--no-progress",
        help="A live progress display on stderr for long work (backup, verify, restore, "
        "drill, recover, S3 transfers): bytes, percentage, rate, time left. Default: shown "
        "when stdout and stderr are both a terminal, never in pipes, logs or cron.")] = None,
) -> None:
    # Off during start-up (backupd.__main__): every command passes here once the CLI is
    # imported, so every job, and the daemon, runs with the collector. Freezing first moves
    # the start-up heap (every module's objects, long-lived, without cycles) out of the
    # collector's reach: enabled over it, its first collection scanned all of it (~23 ms), and
    # the command's own imports, which follow, paid ~19 ms more (issue 18's fifth round).
    gc.freeze()
    gc.enable()
    if log_format is not None:
        os.environ["BACKUPD_LOG_FORMAT"] = log_format.value
    _progress_choice[0] = progress


# --progress/--no-progress; None: decided by whether the output is a terminal.
_progress_choice: list[bool | None] = [None]


def progress_wanted() -> bool:
    if _progress_choice[0] is not None:
        return _progress_choice[0]
    return sys.stdout.isatty() and sys.stderr.isatty()


def paused_progress() -> contextlib.AbstractContextManager[None]:
    """No progress display while a person is asked something (a restore's confirmation)."""
    if not progress_wanted():
        return contextlib.nullcontext()
    from backupd.cli import progress_display

    return progress_display.paused()


def bootstrap(*, daemon: bool = False, runs_job: bool = True) -> Settings:
    """Settings and logging for every command; a bad setting ends here with exit 2.
    ``runs_job``: the command runs its work as a job (``execute``), so until the job starts
    it has changed nothing (False: the daemon, read-only commands)."""
    _job_ahead[:] = [runs_job and not daemon]
    try:
        settings = load_settings()
    except ConfigError as exc:
        configure_logging()
        fail(str(exc))
    configure_logging(settings.log_format, daemon=daemon)
    redact.add(*settings.secret_values())
    return settings


def finish(result: JobResult, *, quiet: bool = False) -> NoReturn:
    if result.exit_code == 2:
        fail(result.error or "bad usage")
    if not quiet and result.ok:
        print(redact(result.summary()), flush=True)
    elif not quiet:
        say_on_stderr(redact(result.summary()))
    raise typer.Exit(result.exit_code)


# The result of the job the command ran (execute): should the command's output then fail to
# be written, the job's own exit code stands (backupd.cli.output).
_job_result: list[JobResult] = []


def job_exit_code() -> int | None:
    """The exit code of the job this command ran, if it ran one."""
    return _job_result[-1].exit_code if _job_result else None


# Whether the command runs a job through execute and has not started it yet (bootstrap,
# execute): only then may an interruption say that nothing was changed.
_job_ahead: list[bool] = [False]


def job_not_started() -> bool:
    """The command runs its work as a job, which has not started yet."""
    return _job_ahead[0]


def execute(job: str, settings: Settings, body: Callable[[JobContext], None]) -> JobResult:
    # The CLI's own summary (or error) line reports the result; with JSON logs
    # (--log-format json) machines get the structured "job finished" record as well.
    chain = build_chain(settings, log_results=logs_are_json(settings.log_format),
                        recorder=ResultRecorder(settings.backup_dir), metrics=False)
    _job_ahead[:] = [False]  # from here on, the job's result says what was done
    cancel = CancelToken()  # the job's own token is its child: its progress is nested here
    # SIGTERM, SIGHUP and Ctrl-C cancel it, as the daemon's shutdown does (cli.signals).
    with cancelled_by_signals(cancel):
        if not progress_wanted():
            result = run_job(job, settings, body, chain, cancel)
        else:
            from backupd.cli import progress_display  # rich, only on a terminal

            with progress_display.shown(cancel.progress, job,
                                        forced=_progress_choice[0] is True):
                result = run_job(job, settings, body, chain, cancel)
        # Recorded before the handlers change: whatever happens from here on, the command
        # knows its job ran and its exit code.
        _job_result.append(result)
    return result




def discard(_: object) -> None:
    return None

"""The ``backupd`` command line: parses arguments, then hands each command to its module.

Each command module registers its commands on ``app`` when imported below; each command
imports its own job module when it runs, so a `backupd list` does not pay for boto3,
slack_sdk or prometheus_client (start-up time and memory are per invocation).
"""

from __future__ import annotations

import gc
import sys

import typer

# typer >= 0.2x vendors click: its usage errors are typer's own classes.
from typer._click.exceptions import NoArgsIsHelpError, UsageError

from backupd import quick_exit
from backupd.cli import archive, dumps, recovery, restores, service  # noqa: F401  -- registers the commands
from backupd.cli.app import app, job_exit_code, job_not_started
from backupd.cli.output import StdoutError, guard_stdout, report
from backupd.cli.signals import for_the_command
from backupd.errors import BackupdError
from backupd.log import redact, say_on_stderr

__all__ = ["app", "main", "run"]


# What typer's command runner returns for a KeyboardInterrupt (Ctrl-C) it caught during the
# command, as click's convention 128 + SIGINT; no command of ours exits with it.
_INTERRUPTED = 130


def main(argv: list[str] | None = None) -> int:
    """Entry point; click's multi-line usage errors become one line and exit 2. Once a job
    ran, SIGTERM, SIGHUP and Ctrl-C no longer stop the command (cli.signals): its result
    was reported, and its output and exit code stand."""
    with for_the_command() as late:
        code = _command(argv)
    if late.signum is not None:
        say_on_stderr(f"backupd: {late.describe()}")
    return code


def _command(argv: list[str] | None) -> int:
    try:
        result = app(args=argv, standalone_mode=False)
    except NoArgsIsHelpError as exc:
        say_on_stderr(exc.ctx.get_help() if exc.ctx else "see backupd --help")
        return 2
    except UsageError as exc:
        hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx else ""
        say_on_stderr(f"backupd: error: {exc.format_message()}{hint}")
        return 2
    except BackupdError as exc:
        say_on_stderr(f"backupd: error: {redact(str(exc))}")
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt, EOFError):
        return _aborted()
    except StdoutError as exc:
        return _output_failed(exc, 0)
    except Exception as exc:
        code = getattr(exc, "exit_code", None)  # typer.Exit and click's Exit
        if isinstance(code, int):
            return code
        raise
    if result == _INTERRUPTED:
        # typer turns a KeyboardInterrupt during the command into this code (typer.core),
        # so the except above only sees one raised outside the command (parsing).
        return _aborted()
    return result if isinstance(result, int) else 0


def _aborted() -> int:
    """Ctrl-C (or Ctrl-D at a prompt) that stopped the command. A job cancels on Ctrl-C and
    reports it, and after it ``main`` only notes signals (cli.signals): this one came before
    the job began, or in a command that runs no job (the daemon outside its own handlers:
    its start-up, its last state write)."""
    if job_not_started():
        say_on_stderr("backupd: aborted; nothing was changed")
        return 1
    # Nothing says what the command had done by then: a daemon may have run for days.
    say_on_stderr("backupd: interrupted")
    return _INTERRUPTED


def _output_failed(exc: StdoutError, code: int) -> int:
    """Report it; the exit code is the job's where the command ran one (its result reached
    the logs and notifiers), else ``code``, and never 0."""
    report(exc)
    job = job_exit_code()
    return job if job is not None else (code or 1)


def run() -> None:
    """Console-script entry point."""
    guard_stdout()
    code = main()
    try:
        sys.stdout.flush()  # here, where a failure is reported like any other
    except StdoutError as exc:
        code = _output_failed(exc, code)
    # Nothing is left to collect: where the teardown is not skipped (quick_exit: the
    # console script), skip at least its final garbage collection over every imported
    # module's objects.
    gc.freeze()
    quick_exit.finished(code)
    sys.exit(code)

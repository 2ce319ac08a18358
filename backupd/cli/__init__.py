"""The ``backupd`` command line: parses arguments, then hands each command to its module.

Each command module registers its commands on ``app`` when imported below; each command
imports its own job module when it runs, so a `backupd list` does not pay for boto3,
slack_sdk or prometheus_client (start-up time and memory are per invocation).
"""

from __future__ import annotations

import contextlib
import errno
import gc
import os
import sys

import typer

# typer >= 0.2x vendors click: its usage errors are typer's own classes.
from typer._click.exceptions import NoArgsIsHelpError, UsageError

from backupd import quick_exit
from backupd.cli import archive, dumps, recovery, restores, service  # noqa: F401  -- registers the commands
from backupd.cli.app import app
from backupd.errors import BackupdError
from backupd.log import redact

__all__ = ["app", "main", "run"]


def main(argv: list[str] | None = None) -> int:
    """Entry point; click's multi-line usage errors become one line and exit 2."""
    try:
        result = app(args=argv, standalone_mode=False)
    except NoArgsIsHelpError as exc:
        typer.echo(exc.ctx.get_help() if exc.ctx else "see backupd --help", err=True)
        return 2
    except UsageError as exc:
        hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx else ""
        typer.echo(f"backupd: error: {exc.format_message()}{hint}", err=True)
        return 2
    except BackupdError as exc:
        typer.echo(f"backupd: error: {redact(str(exc))}", err=True)
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt, EOFError):
        typer.echo("backupd: aborted; nothing was changed", err=True)
        return 1
    except OSError as exc:
        if exc.errno not in OUTPUT_ERRORS or exc.filename is not None:
            raise  # not a write to a stream: a file's error names the file
        return output_failed(exc)
    except Exception as exc:
        code = getattr(exc, "exit_code", None)  # typer.Exit and click's Exit
        if isinstance(code, int):
            return code
        raise
    return result if isinstance(result, int) else 0


# What writing the output can fail with: a full disk or quota behind `> file`, a dead disk. A
# reader that went away (`| head`, EPIPE) ends it quietly with exit 1: click does so for what
# a command writes, run() for what is still buffered at the end.
OUTPUT_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO})


def output_failed(exc: OSError, *, quietly: bool = False) -> int:
    """One line on stderr (none for a reader that went away), and stdout pointed at
    /dev/null: what is still buffered for it can then be flushed at exit without failing a
    second time (Python would print "Exception ignored" and exit 120)."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    if quietly:
        return 1
    with contextlib.suppress(OSError):
        typer.echo(f"backupd: error: cannot write to standard output: {exc.strerror}",
                   err=True)
    return 1


def run() -> None:
    """Console-script entry point."""
    code = main()
    try:
        if sys.stdout is not None:
            sys.stdout.flush()  # here, where a failure is reported like any other
    except OSError as exc:
        if exc.errno != errno.EPIPE and exc.errno not in OUTPUT_ERRORS:
            raise
        failed = output_failed(exc, quietly=exc.errno == errno.EPIPE)
        code = code or failed
    # Nothing is left to collect: where the teardown is not skipped (quick_exit: the
    # console script), skip at least its final garbage collection over every imported
    # module's objects.
    gc.freeze()
    quick_exit.finished(code)
    sys.exit(code)

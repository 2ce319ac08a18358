"""The two kinds of failure a user sees, mapped to exit codes by the CLI."""

from __future__ import annotations


class BackupdError(Exception):
    """Base class; ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class ConfigError(BackupdError):
    """Bad settings or arguments: one line naming what and how to fix it (exit 2)."""

    exit_code = 2


class JobFailed(BackupdError):
    """A job ran and failed (exit 1)."""

    exit_code = 1


class OffsiteError(JobFailed):
    """S3 was unreachable or refused a request; the message is one line, secret-free."""


class Stopped(JobFailed):
    """The watchdog stopped the job (no data moved for too long, or the job timeout)."""

    stderr_tail: str | None = None


class JobSkipped(BackupdError):
    """A job did not run, for a reason that is not a failure of the data (exit 1)."""

    exit_code = 1


class Cancelled(BackupdError):
    """The job was cancelled by a shutdown signal."""

    exit_code = 1


def naming(exc: OSError, path: object) -> OSError:
    """``exc`` naming ``path`` when it names no file (a failed write: ENOSPC, EFBIG)."""
    return exc if exc.filename else OSError(exc.errno, exc.strerror, str(path))


def os_error_text(exc: OSError) -> str:
    """An OSError for people: ``PATH: reason`` (the reason alone when it names no file)."""
    reason = exc.strerror or str(exc)
    return f"{exc.filename}: {reason}" if exc.filename else reason

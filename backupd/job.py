"""Running a job: one context in, one result out, and the result to every notifier.

The CLI and the daemon both run jobs through :func:`run_job`, so a one-off
``backupd backup`` and a scheduled one behave, log and report the same way.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable
from concurrent.futures import CancelledError
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from backupd.cancel import SHUTDOWN, CancelToken
from backupd.errors import BackupdError, Cancelled, ConfigError, JobSkipped, Stopped
from backupd.log import STDERR_LOSS, JobLogFile, get_logger, redact
from backupd.notify.base import NotifierChain
from backupd.progress import Place, Progress
from backupd.result import JobResult, Status
from backupd.settings import Settings
from backupd.storage.base import Repository
from backupd.storage.local import LocalRepository
from backupd.storage.repositories import Repositories
from backupd.watchdog import ServerView, Watchdog, WatchdogConfig


def repositories_for(settings: Settings) -> Repositories:
    """The repositories a job works on, built from the settings here, at the edge."""

    def offsite() -> Repository:
        from backupd.storage.s3 import S3Config, S3Repository  # boto3 only when S3 is set

        assert settings.s3_bucket
        kms = settings.s3_sse_kms_key_id
        return S3Repository(S3Config(
            bucket=settings.s3_bucket, prefix=settings.s3_prefix,
            endpoint_url=settings.s3_endpoint_url, region=settings.s3_region,
            sse=settings.s3_sse, sse_kms_key_id=kms.get_secret_value() if kms else None,
            storage_class=settings.s3_storage_class,
            timeout_seconds=settings.s3_timeout_seconds))

    return Repositories(LocalRepository(settings.backup_dir),
                        offsite if settings.s3_bucket else None)


def _server_view(settings: Settings, places: tuple[Place, ...] = ()) -> ServerView:
    # psycopg only once a job has stalled: a command that never connects (verify, list)
    # does not import it (~0.1 s of its start-up).
    try:
        from backupd.postgres.waits import job_view
    except Exception as exc:  # the verdict names it, instead of "did not say in time"
        return ServerView("", f"the server could not be asked what the job waits on ({exc})")
    return job_view(settings, places)


def watchdog_config(settings: Settings) -> WatchdogConfig:
    return WatchdogConfig(stall_seconds=settings.stall_seconds,
                          job_timeout_seconds=settings.job_timeout_seconds)


@dataclass
class JobContext:
    settings: Settings
    result: JobResult
    cancel: CancelToken = field(default_factory=CancelToken)
    # Injected (tests, the daemon); by default built from the settings.
    repositories: Repositories | None = None
    # The chain this job's result goes to: a backup run of several databases delivers one
    # result per database through it (commands.backup_run), then its own summary.
    chain: NotifierChain | None = None

    def __post_init__(self) -> None:
        if self.repositories is None:
            self.repositories = repositories_for(self.settings)

    @property
    def repos(self) -> Repositories:
        assert self.repositories is not None
        return self.repositories

    @property
    def progress(self) -> Progress:
        """What this job's streams have moved (displays, the stall watchdog)."""
        return self.cancel.progress

    @property
    def store(self) -> LocalRepository:
        return self.repos.local

    def say(self, message: str, **fields: Any) -> None:
        """A progress line for people (the job's log file) and machines (structlog)."""
        JobLogFile(self.settings.backup_dir, self.result.job).write(message)
        get_logger(job=self.result.job).info(message, **fields)

    def warn(self, message: str) -> None:
        self.result.warnings.append(message)
        get_logger(job=self.result.job).warning(message)


JobBody = Callable[[JobContext], None]


def run_job(
    job: str,
    settings: Settings,
    body: JobBody,
    chain: NotifierChain,
    cancel: CancelToken | None = None,
    repositories: Repositories | None = None,
    *,
    scheduled_for: datetime | None = None,
    announce: bool = True,
) -> JobResult:
    """Run ``body``; whatever happens, finish the result and deliver it.

    ``scheduled_for``: the schedule slot a daemon run stands for. ``announce``: tell the
    chain the job started (False for the per-database jobs inside a run, whose run
    already did)."""
    result = JobResult(job=job, database=settings.postgres_db, scheduled_for=scheduled_for)
    # A token of its own: the watchdog may cancel this job without cancelling the one it
    # runs in (each database of a backup run), while a shutdown still reaches it.
    token = cancel.child() if cancel is not None else CancelToken()
    context = JobContext(settings, result, token, repositories, chain)
    if announce:
        chain.started(result)
    try:
        with Watchdog(token, watchdog_config(settings),
                      lambda: _server_view(settings, token.progress.places())):
            _body_or_verdict(body, context)
        result.finish(Status.SUCCESS, exit_code=0)
    except Cancelled as exc:
        result.finish(Status.CANCELLED, redact(str(exc)))
    except JobSkipped as exc:
        result.finish(Status.SKIPPED, redact(str(exc)))
    except ConfigError as exc:
        result.finish(Status.FAILED, redact(str(exc)), exit_code=2)
    except BackupdError as exc:
        result.stderr_tail = result.stderr_tail or getattr(exc, "stderr_tail", None)
        result.finish(Status.FAILED, redact(str(exc)), exit_code=exc.exit_code)
    except Exception as exc:  # an unforeseen bug is still a reported failure, never silence
        get_logger(job=job).exception("unexpected error")
        result.finish(Status.FAILED, redact(f"internal error: {type(exc).__name__}: {exc}"))
    except KeyboardInterrupt:
        # Ctrl-C where a one-off command lets it through (at a question, cli.signals): the
        # stages' cleanup ran as it passed; the job ends cancelled and reported like any.
        result.finish(Status.CANCELLED, "interrupted (Ctrl-C)")
    finally:
        token.release()
    lost = STDERR_LOSS.news()
    if lost is not None:
        result.warnings.append(lost)
    chain.deliver(result)
    return result


def _body_or_verdict(body: JobBody, context: JobContext) -> None:
    try:
        body(context)
    except Exception as exc:
        token = context.cancel
        if token.failure and token.reason:
            # The watchdog stopped the job: whatever the stopped stage raised, this is why.
            stopped = Stopped(token.reason)
            stopped.stderr_tail = getattr(exc, "stderr_tail", None)
            raise stopped from exc
        if token.cancelled and _a_cancel_causes(exc):
            # A cancel (a shutdown, a signal) stopped the job where it was: a connection it
            # severed, a child it stopped, made the stage fail with whatever it hit; that is
            # how the job ended, not why. Logged with its traceback all the same: the same
            # types also come from real faults that the cancel happened to overtake.
            get_logger(job=context.result.job).warning(
                "the cancel interrupted the job", error=f"{type(exc).__name__}: {exc}",
                exc_info=exc)
            raise Cancelled(token.reason or SHUTDOWN) from exc
        raise


def _a_cancel_causes(exc: Exception) -> bool:
    """Whether ``exc`` is of a kind a cancel makes a stage raise. By kind, not by moment: an
    exception does not say when it was raised, and a bug raised before the cancel may still
    be unwinding (a slow cleanup) when the token is cancelled. A cancel acts only by
    severing a connection (psycopg), stopping a child (a broken pipe; its exit is our own
    verdict) and cancelling an S3 transfer. A verdict of our own (BackupdError: a failure
    that names what to do, a skip) is kept: it may have come first, and says more."""
    if isinstance(exc, BrokenPipeError | ConnectionError | CancelledError):
        return True
    if isinstance(exc, OSError) and exc.errno == errno.EPIPE:
        return True
    # psycopg is imported only by the jobs that connect: if it is not, exc is not its.
    psycopg = sys.modules.get("psycopg")
    return psycopg is not None and isinstance(exc, psycopg.OperationalError)


def skipped_result(job: str, settings: Settings, status: Status, reason: str) -> JobResult:
    """A result for a run that never started (missed by the scheduler, ...)."""
    result = JobResult(job=job, database=settings.postgres_db)
    result.finish(status, reason)
    return result

"""The jobs the daemon schedules, and what each one runs.

The daemon package only schedules and reports; the commands it runs are named here, so
the dependency goes one way: commands -> daemon.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import datetime

from backupd.commands import backup_run
from backupd.commands import basebackup as basebackup_cmd
from backupd.commands import drill as drill_cmd
from backupd.commands import prune as prune_cmd
from backupd.commands import verify as verify_cmd
from backupd.daemon.scheduler import JobSpec, ScheduledJob, SlotBody, load_schedules
from backupd.errors import JobFailed
from backupd.job import JobContext
from backupd.postgres.connection import advisory_lock
from backupd.postgres.databases import maintenance_connection
from backupd.settings import Settings


def job_table() -> list[JobSpec]:
    """Every job the daemon can schedule. Disabled ones are filtered by the caller."""
    return [
        # The backup body skips if the slot's backup already exists: replicas that
        # fire the same slot produce exactly one backup between them.
        JobSpec("backup", "backup_schedule",
                lambda ctx, slot: backup_run.run(ctx, apply_retention=True, not_before=slot)),
        JobSpec("verify", "verify_schedule",
                _locked("verify", lambda ctx: _discard(verify_cmd.run(ctx, [])), needs_db=False)),
        JobSpec("prune", "retention_schedule",
                _locked("prune", lambda ctx: prune_cmd.run(ctx), needs_db=False)),
        # Its own advisory lock (commands.basebackup) keeps replicas from taking two at once.
        JobSpec("basebackup", "basebackup_schedule",
                lambda ctx, _slot: _discard(basebackup_cmd.take(ctx))),
        JobSpec("drill", "drill_schedule",
                _locked("drill", lambda ctx: drill_cmd.run(ctx), needs_db=True)),
    ]


def scheduled_jobs(settings: Settings) -> list[ScheduledJob]:
    """The enabled jobs with their parsed schedules; a bad one is a ConfigError."""
    return load_schedules(settings, job_table())


def _locked(purpose: str, body: Callable[[JobContext], None], *, needs_db: bool) -> SlotBody:
    """Run ``body`` under an advisory lock of its own, so replicas never run it twice at once.

    Jobs that only read DB_BACKUP_DIR (verify, prune) still run, with a warning, when
    the database is unreachable: that is when a good backup matters most.
    """
    def run(ctx: JobContext, _slot: datetime | None) -> None:
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(scheduled_lock(ctx.settings, purpose))
            except JobFailed as exc:
                if needs_db:
                    raise
                ctx.warn(f"{exc}; running {purpose} without the advisory lock")
            body(ctx)

    return run


def scheduled_lock(settings: Settings, purpose: str) -> contextlib.AbstractContextManager[None]:
    """The advisory lock every replica's scheduled ``purpose`` job runs under; JobSkipped
    while another holds it, JobFailed without a database."""
    # Several databases: POSTGRES_DB ("app,billing", "*") is no database to connect to.
    cluster_wide = maintenance_connection if settings.database_selection.several else None
    return advisory_lock(settings, f"scheduled-{purpose}", open_connection=cluster_wide)


def _discard(_: object) -> None:
    return None

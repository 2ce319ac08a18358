"""Retention of base backups and of the WAL they need, locally and offsite, with one plan
(backupd.archive.retention). Run by ``backupd prune``, after each base backup (without
RETENTION_SCHEDULE) and by the daemon's retention job."""

from __future__ import annotations

from datetime import UTC, datetime

from backupd.archive.retention import plan_base_retention
from backupd.errors import JobFailed, OffsiteError
from backupd.job import JobContext
from backupd.naming import BASE_DATABASE, BASE_KIND
from backupd.storage.base import Repository


def sweep(ctx: JobContext, repository: Repository, *, dry_run: bool = False) -> list[str]:
    """Apply base-backup retention to one repository; the names deleted (or that would be)."""
    settings = ctx.settings
    entries = repository.list_backups(BASE_DATABASE, BASE_KIND)
    plan = plan_base_retention(entries, settings.basebackup_keep,
                               settings.basebackup_max_age_days, datetime.now(UTC))
    deleted: list[str] = []
    for entry in plan.delete:
        if dry_run:
            ctx.say(f"would delete base backup {entry.name} from {repository.description}")
        else:
            repository.delete(entry.name)
            ctx.say(f"deleted base backup {entry.name} from {repository.description} (not "
                    f"needed: BASEBACKUP_KEEP={settings.basebackup_keep}"
                    + (f", BASEBACKUP_MAX_AGE_DAYS={settings.basebackup_max_age_days:g}"
                       if settings.basebackup_max_age_days is not None else "") + ")")
        deleted.append(entry.name)
    return deleted


def apply(ctx: JobContext, offsite: Repository | None, *, dry_run: bool = False,
          strict: bool = False) -> list[str]:
    """Local first, then offsite (the same plan on S3's own listing). With ``strict`` an
    offsite failure fails the job, else it warns (a base backup must not fail for it)."""
    names = sweep(ctx, ctx.store, dry_run=dry_run)
    if offsite is not None:
        try:
            names += [offsite.location(name) for name in sweep(ctx, offsite, dry_run=dry_run)]
        except OffsiteError as exc:
            if strict:
                raise JobFailed(f"archive retention on {offsite.description} failed: "
                                f"{exc}") from None
            ctx.warn(f"archive retention on {offsite.description} skipped: {exc}")
    if not dry_run:
        ctx.result.deleted += names
    return names

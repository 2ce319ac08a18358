"""Retention of base backups and of the WAL they need, locally and offsite, with one plan
(backupd.archive.retention). Run by ``backupd prune``, after each base backup (without
RETENTION_SCHEDULE) and by the daemon's retention job."""

from __future__ import annotations

from datetime import UTC, datetime

from backupd.archive.continuity import TimelineSpan, path_to_newest
from backupd.archive.retention import BaseRetentionPlan, plan_base_retention, wal_to_delete
from backupd.archive.walstore import (
    WAL_SUBDIRECTORY,
    ArchivedWal,
    WalArchive,
    local_wal_repository,
    offsite_wal_repository,
)
from backupd.commands.selection import is_local
from backupd.configs import age_key_files
from backupd.errors import JobFailed, OffsiteError
from backupd.job import JobContext
from backupd.naming import BASE_DATABASE, BASE_KIND
from backupd.outcomes import PruneDecision, PruneOutcome
from backupd.settings import Settings
from backupd.storage.base import Repository


def describe_policy(settings: Settings) -> str:
    """The base backups' rules in one phrase, for prune's "nothing to delete" line."""
    text = f"the newest {settings.basebackup_keep} verified (BASEBACKUP_KEEP)"
    if settings.basebackup_max_age_days is not None:
        text += (f" and those younger than {settings.basebackup_max_age_days:g} days "
                 "(BASEBACKUP_MAX_AGE_DAYS)")
    return text + " kept, with the WAL they need"


def sweep(ctx: JobContext, repository: Repository, wal: WalArchive, *, dry_run: bool = False,
          wal_uploaded_only: bool = False) -> list[str]:
    """Apply retention to one repository's base backups and to the WAL archive beside it;
    the names deleted (or that would be). ``wal_uploaded_only``: keep WAL not yet offsite."""
    settings = ctx.settings
    entries = repository.list_backups(BASE_DATABASE, BASE_KIND)
    files = wal.segments()  # once: on S3 a listing reads every WAL file's manifest
    now = datetime.now(UTC)
    plan = plan_base_retention(entries, settings.basebackup_keep,
                               settings.basebackup_max_age_days, now,
                               spans=_path(ctx, wal, files))
    _record(ctx, repository, plan, now, dry_run=dry_run)
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
        deleted.append(entry.name if wal_uploaded_only or is_local(repository)
                       else repository.location(entry.name))
    return deleted + _sweep_wal(ctx, wal, files, plan, dry_run=dry_run,
                                uploaded_only=wal_uploaded_only)


def _record(ctx: JobContext, repository: Repository, plan: BaseRetentionPlan, now: datetime,
            *, dry_run: bool) -> None:
    """Per base backup, why it stays (or that it goes), in the prune job's outcome, as for
    dumps; a dry run also says it."""
    outcome = ctx.result.outcome
    if not isinstance(outcome, PruneOutcome):
        return  # the sweep after a base backup: its result is the base backup's
    for entry in plan.keep:
        reason = plan.reasons.get(entry.name) or (
            "dated in the future (a wrong clock)" if entry.from_the_future(now)
            else "no verified base backup counts yet: none is deleted")
        outcome.decisions.append(PruneDecision(name=entry.name, kept=True, reasons=[reason],
                                               repository=repository.description))
        if dry_run:
            ctx.say(f"keep base backup {entry.name} in {repository.description}: {reason}")
    outcome.decisions += [PruneDecision(name=entry.name, repository=repository.description,
                                        kept=False) for entry in plan.delete]


def _path(ctx: JobContext, wal: WalArchive,
          files: list[ArchivedWal]) -> list[TimelineSpan] | None:
    """The path to the archive's newest timeline, so base backups off it (after a
    point-in-time recovery forked a new timeline) do not count toward BASEBACKUP_KEEP."""
    try:
        return path_to_newest(files, wal.fetch_archived)
    except JobFailed as exc:
        ctx.warn(f"retention on {wal.repository.description}: {exc}; every base backup "
                 "counts toward BASEBACKUP_KEEP")
        return None


def _sweep_wal(ctx: JobContext, wal: WalArchive, listed: list[ArchivedWal],
               plan: BaseRetentionPlan, *, dry_run: bool, uploaded_only: bool) -> list[str]:
    """The WAL wholly before the oldest kept base backup's start, oldest first (a crash part
    way leaves the archive one unbroken run). Files of pg_receivewal's spool are never
    touched; with an offsite archive, a segment is deleted here only once it is there."""
    kept = [e.manifest.base_backup for e in plan.keep
            if e.manifest is not None and e.manifest.base_backup is not None]
    if plan.wal_needed_from is None or not kept:
        return []
    files = {f.name: f for f in listed if f.artifact is not None}
    doomed = wal_to_delete(((f.name, f.segno, f.history) for f in files.values()),
                           plan.wal_needed_from, kept[0].wal_segment_size)
    deleted: list[str] = []
    for name in doomed:
        artifact = files[name].artifact
        assert artifact is not None
        if uploaded_only and not files[name].uploaded:
            continue
        if not dry_run:
            wal.delete(artifact)
        deleted.append(artifact)
    if deleted:
        ctx.say(f"{'would delete' if dry_run else 'deleted'} {len(deleted)} WAL files from "
                f"{wal.repository.description} ({deleted[0]} .. {deleted[-1]}): before the "
                "oldest kept base backup's start")
    local = is_local(wal.repository)
    return [f"{WAL_SUBDIRECTORY}/{name}" if local else wal.repository.location(name)
            for name in deleted]


def apply(ctx: JobContext, offsite: Repository | None, *, dry_run: bool = False,
          strict: bool = False) -> list[str]:
    """Local first, then offsite (the same plan on S3's own listing). With ``strict`` an
    offsite failure fails the job, else it warns (a base backup must not fail for it)."""
    keys = age_key_files(ctx.settings)
    local_wal = WalArchive(local_wal_repository(ctx.store), keys)
    names = sweep(ctx, ctx.store, local_wal, dry_run=dry_run,
                  wal_uploaded_only=offsite is not None)
    if offsite is not None:
        try:
            # The identities the local sweep loaded (each archive's history file may be
            # encrypted): DB_BACKUP_AGE_IDENTITY_FILE is read once for both.
            offsite_wal = WalArchive(offsite_wal_repository(offsite), keys,
                                     identities=local_wal.identities)
            names += sweep(ctx, offsite, offsite_wal, dry_run=dry_run)
        except OffsiteError as exc:
            if strict:
                raise JobFailed(f"archive retention on {offsite.description} failed: "
                                f"{exc}") from None
            ctx.warn(f"archive retention on {offsite.description} skipped: {exc}")
    if not dry_run:
        ctx.result.deleted += names
    return names

"""Offsite copies as jobs: replicate verified local backups to the offsite repository.

The local backup is always the primary copy. An upload that fails never fails or
removes the local backup: the backup stays verified on disk, its local manifest
records ``upload_error`` (``uploaded_at`` unset = pending), the job result says
``offsite = "pending: <reason>"``, and every later backup run (or ``backupd upload``)
retries pending uploads until they succeed.
"""

from __future__ import annotations

from backupd.commands.selection import artifact_sets
from backupd.errors import Cancelled, JobFailed, OffsiteError
from backupd.job import JobContext
from backupd.naming import DUMP_KIND
from backupd.outcomes import UploadOutcome, UploadReport
from backupd.result import human_bytes
from backupd.storage import replication
from backupd.storage.base import Repository


def upload_pending(ctx: JobContext, target: Repository, first: str | None = None, *,
                   database: str | None = None, kind: str = DUMP_KIND) -> UploadReport:
    """Replicate ``first`` (the backup just taken), then every other pending backup, oldest
    first. The first failure ends the pass (S3 is most likely down); what is left stays
    pending. Sets ``ctx.result.offsite`` and, on failure, a warning; never raises OffsiteError.
    """
    source = ctx.store
    pending = replication.pending(source.list_backups(database or ctx.settings.postgres_db,
                                                      kind))
    # The newest backup first: it is the one a disaster recovery needs.
    pending.sort(key=lambda e: e.name != first)
    uploaded: list[str] = []
    error: str | None = None
    left: list[str] = []
    for index, entry in enumerate(pending):
        try:
            ctx.cancel.raise_if_cancelled()
            replication.replicate(source, target, entry, recheck=entry.name != first,
                                  scratch=source.directory, cancel=ctx.cancel)
        except (OffsiteError, Cancelled) as exc:
            # A shutdown mid-upload does not undo the verified backup: it stays pending.
            error = str(exc) if isinstance(exc, OffsiteError) else "interrupted by shutdown"
            left = [e.name for e in pending[index:]]
            break
        uploaded.append(entry.name)
        ctx.say(f"uploaded {entry.name} ({human_bytes(entry.size)}) to {target.description}")
    report = UploadReport(target=target.description, uploaded=uploaded, pending=left,
                          error=error)
    if error is None:
        ctx.result.offsite = "uploaded"
        return report
    count = f"{len(left)} backup{'s' if len(left) != 1 else ''}"
    ctx.result.offsite = f"pending: {count} not uploaded: {error}"
    ctx.warn(f"offsite copy failed ({error}); {count} kept locally, verified, and pending "
             "upload: the next run retries")
    return report


def run(ctx: JobContext) -> None:
    """``backupd upload`` (and the daemon): push pending backups now; fails if any stay pending."""
    target = ctx.repos.require_offsite("upload")
    ctx.store.prepare()
    sets = [(database, kind) for database, kind in artifact_sets(ctx.settings, ctx.store)
            if replication.pending(ctx.store.list_backups(database, kind))]
    if not sets:
        ctx.result.offsite = "uploaded"
        ctx.say(f"no pending uploads; every verified backup is in {target.description}")
        return
    report = UploadReport(target=target.description)
    for database, kind in sets:
        part = upload_pending(ctx, target, database=database, kind=kind)
        report.uploaded += part.uploaded
        report.pending += part.pending
        if part.error is not None:
            report.error = part.error
            break
    ctx.result.outcome = UploadOutcome(upload=report)
    if report.error is not None:
        raise JobFailed(f"offsite upload failed: {report.error}")

"""``backupd verify``: prove backup files intact, and record what was proven.

Written once for every repository: ``--remote`` only chooses the offsite one (whose
copies are downloaded, then verified exactly like local files).
"""

from __future__ import annotations

from datetime import UTC, datetime

from backupd.archive.basebackups import verify_base_backup
from backupd.commands import selection
from backupd.configs import age_key_files
from backupd.errors import JobFailed
from backupd.job import JobContext
from backupd.manifest import Manifest
from backupd.naming import BASE_KIND
from backupd.outcomes import FileReport, VerifyOutcome
from backupd.pipeline.encrypt import load_identities
from backupd.pipeline.verification import Identities, VerifyReport, verify_file
from backupd.storage.base import BackupEntry, Repository


def verify_entry(ctx: JobContext, repository: Repository, entry: BackupEntry,
                 identities: Identities = None, *, record: bool = True) -> VerifyReport:
    """Verify one backup and, when it has a manifest, write down the outcome there."""
    if not entry.committed:
        report = VerifyReport(entry.name)
        report.add("manifest", False, "no manifest: an incomplete upload, never restored")
        return report
    if entry.kind == BASE_KIND:
        # Streamed from the repository itself, checked against PostgreSQL's backup_manifest.
        report = verify_base_backup(repository, entry, identities, ctx.cancel)
    else:
        with selection.local_file(ctx, repository, entry) as path:
            report = verify_file(path, entry.parsed, entry.manifest, entry.manifest_error,
                                 identities, progress=ctx.progress)
    # A wrong age key says nothing about the file: such an outcome is never recorded.
    if record and entry.manifest is not None and not report.inconclusive:
        record_outcome(ctx, repository, entry.manifest, report)
    return report


def with_outcome(manifest: Manifest, report: VerifyReport) -> Manifest:
    manifest.verified = report.ok
    manifest.verified_at = datetime.now(UTC)
    manifest.verify_error = report.problem
    return manifest


def record_outcome(ctx: JobContext, repository: Repository, manifest: Manifest,
                   report: VerifyReport) -> None:
    """So retention never counts a bad copy as good; skipped with a note where the
    repository cannot be written."""
    selection.record(ctx, repository, with_outcome(manifest, report), "the verify outcome")


def select(ctx: JobContext, repository: Repository, names: list[str],
           verify_all: bool) -> list[BackupEntry]:
    """NAMEs; else the newest DB_BACKUP_KEEP_MIN committed backups (or all with ``--all``),
    plus every incomplete upload (data without its manifest), which fails."""
    if names and not verify_all:
        return [selection.named(repository, name) for name in names]
    chosen: list[BackupEntry] = []
    incomplete: list[BackupEntry] = []
    for database, kind in selection.artifact_sets(ctx.settings, ctx.store):
        entries = repository.scan(database, kind)
        committed = [e for e in entries if e.committed]
        chosen += committed if verify_all else committed[: ctx.settings.keep_min]
        incomplete += [e for e in entries if not e.committed]
    return chosen + incomplete


def run(ctx: JobContext, names: list[str], verify_all: bool = False,
        remote: bool = False) -> list[VerifyReport]:
    repository = ctx.repos.choose(remote, "--remote")
    entries = select(ctx, repository, names, verify_all)
    if not entries:
        raise JobFailed(f"no backups of {ctx.settings.postgres_db!r} in "
                        f"{repository.description}")
    selection.warn_future(ctx, entries)
    # Decrypts .age files where an identity is set.
    identities = load_identities(age_key_files(ctx.settings))
    local = selection.is_local(repository)
    reports = []
    for entry in entries:
        ctx.cancel.raise_if_cancelled()
        report = verify_entry(ctx, repository, entry, identities)
        where = entry.name if local else repository.location(entry.name)
        ctx.say(f"{'OK' if report.ok else 'FAILED'} {where}"
                + ("" if report.ok else f": {report.problem}"))
        reports.append(report)
    ctx.result.outcome = VerifyOutcome(reports=[FileReport.of(r) for r in reports])
    failed = [r for r in reports if not r.ok]
    if failed:
        what = "backups" if local else "S3 backups"
        raise JobFailed(f"{len(failed)} of {len(reports)} {what} failed verification: "
                        + ", ".join(r.name for r in failed))
    return reports

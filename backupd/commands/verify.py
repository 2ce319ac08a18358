"""``backupd verify``: prove backup files intact, and record what was proven."""

from __future__ import annotations

from datetime import UTC, datetime

from backupd import offsite
from backupd.commands.args import named_backup
from backupd.errors import JobFailed
from backupd.job import JobContext
from backupd.manifest import Manifest
from backupd.outcomes import FileReport, VerifyOutcome
from backupd.storage.base import BackupEntry
from backupd.storage.local import LocalStore
from backupd.verification import (
    ContentChecker,
    VerifyReport,
    content_checker_for,
    verify_file,
)


def verify_entry(store: LocalStore, entry: BackupEntry, record: bool = True,
                 content_checker: ContentChecker | None = None) -> VerifyReport:
    """Verify one local backup and, when it has a manifest, write down the outcome."""
    report = verify_file(store.resolve(entry.name), entry.parsed, entry.manifest,
                         entry.manifest_error, content_checker)
    if record and entry.manifest is not None and not report.inconclusive:
        record_outcome(store, entry.manifest, report)
    return report


def record_outcome(store: LocalStore, manifest: Manifest, report: VerifyReport) -> None:
    manifest.verified = report.ok
    manifest.verified_at = datetime.now(UTC)
    manifest.verify_error = report.problem
    store.write_manifest(manifest)


def select(ctx: JobContext, names: list[str], verify_all: bool) -> list[BackupEntry]:
    store = ctx.store
    if names and not verify_all:
        return [named_backup(store, name) for name in names]
    entries = store.list_backups(ctx.settings.postgres_db)
    return entries if verify_all else entries[: ctx.settings.keep_min]


def run(ctx: JobContext, names: list[str], verify_all: bool = False,
        remote: bool = False) -> list[VerifyReport]:
    if remote:
        return offsite.verify_remote(ctx, names, verify_all)  # the S3 copies (issue 4)
    entries = select(ctx, names, verify_all)
    if not entries:
        raise JobFailed(f"no backups of {ctx.settings.postgres_db!r} in {ctx.store.description}")
    reports = []
    checker = content_checker_for(ctx.settings)  # decrypts .age files where an identity is set
    for entry in entries:
        ctx.cancel.raise_if_cancelled()
        report = verify_entry(ctx.store, entry, content_checker=checker)
        ctx.say(f"{'OK' if report.ok else 'FAILED'} {entry.name}"
                + ("" if report.ok else f": {report.problem}"))
        reports.append(report)
    ctx.result.outcome = VerifyOutcome(reports=[FileReport.of(r) for r in reports])
    failed = [r for r in reports if not r.ok]
    if failed:
        raise JobFailed(f"{len(failed)} of {len(reports)} backups failed verification: "
                        + ", ".join(r.name for r in failed))
    return reports

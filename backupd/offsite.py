"""Offsite copies: upload verified backups to S3, retry pending ones, restore and verify from S3.

The local backup is always the primary copy. An upload that fails never fails or
removes the local backup: the backup stays verified on disk, its local manifest
records ``upload_error`` (``uploaded_at`` unset = pending), the job result says
``offsite = "pending: <reason>"``, and every later backup run (or ``backupd upload``)
retries pending uploads until they succeed.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
)

from backupd.commands import prune
from backupd.errors import Cancelled, ConfigError, JobFailed, OffsiteError
from backupd.job import JobContext
from backupd.naming import parse_backup_name, partial_name
from backupd.outcomes import FileReport, UploadOutcome, UploadReport, VerifyOutcome
from backupd.pipeline.checksum import sha256_of
from backupd.result import human_bytes
from backupd.settings import Settings
from backupd.storage.base import BackupEntry
from backupd.storage.local import LocalStore

if TYPE_CHECKING:
    from backupd.storage.s3 import S3Store
from backupd.verification import VerifyReport, content_checker_for, verify_file

T = TypeVar("T")
# Whole-operation retries on top of botocore's per-request ones: a multipart upload that
# failed as a whole is restarted at most this often within one run.
MAX_ATTEMPTS = 3
# Room left on DB_BACKUP_DIR's disk after a download, so a restore never fills it.
DOWNLOAD_HEADROOM_BYTES = 64 * 1024 * 1024


def configured_store(settings: Settings) -> S3Store | None:
    """The S3 store when DB_BACKUP_S3_BUCKET is set (bad S3 settings: ConfigError), else None."""
    if not settings.s3_bucket:
        return None
    from backupd.storage.s3 import S3Store  # boto3 is loaded only when S3 is configured

    return S3Store(settings)


def require_store(settings: Settings, option: str) -> S3Store:
    store = configured_store(settings)
    if store is None:
        raise ConfigError(f"DB_BACKUP_S3_BUCKET: not set; {option} needs the bucket's settings "
                          "(DB_BACKUP_S3_BUCKET, DB_BACKUP_S3_PREFIX, S3_* and AWS credentials)")
    return store


# --- state, for status and metrics ------------------------------------------------------
def pending_uploads(store: LocalStore, database: str) -> list[BackupEntry]:
    """Verified local backups not yet committed to S3, oldest first.

    Only meaningful when S3 is configured; backups from before S3 was enabled count
    as pending too, and are uploaded by the next run.
    """
    return [e for e in reversed(store.list_backups(database)) if e.awaiting_upload]


# --- uploading ---------------------------------------------------------------------------
def with_retries(ctx: JobContext, action: Callable[[], T]) -> T:
    """Run ``action``, retrying OffsiteError with exponential backoff, bounded in time.

    The budget (twice S3_TIMEOUT_SECONDS after the first attempt began) keeps a run
    from hanging on an S3 outage; the next run tries again.
    """
    budget = 2 * ctx.settings.s3_timeout_seconds

    def sleep(seconds: float) -> None:
        ctx.cancel.wait(seconds)
        ctx.cancel.raise_if_cancelled()

    retrying = Retrying(
        stop=stop_after_attempt(MAX_ATTEMPTS) | stop_after_delay(budget),
        wait=wait_exponential(multiplier=1, min=1, max=30),
        retry=retry_if_exception_type(OffsiteError),
        sleep=sleep,
        reraise=True,
    )
    return retrying(action)


def upload_entry(ctx: JobContext, s3: S3Store, entry: BackupEntry, *, recheck: bool) -> None:
    """Upload one verified local backup and record the outcome in its local manifest."""
    store = ctx.store
    manifest = entry.manifest
    assert manifest is not None
    path = store.resolve(entry.name)
    if recheck:
        # A pending backup may have sat on disk for days: never ship bytes that no longer
        # match what was verified.
        digest, _ = sha256_of(str(path))
        if digest != manifest.sha256:
            raise OffsiteError(f"{entry.name} no longer matches its checksum on disk; "
                               "not uploaded (run `backupd verify`)")
    committed = manifest.model_copy(update={"uploaded_at": datetime.now(UTC),
                                            "upload_error": None})
    try:
        with_retries(ctx, lambda: s3.upload(path, committed, ctx.cancel))
    except OffsiteError as exc:
        manifest.upload_error = str(exc)
        store.write_manifest(manifest)
        raise
    store.write_manifest(committed)
    ctx.say(f"uploaded {entry.name} ({human_bytes(entry.size)}) to {s3.description}")


def upload_pending(ctx: JobContext, s3: S3Store, first: str | None = None) -> UploadReport:
    """Upload ``first`` (the backup just taken), then every other pending backup, oldest first.

    The first failure ends the pass (S3 is most likely down); what is left stays pending.
    Sets ``ctx.result.offsite`` and, on failure, a warning; never raises OffsiteError.
    """
    pending = pending_uploads(ctx.store, ctx.settings.postgres_db)
    # The newest backup first: it is the one a disaster recovery needs.
    pending.sort(key=lambda e: e.name != first)
    uploaded: list[str] = []
    error: str | None = None
    for index, entry in enumerate(pending):
        try:
            ctx.cancel.raise_if_cancelled()
            upload_entry(ctx, s3, entry, recheck=entry.name != first)
        except (OffsiteError, Cancelled) as exc:
            # A shutdown mid-upload does not undo the verified backup: it stays pending.
            error = str(exc) if isinstance(exc, OffsiteError) else "interrupted by shutdown"
            left = [e.name for e in pending[index:]]
            break
        uploaded.append(entry.name)
    else:
        left = []
    report = UploadReport(target=s3.description, uploaded=uploaded, pending=left, error=error)
    if error is None:
        ctx.result.offsite = "uploaded"
        return report
    count = f"{len(left)} backup{'s' if len(left) != 1 else ''}"
    ctx.result.offsite = f"pending: {count} not uploaded: {error}"
    ctx.warn(f"offsite copy failed ({error}); {count} kept locally, verified, and pending "
             "upload: the next run retries")
    return report


def after_backup(ctx: JobContext, s3: S3Store | None, name: str) -> UploadReport | None:
    """Called once the new local backup is written and verified."""
    return upload_pending(ctx, s3, first=name) if s3 is not None else None


def run_upload_job(ctx: JobContext) -> None:
    """``backupd upload`` (and the daemon): push pending backups now; fails if any stay pending."""
    s3 = require_store(ctx.settings, "upload")
    ctx.store.prepare()
    if not pending_uploads(ctx.store, ctx.settings.postgres_db):
        ctx.result.offsite = "uploaded"
        ctx.say(f"no pending uploads; every verified backup is in {s3.description}")
        return
    report = upload_pending(ctx, s3)
    ctx.result.outcome = UploadOutcome(upload=report)
    if ctx.result.offsite != "uploaded":
        raise JobFailed(f"offsite upload failed: {report.error}")


# --- retention ---------------------------------------------------------------------------
def sweep_remote(ctx: JobContext, s3: S3Store | None, *, dry_run: bool = False,
                 strict: bool = False) -> list[str]:
    """Retention on S3 with the local policy; returns the s3:// URIs deleted.

    Checksums are not re-downloaded (that would cost the egress of keep-min backups
    every run): a copy counts as good per its manifest and its size in S3; ``verify
    --remote`` proves the bytes. With ``strict`` an S3 failure raises, else it warns.
    """
    if s3 is None:
        return []
    try:
        names = prune.sweep(ctx, s3, dry_run=dry_run, recheck=False)
    except OffsiteError as exc:
        if strict:
            raise JobFailed(f"retention on {s3.description} failed: {exc}") from None
        ctx.warn(f"retention on {s3.description} skipped: {exc}")
        return []
    return [s3.uri(name) for name in names]


# --- downloading: restore and verify ------------------------------------------------------
@contextlib.contextmanager
def downloaded(ctx: JobContext, s3: S3Store, entry: BackupEntry) -> Iterator[Path]:
    """Download a backup to ``DB_BACKUP_DIR/.<name>.download.partial``; removed afterwards.

    The dot-name ending in ``.partial`` is never taken for a backup, and start-up
    cleanup removes it if the process dies mid-way.
    """
    store = ctx.store
    store.prepare()
    free = shutil.disk_usage(store.directory).free
    if free < entry.size + DOWNLOAD_HEADROOM_BYTES:
        raise JobFailed(f"not enough space in {store.directory} to download {entry.name}: "
                        f"needs {human_bytes(entry.size)}, {human_bytes(free)} free")
    path = store.directory / partial_name(f"{entry.name}.download")

    def fetch() -> None:
        path.unlink(missing_ok=True)  # our own leftover, from an earlier attempt or run
        s3.fetch(entry.name, path, ctx.cancel)

    ctx.say(f"downloading {s3.uri(entry.name)} ({human_bytes(entry.size)})")
    try:
        with_retries(ctx, fetch)
        yield path
    finally:
        path.unlink(missing_ok=True)


def pick_remote(ctx: JobContext, s3: S3Store, name: str | None, latest: bool) -> BackupEntry:
    """The S3 backup to restore: by name, or the newest verified one. Refuses uncommitted ones."""
    database = ctx.settings.postgres_db
    if latest:
        entry = next((e for e in s3.list_backups(database) if e.verified), None)
        if entry is None:
            raise JobFailed(f"no verified backup of {database!r} in {s3.description}; "
                            "see `backupd list --remote`")
        return entry
    if not name:
        raise ConfigError("NAME: give a backup name or --latest; see `backupd list --remote`")
    if "/" in name or parse_backup_name(name) is None:
        raise ConfigError(f"NAME: {name!r} is not a backupd backup name (expected "
                          "<db>_<YYYYmmdd_HHMMSS>.sql.gz, as `backupd list --remote` shows)")
    found = s3.find(name)
    if found is None:
        raise ConfigError(f"NAME: no backup {name!r} in {s3.description}; "
                          "see `backupd list --remote`")
    if not found.has_manifest:
        raise JobFailed(f"refusing to restore {name}: it has no manifest in {s3.description}, "
                        "so its upload never completed")
    return found.entry


def verify_remote(ctx: JobContext, names: list[str], verify_all: bool) -> list[VerifyReport]:
    """``backupd verify --remote``: download and verify S3 copies like local ones.

    Without names: the newest DB_BACKUP_KEEP_MIN committed backups (or all with
    ``--all``), plus a failed report for every incomplete upload (data, no manifest).
    """
    s3 = require_store(ctx.settings, "--remote")
    objects = s3.scan(ctx.settings.postgres_db)
    by_name = {o.entry.name: o for o in objects}
    if names:
        chosen = []
        for name in names:
            found = by_name.get(name) or (s3.find(name) if "/" not in name else None)
            if found is None:
                raise ConfigError(f"NAME: no backup {name!r} in {s3.description}; "
                                  "see `backupd list --remote`")
            chosen.append(found)
    else:
        committed = [o for o in objects if o.has_manifest]
        chosen = committed if verify_all else committed[: ctx.settings.keep_min]
        chosen += [o for o in objects if not o.has_manifest]
    if not chosen:
        raise JobFailed(f"no backups of {ctx.settings.postgres_db!r} in {s3.description}")
    reports = []
    checker = content_checker_for(ctx.settings)  # as local verify: decrypts with an identity
    for found in chosen:
        ctx.cancel.raise_if_cancelled()
        entry = found.entry
        if not found.has_manifest:
            report = VerifyReport(entry.name)
            report.add("manifest", False, "no manifest: an incomplete upload, never restored")
        else:
            with downloaded(ctx, s3, entry) as path:
                report = verify_file(path, entry.parsed, entry.manifest, entry.manifest_error,
                                     checker)
            if not report.inconclusive:  # a wrong age key says nothing about the copy
                _record_remote_outcome(ctx, s3, entry, report)
        ctx.say(f"{'OK' if report.ok else 'FAILED'} {s3.uri(entry.name)}"
                + ("" if report.ok else f": {report.problem}"))
        reports.append(report)
    ctx.result.outcome = VerifyOutcome(reports=[FileReport.of(r) for r in reports])
    failed = [r for r in reports if not r.ok]
    if failed:
        raise JobFailed(f"{len(failed)} of {len(reports)} S3 backups failed verification: "
                        + ", ".join(r.name for r in failed))
    return reports


def _record_remote_outcome(ctx: JobContext, s3: S3Store, entry: BackupEntry,
                           report: VerifyReport) -> None:
    """Write the outcome into the S3 manifest, so S3 retention never counts a bad copy as
    good. Read-only credentials (a DR machine) only lose this record, not the verify."""
    manifest = entry.manifest
    if manifest is None:
        return
    manifest.verified = report.ok
    manifest.verified_at = datetime.now(UTC)
    manifest.verify_error = report.problem
    try:
        s3.write_manifest(manifest)
    except OffsiteError as exc:
        ctx.warn(f"could not record the verify outcome in S3: {exc}")

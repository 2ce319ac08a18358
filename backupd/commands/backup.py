"""``backupd backup``: dump, write, verify, then sweep retention.

The order is the guarantee: the data file is committed (fsync + rename) before
its manifest, and the manifest says "verified" only after the file has been read
back in full (from the file, while it was being written: see follow_growing_file).
A failure at any step leaves either nothing or an unverified file.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from backupd import offsite
from backupd.commands import prune
from backupd.commands.verify import record_outcome
from backupd.configs import age_key_files, dump_config
from backupd.drill_compare import table_row_counts
from backupd.errors import JobFailed, JobSkipped
from backupd.job import JobContext
from backupd.manifest import Manifest
from backupd.naming import backup_name, data_suffix, parse_backup_name
from backupd.outcomes import BackupOutcome, FileReport
from backupd.pg import advisory_lock, check_pg_dump_not_older, connect
from backupd.pgdatabase import read_properties
from backupd.pipeline.encrypt import encryptor_for, recipient_strings
from backupd.pipeline.run import DumpFailed, dump_to_file
from backupd.result import human_bytes
from backupd.settings import Settings
from backupd.storage.base import BackupEntry
from backupd.verification import FileScan, content_checker_for, follow_growing_file, verify_file


def run(ctx: JobContext, *, apply_retention: bool = True,
        not_before: datetime | None = None) -> None:
    """``not_before``: skip if a verified backup taken at or after it already exists (the
    daemon passes its schedule slot, so replicas produce exactly one backup per slot)."""
    settings = ctx.settings
    store = ctx.store
    facts = ctx.result.outcome = BackupOutcome()
    s3 = offsite.configured_store(settings)  # bad S3 settings: exit 2 before any dump
    store.prepare()
    with advisory_lock(settings, "dump"):
        existing = store.list_backups(settings.postgres_db)
        if not_before is not None:
            _skip_if_slot_taken(existing, not_before)
        with connect(settings) as conn:
            server_version, pg_dump_version = check_pg_dump_not_older(conn)
            properties = read_properties(conn, settings.postgres_db)
        # What the database held at backup time, for restore drills (issue 7): counted on a
        # connection of its own while pg_dump starts, instead of delaying it.
        counter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="row-counts")
        counting = counter.submit(_count_rows, settings)
        counter.shutdown(wait=False)
        previous = next((e for e in existing if e.verified), None)
        # Keys are checked before pg_dump starts: a bad key is a ConfigError, not a lost dump.
        recipients = recipient_strings(age_key_files(settings))
        checker = content_checker_for(settings)
        suffix = data_suffix(settings.backup_format, settings.compression,
                             encrypted=bool(recipients))
        started = _unique_start(ctx, suffix)
        name = backup_name(settings.postgres_db, started, suffix)
        parsed = parse_backup_name(name)
        assert parsed is not None
        ctx.result.backup_name = name
        ctx.say(f"Starting backup of database {settings.postgres_db!r} to {name}")
        # The read-back (verification) follows the file as it is written, from the file.
        plain = parsed.backup_format == "plain" and not parsed.encrypted
        read_back: list[FileScan] = []
        try:
            outcome = dump_to_file(
                dump_config(settings), store.directory / name, ctx.cancel,
                encryptor=encryptor_for(age_key_files(settings)),
                read_back=lambda path, growing, identity: read_back.append(follow_growing_file(
                    path, growing, parsed.compression if plain else None, identity)),
            )
        except DumpFailed as exc:
            ctx.result.stderr_tail, ctx.result.stderr_tool = exc.stderr_tail, "pg_dump"
            ctx.result.backup_name = None
            raise
        except OSError as exc:
            # Disk full, I/O error, ...: the storage's fault, not a bug in backupd; the
            # partial file is already gone (atomic_write).
            ctx.result.backup_name = None
            raise JobFailed(f"writing {name} to DB_BACKUP_DIR ({store.directory}) failed: "
                            f"{exc.strerror or exc}; the partial file was removed") from None
        except BaseException:
            ctx.result.backup_name = None
            raise
        try:
            table_rows: dict[str, int] | None = counting.result()
        except Exception as exc:  # the dump is good: never lose it over the row counts
            table_rows = None
            ctx.warn(f"could not count the tables' rows for restore drills: {exc}")
        manifest = Manifest(
            name=name, database=settings.postgres_db, server_version=server_version,
            pg_dump_version=pg_dump_version, started_at=started, finished_at=datetime.now(UTC),
            format=settings.backup_format,
            compression="none" if settings.backup_format == "custom" else settings.compression,
            compression_level=settings.compression_level, raw_bytes=outcome.raw_bytes,
            stored_bytes=outcome.stored_bytes, sha256=outcome.sha256,
            encrypted=bool(recipients), age_recipients=recipients, table_rows=table_rows,
            gzip_members=outcome.gzip_members, database_properties=properties,
        )
        # Written twice on purpose: now, unverified, so that a crash before the verdict
        # leaves a file marked as backupd's own and unproven (never mistaken for an
        # old-script backup without a manifest); then again with the verdict.
        store.write_manifest(manifest)
        ctx.result.size_bytes = outcome.stored_bytes
        ctx.result.stderr_tail = outcome.stderr_tail or None
        ctx.result.stderr_tool = "pg_dump" if outcome.stderr_tail else None
        report = verify_file(store.directory / name, parsed, manifest, content_checker=checker,
                             read_back=read_back[0])
        record_outcome(store, manifest, report)
        facts.verify = FileReport.of(report)
        if not report.ok:
            raise JobFailed(f"the new backup {name} failed verification: {report.problem}")
        ctx.say(f"Backup completed and verified: {name} ({human_bytes(outcome.stored_bytes)}, "
                f"{human_bytes(outcome.raw_bytes)} of SQL)")
        if previous is not None:
            ctx.result.previous_size_bytes = previous.size
            _warn_if_shrunk(ctx, previous.size, outcome.stored_bytes)
    # Outside the lock: a long upload must not hold back other dumps. A failed upload
    # leaves the backup pending (result.offsite), never fails the backup.
    facts.upload = offsite.after_backup(ctx, s3, name)
    if apply_retention and settings.retention_schedule is None:
        # The new backup was read back in full moments ago: hashing it again would be a
        # second read of the largest, newest file on every run.
        ctx.result.deleted = prune.sweep(ctx, store, already_proven={name})
        ctx.result.deleted += offsite.sweep_remote(ctx, s3)
        facts.retention_ran = True


def _count_rows(settings: Settings) -> dict[str, int]:
    with connect(settings) as conn:
        return table_row_counts(conn)


def _skip_if_slot_taken(existing: list[BackupEntry], not_before: datetime) -> None:
    # Checked under the lock: the other daemon has finished (and verified) by now.
    for entry in existing:
        if entry.verified and entry.parsed.taken_at >= not_before.replace(microsecond=0):
            raise JobSkipped(f"{entry.name} already covers the run due at "
                             f"{not_before.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC "
                             "(another backupd run took it); this run was skipped")


def _unique_start(ctx: JobContext, suffix: str) -> datetime:
    """Names have one-second resolution: never reuse an existing backup's name."""
    while True:
        now = datetime.now(UTC).replace(microsecond=0)
        if not (ctx.store.directory / backup_name(ctx.settings.postgres_db, now, suffix)).exists():
            return now
        time.sleep(1.05 - datetime.now(UTC).microsecond / 1e6)


def _warn_if_shrunk(ctx: JobContext, previous: int, current: int) -> None:
    threshold = ctx.settings.shrink_warn_percent
    if threshold and previous > 0 and current < previous * (100 - threshold) / 100:
        ctx.warn(f"backup is {100 - current * 100 / previous:.0f}% smaller than the previous one "
                 f"({human_bytes(current)} vs {human_bytes(previous)}); check that the database "
                 "was not emptied")

"""``backupd backup``: dump, write, verify, then sweep retention.

The order is the guarantee: the data file is committed (fsync + rename) before
its manifest, and the manifest says "verified" only after the file has been read
back in full (from the file, while it was being written: see follow_growing_file).
A failure at any step leaves either nothing or an unverified file; a manifest that
cannot be written (a full disk) takes its data file with it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg

from backupd.cancel import CancelToken
from backupd.commands import prune, selection, upload
from backupd.commands.verify import with_outcome
from backupd.configs import age_key_files, dump_config
from backupd.errors import JobFailed, JobSkipped
from backupd.job import JobContext
from backupd.manifest import Manifest
from backupd.naming import backup_name, data_suffix, parse_backup_name
from backupd.outcomes import BackupOutcome, FileReport
from backupd.pipeline.encrypt import encryptor_for, load_identities, recipient_strings
from backupd.pipeline.run import DumpFailed, dump_to_file
from backupd.pipeline.verification import (
    CustomArchiveCheck,
    DirectoryArchiveCheck,
    FileScan,
    follow_growing_file,
    verify_file,
)
from backupd.postgres.compare import table_row_counts
from backupd.postgres.connection import (
    advisory_lock,
    as_text,
    check_pg_dump_not_older,
    connect,
    severed_on_cancel,
)
from backupd.postgres.databases import PropertiesNotText, read_properties
from backupd.postgres.tablespaces import object_tablespaces
from backupd.result import human_bytes
from backupd.settings import Settings
from backupd.storage.base import CLOCK_TOLERANCE, BackupEntry, newest_verified


def run(ctx: JobContext, *, apply_retention: bool = True,
        not_before: datetime | None = None, run_id: str | None = None,
        template1_look: str | None = None) -> None:
    """``not_before``: skip if a verified backup taken at or after it already exists (the
    daemon passes its schedule slot, so replicas produce exactly one backup per slot).
    ``run_id``: the backup run this dump belongs to (commands.backup_run), and
    ``template1_look``, what that run did with template1: both for the manifest."""
    settings = ctx.settings
    store = ctx.store
    facts = ctx.result.outcome = BackupOutcome()
    offsite = ctx.repos.offsite()  # bad S3 settings: exit 2 before any dump
    store.prepare()
    with advisory_lock(settings, "dump"):
        existing = store.list_backups(settings.postgres_db)
        selection.warn_future(ctx, existing)
        if not_before is not None:
            _skip_if_slot_taken(existing, not_before)
        with connect(settings) as conn, severed_on_cancel(conn, ctx.cancel):
            server_version, pg_dump_version = check_pg_dump_not_older(conn)
            try:
                properties = read_properties(conn, settings.postgres_db)
            except PropertiesNotText as exc:
                # The dump matters more than its properties: taken, and said.
                properties = None
                ctx.warn(f"{exc}: the backup records no database properties, so a restore "
                         "creates the database with the server's defaults (set its owner, "
                         "encoding and settings by hand first)")
            spaces = _object_tablespaces(ctx, conn)
            clock = read_server_clock(conn)
        # What the database held at backup time, for restore drills (issue 7): counted on a
        # connection of its own while pg_dump starts, instead of delaying it.
        counter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="row-counts")
        counting = counter.submit(_count_rows, settings, ctx.cancel)
        counter.shutdown(wait=False)
        previous = newest_verified(existing)
        # Keys are checked before pg_dump starts: a bad key is a ConfigError, not a lost dump.
        recipients = recipient_strings(age_key_files(settings))
        identities = load_identities(age_key_files(settings))
        suffix = data_suffix(settings.backup_format, settings.compression,
                             encrypted=bool(recipients))
        def name_at(at: datetime) -> str:  # the name checked is the name taken
            return backup_name(settings.postgres_db, at, suffix)

        started = store.unique_start(lambda at: [name_at(at)])
        _warn_if_clocks_disagree(ctx, clock, started)
        name = name_at(started)
        parsed = parse_backup_name(name)
        assert parsed is not None
        ctx.result.backup_name = name
        ctx.say(f"Starting backup of database {settings.postgres_db!r} to {name}")
        config = dump_config(settings)
        if config.archive_codec is not None:
            # Which codec this pg_dump has decides the archive's (and its restorer's) needs.
            ctx.say(config.archive_codec.line())
        # The read-back (verification) follows the file as it is written, from the file.
        plain = parsed.backup_format == "plain" and not parsed.encrypted
        # Archives are checked in the same read-back too (unless encrypted): pg_restore
        # reads a custom archive while pg_dump still writes it.
        archive = {"directory": DirectoryArchiveCheck, "custom": CustomArchiveCheck}.get(
            parsed.backup_format) if not parsed.encrypted else None
        read_back: list[FileScan] = []
        try:
            outcome = dump_to_file(
                config, store.directory / name, ctx.cancel,
                encryptor=encryptor_for(age_key_files(settings)),
                read_back=lambda fd, growing, identity: read_back.append(follow_growing_file(
                    fd, growing, parsed.compression if plain else None, identity,
                    archive, progress=ctx.progress)),
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
            compression=settings.compression if settings.backup_format == "plain" else "none",
            compression_level=settings.compression_level, raw_bytes=outcome.raw_bytes,
            stored_bytes=outcome.stored_bytes, sha256=outcome.sha256,
            encrypted=bool(recipients), age_recipients=recipients, table_rows=table_rows,
            gzip_members=outcome.gzip_members, database_properties=properties,
            object_tablespaces=spaces,
            server_time=clock.now, wal_lsn=clock.wal_lsn, run_id=run_id,
            template1_look=template1_look,
        )
        # Written twice on purpose: now, unverified, so that a crash before the verdict
        # leaves a file marked as backupd's own and unproven (never mistaken for an
        # old-script backup without a manifest); then again with the verdict. Either write
        # failing removes the backup (ManifestNotWritten, one line naming DB_BACKUP_DIR).
        try:
            store.commit(manifest)
            ctx.result.size_bytes = outcome.stored_bytes
            ctx.result.stderr_tail = outcome.stderr_tail or None
            ctx.result.stderr_tool = "pg_dump" if outcome.stderr_tail else None
            report = verify_file(store.directory / name, parsed, manifest, identities=identities,
                                 read_back=read_back[0], progress=ctx.progress)
            store.commit(with_outcome(manifest, report))
        except BaseException:
            ctx.result.backup_name = None
            raise
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
    if offsite is not None:
        facts.upload = upload.upload_pending(ctx, offsite, first=name)
    if apply_retention and settings.retention_schedule is None:
        # The new backup was read back in full moments ago: hashing it again would be a
        # second read of the largest, newest file on every run.
        ctx.result.deleted = prune.sweep(ctx, store, already_proven={name})
        ctx.result.deleted += prune.sweep_offsite(ctx, offsite)
        facts.retention_ran = True


def _object_tablespaces(ctx: JobContext, conn: Any) -> list[str] | None:
    """The tablespaces the database's tables and indexes are in (besides its default), for
    a restore onto a server without them; never fails a backup."""
    try:
        return object_tablespaces(conn)
    except psycopg.Error as exc:
        ctx.warn(f"could not read which tablespaces the tables are in ({exc}); a restore onto "
                 "a server without one of them fails for a custom or directory archive")
        return None


def _count_rows(settings: Settings, cancel: CancelToken) -> dict[str, int]:
    with connect(settings) as conn, severed_on_cancel(conn, cancel), \
            cancel.progress.stream("row counts (second connection)") as stream:
        return table_row_counts(conn, lambda: stream.moved(0))


def _skip_if_slot_taken(existing: list[BackupEntry], not_before: datetime) -> None:
    # Checked under the lock: the other daemon has finished (and verified) by now. A backup
    # dated in the future covers nothing: its date is not when it was taken.
    for entry in existing:
        if entry.proven_good() and entry.taken_at >= not_before.replace(microsecond=0):
            raise JobSkipped(f"{entry.name} already covers the run due at "
                             f"{not_before.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC "
                             "(another backupd run took it); this run was skipped")


@dataclass(frozen=True)
class ServerClock:
    """The server's view at dump time, recorded beside backupd's clock in the manifest."""

    now: datetime | None = None
    wal_lsn: str | None = None


def read_server_clock(conn: Any) -> ServerClock:
    """now() and the WAL position (the replay position on a standby); never fails a backup."""
    try:
        with as_text(conn):  # the LSN, not b'0/...', on a SQL_ASCII session
            row = conn.execute(
                "SELECT now(), (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() "
                "ELSE pg_current_wal_lsn() END)::text").fetchone()
    except psycopg.Error:  # a restricted role or an odd server: the backup goes on without it
        return ServerClock()
    if row is None or not isinstance(row[0], datetime):
        return ServerClock()
    return ServerClock(row[0].astimezone(UTC), str(row[1]) if row[1] is not None else None)


def _warn_if_clocks_disagree(ctx: JobContext, clock: ServerClock, started: datetime) -> None:
    """Names carry backupd's clock; the server's is recorded beside it. When the two disagree,
    say so now rather than a year later, when the dates no longer add up."""
    if clock.now is None:
        return
    skew = started - clock.now
    if abs(skew) > CLOCK_TOLERANCE:
        ctx.warn(f"backupd's clock and the database server's differ by "
                 f"{skew.total_seconds() / 3600:+.2f} h (backupd {started:%Y-%m-%d %H:%M:%S} "
                 f"UTC, server {clock.now:%Y-%m-%d %H:%M:%S} UTC); this backup is named by "
                 "backupd's clock: check NTP on both machines")


def _warn_if_shrunk(ctx: JobContext, previous: int, current: int) -> None:
    threshold = ctx.settings.shrink_warn_percent
    if threshold and previous > 0 and current < previous * (100 - threshold) / 100:
        ctx.warn(f"backup is {100 - current * 100 / previous:.0f}% smaller than the previous one "
                 f"({human_bytes(current)} vs {human_bytes(previous)}); check that the database "
                 "was not emptied")

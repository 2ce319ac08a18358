"""``backupd basebackup``: one base backup of the cluster, verified, offsite, retained.

pg_basebackup streams the data directory with its WAL and PostgreSQL's backup_manifest
(backupd.archive.take); the artifact is written like every other (temporary name, fsync,
rename, manifest last), read back in full and checked against that backup_manifest
(backupd.archive.basebackups), then replicated to S3 and retention applied to the base
backups and the WAL archive (backupd.archive.retention).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import psycopg

from backupd.archive import server
from backupd.archive.basebackups import base_entries, verify_base_backup
from backupd.archive.server import ServerFacts
from backupd.archive.take import BaseBackupConfig, BaseBackupFailed, take_base_backup
from backupd.archive.walstore import local_wal_repository
from backupd.commands import upload
from backupd.commands.verify import with_outcome
from backupd.configs import age_key_files
from backupd.daemon.wal import wal_config
from backupd.errors import ConfigError, JobFailed
from backupd.job import JobContext
from backupd.manifest import Manifest
from backupd.naming import BASE_DATABASE, BASE_KIND, base_backup_name
from backupd.outcomes import BaseBackupOutcome, FileReport
from backupd.pipeline.clients import note_server_major
from backupd.pipeline.encrypt import encryptor_for, load_identities, recipient_strings
from backupd.pipeline.supervisor import tool_version
from backupd.postgres.connection import advisory_lock, describe_pg_error, server_version
from backupd.postgres.databases import Connection, maintenance_connection
from backupd.result import human_bytes

LOCK_PURPOSE = "basebackup"
# How long a base backup waits for the WAL archive's slot (WAL_ARCHIVE=on) to exist.
SLOT_WAIT_SECONDS = 60


def refuse_other_cluster(ctx: JobContext, facts: ServerFacts) -> None:
    """A directory holding another cluster's archive is refused (one line naming it)."""
    system_identifier = int(facts.system_identifier)
    for entry in base_entries(ctx.store):
        recorded = entry.manifest.base_backup if entry.manifest is not None else None
        if recorded is not None and recorded.system_identifier != system_identifier:
            raise ConfigError(
                f"DB_BACKUP_DIR: {ctx.store.directory} holds base backups of another cluster "
                f"(system identifier {recorded.system_identifier}, e.g. {entry.name}); this "
                f"server is {system_identifier}. Point DB_BACKUP_DIR at this cluster's own "
                "archive")
    wal_directory = local_wal_repository(ctx.store).directory
    server.check_identity(server.read_identity(wal_directory), facts, wal_directory)


def wait_for_slot(ctx: JobContext, conn: Connection, facts: ServerFacts) -> None:
    """With WAL_ARCHIVE=on, start only once the archive's slot exists: from then on the
    server keeps every WAL segment for the archive, so the archive continues this base
    backup without a gap (the daemon's first base backup starts beside the streamer)."""
    slot = ctx.settings.wal_slot_name or server.default_slot_name(facts.system_identifier)
    deadline = time.monotonic() + SLOT_WAIT_SECONDS
    while server.slot_state(conn, slot) is None:
        if time.monotonic() >= deadline:
            ctx.warn(f"replication slot {slot!r} of the WAL archive does not exist yet; the "
                     "base backup is self-contained, but the archive may not continue it "
                     "until streaming runs")
            return
        ctx.cancel.raise_if_cancelled()
        time.sleep(1)


def take(ctx: JobContext, *, apply_retention: bool = True) -> BaseBackupOutcome:
    settings, store = ctx.settings, ctx.store
    outcome = BaseBackupOutcome()
    ctx.result.outcome = outcome
    offsite = ctx.repos.offsite()  # bad S3 settings: exit 2 before the backup
    store.prepare()
    keys = age_key_files(settings)
    recipients = recipient_strings(keys)  # a bad key: ConfigError before pg_basebackup
    identities = load_identities(keys)
    # A base backup is of the cluster: the lock is taken on its maintenance database, so
    # POSTGRES_DB as a list or `*` works too.
    with advisory_lock(settings, LOCK_PURPOSE, open_connection=maintenance_connection):
        connection = wal_config(settings).connection  # the replication role
        try:
            with server.connect(connection) as conn:
                note_server_major(conn.info.server_version // 10000)
                facts = server.server_facts(conn)
                server.check_can_stream(facts, connection.user, for_base_backup=True)
                refuse_other_cluster(ctx, facts)
                version = server_version(conn)
                if settings.wal_archive:
                    wait_for_slot(ctx, conn, facts)
        except psycopg.Error as exc:
            raise JobFailed(f"cannot read the server's settings: {describe_pg_error(exc)}") \
                from None
        system_identifier = int(facts.system_identifier)
        def name_at(at: datetime) -> str:  # the name checked is the name taken
            return base_backup_name(at, settings.compression, encrypted=bool(recipients))

        started = store.unique_start(lambda at: [name_at(at)])
        name = name_at(started)
        ctx.say(f"Starting base backup of the cluster ({version}) to {name}")
        config = BaseBackupConfig(connection, settings.compression,
                                  settings.compression_level,
                                  label=f"backupd {name}",
                                  checkpoint=settings.basebackup_checkpoint)
        try:
            taken = take_base_backup(config, store.directory / name, ctx.cancel,
                                     encryptor=encryptor_for(keys))
        except BaseBackupFailed as exc:
            ctx.result.stderr_tail, ctx.result.stderr_tool = exc.stderr_tail, "pg_basebackup"
            raise
        except OSError as exc:
            raise JobFailed(f"writing {name} to DB_BACKUP_DIR ({store.directory}) failed: "
                            f"{exc.strerror or exc}; the partial file was removed") from None
        taken_facts = taken.facts
        if taken_facts.system_identifier != system_identifier:
            store.delete(name)
            raise JobFailed(f"the base backup's pg_control names cluster "
                            f"{taken_facts.system_identifier}, not the server's "
                            f"{system_identifier}; "
                            "not kept")
        manifest = Manifest(
            kind=BASE_KIND, name=name, database=BASE_DATABASE, server_version=version,
            pg_dump_version=tool_version("pg_basebackup")[0], started_at=started,
            finished_at=datetime.now(UTC), format="tar", compression=settings.compression,
            compression_level=settings.compression_level, raw_bytes=taken.raw_bytes,
            stored_bytes=taken.stored_bytes, sha256=taken.sha256,
            encrypted=bool(recipients), age_recipients=recipients,
            gzip_members=taken.gzip_members, base_backup=taken_facts)
        store.commit(manifest)
    ctx.result.backup_name = name
    outcome.name, outcome.timeline = name, taken_facts.timeline
    outcome.start_lsn, outcome.stop_lsn = taken_facts.start_lsn, taken_facts.stop_lsn
    outcome.stored_bytes = taken.stored_bytes
    # Read back from the disk, the whole stream once more: what was stored is what verified.
    report = verify_base_backup(store, store.entry(name), identities, ctx.cancel)
    store.commit(with_outcome(manifest, report))
    outcome.verify = FileReport.of(report)
    if not report.ok:
        raise JobFailed(f"the new base backup {name} failed verification: {report.problem}")
    ctx.say(f"Base backup completed and verified: {name} ({human_bytes(taken.stored_bytes)}, "
            f"{taken_facts.files} files, WAL {taken_facts.start_lsn}..{taken_facts.stop_lsn} "
            f"on timeline {taken_facts.timeline})")
    if offsite is not None:
        outcome.upload = upload.upload_pending(ctx, offsite, first=name,
                                               database=BASE_DATABASE, kind=BASE_KIND)
    if apply_retention and settings.retention_schedule is None:
        from backupd.commands import archive_retention

        archive_retention.apply(ctx, offsite)
    return outcome


def run(ctx: JobContext) -> None:
    take(ctx)

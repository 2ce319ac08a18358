"""``backupd basebackup``: one base backup of the cluster, verified, offsite, retained.

pg_basebackup streams the data directory with its WAL and PostgreSQL's backup_manifest
(backupd.archive.take); the artifact is written like every other (temporary name, fsync,
rename, manifest last), read back in full and checked against that backup_manifest
(backupd.archive.basebackups), then replicated to S3 and retention applied to the base
backups and the WAL archive (backupd.archive.retention).
"""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg

from backupd.archive.basebackups import base_entries, verify_base_backup
from backupd.archive.take import BaseBackupConfig, BaseBackupFailed, take_base_backup
from backupd.commands import upload
from backupd.commands.verify import with_outcome
from backupd.configs import age_key_files, connection_config
from backupd.errors import ConfigError, JobFailed
from backupd.job import JobContext
from backupd.manifest import Manifest
from backupd.naming import BASE_DATABASE, BASE_KIND, base_backup_name
from backupd.outcomes import BaseBackupOutcome, FileReport
from backupd.pipeline.encrypt import encryptor_for, load_identities, recipient_strings
from backupd.pipeline.supervisor import tool_version
from backupd.postgres.connection import advisory_lock, connect, describe_pg_error, server_version
from backupd.postgres.databases import Connection
from backupd.result import human_bytes

LOCK_PURPOSE = "basebackup"


def cluster_identity(conn: Connection) -> int:
    """The cluster's system identifier (the archive's key: one sidecar, one cluster)."""
    row = conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()
    assert row is not None
    return int(row[0])


def check_server(conn: Connection, user: str) -> None:
    """What pg_basebackup needs from the server, refused up front with one line."""
    row = conn.execute(
        "SELECT current_setting('wal_level'), rolreplication OR rolsuper, "
        "current_setting('max_wal_senders')::int FROM pg_roles WHERE rolname = current_user"
    ).fetchone()
    assert row is not None
    wal_level, may_replicate, senders = row
    if wal_level == "minimal":
        raise ConfigError("wal_level: the server runs with wal_level=minimal; set "
                          "wal_level=replica (the default) in postgresql.conf and restart it")
    if not may_replicate:
        raise ConfigError(f"POSTGRES_USER: role {user!r} has no REPLICATION privilege; run "
                          f"ALTER ROLE {user} REPLICATION (and allow it a `replication` line "
                          "in pg_hba.conf)")
    if senders < 1:
        raise ConfigError("max_wal_senders: the server allows no replication connections; "
                          "set max_wal_senders to at least 2 and restart it")


def refuse_other_cluster(ctx: JobContext, system_identifier: int) -> None:
    """A repository holding another cluster's base backups is refused (one line naming it)."""
    for entry in base_entries(ctx.store):
        facts = entry.manifest.base_backup if entry.manifest is not None else None
        if facts is not None and facts.system_identifier != system_identifier:
            raise ConfigError(
                f"DB_BACKUP_DIR: {ctx.store.directory} holds base backups of another cluster "
                f"(system identifier {facts.system_identifier}, e.g. {entry.name}); this "
                f"server is {system_identifier}. Point DB_BACKUP_DIR at this cluster's own "
                "archive")


def take(ctx: JobContext, *, apply_retention: bool = True) -> BaseBackupOutcome:
    settings, store = ctx.settings, ctx.store
    outcome = BaseBackupOutcome()
    ctx.result.outcome = outcome
    offsite = ctx.repos.offsite()  # bad S3 settings: exit 2 before the backup
    store.prepare()
    keys = age_key_files(settings)
    recipients = recipient_strings(keys)  # a bad key: ConfigError before pg_basebackup
    identities = load_identities(keys)
    with advisory_lock(settings, LOCK_PURPOSE):
        try:
            with connect(settings) as conn:
                check_server(conn, settings.postgres_user)
                system_identifier = cluster_identity(conn)
                version = server_version(conn)
        except psycopg.Error as exc:
            raise JobFailed(f"cannot read the server's settings: {describe_pg_error(exc)}") \
                from None
        refuse_other_cluster(ctx, system_identifier)
        started = datetime.now(UTC)
        name = base_backup_name(started, settings.compression, encrypted=bool(recipients))
        ctx.say(f"Starting base backup of the cluster ({version}) to {name}")
        config = BaseBackupConfig(connection_config(settings), settings.compression,
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
        facts = taken.facts
        if facts.system_identifier != system_identifier:
            store.delete(name)
            raise JobFailed(f"the base backup's pg_control names cluster "
                            f"{facts.system_identifier}, not the server's {system_identifier}; "
                            "not kept")
        manifest = Manifest(
            kind=BASE_KIND, name=name, database=BASE_DATABASE, server_version=version,
            pg_dump_version=tool_version("pg_basebackup")[0], started_at=started,
            finished_at=datetime.now(UTC), format="tar", compression=settings.compression,
            compression_level=settings.compression_level, raw_bytes=taken.raw_bytes,
            stored_bytes=taken.stored_bytes, sha256=taken.sha256,
            encrypted=bool(recipients), age_recipients=recipients,
            gzip_members=taken.gzip_members, base_backup=facts)
        store.commit(manifest)
    ctx.result.backup_name = name
    outcome.name, outcome.timeline = name, facts.timeline
    outcome.start_lsn, outcome.stop_lsn = facts.start_lsn, facts.stop_lsn
    outcome.stored_bytes = taken.stored_bytes
    # Read back from the disk, the whole stream once more: what was stored is what verified.
    report = verify_base_backup(store, store.entry(name), identities, ctx.cancel)
    store.commit(with_outcome(manifest, report))
    outcome.verify = FileReport.of(report)
    if not report.ok:
        raise JobFailed(f"the new base backup {name} failed verification: {report.problem}")
    ctx.say(f"Base backup completed and verified: {name} ({human_bytes(taken.stored_bytes)}, "
            f"{facts.files} files, WAL {facts.start_lsn}..{facts.stop_lsn} on timeline "
            f"{facts.timeline})")
    if offsite is not None:
        outcome.upload = upload.upload_pending(ctx, offsite, first=name,
                                               database=BASE_DATABASE, kind=BASE_KIND)
    if apply_retention and settings.retention_schedule is None:
        from backupd.commands import archive_retention

        archive_retention.apply(ctx, offsite)
    return outcome


def run(ctx: JobContext) -> None:
    take(ctx)

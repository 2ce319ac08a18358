"""WAL archiving in the daemon (WAL_ARCHIVE=on): the streamer started beside the scheduler,
its failures delivered as JobResults (job "wal") to every notifier, its figures for
/metrics, /healthz and ``backupd status``."""

from __future__ import annotations

import threading

from backupd.archive import server
from backupd.archive.archiver import BaseBackupRequest, WalStreamer
from backupd.archive.receiver import WalConfig
from backupd.archive.walstore import WAL_SUBDIRECTORY
from backupd.configs import age_key_files
from backupd.errors import JobFailed
from backupd.job import repositories_for, skipped_result
from backupd.log import get_logger
from backupd.notify.base import NotifierChain
from backupd.pipeline.clients import note_server_major
from backupd.pipeline.config import ConnectionConfig
from backupd.result import Status
from backupd.settings import Settings

WAL_JOB = "wal"


def wal_config(settings: Settings) -> WalConfig:
    """WAL streaming's config: the replication role on the first database of POSTGRES_DB."""
    database = settings.database_selection.names[0] if settings.database_selection.names \
        else "postgres"
    connection = ConnectionConfig(
        host=settings.postgres_host, port=settings.postgres_port,
        user=settings.replication_user, database=database,
        connect_timeout=settings.postgres_connect_timeout,
        password=settings.replication_password)
    keys = age_key_files(settings)
    encrypted = bool(settings.age_recipients or settings.age_recipients_file)
    return WalConfig(
        connection=connection, directory=settings.backup_dir / WAL_SUBDIRECTORY,
        slot_name=settings.wal_slot_name, compression=settings.compression,
        level=settings.compression_level, crypto=keys if encrypted else None,
        partial_seconds=settings.wal_s3_partial_seconds,
        max_lag_seconds=settings.wal_max_lag_seconds)


def check_wal_server(settings: Settings) -> None:
    """At start-up: a server or role that cannot stream is bad input (ConfigError, exit 2);
    an unreachable server is not (compose may start it after us)."""
    config = wal_config(settings)
    try:
        with server.connect(config.connection) as conn:
            note_server_major(conn.info.server_version // 10000)
            server.check_can_stream(server.server_facts(conn), config.connection.user)
    except JobFailed as exc:
        get_logger().warning("database not reachable for WAL streaming at start-up; "
                             "continuing", error=str(exc))


def wal_streamer(settings: Settings, chain: NotifierChain,
                 request_base_backup: BaseBackupRequest | None = None) -> WalStreamer | None:
    """The daemon's WAL streamer (not started yet), or None with WAL_ARCHIVE off."""
    if not settings.wal_archive:
        return None
    offsite = repositories_for(settings).offsite()

    def report(message: str) -> None:
        result = skipped_result(WAL_JOB, settings, Status.FAILED, message)
        # Never make the streamer wait for Slack or a webhook.
        threading.Thread(target=chain.deliver, args=(result,), name="wal-report",
                         daemon=True).start()

    return WalStreamer(wal_config(settings), offsite, report, request_base_backup)

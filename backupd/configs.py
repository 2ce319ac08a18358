"""Settings -> the small typed configs of the layers below (backupd.pipeline.config).

The edge: commands build these once and hand them down; the pipeline never imports Settings.
"""

from __future__ import annotations

from backupd.archive.receiver import WalConfig
from backupd.archive.walstore import WAL_SUBDIRECTORY
from backupd.pipeline.config import AgeKeyFiles, ConnectionConfig, DumpConfig, RestoreConfig
from backupd.settings import Settings


def connection_config(settings: Settings, database: str | None = None) -> ConnectionConfig:
    return ConnectionConfig(
        host=settings.postgres_host,
        port=settings.postgres_port,
        user=settings.postgres_user,
        database=database or settings.postgres_db,
        connect_timeout=settings.postgres_connect_timeout,
        password=settings.password,
    )


def dump_config(settings: Settings) -> DumpConfig:
    return DumpConfig(connection_config(settings), settings.backup_format, settings.compression,
                      settings.compression_level)


def restore_config(settings: Settings) -> RestoreConfig:
    return RestoreConfig(connection_config(settings), settings.restore_jobs)


def age_key_files(settings: Settings) -> AgeKeyFiles:
    return AgeKeyFiles(settings.age_recipients, settings.age_recipients_file,
                       settings.age_identity_file)


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

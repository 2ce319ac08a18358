"""Settings -> the small typed configs of the layers below (backupd.pipeline.config).

The edge: commands build these once and hand them down; the pipeline never imports Settings.
"""

from __future__ import annotations

from dataclasses import replace

from backupd.pipeline.config import (
    AgeKeyFiles,
    ConnectionConfig,
    DumpConfig,
    RestoreConfig,
    bulk_load_session,
)
from backupd.pipeline.dump import archive_codec
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
    """For the custom and directory formats, asks the pg_dump that will run which codec it
    has (cached per binary): call it once the server is known, since the server's major
    picks the pg_dump (backupd.pipeline.clients)."""
    codec = (None if settings.backup_format == "plain"
             else archive_codec(settings.compression_level))
    return DumpConfig(connection_config(settings), settings.backup_format, settings.compression,
                      settings.compression_level, jobs=settings.dump_jobs, archive_codec=codec)


def restore_connection(settings: Settings, database: str | None = None) -> ConnectionConfig:
    """Where psql and pg_restore load a backup: a session tuned for a bulk load."""
    return replace(connection_config(settings, database),
                   session=bulk_load_session(settings.restore_maintenance_work_mem))


def restore_config(settings: Settings) -> RestoreConfig:
    return RestoreConfig(restore_connection(settings), settings.restore_jobs)


def age_key_files(settings: Settings) -> AgeKeyFiles:
    return AgeKeyFiles(settings.age_recipients, settings.age_recipients_file,
                       settings.age_identity_file)


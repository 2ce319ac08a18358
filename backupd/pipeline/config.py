"""The small typed configs the pipeline works from, built from Settings at the edge
(backupd.configs); nothing under backupd.pipeline reads Settings itself."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from backupd.pipeline.codecs import ArchiveCodec

APPLICATION_NAME = "backupd"


@dataclass(frozen=True)
class ConnectionConfig:
    """Where a client tool connects. The password reaches the child only through its
    environment (PGPASSWORD), never argv."""

    host: str
    port: int
    user: str
    database: str
    connect_timeout: int
    password: str = field(default="", repr=False)
    # Settings of the session (name, value), given to the server at connection (PGOPTIONS).
    session: tuple[tuple[str, str], ...] = ()

    def on(self, database: str) -> ConnectionConfig:
        return replace(self, database=database)

    def libpq_env(self) -> dict[str, str]:
        # The database name travels in PGDATABASE, not argv: a name starting with '-' can
        # then never be read as an option.
        env = {
            "PGHOST": self.host,
            "PGPORT": str(self.port),
            "PGUSER": self.user,
            "PGDATABASE": self.database,
            "PGPASSWORD": self.password,
            "PGCONNECT_TIMEOUT": str(self.connect_timeout),
            "PGAPPNAME": APPLICATION_NAME,
        }
        if self.session:
            env["PGOPTIONS"] = self.options()
        return env

    def options(self) -> str:
        """The session settings as libpq's ``options`` (PGOPTIONS): ``-c name=value ...``."""
        return " ".join(f"-c {name}={value}" for name, value in self.session)


def bulk_load_session(maintenance_work_mem: str | None) -> tuple[tuple[str, str], ...]:
    """The restore session's settings. synchronous_commit=off: every restore goes into a
    scratch database that is dropped unless the restore completes, and is then renamed into
    place by a separate, synchronously committed transaction, whose WAL flush makes every
    earlier commit durable too; so no commit of the load itself needs to wait for its flush.
    maintenance_work_mem: index builds and foreign-key checks sort in memory."""
    session = [("synchronous_commit", "off")]
    if maintenance_work_mem is not None:
        session.append(("maintenance_work_mem", maintenance_work_mem))
    return tuple(session)


@dataclass(frozen=True)
class DumpConfig:
    connection: ConnectionConfig
    backup_format: Literal["plain", "custom", "directory"] = "plain"
    compression: str = "gzip"
    level: int | None = None
    # pg_dump --jobs (directory format only).
    jobs: int = 1
    # Custom and directory formats: pg_dump's own codec, chosen once at the edge
    # (backupd.configs.dump_config), so the job's log line and pg_dump's argv are one value.
    archive_codec: ArchiveCodec | None = None

    def __post_init__(self) -> None:
        if self.backup_format != "plain" and self.archive_codec is None:
            raise ValueError(f"a {self.backup_format} dump needs its archive codec")


@dataclass(frozen=True)
class RestoreConfig:
    connection: ConnectionConfig
    # pg_restore --jobs for a custom archive read from a file (not for an encrypted one).
    jobs: int = 1


@dataclass(frozen=True)
class AgeKeyFiles:
    """Where the age keys come from (DB_BACKUP_AGE_*); read by backupd.pipeline.encrypt."""

    recipients: str | None = None
    recipients_file: Path | None = None
    identity_file: Path | None = None

"""The server's side of WAL streaming: can this role stream, which cluster is it, and the
replication slot backupd owns (its state, creation, and the archive that owns it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import psycopg
from pydantic import BaseModel

from backupd.archive.walnames import parse_lsn
from backupd.errors import ConfigError, JobFailed
from backupd.pipeline.config import APPLICATION_NAME, ConnectionConfig
from backupd.postgres.connection import as_text
from backupd.storage.atomic import write_bytes_atomically

# The archive's identity, beside its artifacts: which cluster, through which slot.
IDENTITY_FILE = "archive.json"
SLOT_PREFIX = "backupd_"


@dataclass(frozen=True)
class ServerFacts:
    system_identifier: str
    segment_size: int
    wal_level: str
    can_replicate: bool  # the role has REPLICATION (or is a superuser)
    max_wal_senders: int
    in_recovery: bool


@dataclass(frozen=True)
class SlotState:
    name: str
    restart_lsn: int | None
    wal_status: str | None  # reserved, extended, unreserved, lost
    active: bool
    current_lsn: int | None  # the server's pg_current_wal_lsn() when this was read

    @property
    def retained_bytes(self) -> int | None:
        if self.current_lsn is None or self.restart_lsn is None:
            return None
        return max(0, self.current_lsn - self.restart_lsn)

    @property
    def lost(self) -> bool:
        return self.wal_status == "lost"


class ArchiveIdentity(BaseModel):
    system_identifier: str
    slot_name: str
    segment_size: int


def default_slot_name(system_identifier: str) -> str:
    return f"{SLOT_PREFIX}{system_identifier}"


def connect(config: ConnectionConfig) -> psycopg.Connection[tuple]:  # type: ignore[type-arg]
    try:
        return psycopg.connect(host=config.host, port=config.port, user=config.user,
                               password=config.password, dbname=config.database,
                               connect_timeout=config.connect_timeout,
                               application_name=APPLICATION_NAME, autocommit=True)
    except psycopg.OperationalError as exc:
        text = " ".join(str(exc).split())
        hint = ""
        if "password authentication failed" in text or "no password supplied" in text:
            hint = (f"; check POSTGRES_REPLICATION_PASSWORD (or _FILE) for "
                    f"POSTGRES_REPLICATION_USER {config.user!r}")
        raise JobFailed(f"cannot connect to PostgreSQL as {config.user!r}: {text}{hint}") \
            from None


def server_facts(conn: psycopg.Connection[tuple]) -> ServerFacts:  # type: ignore[type-arg]
    with as_text(conn):
        row = conn.execute(
            "SELECT (SELECT system_identifier FROM pg_control_system())::text,"
            " current_setting('wal_segment_size')::text, current_setting('wal_level'),"
            " (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user),"
            " current_setting('max_wal_senders')::int, pg_is_in_recovery()").fetchone()
    assert row is not None
    return ServerFacts(str(row[0]), _size_in_bytes(str(row[1])), str(row[2]), bool(row[3]),
                       int(row[4]), bool(row[5]))


def _size_in_bytes(text: str) -> int:
    # current_setting('wal_segment_size') reads like "16MB".
    units = {"kB": 1024, "MB": 1024 ** 2, "GB": 1024 ** 3}
    for unit, factor in units.items():
        if text.endswith(unit):
            return int(text[: -len(unit)]) * factor
    return int(text)


def check_can_stream(facts: ServerFacts, user: str, *, for_base_backup: bool = False) -> None:
    """One line naming what to change when this server or role cannot stream WAL (or, with
    ``for_base_backup``, take a base backup: the same replication connection)."""
    what, way_out = (("wal_level", "") if for_base_backup
                     else ("WAL_ARCHIVE", " (or set WAL_ARCHIVE=off)"))
    if facts.wal_level == "minimal":
        raise ConfigError(f"{what}: the server runs with wal_level=minimal; set "
                          "wal_level = replica in postgresql.conf and restart PostgreSQL"
                          + way_out)
    if facts.max_wal_senders < 1:
        raise ConfigError(f"{'max_wal_senders' if for_base_backup else what}: the server has "
                          "max_wal_senders = 0; set it to 2 or more in postgresql.conf and "
                          "restart PostgreSQL")
    if not facts.can_replicate:
        raise ConfigError(f"POSTGRES_REPLICATION_USER: role {user!r} has no REPLICATION "
                          f"privilege; run ALTER ROLE {user} REPLICATION (and give it a "
                          "`replication` line in pg_hba.conf), or set "
                          "POSTGRES_REPLICATION_USER to a role that has it")


def slot_state(conn: psycopg.Connection[tuple], name: str) -> SlotState | None:  # type: ignore[type-arg]
    with as_text(conn):  # a SQL_ASCII session hands text back as bytes
        row = conn.execute(
            "SELECT restart_lsn::text, wal_status, active,"
            " CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn()"
            "  ELSE pg_current_wal_lsn() END::text, slot_type"
            " FROM pg_replication_slots WHERE slot_name = %s", (name,)).fetchone()
    if row is None:
        return None
    if row[4] != "physical":
        raise ConfigError(f"WAL_SLOT_NAME: slot {name!r} is a {row[4]} slot, not backupd's "
                          "physical one; set WAL_SLOT_NAME to another name")
    return SlotState(name, parse_lsn(row[0]) if row[0] else None, row[1], bool(row[2]),
                     parse_lsn(row[3]) if row[3] else None)


def create_slot(conn: psycopg.Connection[tuple], name: str) -> None:  # type: ignore[type-arg]
    # immediately_reserve: the slot holds WAL from now on, before pg_receivewal connects.
    conn.execute("SELECT pg_create_physical_replication_slot(%s, true)", (name,))


def drop_slot(conn: psycopg.Connection[tuple], name: str) -> None:  # type: ignore[type-arg]
    conn.execute("SELECT pg_drop_replication_slot(%s)", (name,))


def read_identity(directory: Path) -> ArchiveIdentity | None:
    try:
        return ArchiveIdentity.model_validate_json((directory / IDENTITY_FILE).read_bytes())
    except FileNotFoundError:
        return None
    except ValueError:
        raise ConfigError(f"DB_BACKUP_DIR: {directory / IDENTITY_FILE} is damaged; it records "
                          "which cluster and slot the WAL archive belongs to (restore it, or "
                          "move the archive away to start a new one)") from None


def write_identity(directory: Path, identity: ArchiveIdentity) -> None:
    write_bytes_atomically(directory / IDENTITY_FILE,
                           identity.model_dump_json(indent=2).encode() + b"\n")


def check_identity(identity: ArchiveIdentity | None, facts: ServerFacts,
                   directory: Path) -> None:
    """Refuse an archive of another cluster (one sidecar archives one cluster)."""
    if identity is not None and identity.system_identifier != facts.system_identifier:
        raise ConfigError(
            f"DB_BACKUP_DIR: the WAL archive in {directory} belongs to cluster "
            f"{identity.system_identifier}, but the server is cluster "
            f"{facts.system_identifier}; point DB_BACKUP_DIR at this cluster's directory")


def foreign_slot_error(slot: str, directory: Path) -> ConfigError:
    return ConfigError(
        f"WAL_SLOT_NAME: replication slot {slot!r} already exists but belongs to another "
        f"archive ({directory} does not record it); drop it with SELECT "
        f"pg_drop_replication_slot('{slot}') if nothing uses it, or set WAL_SLOT_NAME to "
        "another name")

"""The drill server (DRILL_POSTGRES_HOST): a scratch PostgreSQL a drill restores a whole run
onto, proving the backup comes back on a *new* server, roles included.

Here: reaching it, refusing it when it is the live server, and what was on it before the
drill (so that the drill removes only what it created, see :mod:`backupd.commands.drill`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
from pydantic import SecretStr

from backupd.errors import ConfigError, JobFailed
from backupd.postgres.connection import connect
from backupd.settings import Settings

MAINTENANCE_DB = "postgres"

Connection = psycopg.Connection[tuple]  # type: ignore[type-arg]


def drill_server_settings(settings: Settings) -> Settings | None:
    """``settings`` pointed at the drill server (its host, port, user and password), or None
    when DRILL_POSTGRES_HOST is unset. Everything else (keys, directories) stays the same."""
    if settings.drill_postgres_host is None:
        return None
    return settings.model_copy(update={
        "postgres_host": settings.drill_postgres_host,
        "postgres_port": settings.drill_postgres_port,
        "postgres_user": settings.drill_postgres_user,
        "postgres_password": SecretStr(settings.drill_password or ""),
        "postgres_password_file": None,
    })


@contextmanager
def connect_drill_server(drill: Settings, database: str = MAINTENANCE_DB
                         ) -> Iterator[Connection]:
    """A connection to the drill server; a failure names the DRILL_POSTGRES_* settings."""
    try:
        conn = connect(drill, database)
    except JobFailed as exc:
        text = str(exc).replace("check POSTGRES_", "check DRILL_POSTGRES_")
        raise JobFailed(f"drill server {drill.postgres_host}:{drill.postgres_port}: "
                        f"{text}") from None
    with conn:
        yield conn


@dataclass(frozen=True)
class ServerIdentity:
    system_identifier: int | None  # None: pg_control_system() is not readable here
    started_at: str  # pg_postmaster_start_time(): one running server


def server_identity(conn: Connection) -> ServerIdentity:
    started = conn.execute("SELECT pg_postmaster_start_time()::text").fetchone()
    try:
        row = conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()
        system_identifier = int(row[0]) if row else None
    except psycopg.errors.InsufficientPrivilege:
        system_identifier = None
    return ServerIdentity(system_identifier, str(started[0]) if started else "")


def refuse_live(live: ServerIdentity, drill: ServerIdentity, where: str) -> None:
    """ConfigError when the drill server is the live server (or a physical copy of it: the
    same system identifier), whatever name reaches it."""
    same_cluster = (live.system_identifier is not None
                    and live.system_identifier == drill.system_identifier)
    if same_cluster or live.started_at == drill.started_at:
        what = (f"system identifier {live.system_identifier}" if same_cluster
                else f"the server started at {live.started_at}")
        raise ConfigError(
            f"DRILL_POSTGRES_HOST: the drill server {where} is the live server ({what}, "
            "as POSTGRES_HOST's); a drill creates and drops databases and roles on its "
            "server, so point it at an empty scratch server (or unset it to drill beside the "
            "live database)")


def check_not_live(live_settings: Settings, drill: Settings) -> None:
    with connect(live_settings) as conn:
        live = server_identity(conn)
    with connect_drill_server(drill) as conn:
        scratch = server_identity(conn)
    refuse_live(live, scratch, f"{drill.postgres_host}:{drill.postgres_port}")

"""The drill server (DRILL_POSTGRES_HOST): a scratch PostgreSQL a drill restores a whole run
onto, proving the backup comes back on a *new* server, roles included.

Here: reaching it, refusing it when it is the live server, and what was on it before the
drill (so that the drill removes only what it created, see :mod:`backupd.commands.drill`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
from psycopg import sql
from pydantic import SecretStr

from backupd.commands.restore_target import holds_nothing
from backupd.errors import ConfigError, JobFailed, JobSkipped
from backupd.postgres.connection import (
    as_text,
    connect,
    describe_pg_error,
    drop_database,
    lock_key,
)
from backupd.postgres.databases import drop_with_subscriptions, maintenance_connection
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
    with maintenance_connection(live_settings) as conn:
        live = server_identity(conn)
    with connect_drill_server(drill) as conn:
        scratch = server_identity(conn)
    refuse_live(live, scratch, f"{drill.postgres_host}:{drill.postgres_port}")


# --- what was there before, and leaving it so -----------------------------------------------

# A database on the drill server whose comment starts with this was created by a drill
# (the restored databases); the state database records what the server held before the
# drill, and is dropped last, so a killed drill leaves it as the sign to clean up after it.
CLUSTER_MARK = "backupd cluster drill: restored copy"
STATE_DATABASE = "backupd_drill_state"
STATE_MARK = "backupd cluster drill in progress; the server held before it: "


@dataclass(frozen=True)
class Inventory:
    """What the drill server holds of its own: what a drill must leave as it found it."""

    databases: frozenset[str]
    roles: frozenset[str]  # predefined pg_* roles are the server's and never touched
    tablespaces: frozenset[str]

    def to_text(self) -> str:
        return json.dumps({"roles": sorted(self.roles), "tablespaces": sorted(self.tablespaces),
                           "databases": sorted(self.databases)})

    @classmethod
    def from_text(cls, text: str) -> Inventory:
        data = json.loads(text)
        return cls(frozenset(data.get("databases", ())), frozenset(data["roles"]),
                   frozenset(data.get("tablespaces", ())))


def inventory(conn: Connection) -> Inventory:
    with as_text(conn, "the drill server's inventory", "server"):
        databases = {str(r[0]) for r in conn.execute(
            "SELECT datname FROM pg_database WHERE datname <> %s", (STATE_DATABASE,))}
        roles = {str(r[0]) for r in conn.execute(
            "SELECT rolname FROM pg_roles WHERE rolname NOT LIKE 'pg\\_%'")}
        tablespaces = {str(r[0]) for r in conn.execute("SELECT spcname FROM pg_tablespace")}
        return Inventory(frozenset(databases), frozenset(roles), frozenset(tablespaces))


def lock_drill_server(conn: Connection) -> None:
    """One drill per drill server at a time (held by ``conn``'s session)."""
    row = conn.execute("SELECT pg_try_advisory_lock(%s)",
                       (lock_key("cluster-drill", STATE_DATABASE),)).fetchone()
    if not row or not row[0]:
        raise JobSkipped("another backupd drill is using the drill server right now; this "
                         "drill was skipped")


def mark_started(conn: Connection, before: Inventory) -> None:
    conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(
        sql.Identifier(STATE_DATABASE)))
    conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
        sql.Identifier(STATE_DATABASE), sql.Literal(STATE_MARK + before.to_text())))


def interrupted_drill(drill: Settings, conn: Connection) -> Inventory | None:
    """What the server held before a drill that never finished (None: no such drill)."""
    with as_text(conn, "the drill server's inventory", "server"):
        row = conn.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database "
                           "WHERE datname = %s", (STATE_DATABASE,)).fetchone()
        if row is None:
            return None
        if row[0] is None and holds_nothing(drill, STATE_DATABASE):
            drop_database(conn, STATE_DATABASE)  # killed before its record was written: no more
            return None
        text = str(row[0] or "")
        if not text.startswith(STATE_MARK):
            raise ConfigError(f"DRILL_POSTGRES_HOST: the drill server has a database "
                              f"{STATE_DATABASE!r} that backupd did not create; drop it or use "
                              "another drill server")
        return Inventory.from_text(text[len(STATE_MARK):])


def created_databases(conn: Connection) -> list[str]:
    with as_text(conn, "the drill server's inventory", "server"):
        return [str(r[0]) for r in conn.execute(
            "SELECT datname FROM pg_database WHERE starts_with("
            "coalesce(shobj_description(oid, 'pg_database'), ''), %s) ORDER BY 1", (CLUSTER_MARK,))]


def _unmarked_new(drill: Settings, conn: Connection, before: Inventory) -> list[str]:
    with as_text(conn, "the drill server's inventory", "server"):
        # A drill killed between CREATE DATABASE and its mark leaves an empty database without
        # one: new since the recorded state, without a comment and holding nothing.
        names = [str(r[0]) for r in conn.execute(
            "SELECT datname FROM pg_database WHERE shobj_description(oid, 'pg_database') IS NULL "
            "AND NOT datistemplate AND datallowconn")]
        return [n for n in names if n not in before.databases and n != STATE_DATABASE
                and holds_nothing(drill, n)]


def restore_server(drill: Settings, conn: Connection, before: Inventory) -> list[str]:
    """Drop what a drill created on the drill server: the databases carrying the mark, the
    roles and tablespaces it did not have before, then the state database. Returns what
    could not be removed, one line each (the next drill tries again: the state stays)."""
    problems: list[str] = []
    for name in [*created_databases(conn), *_unmarked_new(drill, conn, before)]:
        try:
            drop_with_subscriptions(drill, conn, name)
        except (JobFailed, psycopg.Error) as exc:
            problems.append(f"database {name}: {describe_pg_error(exc)}")
    now = inventory(conn)
    # as_text: the names were read as text, and one that is not ASCII (e.g. "rôle") cannot be
    # sent back on a SQL_ASCII session, which psycopg takes for ASCII.
    for name in sorted(now.tablespaces - before.tablespaces):
        try:
            with as_text(conn, f"dropping tablespace {name!r}", "globals"):
                conn.execute(sql.SQL("DROP TABLESPACE {}").format(sql.Identifier(name)))
        except (JobFailed, psycopg.Error) as exc:
            problems.append(f"tablespace {name}: {describe_pg_error(exc)}")
    roles = sorted(now.roles - before.roles)
    if roles:
        # One statement: roles that are members of each other go together.
        idents = sql.SQL(", ").join(sql.Identifier(r) for r in roles)
        try:
            with as_text(conn, "dropping the drill's roles", "globals"), conn.transaction():
                conn.execute(sql.SQL("DROP OWNED BY {}").format(idents))
                conn.execute(sql.SQL("DROP ROLE {}").format(idents))
        except (JobFailed, psycopg.Error) as exc:
            problems.append(f"roles {', '.join(roles)}: {describe_pg_error(exc)}")
    if not problems:
        drop_database(conn, STATE_DATABASE)
    return problems

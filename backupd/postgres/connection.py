"""Talking to PostgreSQL: connections for backupd itself.

Child processes (pg_dump, psql, pg_restore) and their environments are the
supervisor's (backupd.pipeline.supervisor).
"""

from __future__ import annotations

import contextlib
import os
import socket
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import psycopg
from psycopg import sql

from backupd.cancel import CancelToken
from backupd.errors import ConfigError, JobFailed, JobSkipped
from backupd.pipeline.clients import note_server_major
from backupd.pipeline.config import APPLICATION_NAME
from backupd.pipeline.supervisor import tool_version
from backupd.postgres.not_held import NotHeld, Sent, not_held_failure
from backupd.postgres.not_text import NOT_TEXT_ERRORS, Catalogs, not_text_failure
from backupd.settings import Settings


def connect(settings: Settings, database: str | None = None) -> psycopg.Connection[tuple]:  # type: ignore[type-arg]
    """An autocommit connection; connection errors become JobFailed with libpq's reason
    and the setting to fix."""
    dbname = database or settings.postgres_db
    try:
        conn = psycopg.connect(
            host=settings.postgres_host,
            port=settings.postgres_port,
            user=settings.postgres_user,
            password=settings.password,
            dbname=dbname,
            connect_timeout=settings.postgres_connect_timeout,
            application_name=APPLICATION_NAME,
            autocommit=True,
        )
    except psycopg.OperationalError as exc:
        hint = connection_hint(exc, settings, dbname)
        raise JobFailed(f"cannot connect to PostgreSQL: {describe_pg_error(exc)}"
                        + (f"; {hint}" if hint else "")) from None
    note_server_major(server_major(conn))  # the client tools follow the server's major
    return conn


@contextmanager
def severed_on_cancel(conn: psycopg.Connection[tuple], cancel: CancelToken) -> Iterator[None]:  # type: ignore[type-arg]
    """While in the block, a cancel (shutdown, the watchdog) breaks ``conn``'s socket: a
    query waiting on a server that no longer answers (a frozen backend ignores a cancel
    request) ends at once with an OperationalError, instead of holding the job forever."""
    unregister = cancel.on_cancel(lambda: _sever(conn))
    try:
        yield
    finally:
        unregister()


def _sever(conn: psycopg.Connection[tuple]) -> None:  # type: ignore[type-arg]
    # shutdown(), not close(): the socket stays psycopg's to close; a blocked read returns.
    with contextlib.suppress(OSError, psycopg.Error), \
            socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
        sock.shutdown(socket.SHUT_RDWR)


# (sqlstate or libpq text, what to tell the user); the first match wins.
_AUTH_FAILED = ("28P01", "password authentication failed", "no password supplied",
                "password is required")
_UNKNOWN_HOST = ("could not translate host name", "failed to resolve host",
                 "Name or service not known", "nodename nor servname")
_UNREACHABLE = ("Connection refused", "timeout expired", "No route to host",
                "Network is unreachable", "No such file or directory")


def connection_hint(exc: psycopg.OperationalError, settings: Settings, database: str) -> str | None:
    """Which setting a failed connection points at (issue 11: name the setting to fix)."""
    text = str(exc)
    state = getattr(exc, "sqlstate", None)

    def matches(markers: tuple[str, ...]) -> bool:
        return any(marker == state or marker in text for marker in markers)

    if matches(_AUTH_FAILED):
        return (f"check POSTGRES_PASSWORD (or POSTGRES_PASSWORD_FILE) for user "
                f"{settings.postgres_user!r}")
    if state == "3D000" or ("database" in text and "does not exist" in text):
        if database == settings.postgres_db:
            return "check POSTGRES_DB (the database must exist; backupd does not create it)"
        return None  # a restore target or the maintenance database: libpq names it
    if "role" in text and "does not exist" in text:
        return "check POSTGRES_USER"
    if matches(_UNKNOWN_HOST):
        return f"check POSTGRES_HOST ({settings.postgres_host!r} is not a known host name)"
    if matches(_UNREACHABLE):
        return (f"check POSTGRES_HOST and POSTGRES_PORT (is PostgreSQL running and "
                f"listening on {settings.postgres_host}:{settings.postgres_port}?)")
    return None


def describe_pg_error(exc: BaseException) -> str:
    """libpq's message on one line (it may span several)."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def describe_error(exc: BaseException) -> str:
    """A psycopg error as :func:`describe_pg_error` gives it, any other (a JobFailed) as
    its own text: ours, said as written (its whitespace is kept)."""
    return describe_pg_error(exc) if isinstance(exc, psycopg.Error) else str(exc)


def server_version(conn: psycopg.Connection[tuple]) -> str:  # type: ignore[type-arg]
    # As the server reported it at connect time: text on any session. A query's column is
    # bytes on a SQL_ASCII session, which str() recorded as "b'15.20 ...'".
    return conn.info.parameter_status("server_version") or "unknown"


def server_major(conn: psycopg.Connection[tuple]) -> int:  # type: ignore[type-arg]
    return int(conn.info.server_version) // 10000


def check_pg_dump_not_older(conn: psycopg.Connection[tuple]) -> tuple[str, str]:  # type: ignore[type-arg]
    """(server version, pg_dump version); refuses a pg_dump older than the server."""
    server = server_version(conn)
    dump_text, dump_major = tool_version("pg_dump")
    if dump_major < server_major(conn):
        raise ConfigError(
            f"pg_dump {dump_text} is older than the server ({server}); install "
            f"postgresql-client-{server_major(conn)} (the backupd image carries 13 to 17) "
            "or put a newer pg_dump first on PATH"
        )
    return server, dump_text


def is_superuser(conn: psycopg.Connection[tuple]) -> bool:  # type: ignore[type-arg]
    """Whether the session's role is a superuser."""
    row = conn.execute("SELECT rolsuper FROM pg_catalog.pg_roles "
                       "WHERE rolname = current_user").fetchone()
    return bool(row and row[0])


# A database's name is sent as text (as_text): on a SQL_ASCII session psycopg encodes str
# as ASCII, so a name such as "café" could not be sent at all.


def database_exists(conn: psycopg.Connection[tuple], name: str) -> bool:  # type: ignore[type-arg]
    with as_text(conn):
        row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    return row is not None


def is_template(conn: psycopg.Connection[tuple], name: str) -> bool:  # type: ignore[type-arg]
    with as_text(conn):
        row = conn.execute("SELECT datistemplate FROM pg_database WHERE datname = %s",
                           (name,)).fetchone()
    return bool(row and row[0])


def create_database(conn: psycopg.Connection[tuple], name: str) -> None:  # type: ignore[type-arg]
    with as_text(conn):
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def drop_database(conn: psycopg.Connection[tuple], name: str) -> None:  # type: ignore[type-arg]
    with as_text(conn):
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))


def lock_key(purpose: str, database: str) -> int:
    # A stable signed 64-bit key; crc32 of both halves keeps it deterministic across processes.
    high = zlib.crc32(f"backupd:{purpose}".encode())
    low = zlib.crc32(database.encode())
    value = (high << 32) | low
    return value - (1 << 64) if value >= 1 << 63 else value


@contextmanager
def advisory_lock(settings: Settings, purpose: str = "dump", *,
                  open_connection: Callable[[Settings], psycopg.Connection[tuple]] | None = None,  # type: ignore[type-arg]
                  ) -> Iterator[None]:
    """Hold a session advisory lock on a dedicated connection for the duration of a job.

    Every backupd process pointed at the same database takes the same key, so two
    daemons (or a daemon and a one-off ``backupd backup``) never dump at once.
    ``open_connection``: where the lock is taken when POSTGRES_DB is not one database (a
    list or `*` names none to connect to), by default ``connect(settings)``.
    """
    conn = (open_connection or connect)(settings)
    try:
        key = lock_key(purpose, settings.postgres_db)
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
        if not row or not row[0]:
            raise JobSkipped(
                f"another backupd is already running a {purpose} job on database "
                f"{settings.postgres_db!r} (advisory lock held); this run was skipped"
            )
        yield
    finally:
        conn.close()  # closing the session releases the lock, also after a crash


@contextmanager
def as_text(conn: psycopg.Connection[tuple], reading: str = "backupd",  # type: ignore[type-arg]
            catalogs: Catalogs = "both", sending: Sequence[Sent] = ()) -> Iterator[None]:
    """On a SQL_ASCII session (a connection to a SQL_ASCII database) psycopg hands back bytes,
    not str, since it cannot know their encoding: names would be recorded as "b'app'" (and a
    name that is not ASCII cannot be sent as a parameter). The session reads as UTF8 for the
    while (the server converts nothing from SQL_ASCII, and refuses bytes that are not UTF-8),
    then gets its own client_encoding back.

    Any other session whose client encoding is not UTF8 (a LATIN1 database's, by default)
    speaks UTF8 for the while too, unless its server is SQL_ASCII: psycopg would encode what
    it sends in that encoding and fail on a character it lacks before the server, which
    converts, could take it. A character the database's encoding lacks too is then the
    server's refusal (22P05), and either becomes :class:`~backupd.postgres.not_held.NotHeld`,
    naming which of ``sending`` (the texts the block sends) holds it and the encoding that
    cannot, not a name to rename.

    A name that is not UTF-8 stops a read on any session, not only a SQL_ASCII one: on a UTF8
    cluster with a SQL_ASCII database, that database's sessions may name a database or role
    in any bytes, which a UTF8 session receives as they are (psycopg's UnicodeDecodeError).
    Either refusal becomes :class:`~backupd.postgres.not_text.NameNotText` naming the name
    that is not UTF-8 and ``reading``, what needed it (e.g. "the drill's comparison"); the
    name is looked for in ``catalogs``, those the read touches."""
    client = conn.info.parameter_status("client_encoding")
    # A SQL_ASCII server converts nothing: its other client encodings stay as they are.
    switched = client is not None and client != "UTF8" and (
        client == "SQL_ASCII" or conn.info.parameter_status("server_encoding") != "SQL_ASCII")
    if switched:
        conn.execute("SET client_encoding = 'UTF8'")
    refused: Exception | None = None
    not_held: NotHeld | None = None
    try:
        yield
    except (*NOT_TEXT_ERRORS, UnicodeEncodeError) as exc:
        not_held = not_held_failure(conn, exc, reading, sending)
        if not_held is None and isinstance(exc, UnicodeEncodeError):
            raise  # no character the session lacks (a lone surrogate): the error as it is
        refused = exc
    finally:
        # The server refused to send bytes that are not UTF-8 as UTF-8. Another error is
        # the caller's to handle, on a session left as it was unless it must be switched back.
        failed = conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        # A caller's transaction block that failed is the caller's to roll back: psycopg
        # forbids it here (its ProgrammingError would hide the real error) and the server
        # takes no SET in it; that rollback reverts this block's SET with the rest.
        callers = failed and in_transaction_block(conn)
        if failed and (switched or refused is not None) and not callers:
            conn.rollback()
        if switched and not callers:
            conn.execute(sql.SQL("SET client_encoding = {}").format(sql.Literal(client)))
    if not_held is not None:
        raise not_held from None
    if refused is not None:
        # Looked up as bytes, whatever the session's encoding (once a SQL_ASCII one is back).
        raise not_text_failure(conn, reading, refused, catalogs) from None


def in_transaction_block(conn: psycopg.Connection[tuple]) -> bool:  # type: ignore[type-arg]
    """Whether ``conn`` is inside a ``with conn.transaction():`` block. psycopg has no public
    way to ask: its own count is private, hence pyproject's upper bound on psycopg."""
    return conn._num_transactions > 0

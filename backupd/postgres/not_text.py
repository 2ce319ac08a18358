"""Names that are not UTF-8, found to say which one stopped a read.

On a SQL_ASCII database a name is bytes in no declared encoding (a Latin-1 client's ``café``
is ``caf\\xe9``), the server's names too (a database's, a role's), so a UTF8 cluster with one
SQL_ASCII database may hold them as well. backupd reads names as text
(:func:`backupd.postgres.connection.as_text`): a SQL_ASCII session's server refuses to send
such bytes as UTF-8, a UTF8 session's sends them and psycopg cannot decode them, neither
saying whose they are. This looks them up again as bytes, so the failure names the object,
its bytes escaped, and says to rename it. pg_dump still dumps such a database: only the step
that needs the name fails.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Literal

import psycopg
from psycopg.abc import Buffer
from psycopg.adapt import Loader

from backupd.errors import JobFailed
from backupd.postgres.globals_sql import quote_identifier

Connection = psycopg.Connection[tuple]  # type: ignore[type-arg]
Cursor = psycopg.Cursor[tuple]  # type: ignore[type-arg]

# What the server (or, should it pass them, psycopg) says of bytes that are not UTF-8.
NOT_TEXT_ERRORS = (UnicodeDecodeError, psycopg.errors.CharacterNotInRepertoire,
                   psycopg.errors.UntranslatableCharacter)

# Where the names a read needs are: the database's own objects, the server's (databases,
# roles, tablespaces: shared by every database), both, or the globals' (roles and tablespaces:
# what pg_dumpall --globals-only reads, not the databases). Only those are looked through, so
# that a name the read never touched is not blamed.
Catalogs = Literal["database", "server", "both", "globals"]

# kind, the ALTER statement that renames it, its parent (schema or table), its name.
_GLOBALS_NAMES = """
    SELECT 'role', 'ALTER ROLE', NULL::text, rolname FROM pg_roles
    UNION ALL SELECT 'tablespace', 'ALTER TABLESPACE', NULL, spcname FROM pg_tablespace"""
# The server's: its databases, then the globals'.
_SERVER_NAMES = ("SELECT 'database', 'ALTER DATABASE', NULL::text, datname FROM pg_database",
                 _GLOBALS_NAMES)
# Schemas before what is in them, relations before their row types.
_DATABASE_NAMES = """
    SELECT 'schema', 'ALTER SCHEMA', NULL::text, nspname FROM pg_namespace
    UNION ALL SELECT k.kind, k.alter, n.nspname, c.relname
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      JOIN (VALUES ('r', 'table', 'ALTER TABLE'), ('p', 'table', 'ALTER TABLE'),
                   ('f', 'foreign table', 'ALTER FOREIGN TABLE'), ('v', 'view', 'ALTER VIEW'),
                   ('m', 'materialized view', 'ALTER MATERIALIZED VIEW'),
                   ('S', 'sequence', 'ALTER SEQUENCE'), ('i', 'index', 'ALTER INDEX'),
                   ('I', 'index', 'ALTER INDEX'), ('c', 'type', 'ALTER TYPE'))
        AS k (relkind, kind, alter) ON k.relkind = c.relkind::text
    UNION ALL SELECT CASE p.prokind WHEN 'p' THEN 'procedure' WHEN 'a' THEN 'aggregate'
                                    ELSE 'function' END,
                     CASE p.prokind WHEN 'p' THEN 'ALTER PROCEDURE' WHEN 'a' THEN 'ALTER AGGREGATE'
                                    ELSE 'ALTER FUNCTION' END, n.nspname, p.proname
      FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
    UNION ALL SELECT 'type', 'ALTER TYPE', n.nspname, t.typname
      FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
      WHERE t.typrelid = 0 AND t.typcategory <> 'A'
    UNION ALL SELECT 'column', 'ALTER TABLE',
                     format('%I.%I', n.nspname, c.relname), a.attname
      FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
      JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE a.attnum > 0 AND NOT a.attisdropped AND c.oid >= 16384"""
_SERVER_KINDS = frozenset({"database", "role", "tablespace"})  # those of _SERVER_NAMES
_QUERIES: dict[str, tuple[str, ...]] = {
    "database": (_DATABASE_NAMES,), "server": _SERVER_NAMES,
    "both": (_DATABASE_NAMES, *_SERVER_NAMES), "globals": (_GLOBALS_NAMES,)}

# How a server refuses bytes that are not text in the session's encoding, as a client tool
# (pg_dumpall) prints it: SQLSTATE 22021 and 22P05, whose codes its stderr does not carry.
NOT_TEXT_MESSAGES = ("invalid byte sequence for encoding", "has no equivalent in encoding")

_PLAIN_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_$]*")


class NameNotText(JobFailed):
    """A name that is not UTF-8 (made on a SQL_ASCII database) stopped a read that needs it as
    text."""


class RawBytes(Loader):
    """A name or text column as the bytes the server sent, whatever the session's encoding."""

    def load(self, data: Buffer) -> bytes:
        return bytes(data)


def raw_cursor(conn: Connection, column_types: Iterable[str] = ("name", "text")) -> Cursor:
    """A cursor on ``conn`` that hands back columns of ``column_types`` as :class:`RawBytes`,
    so that a name that is not text in the session's encoding is read, not refused."""
    cursor = conn.cursor()
    for column_type in column_types:
        cursor.adapters.register_loader(column_type, RawBytes)
    return cursor


def unnamed_database(name: str) -> str:
    """Why ``name`` (:func:`shown`), a database whose name is not UTF-8, is in no backup."""
    return (f"database {name} on the server has a name that is not UTF-8 (a SQL_ASCII cluster "
            "keeps names as bytes), which backupd cannot put in its settings, file names and "
            "manifests, so POSTGRES_DB='*' does not back it up; rename it to a UTF-8 name "
            "(ALTER DATABASE … RENAME TO …)")


def _escaped(raw: object) -> str:
    return raw.decode("utf-8", "backslashreplace") if isinstance(raw, bytes) else str(raw)


def shown(raw: object) -> str:
    """A name as SQL would write it, a byte that is not UTF-8 escaped (``"caf\\xe9"``)."""
    text = _escaped(raw)
    return text if _PLAIN_IDENTIFIER.fullmatch(text) else quote_identifier(text)


def _is_text(raw: object) -> bool:
    if not isinstance(raw, bytes):
        return True
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def not_text_failure(conn: Connection, reading: str, cause: Exception,
                     catalogs: Catalogs = "both") -> NameNotText:
    """The failure to raise for ``cause``: which name in ``catalogs`` is not UTF-8, and what
    to do about it. The names are read as bytes on any session: a SQL_ASCII one hands them
    back so anyway, but a UTF8 one (a mixed cluster's) would fail on them again as text."""
    try:
        cursor = raw_cursor(conn)
        row = cursor.execute("SELECT current_database()").fetchone()
        database = shown(row[0]) if row else "?"
        offending = [(_escaped(kind), _escaped(alter), parent, name)
                     for query in _QUERIES[catalogs]
                     for kind, alter, parent, name in cursor.execute(query).fetchall()
                     if not _is_text(name)]
    except psycopg.Error:
        offending, database = [], "?"
    if not offending:
        said = " ".join(str(cause).split())  # one line, as libpq's may span several
        return NameNotText(
            f"a name or text read from database {database} for {reading} is not UTF-8 "
            f"({said}); a SQL_ASCII database takes any bytes for a name, and backupd needs "
            "names as UTF-8: rename what holds other bytes to a UTF-8 name")
    kind, alter, parent, name = offending[0]
    what = f"{kind} {shown(name)}" if parent is None else (
        f"{kind} {shown(parent)}.{shown(name)}" if kind != "column"
        else f"column {shown(name)} of table {_escaped(parent)}")
    where = "on the server" if kind in _SERVER_KINDS else f"in database {database}"
    how = "ALTER TABLE … RENAME COLUMN … TO …" if kind == "column" else f"{alter} … RENAME TO …"
    more = len(offending) - 1
    return NameNotText(
        f"{what} {where} has a name that is not UTF-8 (made on a SQL_ASCII database, which "
        f"takes any bytes for a name), which {reading} needs as text; rename it to a UTF-8 "
        f"name ({how})"
        + (f"; {more} more name(s) there are not UTF-8 either" if more else ""))

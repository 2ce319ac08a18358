"""Tablespaces when a backup is restored onto a server that may not have its backup's.

A backup records the database's default tablespace (``DatabaseProperties.tablespace``) and
the other tablespaces its tables and indexes were in (``Manifest.object_tablespaces``).
A tablespace is a directory on the database server's disk, the administrator's to make:
backupd never creates directories there, and a new server (or a drill server) often has
none of the old one's.

The choice made here: a tablespace the restore cannot use (the target server lacks it, or
the restoring role may not create in it) does not stop the restore, and is never silently
dropped either.

* The database is created in its recorded tablespace when the server has it and the
  restoring role may create databases there; otherwise in the server's default tablespace.
* Objects stay in their tablespace when the restoring role may create in it, or when it is
  the one the database was created in (PostgreSQL checks no privilege there). Every other
  one's objects are created in the database's default tablespace: pg_default's too, which
  pg_dump names (``SET default_tablespace = pg_default;``) for a database in another one,
  and on which a role that is not a superuser has no CREATE. Plain SQL: pg_dump's
  ``SET default_tablespace = x;`` for that ``x`` becomes ``SET default_tablespace = '';``
  (backupd.pipeline.tablespace_sets); custom and directory format: ``pg_restore
  --no-tablespaces``, which pg_restore applies to every object.
* One warning per database names each tablespace left out, why, and what to run to put
  the database and its objects back there (:func:`fallback_warning`): make the tablespace,
  or grant the role CREATE on it.
* Names are read in the session's encoding (pg_tablespace is the whole cluster's: each name
  is in the bytes of the session that made it). A name that cannot be read so (its bytes
  replaced by U+FFFD: two such names may read alike) is never one the restore uses.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import psycopg

from backupd.database_properties import DatabaseProperties
from backupd.postgres.connection import as_text
from backupd.postgres.globals_sql import quote_identifier
from backupd.postgres.not_held import py_codec
from backupd.postgres.not_text import raw_cursor

Connection = psycopg.Connection[tuple]  # type: ignore[type-arg]

DEFAULT_TABLESPACE = "pg_default"
# How to make a tablespace: the part backupd cannot do for the administrator.
MAKE_ONE = ("an empty directory owned by the server's OS user, then "
            "CREATE TABLESPACE name LOCATION '<directory>'")

# What a byte that the session's encoding cannot decode is read as.
REPLACED = "\ufffd"

# Why pg_restore could meet a tablespace the restore did not leave out: its backup's manifest
# did not list it. An older backup lists no object tablespaces at all; a newer one's list is
# read just before pg_dump starts (not in its snapshot), so an object moved meanwhile is not
# in it.
_OLDER = ("its manifest does not list its objects' tablespaces (a backup from before they "
          "were recorded)")
_MISSED = ("its manifest does not list it (read just before the dump started: an object put "
           "there meanwhile is not in the list)")
# PostgreSQL's words (aclcheck_error) for CREATE in a tablespace the role has no CREATE on.
_DENIED = re.compile(r"permission denied for tablespace (.+?)\s*$")


def unlisted_hint(problem: str, role: str | None,
                  listed: tuple[str, ...] | None) -> str | None:
    """What to do about pg_restore's ``problem`` when it failed on a tablespace, as the
    warning for a backup whose tablespaces were left out says it; None when ``problem`` is
    not about a tablespace. ``role``: the restoring role. ``listed``: the tablespaces the
    backup's manifest lists for its objects, None for an older backup that lists none:
    only then is it said to be one."""
    why = _OLDER if listed is None else _MISSED
    if "default_tablespace" in problem:
        return (f"the backup has objects in a tablespace this server lacks, and {why}: make "
                f"that tablespace ({MAKE_ONE}) and restore again")
    denied = _DENIED.search(problem)
    if denied is None:
        return None
    name = denied.group(1)
    # A role unknown is said in prose: a GRANT naming a placeholder would look pasteable.
    # Unusable.grant gives none for a name read with bytes replaced: said in prose too.
    known = Unusable(name, lacking_create=role).grant if role is not None else None
    grant = known or f"grant CREATE on tablespace {quote_identifier(name)} to the restoring role"
    way_out = f"{grant}, or restore as a role that may create in it"
    if listed is not None and name in listed:
        # Listed, so not left out: the role may have lost CREATE on it since it was looked at.
        return (f"the backup has objects in tablespace {name!r}, which the restoring role may "
                f"not create in: {way_out}")
    return (f"the backup has objects in tablespace {name!r}, which the restoring role may not "
            f"create in, and {why}, so the restore could not leave them out: {way_out}")


@dataclass(frozen=True)
class ServerTablespaces:
    """A server's tablespaces (pg_global aside), as the restoring role sees them."""

    present: frozenset[str]
    creatable: frozenset[str]  # those it may create in (CREATE on them)
    role: str  # the restoring role (current_user)
    # The encoding the names were read in (a PostgreSQL name), for reading a dump's alike.
    encoding: str | None = None

    def unusable(self, name: str) -> Unusable:
        """``name``, which the role may not create in, and why."""
        return Unusable(name, lacking_create=self.role if name in self.present
                        and readable(name) else None)


def readable(name: str) -> bool:
    """Whether ``name`` was read as it is (no byte of it replaced): only then may it be
    matched, as a name that had bytes replaced may read like another one."""
    return REPLACED not in name


def _names(conn: Connection, query: str, params: tuple[Any, ...] | None = None,
           encoding: str | None = None) -> list[tuple[str, ...]]:
    """The rows of ``query`` (names, text and booleans as text), decoded in ``encoding`` (a
    PostgreSQL encoding name: that of the database the names are to match, whose session
    made them) or else the session's; as UTF-8 for SQL_ASCII, which has none. The bytes not
    valid in it are replaced (see :func:`readable`). pg_tablespace is the whole cluster's:
    a session on a LATIN1 or SQL_ASCII database may have named a tablespace in Latin-1,
    which a UTF-8 session cannot decode and the server refuses to send as UTF-8
    (connection.as_text).
    Read so, that name matches no backup's (its objects go to the default tablespace,
    reported like the others) instead of failing every restore onto the server."""
    codec = name_codec(encoding or conn.info.parameter_status("client_encoding"))
    cursor = raw_cursor(conn, ("name", "text", "bool"))
    return [tuple(bytes(value).decode(codec, "replace") for value in row)
            for row in cursor.execute(query, params).fetchall()]


def name_codec(encoding: str | None) -> str:
    """The Python codec names in the PostgreSQL ``encoding`` are read with: UTF-8 for
    SQL_ASCII (which has none), for an encoding Python lacks, and for None."""
    return (py_codec(encoding) if encoding != "SQL_ASCII" else None) or "utf-8"


def server_tablespaces(conn: Connection, encoding: str | None = None) -> ServerTablespaces:
    """The server's tablespaces, their names read in ``encoding`` (that of the database to
    be restored, as its backup read them; None: the session's, which is then the one
    recorded, so that a dump's names are read in it too)."""
    encoding = encoding or conn.info.parameter_status("client_encoding")
    rows = _names(conn, "SELECT spcname, has_tablespace_privilege(oid, 'CREATE'), current_user "
                        "FROM pg_catalog.pg_tablespace WHERE spcname <> 'pg_global'",
                  encoding=encoding)
    role = rows[0][2] if rows else ""
    return ServerTablespaces(frozenset(name for name, _, _ in rows),
                             frozenset(name for name, may, _ in rows
                                       if may == "t" and readable(name)), role, encoding)


def object_tablespaces(conn: Connection) -> list[str]:
    """The tablespaces other than the database's default that tables, indexes and
    materialized views of the database ``conn`` is connected to are in."""
    rows = _names(conn, "SELECT DISTINCT t.spcname FROM pg_catalog.pg_class c "
                        "JOIN pg_catalog.pg_tablespace t ON t.oid = c.reltablespace "
                        # Temporary tables (any session's, in temp_tablespaces) are in no dump.
                        "WHERE t.spcname <> 'pg_global' AND c.relpersistence <> 't' "
                        "ORDER BY 1")
    return [name for (name,) in rows]


def database_tablespace(conn: Connection, database: str, encoding: str | None = None) -> str:
    """The tablespace ``database`` is in (where CREATE DATABASE actually put it), its name
    read in ``encoding`` (see :func:`server_tablespaces`)."""
    with as_text(conn):  # the name sent as text; the tablespace's read as _names reads it
        row = conn.execute("SELECT oid FROM pg_catalog.pg_database WHERE datname = %s",
                           (database,)).fetchone()
    rows = [] if row is None else _names(
        conn, "SELECT t.spcname FROM pg_catalog.pg_database d JOIN pg_catalog.pg_tablespace t "
              "ON t.oid = d.dattablespace WHERE d.oid = %s", (row[0],), encoding)
    return rows[0][0] if rows else DEFAULT_TABLESPACE


@dataclass(frozen=True)
class Unusable:
    """A tablespace of the backup's that the restore did not use, and why."""

    name: str
    # The restoring role, when the server has the tablespace but the role may not create in
    # it; None when the server has no such tablespace.
    lacking_create: str | None = None

    @property
    def unreadable(self) -> bool:
        """Its name had bytes replaced (see :func:`readable`): never matched."""
        return not readable(self.name)

    @property
    def why(self) -> str:
        if self.unreadable:
            return ("its name could not be read reliably: bytes not valid in the session's "
                    "encoding, and names that differ only there read alike")
        if self.lacking_create is None:
            return "no such tablespace here"
        return f"role {self.lacking_create!r} may not create in it"

    @property
    def grant(self) -> str | None:
        """What lets the role use it (None: it must be made first, or is unreadable)."""
        if self.lacking_create is None or self.unreadable:
            return None
        return (f"GRANT CREATE ON TABLESPACE {quote_identifier(self.name)} "
                f"TO {quote_identifier(self.lacking_create)}")


@dataclass(frozen=True)
class Placement:
    """Where a restore creates a database, against where its backup had it."""

    tablespace: str | None = None  # CREATE DATABASE ... TABLESPACE (None: the server's default)
    missing: Unusable | None = None  # the backup's default tablespace, when it could not be used
    # Where the database then is (read back once created).
    landed: str = DEFAULT_TABLESPACE

    def expected(self, properties: DatabaseProperties) -> DatabaseProperties:
        """``properties`` as this restore reproduces them (see :func:`expected_without`)."""
        return expected_without(properties, () if self.missing is None
                                else (self.missing.name,))


def expected_without(properties: DatabaseProperties,
                     missing: Collection[str]) -> DatabaseProperties:
    """``properties`` as a restore without the tablespaces ``missing`` reproduces them: a
    default tablespace it could not use is not expected back (and so not compared)."""
    if properties.tablespace not in missing:
        return properties
    return properties.model_copy(update={"tablespace": None})


def place(properties: DatabaseProperties | None, server: ServerTablespaces) -> Placement:
    """Where to create a database restored with ``properties`` on ``server``."""
    wanted = properties.tablespace if properties is not None else None
    if wanted is None or wanted == DEFAULT_TABLESPACE:
        # pg_default is template0's: no TABLESPACE clause, which needs no privilege on it.
        return Placement()
    if wanted in server.creatable:
        return Placement(tablespace=wanted)
    return Placement(missing=server.unusable(wanted))


@dataclass(frozen=True)
class ObjectTablespaces:
    """The tablespaces a restore keeps the backup's tables and indexes in: those the
    restoring role may create in, and the one the database was created in."""

    server: ServerTablespaces
    database: str  # Placement.landed

    @property
    def kept(self) -> frozenset[str]:
        return frozenset(name for name in self.server.creatable | {self.database}
                         if readable(name))

    def left_out(self, names: Collection[str]) -> tuple[Unusable, ...]:
        """Of the tablespaces ``names`` (the backup's objects'), those not kept, and why."""
        return tuple(self.server.unusable(name) for name in sorted(set(names) - self.kept))

    def without_any(self, names: Collection[str]) -> ObjectsPlaced:
        """pg_restore --no-tablespaces for a backup whose objects were in ``names``: those
        left out, and with them every other one's objects, moved too."""
        return ObjectsPlaced(self.left_out(names), every_object=True,
                             also_moved=tuple(sorted(set(names) & self.kept - {self.database})))


@dataclass(frozen=True)
class ObjectsPlaced:
    """Tablespaces of the backup's objects the restore did not use, and where they went."""

    left_out: tuple[Unusable, ...] = ()  # their objects went to the database's default one
    every_object: bool = False  # pg_restore --no-tablespaces: every object went there
    # With every_object: the tablespaces it could have used, whose objects went there too.
    also_moved: tuple[str, ...] = ()


def fallback_warning(database: str, placement: Placement, objects: ObjectsPlaced, *,
                     recorded: Collection[str] = (), drill_copy: bool = False) -> str | None:
    """The one warning for a database restored without some of its tablespaces: which, why,
    where the database and its objects went instead, and what to run to put them back.
    ``recorded``: the tablespaces the backup lists objects in (Manifest.object_tablespaces):
    with pg_default among them, a database that went to the default tablespace took those
    objects as its own, and ALTER DATABASE ... SET TABLESPACE takes them along: they are to
    be moved back after it. ``drill_copy``: ``database`` is a drill's copy, which the drill
    drops: nothing is to be put back (the ALTERs would name the copy, or mislead into
    running them on the live database), only what would let a drill use the tablespaces."""
    if placement.missing is None and not objects.left_out:
        return None
    went: list[str] = []
    alter: list[str] = []
    moved_back: set[str] = set()
    if placement.missing is not None:
        went.append(f"the database into the default tablespace instead of "
                    f"{placement.missing.name!r} ({placement.missing.why})")
        alter.append(f"ALTER DATABASE {quote_identifier(database)} SET TABLESPACE "
                     f"{_named(placement.missing)} (with no one connected to it)")
        if DEFAULT_TABLESPACE in recorded:
            went.append(f"its objects in {DEFAULT_TABLESPACE!r} as the database's own, which "
                        "that ALTER DATABASE takes along")
            moved_back.add(DEFAULT_TABLESPACE)
    if objects.left_out:
        names = ", ".join(f"{space.name!r} ({space.why})" for space in objects.left_out)
        every = " (pg_restore --no-tablespaces moves every object)" if objects.every_object else ""
        went.append(f"its tables and indexes in {names} into the database's default "
                    f"tablespace{every}")
    if objects.also_moved:
        went.append(f"with them those in {', '.join(map(repr, objects.also_moved))}, which "
                    "it could use")
    spaces = {space.name: space for space in objects.left_out}
    alter += [f"ALTER TABLE / ALTER INDEX / ALTER MATERIALIZED VIEW ... SET TABLESPACE "
              f"{_named(spaces.get(name, Unusable(name)))} for each object the backup lists "
              f"with 'Tablespace: {name}'"
              for name in sorted({*spaces, *objects.also_moved, *moved_back})]
    unusable = [*([placement.missing] if placement.missing is not None else []),
                *objects.left_out]
    absent = sorted({space.name for space in unusable
                     if space.grant is None and not space.unreadable})
    grants = sorted({space.grant for space in unusable if space.grant is not None})
    unreadable = sorted({space.name for space in unusable if space.unreadable})
    first = ([f"make {', '.join(map(repr, absent))} ({MAKE_ONE})"] if absent else []) + grants
    if unreadable:
        first.append(f"find which tablespace {', '.join(map(repr, unreadable))} stands for "
                     "(its name is in another encoding than the session that read it; "
                     "rename it to a name in the database's encoding for later backups)")
    what = f"database {database!r} was restored without some of its tablespaces: "
    if drill_copy:
        return (f"the drill's copy, {what}" + "; ".join(went) + ". Nothing to put back: the "
                "drill drops its copy. To drill the tablespaces too, " + "; ".join(first))
    return what + "; ".join(went) + (". To put them back, " + "; ".join(first)
                                     + "; then run " + "; ".join(alter))


def _named(space: Unusable) -> str:
    """The tablespace to name in an ALTER: ``space`` itself, or a placeholder for one whose
    name could not be read."""
    return "<that tablespace>" if space.unreadable else quote_identifier(space.name)

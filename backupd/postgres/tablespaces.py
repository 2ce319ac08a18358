"""Tablespaces when a backup is restored onto a server that may not have its backup's.

A backup records the database's default tablespace (``DatabaseProperties.tablespace``) and
the other tablespaces its tables and indexes were in (``Manifest.object_tablespaces``).
A tablespace is a directory on the database server's disk, the administrator's to make:
backupd never creates directories there, and a new server (or a drill server) often has
none of the old one's.

The choice made here: a tablespace the target server lacks does not stop the restore, and
is never silently dropped either.

* The database is created in its recorded tablespace when the server has it and the
  restoring role may create databases there; otherwise in the server's default tablespace.
* Objects the backup has in a tablespace the server lacks are created in the database's
  default tablespace (plain SQL: pg_dump's ``SET default_tablespace = x;`` for that ``x``
  becomes ``SET default_tablespace = '';``, see backupd.pipeline.tablespace_sets; custom and
  directory format: ``pg_restore --no-tablespaces``, which pg_restore applies to every
  object). Objects in tablespaces the server has stay in them.
* One warning per database names each tablespace left out and what to run to put the
  database and its objects back there (:func:`fallback_warning`).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import psycopg

from backupd.database_properties import DatabaseProperties
from backupd.postgres.globals_sql import quote_identifier

Connection = psycopg.Connection[tuple]  # type: ignore[type-arg]

DEFAULT_TABLESPACE = "pg_default"
# How to make a tablespace: the part backupd cannot do for the administrator.
MAKE_ONE = ("an empty directory owned by the server's OS user, then "
            "CREATE TABLESPACE name LOCATION '<directory>'")

# pg_restore failing on a tablespace its backup's manifest did not list (an older backup).
UNLISTED_HINT = ("the backup has objects in a tablespace this server lacks, and its manifest "
                 "does not list them (a backup from before they were recorded): make that "
                 f"tablespace ({MAKE_ONE}) and restore again")


@dataclass(frozen=True)
class ServerTablespaces:
    """A server's tablespaces (pg_global aside), as the restoring role sees them."""

    present: frozenset[str]
    creatable: frozenset[str]  # those it may create a database in (CREATE on them)


def server_tablespaces(conn: Connection) -> ServerTablespaces:
    rows = conn.execute("SELECT spcname, has_tablespace_privilege(oid, 'CREATE') "
                        "FROM pg_catalog.pg_tablespace WHERE spcname <> 'pg_global'").fetchall()
    return ServerTablespaces(frozenset(_text(name) for name, _ in rows),
                             frozenset(_text(name) for name, may in rows if may))


def _text(name: object) -> str:
    # A SQL_ASCII session hands back bytes (see databases.read_properties).
    return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)


def object_tablespaces(conn: Connection) -> list[str]:
    """The tablespaces other than the database's default that tables, indexes and
    materialized views of the database ``conn`` is connected to are in."""
    rows = conn.execute(
        "SELECT DISTINCT t.spcname FROM pg_catalog.pg_class c "
        "JOIN pg_catalog.pg_tablespace t ON t.oid = c.reltablespace "
        # Temporary tables (any session's, in temp_tablespaces) are in no dump.
        "WHERE t.spcname <> 'pg_global' AND c.relpersistence <> 't' ORDER BY 1").fetchall()
    return [_text(name) for (name,) in rows]


@dataclass(frozen=True)
class Placement:
    """Where a restore creates a database, against where its backup had it."""

    tablespace: str | None = None  # CREATE DATABASE ... TABLESPACE (None: the server's default)
    missing: str | None = None  # the backup's default tablespace, when it could not be used
    why: str = ""  # why not

    def expected(self, properties: DatabaseProperties) -> DatabaseProperties:
        """``properties`` as this restore reproduces them (see :func:`expected_without`)."""
        return expected_without(properties, () if self.missing is None else (self.missing,))


def expected_without(properties: DatabaseProperties,
                     missing: Collection[str]) -> DatabaseProperties:
    """``properties`` as a restore without the tablespaces ``missing`` reproduces them: a
    default tablespace it could not use is not expected back (and so not compared)."""
    if properties.tablespace not in missing:
        return properties
    return properties.model_copy(update={"tablespace": None})


def place(properties: DatabaseProperties | None, server: ServerTablespaces,
          role: str) -> Placement:
    """Where to create a database restored with ``properties`` (by ``role``) on ``server``."""
    wanted = properties.tablespace if properties is not None else None
    if wanted is None or wanted == DEFAULT_TABLESPACE:
        # pg_default is template0's: no TABLESPACE clause, which needs no privilege on it.
        return Placement()
    if wanted in server.creatable:
        return Placement(tablespace=wanted)
    if wanted in server.present:
        why = (f"role {role!r} may not create databases in it: GRANT CREATE ON TABLESPACE "
               f"{quote_identifier(wanted)} TO {quote_identifier(role)}")
    else:
        why = "no such tablespace here"
    return Placement(missing=wanted, why=why)


@dataclass(frozen=True)
class ObjectsPlaced:
    """Tablespaces of the backup's objects that the server lacks, and where they went."""

    missing: tuple[str, ...] = ()  # their objects went to the database's default tablespace
    every_object: bool = False  # pg_restore --no-tablespaces: every object went there


def missing_for_objects(recorded: list[str] | None, server: ServerTablespaces) -> list[str]:
    """Of the tablespaces a backup's objects were in (None: not recorded), those the server
    lacks."""
    return sorted(set(recorded or ()) - server.present)


def fallback_warning(database: str, placement: Placement, objects: ObjectsPlaced) -> str | None:
    """The one warning for a database restored without some of its tablespaces: which, where
    the database and its objects went instead, and what to run to put them back."""
    if placement.missing is None and not objects.missing:
        return None
    went: list[str] = []
    todo: list[str] = []
    if placement.missing is not None:
        went.append(f"the database into the default tablespace instead of "
                    f"{placement.missing!r} ({placement.why})")
        todo.append(f"ALTER DATABASE {quote_identifier(database)} SET TABLESPACE "
                    f"{quote_identifier(placement.missing)} (with no one connected to it)")
    if objects.missing:
        names = ", ".join(map(repr, objects.missing))
        every = (" (pg_restore --no-tablespaces: every object, also those in tablespaces "
                 "this server has)" if objects.every_object else "")
        went.append(f"its tables and indexes in {names} (no such tablespace here) into the "
                    f"database's default tablespace{every}")
        todo += [f"ALTER TABLE / ALTER INDEX / ALTER MATERIALIZED VIEW ... SET TABLESPACE "
                 f"{quote_identifier(name)} for each object the backup lists with "
                 f"'Tablespace: {name}'"
                 for name in objects.missing]
    return (f"database {database!r} was restored without tablespaces this server lacks: "
            + "; ".join(went) + f". To put them back, make each tablespace ({MAKE_ONE}), "
            "then run " + "; ".join(todo))

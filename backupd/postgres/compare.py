"""Comparing a restored drill database with the live one.

Three sources of truth meet here:

* the live database, now;
* the restored copy, which is exactly what the backup holds;
* the row counts written into the manifest when the backup was taken
  (:func:`table_row_counts`), the only record of what the database held *then*.

A difference the backup should not have is a failure: an object of the live
database (table, view, sequence, function, index) that the restore lacks, a table
the manifest says existed at backup time that the restore lacks, or a table that
had rows at backup time and is empty in the restore. Everything else that differs
is drift -- rows written or objects changed since the backup -- and is reported,
never failed on. An object created after the backup was taken cannot be told from
one the backup lost (PostgreSQL records no creation time), so it counts as
missing: take a new backup after a migration, and the next drill is clean.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

from backupd.database_properties import DatabaseProperties, differences
from backupd.postgres.connection import as_text

# Row counts must not hurt the live database: tables up to this size are counted
# exactly (a sequential scan of a small table is cheap), larger ones use the
# planner's estimate plus an exact "is it empty?" probe, and the exact counting of
# one database stops after this many bytes in total.
EXACT_COUNT_MAX_TABLE_BYTES = 64 * 1024 * 1024
EXACT_COUNT_BUDGET_BYTES = 1024 * 1024 * 1024
# A table locked by a migration is estimated rather than waited for.
COUNT_LOCK_TIMEOUT = "2s"
COUNT_STATEMENT_TIMEOUT = "60s"
# How many differences the one-line summary names before "and N more".
SUMMARY_ITEMS = 3

# User objects only: the system schemas and toast/temp namespaces are the server's business.
# (Written out in every query rather than spliced in, so no SQL is built from strings.)

# kind -> query yielding one unambiguous identity per object (identifiers quoted by %I).
_OBJECT_QUERIES: dict[str, str] = {
    "table": """
        SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p', 'f')
          AND n.nspname NOT IN ('pg_catalog', 'information_schema')
          AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'""",
    "view": """
        SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('v', 'm')
          AND n.nspname NOT IN ('pg_catalog', 'information_schema')
          AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'""",
    "sequence": """
        SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind = 'S'
          AND n.nspname NOT IN ('pg_catalog', 'information_schema')
          AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'""",
    "function": """
        SELECT format('%I.%I(%s)', n.nspname, p.proname,
                      pg_get_function_identity_arguments(p.oid))
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
          AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'""",
    "index": """
        SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('i', 'I')
          AND n.nspname NOT IN ('pg_catalog', 'information_schema')
          AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'""",
}
KINDS = tuple(_OBJECT_QUERIES)
_PLURALS = {"index": "indexes"}

# Only ordinary tables (partitions included) hold rows of their own: a partitioned
# parent would count its partitions twice, and a foreign table lives elsewhere.
_COUNTABLE_TABLES = """
    SELECT format('%I.%I', n.nspname, c.relname), n.nspname, c.relname,
           pg_relation_size(c.oid), c.reltuples, coalesce(s.n_live_tup, 0)
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
    WHERE c.relkind = 'r'
      AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
    ORDER BY pg_relation_size(c.oid), 1"""

Connection = psycopg.Connection[tuple]  # type: ignore[type-arg]


@dataclass(frozen=True)
class RowCount:
    rows: int
    exact: bool

    def __str__(self) -> str:
        return f"{self.rows}" if self.exact else f"~{self.rows}"


@dataclass
class Catalog:
    """What one database holds: object identities per kind, and rows per table."""

    objects: dict[str, set[str]]
    rows: dict[str, RowCount]


def read_catalog(conn: Connection, counted: Callable[[], None] = lambda: None) -> Catalog:
    with as_text(conn, "the drill's comparison", "database"):
        objects = {kind: {str(row[0]) for row in conn.execute(query)}
                   for kind, query in _OBJECT_QUERIES.items()}
        return Catalog(objects, count_rows(conn, counted))


def count_rows(conn: Connection,
               counted: Callable[[], None] = lambda: None) -> dict[str, RowCount]:
    """Rows per table: exact for small tables (within a byte budget), else estimated;
    ``counted()`` after each table (the job's progress: the stall watchdog).

    An estimate is never 0 for a table that has a row, nor above 0 for an empty
    one: emptiness is always probed exactly (it reads at most one page).
    """
    with as_text(conn, "the count of the tables' rows", "database"):
        conn.execute("SELECT set_config('lock_timeout', %s, false)", (COUNT_LOCK_TIMEOUT,))
        conn.execute("SELECT set_config('statement_timeout', %s, false)",
                     (COUNT_STATEMENT_TIMEOUT,))
        budget = EXACT_COUNT_BUDGET_BYTES
        counts: dict[str, RowCount] = {}
        for identity, schema, table, size, reltuples, live_tuples in conn.execute(
                _COUNTABLE_TABLES).fetchall():
            counted()
            relation = sql.Identifier(schema, table)
            if size <= EXACT_COUNT_MAX_TABLE_BYTES and size <= budget:
                exact = _try_scalar(conn, sql.SQL("SELECT count(*) FROM {}").format(relation))
                if exact is not None:
                    budget -= size
                    counts[identity] = RowCount(int(exact), True)
                    continue
            has_rows = _try_scalar(conn, sql.SQL("SELECT EXISTS (SELECT FROM {})").format(relation))
            estimate = max(int(reltuples), int(live_tuples), 0)
            if has_rows is False:
                estimate = 0
            elif has_rows and estimate == 0:
                estimate = 1  # "at least one": stale statistics must not call a full table empty
            counts[identity] = RowCount(estimate, False)
        conn.execute("RESET statement_timeout")
        conn.execute("RESET lock_timeout")
        return counts


def _try_scalar(conn: Connection, query: sql.Composed) -> Any:
    """The single value of ``query``, or None when it hit the lock or statement timeout."""
    try:
        row = conn.execute(query).fetchone()
    except (pg_errors.LockNotAvailable, pg_errors.QueryCanceled):
        return None
    return row[0] if row else None


def table_row_counts(conn: Connection,
                     counted: Callable[[], None] = lambda: None) -> dict[str, int]:
    """Rows per table for the manifest at backup time (see :func:`count_rows`)."""
    return {name: count.rows for name, count in count_rows(conn, counted).items()}


@dataclass
class Comparison:
    differences: list[str] = field(default_factory=list)  # what the backup lacks: failures
    drift: list[str] = field(default_factory=list)  # what changed since the backup
    warnings: list[str] = field(default_factory=list)
    objects_compared: dict[str, int] = field(default_factory=dict)
    drift_rows: int = 0
    properties_compared: bool = False
    roles_compared: bool = False

    @property
    def ok(self) -> bool:
        return not self.differences

    @property
    def summary(self) -> str:
        counted = ", ".join(f"{n} {kind if n == 1 else _PLURALS.get(kind, kind + 's')}"
                            for kind, n in self.objects_compared.items())
        if self.properties_compared:
            counted += ", database properties"
        if self.differences:
            named = "; ".join(self.differences[:SUMMARY_ITEMS])
            more = len(self.differences) - SUMMARY_ITEMS
            tail = f"; and {more} more" if more > 0 else ""
            return (f"{len(self.differences)} difference(s) the backup should not have: "
                    f"{named}{tail}")
        drift = (f"; drift since the backup: {len(self.drift)} change(s), "
                 f"{self.drift_rows:+d} rows") if self.drift else "; no drift"
        return f"matches the live database ({counted}){drift}"


def compare(live: Catalog, restored: Catalog, backup_rows: dict[str, int] | None) -> Comparison:
    """Compare the restored backup with the live database; ``backup_rows`` from the manifest."""
    result = Comparison(objects_compared={kind: len(live.objects[kind]) for kind in KINDS})
    live_tables, restored_tables = live.objects["table"], restored.objects["table"]
    if live_tables and not live_tables & restored_tables:
        result.differences.append(
            f"the backup holds none of the live database's {len(live_tables)} tables "
            "(a backup of a different or an empty database?)")
    for kind in KINDS:
        for name in sorted(live.objects[kind] - restored.objects[kind]):
            result.differences.append(f"{kind} {name} is missing from the backup")
        for name in sorted(restored.objects[kind] - live.objects[kind]):
            result.drift.append(f"{kind} {name} is in the backup but no longer in the live "
                                "database (dropped or renamed since the backup)")
    if backup_rows is not None:
        for name in sorted(set(backup_rows) - restored_tables - live_tables):
            result.differences.append(
                f"table {name} existed when the backup was taken but is missing from the backup")
    for name in sorted(restored.rows):
        _compare_rows(result, name, restored.rows[name], live.rows.get(name), backup_rows)
    return result


def compare_properties(result: Comparison, carried: DatabaseProperties,
                       restored: DatabaseProperties, live: DatabaseProperties, *,
                       expected: DatabaseProperties | None = None) -> None:
    """Database properties: what the restore does not reproduce of what the backup carries
    (``expected``: of what it could reproduce on this server, e.g. without a tablespace the
    server lacks) is a failure; what the live database changed since the backup is drift."""
    result.properties_compared = True
    result.differences += differences(expected or carried, restored, "the backup",
                                      "the restore")
    result.drift += differences(carried, live, "the backup", "the live database")


def _compare_rows(result: Comparison, name: str, restored: RowCount, live: RowCount | None,
                  backup_rows: dict[str, int] | None) -> None:
    at_backup = backup_rows.get(name) if backup_rows is not None else None
    if restored.rows == 0 and at_backup:
        result.differences.append(
            f"table {name} is empty in the backup but had {at_backup} rows when the backup "
            "was taken")
        return
    if live is None or restored.rows == live.rows:
        return
    change = live.rows - restored.rows
    result.drift_rows += change
    result.drift.append(f"table {name}: {restored} rows in the backup, {live} now "
                        f"({change:+d} since the backup)")
    if restored.rows == 0 and backup_rows is None:
        result.warnings.append(
            f"table {name} is empty in the backup and has {live} rows now; this backup's "
            "manifest has no row counts from backup time, so the drill cannot tell whether "
            "the rows were written after the backup")


# --- roles and memberships (a drill onto a drill server) ------------------------------------

# Predefined roles (pg_*) are the server's: never compared, though memberships in them are.
_ROLES = """
    SELECT rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin,
           rolreplication, rolbypassrls, rolconnlimit, rolvaliduntil::text
    FROM pg_roles WHERE rolname NOT LIKE 'pg\\_%' ORDER BY 1"""
_ROLE_SETTINGS = """
    SELECT r.rolname, c.entry FROM pg_db_role_setting s
    JOIN pg_roles r ON r.oid = s.setrole, unnest(s.setconfig) AS c(entry)
    WHERE s.setdatabase = 0 AND r.rolname NOT LIKE 'pg\\_%'"""
_MEMBERSHIPS = """
    SELECT g.rolname, m.rolname, a.admin_option FROM pg_auth_members a
    JOIN pg_roles g ON g.oid = a.roleid JOIN pg_roles m ON m.oid = a.member
    WHERE m.rolname NOT LIKE 'pg\\_%'"""
_FLAGS = ("SUPERUSER", "INHERIT", "CREATEROLE", "CREATEDB", "LOGIN", "REPLICATION",
          "BYPASSRLS")


@dataclass(frozen=True)
class Role:
    name: str
    attributes: frozenset[str]  # e.g. LOGIN, NOSUPERUSER, CONNECTION LIMIT 5, VALID UNTIL ...
    settings: frozenset[str]  # ALTER ROLE … SET, as name=value
    # The stored password hash: None when there is none, or when it cannot be read
    # (Catalog.passwords_readable says which). Never printed.
    password: str | None


@dataclass(frozen=True)
class Membership:
    role: str
    member: str
    admin_option: bool

    def __str__(self) -> str:
        option = " WITH ADMIN OPTION" if self.admin_option else ""
        return f"{self.member} in {self.role}{option}"


@dataclass
class RoleCatalog:
    """A cluster's roles and memberships, as pg_dumpall --globals-only carries them."""

    roles: dict[str, Role]
    memberships: set[Membership]
    passwords_readable: bool


def read_roles(conn: Connection) -> RoleCatalog:
    with as_text(conn, "the drill's comparison of roles", "server"):
        try:
            passwords: dict[str, str | None] | None = {
                str(name): None if hashed is None else str(hashed)
                for name, hashed in conn.execute("SELECT rolname, rolpassword FROM pg_authid")}
        except pg_errors.InsufficientPrivilege:
            passwords = None  # only a superuser reads pg_authid
        settings: dict[str, set[str]] = {}
        for name, entry in conn.execute(_ROLE_SETTINGS):
            settings.setdefault(str(name), set()).add(str(entry))
        roles = {}
        for name, *flags, limit, valid_until in conn.execute(_ROLES):
            attributes = {flag if on else f"NO{flag}"
                          for flag, on in zip(_FLAGS, flags, strict=True)}
            attributes.add(f"CONNECTION LIMIT {limit}")
            if valid_until is not None:
                attributes.add(f"VALID UNTIL {valid_until}")
            roles[str(name)] = Role(str(name), frozenset(attributes),
                                    frozenset(settings.get(str(name), ())),
                                    passwords.get(str(name)) if passwords is not None else None)
        memberships = {Membership(str(role), str(member), bool(admin))
                       for role, member, admin in conn.execute(_MEMBERSHIPS)}
        return RoleCatalog(roles, memberships, passwords is not None)


def compare_roles(result: Comparison, live: RoleCatalog, restored: RoleCatalog,
                  before: RoleCatalog) -> None:
    """Roles and memberships: what the live cluster has and the restore lacks (or has
    otherwise) is a failure; what the restore has and the live cluster no longer has is
    drift. ``before``: the drill server before the drill; its roles (its own superuser) are
    kept as they were, so only their existence and memberships are compared."""
    kept = set(before.roles)
    result.objects_compared["role"] = len(live.roles)
    result.objects_compared["membership"] = len(live.memberships)
    for name in sorted(set(live.roles) - set(restored.roles)):
        result.differences.append(f"role {name} is missing from the restore")
    for name in sorted(set(restored.roles) - set(live.roles) - kept):
        result.drift.append(f"role {name} is in the backup but no longer in the live cluster")
    compare_passwords = live.passwords_readable and restored.passwords_readable
    for name in sorted((set(live.roles) & set(restored.roles)) - kept):
        want, have = live.roles[name], restored.roles[name]
        for attribute in sorted(want.attributes - have.attributes):
            result.differences.append(f"role {name}: {attribute} in the live cluster, not in "
                                      "the restore")
        for attribute in sorted(have.attributes - want.attributes):
            result.differences.append(f"role {name}: {attribute} in the restore, not in the "
                                      "live cluster")
        for setting in sorted(want.settings ^ have.settings):
            where = "the live cluster" if setting in want.settings else "the restore"
            result.differences.append(f"role {name}: setting {setting} only in {where}")
        if compare_passwords and want.password != have.password:
            if have.password is None or want.password is None:
                side = "the live cluster" if want.password is not None else "the restore"
                result.differences.append(f"role {name}: a password only in {side}")
            else:
                result.differences.append(f"role {name}: the password differs from the live "
                                          "cluster's (changed since the backup?)")
    if not compare_passwords:
        result.warnings.append("role passwords were not compared: reading them needs a "
                               "superuser on both servers")
    for membership in sorted(live.memberships - restored.memberships, key=str):
        result.differences.append(f"membership {membership} is missing from the restore")
    for membership in sorted(restored.memberships - live.memberships - before.memberships,
                             key=str):
        result.drift.append(f"membership {membership} is in the backup but no longer in "
                                "the live cluster")
    result.roles_compared = True

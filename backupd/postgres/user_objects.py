"""What a database holds that template0 lacks: the objects someone created in it, and the
privileges (and the public schema's comment) someone changed on the ones initdb made.

initdb's own objects (template0's, so those of every new database) have OIDs below
FirstNormalObjectId; anything at or above it was made by a user: a table, a function, an
extension, a large object, a publication, a cast, ... A whole-system backup needs this for
template1 (backupd.commands.template1): what an administrator put there so that every new
database gets it is in no database's dump.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from backupd.postgres.connection import as_text

Connection = psycopg.Connection[tuple]  # type: ignore[type-arg]

FIRST_NORMAL_OBJECT_ID = 16384

# Every per-database catalog whose rows are objects someone created, with what people call
# them (shared catalogs, such as roles and databases, are the globals' and the server's).
OBJECT_CATALOGS = {
    "pg_extension": "extension", "pg_namespace": "schema", "pg_class": "relation",
    "pg_proc": "function", "pg_type": "type", "pg_largeobject_metadata": "large object",
    "pg_language": "language", "pg_collation": "collation", "pg_conversion": "conversion",
    "pg_operator": "operator", "pg_opclass": "operator class",
    "pg_opfamily": "operator family", "pg_am": "access method", "pg_cast": "cast",
    "pg_transform": "transform", "pg_ts_config": "text search configuration",
    "pg_ts_dict": "text search dictionary", "pg_ts_parser": "text search parser",
    "pg_ts_template": "text search template",
    "pg_foreign_data_wrapper": "foreign-data wrapper", "pg_foreign_server": "foreign server",
    "pg_user_mapping": "user mapping", "pg_publication": "publication",
    "pg_event_trigger": "event trigger", "pg_default_acl": "default privilege",
    "pg_statistic_ext": "extended statistics object",
}

# A session's temporary objects live in its pg_temp_N schema, which stays behind (empty)
# once the session ends: neither is anything a dump carries.
_TEMP_SCHEMAS = ("SELECT oid FROM pg_catalog.pg_namespace "
                 "WHERE nspname ~ '^pg_(toast_)?temp_[0-9]+$'")
_SCHEMA_COLUMNS = {
    "pg_class": "relnamespace", "pg_proc": "pronamespace", "pg_type": "typnamespace",
    "pg_collation": "collnamespace", "pg_conversion": "connamespace",
    "pg_operator": "oprnamespace", "pg_opclass": "opcnamespace", "pg_opfamily": "opfnamespace",
    "pg_ts_config": "cfgnamespace", "pg_ts_dict": "dictnamespace",
    "pg_ts_parser": "prsnamespace", "pg_ts_template": "tmplnamespace",
    "pg_statistic_ext": "stxnamespace", "pg_namespace": "oid",
}
# Built-in objects whose privileges pg_dump dumps when they differ from initdb's
# (pg_init_privs): e.g. REVOKE CREATE ON SCHEMA public FROM PUBLIC, done in template1.
_ACL_COLUMNS = {"pg_namespace": "nspacl", "pg_class": "relacl", "pg_proc": "proacl",
                "pg_type": "typacl", "pg_language": "lanacl"}


@dataclass(frozen=True)
class UserObjects:
    """What a database holds of its own: ``counts`` per kind (those with any; extension
    members, array types and toast tables left out: their extension or object stands for
    them), the extensions and schemas by name, how many built-in objects (or their columns)
    have privileges other than initdb gave them, the subscriptions made in it, and
    ``changed_comments``: 1 when the public schema's comment is not initdb's (counted where
    the pg_dump that runs is 15 or later: before, pg_dump dumps no such comment).
    ``identities``: each of those objects as PostgreSQL describes it (pg_describe_object, no
    OIDs but a large object's), so that two databases compare equal only when they hold the
    same objects.
    The one definition of "holds nothing" (``empty``): a database for which it holds may be
    dropped without losing anything (holds_nothing asks the same without naming any)."""

    counts: tuple[tuple[str, int], ...] = ()
    extensions: tuple[str, ...] = ()
    schemas: tuple[str, ...] = ()
    changed_privileges: int = 0
    subscriptions: int = 0
    identities: tuple[str, ...] = ()
    changed_comments: int = 0

    @property
    def empty(self) -> bool:
        return not (self.extensions or self.counts or self.changed_privileges
                    or self.subscriptions or self.changed_comments)

    def describe(self) -> str:
        """One line, e.g. ``extension citext; schema util; 1 function``."""
        parts = []
        if self.extensions:
            parts.append(_named("extension", self.extensions))
        if self.schemas:
            parts.append(_named("schema", self.schemas))
        counted = [_counted(count, kind) for kind, count in self.counts if kind != "schema"]
        if self.subscriptions:
            counted.append(_counted(self.subscriptions, "subscription"))
        if counted:
            parts.append(", ".join(counted))
        if self.changed_privileges:
            changed = _counted(self.changed_privileges, "built-in object")
            parts.append(f"changed privileges on {changed}")
        if self.changed_comments:
            changed = _counted(self.changed_comments, "built-in object")
            parts.append(f"changed comment on {changed}")
        return "; ".join(parts) or "nothing"


def _counted(count: int, kind: str) -> str:
    return f"{count} {kind}{'s' if count != 1 and not kind.endswith('s') else ''}"


def _named(kind: str, names: tuple[str, ...]) -> str:
    return f"{kind}{'s' if len(names) != 1 else ''} {', '.join(names)}"


_CHANGED = "changed privileges"
_CHANGED_COMMENT = "changed comment"
# pg_dump dumps no comment on a built-in object but the public schema's, and that one only
# when it is not initdb's (this text; a removed one as ''): a changed comment on any other
# built-in object is in no dump, so counting it would back up nothing it could bring back.
_PUBLIC_SCHEMA_COMMENT = "standard public schema"
# ... and only by pg_dump 15 and later, whatever the server's major (dumpNamespace's
# initdb_comment): before, selectDumpableNamespace left the public schema's creation and
# comment out of every dump. backupd runs the server's own major's pg_dump, else the nearest
# newer one (backupd.pipeline.clients), so a 13 or 14 server's may be dumped by 16.
_PUBLIC_COMMENT_DUMPED_FROM = 15


def object_rows(identity: bool, public_comment: bool) -> sql.Composed:
    """Every object the database holds of its own (extensions aside) and every changed
    privilege, one row each: the one definition of what counts. ``public_comment``: whether
    a changed public schema comment counts too (comment_counts). ``identity``: each row says
    what it is (kind, pg_describe_object); otherwise it is a bare row, enough to tell whether
    there is any."""
    comment = [_changed_comment_query(identity)] if public_comment else []
    return sql.SQL(" UNION ALL ").join(
        [_objects_query(catalog, kind, identity) for catalog, kind in OBJECT_CATALOGS.items()
         if catalog != "pg_extension"]  # named below: an extension is never its own member
        + [_changed_privileges_query(catalog, column, identity)
           for catalog, column in _ACL_COLUMNS.items()]
        + [_changed_column_privileges_query(identity), *comment])


_EXTENSIONS = sql.SQL("SELECT extname::text FROM pg_catalog.pg_extension WHERE oid >= {}"
                      ).format(sql.Literal(FIRST_NORMAL_OBJECT_ID))
_SUBSCRIPTIONS = sql.SQL(
    "SELECT 1 FROM pg_catalog.pg_subscription WHERE subdbid = "
    "(SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())")


def comment_counts(pg_dump_major: int | None) -> bool:
    """Whether a changed public schema comment counts. ``pg_dump_major``: the major of the
    pg_dump a backup would run (it alone decides whether the comment is in the dump); None
    for the restore side (may a database be dropped or swapped out), where it counts on any
    server, since every major can hold one: keeping a database for a comment is the
    cautious side, dropping it would lose what no dump of a 13 or 14 server may carry."""
    return pg_dump_major is None or pg_dump_major >= _PUBLIC_COMMENT_DUMPED_FROM


def read_user_objects(conn: Connection, pg_dump_major: int | None = None) -> UserObjects:
    """What the database ``conn`` is connected to holds that template0 lacks: one query.
    Every object is named: for whether there is any at all, holds_nothing.
    ``pg_dump_major``: comment_counts."""
    with as_text(conn):  # a SQL_ASCII session hands names back as bytes
        row = conn.execute(sql.SQL(
            "SELECT ARRAY(SELECT ARRAY[kind, identity] FROM ({}) o ORDER BY kind, identity), "
            "ARRAY({} ORDER BY 1), "
            "ARRAY(SELECT nspname::text FROM pg_catalog.pg_namespace WHERE oid >= {} "
            "AND oid NOT IN ({}) AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d "
            "WHERE d.classid = 'pg_catalog.pg_namespace'::regclass AND d.objid = pg_namespace.oid "
            "AND d.deptype = 'e') ORDER BY 1), "
            "(SELECT count(*) FROM ({}) s)"
        ).format(object_rows(True, comment_counts(pg_dump_major)), _EXTENSIONS,
                 sql.Literal(FIRST_NORMAL_OBJECT_ID), sql.SQL(_TEMP_SCHEMAS),
                 _SUBSCRIPTIONS)).fetchone()
    assert row is not None
    found = [(str(kind), str(identity)) for kind, identity in row[0] or []]
    extensions = tuple(str(name) for name in row[1] or [])
    counts = tuple((kind, sum(1 for k, _ in found if k == kind))
                   for kind in OBJECT_CATALOGS.values()
                   if kind != "extension" and any(k == kind for k, _ in found))
    return UserObjects(
        counts, extensions, tuple(str(name) for name in row[2] or []),
        sum(1 for k, _ in found if k == _CHANGED), int(row[3]),
        tuple(sorted({f"{kind} {identity}" for kind, identity in found}
                     | {f"extension {name}" for name in extensions})),
        changed_comments=sum(1 for k, _ in found if k == _CHANGED_COMMENT))


def holds_nothing(conn: Connection) -> bool:
    """read_user_objects(conn).empty, without naming a single object: the server stops at the
    first one it finds, so a database of millions of relations or large objects costs no
    more than an empty one. The restore side's question: a changed public schema comment
    counts on every server (comment_counts)."""
    row = conn.execute(sql.SQL(
        "SELECT NOT (EXISTS ({}) OR EXISTS ({}) OR EXISTS ({}))").format(
        object_rows(False, comment_counts(None)), _EXTENSIONS, _SUBSCRIPTIONS)).fetchone()
    assert row is not None
    return bool(row[0])


def _address_class(catalog: str) -> sql.Composable:
    # A large object's address names pg_largeobject, not its metadata catalog.
    return sql.Literal("pg_catalog." + ("pg_largeobject" if catalog == "pg_largeobject_metadata"
                                        else catalog))


def _objects_query(catalog: str, kind: str, identity: bool) -> sql.Composed:
    conditions = [sql.SQL("t.oid >= {}").format(sql.Literal(FIRST_NORMAL_OBJECT_ID)),
                  # An extension's members, and what is made along with another object (an
                  # array type, a toast table): the extension or the object stands for them.
                  sql.SQL("NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid "
                          "= {}::regclass AND d.objid = t.oid AND d.deptype IN ('e', 'i'))"
                          ).format(_address_class(catalog))]
    schema_column = _SCHEMA_COLUMNS.get(catalog)
    if schema_column is not None:
        # A toast table's index depends on it automatically, not internally: the toast
        # schema holds nothing anyone made.
        conditions.append(sql.SQL("t.{} NOT IN ({}) AND t.{} <> 'pg_toast'::"
                                  "regnamespace").format(
            sql.Identifier(schema_column), sql.SQL(_TEMP_SCHEMAS),
            sql.Identifier(schema_column)))
    described = sql.SQL("{} AS kind, pg_catalog.pg_describe_object({}::regclass, t.oid, 0) "
                        "AS identity").format(sql.Literal(kind), _address_class(catalog))
    return sql.SQL("SELECT {} FROM {} t WHERE {}").format(
        described if identity else sql.SQL("1"), sql.Identifier("pg_catalog", catalog),
        sql.SQL(" AND ").join(conditions))


def _changed_privileges_query(catalog: str, column: str, identity: bool) -> sql.Composed:
    schema_column = _SCHEMA_COLUMNS.get(catalog)
    # information_schema is initdb's too, but pg_dump never dumps it (nor records it in
    # pg_init_privs).
    outside = sql.SQL("") if schema_column is None else sql.SQL(
        " AND t.{} <> 'information_schema'::regnamespace").format(sql.Identifier(schema_column))
    described = sql.SQL(
        "{}, pg_catalog.pg_describe_object({}::regclass, t.oid, 0) || ': ' || "
        "coalesce(t.{}::text, 'default')").format(
        sql.Literal(_CHANGED), _address_class(catalog), sql.Identifier(column))
    return sql.SQL(
        "SELECT {} FROM {} t WHERE t.oid < {}{} AND t.{} IS DISTINCT "
        "FROM (SELECT i.initprivs FROM pg_catalog.pg_init_privs i WHERE i.objoid = t.oid "
        "AND i.classoid = {}::regclass AND i.objsubid = 0)").format(
        described if identity else sql.SQL("1"),
        sql.Identifier("pg_catalog", catalog), sql.Literal(FIRST_NORMAL_OBJECT_ID), outside,
        sql.Identifier(column), _address_class(catalog))


def _changed_column_privileges_query(identity: bool) -> sql.Composed:
    """Column privileges on built-in relations (GRANT SELECT (rolname) ON pg_authid), which
    pg_dump dumps when they differ from initdb's (pg_init_privs, one row per column: initdb
    grants some on pg_subscription's). System columns too (GRANT SELECT (ctid)): pg_dump
    reads every column's attacl, with no attnum > 0 filter; a dropped column is gone."""
    described = sql.SQL(
        "{}, pg_catalog.pg_describe_object('pg_catalog.pg_class'::regclass, a.attrelid, "
        "a.attnum) || ': ' || coalesce(a.attacl::text, 'default')").format(sql.Literal(_CHANGED))
    return sql.SQL(
        "SELECT {} FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c "
        "ON c.oid = a.attrelid WHERE a.attrelid < {} AND a.attnum <> 0 "
        "AND NOT a.attisdropped "
        "AND c.relnamespace <> 'information_schema'::regnamespace "
        "AND a.attacl IS DISTINCT FROM (SELECT i.initprivs FROM pg_catalog.pg_init_privs i "
        "WHERE i.objoid = a.attrelid AND i.classoid = 'pg_catalog.pg_class'::regclass "
        "AND i.objsubid = a.attnum)").format(
        described if identity else sql.SQL("1"), sql.Literal(FIRST_NORMAL_OBJECT_ID))


def _changed_comment_query(identity: bool) -> sql.Composed:
    """initdb's public schema (a re-created one is an object of its own) with a comment other
    than initdb's: COMMENT ON SCHEMA public, which pg_dump dumps (pg_dump 15 on: comment_counts)."""
    comment = sql.SQL("pg_catalog.obj_description(n.oid, 'pg_namespace')")
    described = sql.SQL("{}, 'schema public: ' || coalesce({}, 'none')").format(
        sql.Literal(_CHANGED_COMMENT), comment)
    return sql.SQL(
        "SELECT {} FROM pg_catalog.pg_namespace n WHERE n.oid < {} AND n.nspname = 'public' "
        "AND {} IS DISTINCT FROM {}").format(
        described if identity else sql.SQL("1"), sql.Literal(FIRST_NORMAL_OBJECT_ID), comment,
        sql.Literal(_PUBLIC_SCHEMA_COMMENT))

"""What a database holds that template0 lacks: the objects someone created in it, and the
privileges someone changed on the ones initdb made.

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
    members and array types left out: their extension or type stands for them), the
    extensions and schemas by name,
    and how many built-in objects have privileges other than initdb gave them."""

    counts: tuple[tuple[str, int], ...] = ()
    extensions: tuple[str, ...] = ()
    schemas: tuple[str, ...] = ()
    changed_privileges: int = 0

    @property
    def empty(self) -> bool:
        return not self.extensions and not self.counts and not self.changed_privileges

    def describe(self) -> str:
        """One line, e.g. ``extension citext; schema util; 1 function``."""
        parts = []
        if self.extensions:
            parts.append(_named("extension", self.extensions))
        if self.schemas:
            parts.append(_named("schema", self.schemas))
        counted = [f"{count} {kind}{'s' if count != 1 and not kind.endswith('s') else ''}"
                   for kind, count in self.counts if kind != "schema"]
        if counted:
            parts.append(", ".join(counted))
        if self.changed_privileges:
            parts.append(f"changed privileges on {self.changed_privileges} built-in "
                         f"object{'s' if self.changed_privileges != 1 else ''}")
        return "; ".join(parts) or "nothing"


def _named(kind: str, names: tuple[str, ...]) -> str:
    return f"{kind}{'s' if len(names) != 1 else ''} {', '.join(names)}"


def read_user_objects(conn: Connection) -> UserObjects:
    """What the database ``conn`` is connected to holds that template0 lacks."""
    counts = []
    for catalog, kind in OBJECT_CATALOGS.items():
        if catalog == "pg_extension":
            continue  # named below: an extension is never its own member
        row = conn.execute(_count_query(catalog)).fetchone()
        if row is not None and row[0]:
            counts.append((kind, int(row[0])))
    extensions = tuple(str(name) for (name,) in conn.execute(
        "SELECT extname FROM pg_catalog.pg_extension WHERE oid >= %s ORDER BY 1",
        (FIRST_NORMAL_OBJECT_ID,)))
    schemas = tuple(str(name) for (name,) in conn.execute(sql.SQL(
        "SELECT nspname FROM pg_catalog.pg_namespace WHERE oid >= {} AND oid NOT IN ({}) "
        "AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = "
        "'pg_catalog.pg_namespace'::regclass AND d.objid = pg_namespace.oid "
        "AND d.deptype = 'e') ORDER BY 1").format(
        sql.Literal(FIRST_NORMAL_OBJECT_ID), sql.SQL(_TEMP_SCHEMAS))))
    changed = 0
    for catalog, column in _ACL_COLUMNS.items():
        schema_column = _SCHEMA_COLUMNS.get(catalog)
        # information_schema is initdb's too, but pg_dump never dumps it (nor records it in
        # pg_init_privs).
        outside = sql.SQL("") if schema_column is None else sql.SQL(
            " AND t.{} <> 'information_schema'::regnamespace").format(
            sql.Identifier(schema_column))
        row = conn.execute(sql.SQL(
            "SELECT count(*) FROM {} t WHERE t.oid < {}{} AND t.{} IS DISTINCT FROM ("
            "SELECT i.initprivs FROM pg_catalog.pg_init_privs i WHERE i.objoid = t.oid "
            "AND i.classoid = {}::regclass AND i.objsubid = 0)").format(
            sql.Identifier("pg_catalog", catalog), sql.Literal(FIRST_NORMAL_OBJECT_ID), outside,
            sql.Identifier(column), sql.Literal(f"pg_catalog.{catalog}"))).fetchone()
        changed += int(row[0]) if row is not None else 0
    return UserObjects(tuple(counts), extensions, schemas, changed)


def _count_query(catalog: str) -> sql.Composed:
    conditions = [sql.SQL("t.oid >= {}").format(sql.Literal(FIRST_NORMAL_OBJECT_ID)),
                  # An extension's members, and what is made along with another object (an
                  # array type, a toast table): the extension or the object stands for them.
                  sql.SQL("NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid "
                          "= {}::regclass AND d.objid = t.oid AND d.deptype IN ('e', 'i'))"
                          ).format(sql.Literal(f"pg_catalog.{catalog}"))]
    schema_column = _SCHEMA_COLUMNS.get(catalog)
    if schema_column is not None:
        conditions.append(sql.SQL("t.{} NOT IN ({})").format(
            sql.Identifier(schema_column), sql.SQL(_TEMP_SCHEMAS)))
    return sql.SQL("SELECT count(*) FROM {} t WHERE {}").format(
        sql.Identifier("pg_catalog", catalog), sql.SQL(" AND ").join(conditions))

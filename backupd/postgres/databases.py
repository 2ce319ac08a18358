"""Databases as wholes: which ones POSTGRES_DB selects on a server, read their properties,
create one like another, put the properties back, and drop one that holds
logical-replication subscriptions.

Restore and drill create every database the same way, from template0 with the source's
encoding and locale: objects someone added to template1 are in the dump already (the
source inherited them), so a copy of template1 would make the restore fail with "already
exists".
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from backupd import naming
from backupd.database_properties import (
    LIST_SETTINGS,
    PUBLIC,
    DatabaseProperties,
    Grant,
    RoleSetting,
    split_list_value,
)
from backupd.errors import ConfigError, JobFailed
from backupd.postgres.connection import (
    as_text,
    connect,
    describe_pg_error,
    drop_database,
    server_major,
)
from backupd.postgres.not_held import Sent
from backupd.postgres.not_text import NOT_TEXT_ERRORS, raw_cursor, shown, unnamed_database
from backupd.postgres.tablespaces import name_codec
from backupd.settings import Settings

Connection = psycopg.Connection[tuple]  # type: ignore[type-arg]


@dataclass(frozen=True)
class ResolvedDatabases:
    """POSTGRES_DB resolved against the server: ``databases`` to work on, in order (listed
    order; sorted for ``*``); ``missing``: listed databases the server does not have (each a
    failure of the run, naming it); ``warnings``: e.g. an excluded name the server lacks;
    ``unnamed``: what ``*`` cannot take (a backup run fails for each, naming it)."""

    databases: list[str]
    missing: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # '*': databases whose names are not UTF-8 (a SQL_ASCII cluster), escaped (not_text.shown)
    unnamed: list[str] = field(default_factory=list)

    @property
    def unnamed_warnings(self) -> list[str]:
        """What a drill says of ``unnamed``: in no backup, so in no drill either."""
        return [unnamed_database(name) for name in self.unnamed]


# The template '*' takes too when it holds objects (backupd.commands.template1).
TEMPLATE_DATABASE = naming.TEMPLATE_DATABASE

# Where backupd connects to ask which databases exist: the maintenance database, else
# template1 (always there), else one of the listed databases.
MAINTENANCE_DATABASES = ("postgres", "template1")


def maintenance_connection(settings: Settings) -> Connection:
    """A connection for questions about the cluster as a whole (which databases, globals)."""
    candidates = list(dict.fromkeys(
        [*MAINTENANCE_DATABASES, *settings.database_selection.names]))
    first_error: JobFailed | None = None
    for database in candidates:
        try:
            return connect(settings, database)
        except JobFailed as exc:
            first_error = first_error or exc
    assert first_error is not None
    raise first_error


def resolve_databases(settings: Settings, conn: Connection | None = None) -> ResolvedDatabases:
    """The ONE resolution of POSTGRES_DB against a server (``conn``: a connection to it, by
    default a maintenance connection from ``settings``).

    One database (today's setting) is taken as it is, without asking the server: a missing
    one fails at connection as it always has. A list is checked: databases the server lacks
    are ``missing``. ``*`` is every database with ``datallowconn`` that is not a template,
    minus DB_BACKUP_EXCLUDE; a role that cannot read pg_database, or nothing left after the
    exclusion, is a ConfigError (exit 2) naming POSTGRES_DB.
    """
    selection = settings.database_selection
    if not selection.several:
        return ResolvedDatabases(list(selection.names))
    if conn is None:
        with maintenance_connection(settings) as own:
            return resolve_databases(settings, own)
    if selection.every:
        try:
            present, unnamed, scratch = _every_database(conn)
        except psycopg.errors.InsufficientPrivilege as exc:
            raise ConfigError(
                f"POSTGRES_DB: '*' needs to list the server's databases, and role "
                f"{settings.postgres_user!r} cannot read pg_database ({describe_pg_error(exc)}); "
                "list the databases in POSTGRES_DB instead, or grant SELECT on pg_database"
            ) from None
        # A drill's leftover is on the server though '*' never takes it: excluding it was
        # the way to keep it out before, and is no mistake.
        warnings = [f"DB_BACKUP_EXCLUDE: there is no database {name!r} on the server "
                    "(nothing to leave out)" for name in selection.exclude
                    if name not in present and name not in scratch
                    and name != TEMPLATE_DATABASE]
        if scratch:
            # Removed only by the next drill of the same database: until then, a copy of a
            # backup, not a database of its own to back up (nor to drill).
            warnings.append(f"POSTGRES_DB='*': leaving out {', '.join(map(repr, scratch))}: "
                            "a scratch database a killed or cancelled drill left behind "
                            "(marked by backupd); the next drill of the same database drops "
                            "it, or drop it yourself")
        chosen = selection.choose(present)
        if not chosen:
            raise ConfigError("POSTGRES_DB: '*' selects no database on the server "
                              "(DB_BACKUP_EXCLUDE leaves none); exclude fewer databases")
        return ResolvedDatabases(chosen, warnings=warnings, unnamed=unnamed)
    try:
        with as_text(conn):
            rows = conn.execute("SELECT datname FROM pg_database WHERE datname = ANY(%s)",
                                (list(selection.names),)).fetchall()
    except psycopg.errors.InsufficientPrivilege:
        # Existence cannot be read: each dump proves it (a missing one fails naming itself).
        return ResolvedDatabases(list(selection.names))
    existing = {str(name) for (name,) in rows}
    return ResolvedDatabases([n for n in selection.names if n in existing],
                             missing=[n for n in selection.names if n not in existing])


def _every_database(conn: Connection) -> tuple[list[str], list[str], list[str]]:
    """The names of the databases '*' may take, those it cannot name (escaped), and the
    drills' scratch databases left behind (naming.SCRATCH_MARK), which it leaves out: read
    as bytes, since one name that is not UTF-8 must not keep the others from being backed
    up."""
    codec = name_codec(conn.info.parameter_status("client_encoding"))
    names: list[str] = []
    unnamed: list[str] = []
    scratch: list[str] = []
    for raw, marked in raw_cursor(conn, ("name",)).execute(
            "SELECT datname, starts_with(coalesce(shobj_description(oid, 'pg_database'), ''), "
            "%s) FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY datname",
            (naming.SCRATCH_MARK,)).fetchall():
        try:
            name = raw.decode(codec)
        except UnicodeDecodeError:
            (scratch if marked else unnamed).append(shown(raw))
            continue
        (scratch if marked else names).append(name)
    return names, unnamed, scratch


def _locale_columns(conn: Connection) -> str:
    major = server_major(conn)
    if major >= 17:
        return ("CASE d.datlocprovider WHEN 'i' THEN 'icu' WHEN 'b' THEN 'builtin' "
                "ELSE 'libc' END, d.datlocale")
    if major >= 15:
        return "CASE d.datlocprovider WHEN 'i' THEN 'icu' ELSE 'libc' END, d.daticulocale"
    return "'libc', NULL::text"


class PropertiesNotText(JobFailed):
    """A SQL_ASCII database whose name, owner, comment or settings hold bytes that are not
    UTF-8: they cannot be recorded as text."""


def read_properties(conn: Connection, name: str) -> DatabaseProperties | None:
    """The properties of database ``name``, or None when there is no such database."""
    with as_text(conn):
        try:
            return _read_properties(conn, name)
        except NOT_TEXT_ERRORS:
            raise PropertiesNotText(
                f"database {name!r}: its owner, comment or settings hold bytes that are not "
                "UTF-8 (a SQL_ASCII database)") from None


def _read_properties(conn: Connection, name: str) -> DatabaseProperties | None:
    row = conn.execute(sql.SQL(
        "SELECT d.oid, pg_get_userbyid(d.datdba), pg_encoding_to_char(d.encoding), "
        "d.datcollate, d.datctype, {}, d.datconnlimit, d.datacl IS NULL, "
        "shobj_description(d.oid, 'pg_database'), t.spcname FROM pg_database d "
        "JOIN pg_tablespace t ON t.oid = d.dattablespace WHERE d.datname = %s"
    ).format(sql.SQL(_locale_columns(conn))), (name,)).fetchone()
    if row is None:
        return None
    oid, owner, encoding, collate, ctype, provider, provider_locale, limit, default_acl, \
        comment, tablespace = row
    settings = [
        RoleSetting(role=role, name=entry.split("=", 1)[0], value=entry.split("=", 1)[1])
        for role, entry in conn.execute(
            "SELECT CASE WHEN s.setrole = 0 THEN NULL ELSE pg_get_userbyid(s.setrole) END, "
            "c.entry FROM pg_db_role_setting s, unnest(s.setconfig) AS c(entry) "
            "WHERE s.setdatabase = %s ORDER BY 1 NULLS FIRST, 2", (oid,))
    ]
    grants = None if default_acl else [
        Grant(grantee=str(grantee), privilege=str(privilege), grantable=bool(grantable))
        for grantee, privilege, grantable in conn.execute(
            "SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END, "
            "a.privilege_type, a.is_grantable FROM pg_database d, aclexplode(d.datacl) a "
            "WHERE d.oid = %s ORDER BY 1, 2", (oid,))
    ]
    return DatabaseProperties(
        owner=str(owner), encoding=str(encoding), collate=str(collate), ctype=str(ctype),
        locale_provider=str(provider), provider_locale=provider_locale,
        connection_limit=int(limit), settings=settings, grants=grants,
        comment=None if comment is None else str(comment), tablespace=str(tablespace))


def create_like(conn: Connection, name: str, properties: DatabaseProperties | None, *,
                connection_limit: int | None = None, tablespace: str | None = None) -> None:
    """CREATE DATABASE from template0, with the encoding and locale of ``properties`` (the
    server's defaults when None: a backup taken before they were recorded), in
    ``tablespace`` (None: the server's default; which one the restore may use is
    :mod:`backupd.postgres.tablespaces`' choice)."""
    options: list[sql.Composable] = [sql.SQL("TEMPLATE template0")]
    if tablespace is not None:
        options.append(sql.SQL("TABLESPACE {}").format(sql.Identifier(tablespace)))
    if properties is not None:
        options += [sql.SQL("ENCODING {}").format(sql.Literal(properties.encoding)),
                    sql.SQL("LC_COLLATE {}").format(sql.Literal(properties.collate)),
                    sql.SQL("LC_CTYPE {}").format(sql.Literal(properties.ctype))]
        if properties.locale_provider != "libc":
            options.append(sql.SQL("LOCALE_PROVIDER {}").format(
                sql.SQL(properties.locale_provider)))
        if properties.locale_provider == "icu" and properties.provider_locale:
            options.append(sql.SQL("ICU_LOCALE {}").format(
                sql.Literal(properties.provider_locale)))
        if properties.locale_provider == "builtin" and properties.provider_locale:
            options.append(sql.SQL("BUILTIN_LOCALE {}").format(
                sql.Literal(properties.provider_locale)))
    if connection_limit is not None:
        options.append(sql.SQL("CONNECTION LIMIT {}").format(sql.Literal(connection_limit)))
    # as_text: "café" cannot be sent as SQL_ASCII, which psycopg takes for ASCII; 日 of a
    # locale or a tablespace cannot be held by a LATIN1 maintenance database (not_held).
    with as_text(conn, f"creating database {name!r}", "server", _sent(name, properties,
                                                                       tablespace)):
        conn.execute(sql.SQL("CREATE DATABASE {} {}").format(
            sql.Identifier(name), sql.SQL(" ").join(options)))


def _sent(name: str, properties: DatabaseProperties | None,
          tablespace: str | None) -> list[Sent]:
    """What CREATE DATABASE sends that the session's encoding may not hold."""
    sent = [Sent("database name", name)]
    if tablespace is not None:
        sent.append(Sent("tablespace", tablespace,
                         "rename the tablespace to a name that database can hold (ALTER "
                         "TABLESPACE … RENAME TO …: the restore then uses the default "
                         "tablespace, and says so)"))
    if properties is not None:
        sent += [Sent("LC_COLLATE", properties.collate), Sent("LC_CTYPE", properties.ctype)]
        if properties.provider_locale:
            provider = properties.locale_provider
            sent.append(Sent("ICU locale" if provider == "icu" else f"{provider} locale",
                             properties.provider_locale))
    return sent


def _set_clause(setting: RoleSetting) -> sql.Composed:
    values = (split_list_value(setting.value) if setting.name in LIST_SETTINGS
              else [setting.value])
    return sql.SQL("SET {} TO {}").format(
        sql.Identifier(*setting.name.split(".")),
        sql.SQL(", ").join(sql.Literal(v) for v in values))


def _role(name: str) -> sql.Composable:
    return sql.SQL("PUBLIC") if name == PUBLIC else sql.Identifier(name)


def property_statements(name: str, properties: DatabaseProperties
                        ) -> list[tuple[str, sql.Composed]]:
    """(what it restores, statement) for every property that is not set at creation."""
    db = sql.Identifier(name)
    statements = [
        (f"owner {properties.owner}",
         sql.SQL("ALTER DATABASE {} OWNER TO {}").format(db, sql.Identifier(properties.owner))),
        (f"connection limit {properties.connection_limit}",
         sql.SQL("ALTER DATABASE {} CONNECTION LIMIT {}").format(
             db, sql.Literal(properties.connection_limit))),
    ]
    for setting in properties.settings:
        if setting.role is None:
            statements.append((f"setting {setting}", sql.SQL("ALTER DATABASE {} {}").format(
                db, _set_clause(setting))))
        else:
            statements.append((f"setting {setting}", sql.SQL("ALTER ROLE {} IN DATABASE {} {}")
                               .format(sql.Identifier(setting.role), db, _set_clause(setting))))
    if properties.grants is not None:
        # An explicit ACL replaces the default one entirely, the owner's share included.
        statements.append(("privileges (revoking the defaults)", sql.SQL(
            "REVOKE ALL ON DATABASE {} FROM PUBLIC, {}").format(
            db, sql.Identifier(properties.owner))))
        for grant in properties.grants:
            option = sql.SQL(" WITH GRANT OPTION") if grant.grantable else sql.SQL("")
            statements.append((f"privilege {grant}", sql.SQL(
                "GRANT {} ON DATABASE {} TO {}{}").format(
                sql.SQL(grant.privilege), db, _role(grant.grantee), option)))
    statements.append(("comment", sql.SQL("COMMENT ON DATABASE {} IS {}").format(
        db, sql.Literal(properties.comment))))
    return statements


def apply_properties(conn: Connection, name: str, properties: DatabaseProperties) -> list[str]:
    """Give database ``name`` the properties set after creation, each in a savepoint of the
    caller's transaction; one warning per property that could not be restored (a role that
    does not exist on this server, a privilege the restoring role lacks)."""
    warnings = []
    # as_text: names and comments that are not ASCII, sent as UTF-8.
    with as_text(conn):
        for what, statement in property_statements(name, properties):
            try:
                with conn.transaction():
                    conn.execute(statement)
            except psycopg.Error as exc:
                warnings.append(f"database property not restored: {what}: "
                                f"{describe_pg_error(exc)}")
    return warnings


def trial_properties(conn: Connection, name: str,
                     properties: DatabaseProperties) -> DatabaseProperties:
    """What database ``name`` looks like once ``properties`` are applied as a restore applies
    them, read back inside a transaction that is then rolled back (the database is left as
    it was). Used by drills to prove the properties restore."""
    result: DatabaseProperties | None = None
    with conn.transaction():
        apply_properties(conn, name, properties)
        result = read_properties(conn, name)
        raise psycopg.Rollback()
    assert result is not None
    return result


def drop_with_subscriptions(settings: Settings, admin: Connection, name: str) -> None:
    """DROP DATABASE, first detaching its logical-replication subscriptions: PostgreSQL
    refuses to drop a database that holds one, and dropping a subscription would try to
    drop its slot on the publisher, which a restored copy must never touch."""
    if _has_subscriptions(admin, name):
        # as_text for the statements too: a name read as text (e.g. "abonné") cannot be sent
        # back on a SQL_ASCII session, which psycopg takes for ASCII.
        with _connected(settings, name) as conn, as_text(conn):
            subscriptions = [str(sub) for (sub,) in conn.execute(
                "SELECT subname FROM pg_subscription WHERE subdbid = "
                "(SELECT oid FROM pg_database WHERE datname = current_database())"
            ).fetchall()]
            for subscription in subscriptions:
                ident = sql.Identifier(subscription)
                conn.execute(sql.SQL("ALTER SUBSCRIPTION {} DISABLE").format(ident))
                conn.execute(sql.SQL("ALTER SUBSCRIPTION {} SET (slot_name = NONE)").format(ident))
                conn.execute(sql.SQL("DROP SUBSCRIPTION {}").format(ident))
    drop_database(admin, name)


def _has_subscriptions(admin: Connection, name: str) -> bool:
    try:
        with as_text(admin):
            row = admin.execute(
                "SELECT count(*) FROM pg_subscription s JOIN pg_database d "
                "ON d.oid = s.subdbid WHERE d.datname = %s", (name,)).fetchone()
    except psycopg.errors.InsufficientPrivilege:
        return False  # only superusers can create (or see) subscriptions
    return bool(row and row[0])


@contextmanager
def _connected(settings: Settings, name: str) -> Iterator[Connection]:
    with connect(settings, name) as conn:
        yield conn

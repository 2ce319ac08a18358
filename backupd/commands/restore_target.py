"""Where a restore goes: which names may be restored into, whether an existing database can
be swapped out, and the swap itself.

Every restore goes into a fresh scratch database (``<target>__restoring_<stamp>``, created
from template0 like the backed-up database) and is renamed into place only once it is
complete: "all or nothing" without holding a lock per table in one transaction, so a
database of many thousands of tables restores at default server settings. An existing
target is kept, renamed to ``<target>_before_restore_<stamp>``, unless it held nothing.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from backupd.database_properties import DatabaseProperties
from backupd.errors import ConfigError, JobFailed
from backupd.job import JobContext
from backupd.postgres import user_objects
from backupd.postgres.connection import as_text, connect, describe_pg_error, lock_key
from backupd.postgres.databases import apply_properties, drop_with_subscriptions
from backupd.postgres.not_held import Sent
from backupd.settings import Settings

MAINTENANCE_DB = "postgres"
RESTORING = "__restoring_"
# The comment on a scratch database until it is complete: what lets the next restore of
# the same target drop what a killed one left (and nothing else).
RESTORING_MARK = "backupd: restore in progress into "
TEMPLATE_DATABASES = frozenset({"template0", "template1"})

Connection = psycopg.Connection[tuple]  # type: ignore[type-arg]
NOTHING_CHANGED = "; nothing was changed"  # the end of a refusal before any change


def derived_name(base: str, suffix: str) -> str:
    """``base + suffix`` cut to PostgreSQL's 63-byte identifier limit, on a character boundary."""
    room = 63 - len(suffix.encode())
    cut = base.encode()[:room].decode("utf-8", errors="ignore")
    return cut + suffix


def target_name(settings: Settings, target_db: str | None, *, replace: bool,
                backup_database: str) -> str:
    """The database to restore into; ConfigError for a name that must not be one.

    Without --target-db: POSTGRES_DB, or, when POSTGRES_DB names several databases (or
    ``*``), the database the backup was taken of (``backup_database``), never the list."""
    if target_db is None and settings.database_selection.several:
        target, source = backup_database, "POSTGRES_DB (the backup's own database)"
    elif target_db is None:
        target, source = settings.postgres_db, "POSTGRES_DB"
    else:
        target, source = target_db, "--target-db"
    if not target.strip():
        # Never "the default": with --replace that would swap out the live database.
        raise ConfigError(f"{source}: the database name is empty; give the database to "
                          "restore into (leave out --target-db to restore into POSTGRES_DB)")
    if len(target.encode()) > 63 or "\x00" in target:
        raise ConfigError(f"{source}: {target!r} is not a database name (1 to 63 bytes, no NUL)")
    if target in TEMPLATE_DATABASES:
        way = ("; a backup of template1 goes back into a new server's template1 with "
               "`backupd restore --latest` (POSTGRES_DB='*'), or give --target-db another "
               "name to look at it" if target == "template1" else "; choose another name")
        raise ConfigError(f"{source}: {target!r} is a template database; restoring into it "
                          f"would put the backup into every database created later{way}")
    if target == MAINTENANCE_DB and not replace:
        raise ConfigError(f"{source}: {target!r} is the maintenance database; restoring into "
                          "it needs --replace (the current one is kept, renamed) and "
                          "confirmation")
    return target


def admin_database(target: str) -> str:
    # A database cannot be renamed while we are connected to it: replacing the maintenance
    # database is administered from template1 (never copied: databases come from template0).
    return "template1" if target == MAINTENANCE_DB else MAINTENANCE_DB


def lock_target(ctx: JobContext, admin: Connection, target: str) -> None:
    """One restore per target at a time (held by ``admin``'s session); then drop the scratch
    databases a killed restore of the same target left behind (they carry the mark)."""
    row = admin.execute("SELECT pg_try_advisory_lock(%s)",
                        (lock_key("restore", target),)).fetchone()
    if not row or not row[0]:
        raise JobFailed(f"another backupd is restoring into {target!r} right now; wait for it "
                        "to finish; nothing was changed")
    prefix = derived_name(target, RESTORING + "0" * 15)[:-15]
    # The first statement of a restore to send the target's name (and names made from it).
    sent = Sent("database name", target, "choose a --target-db that database can hold")
    with as_text(admin, f"the restore into {target!r}", sending=(sent,)):
        leftovers = [str(name) for (name,) in admin.execute(
            "SELECT datname FROM pg_database WHERE starts_with(datname, %s) "
            "AND shobj_description(oid, 'pg_database') = %s",
            (prefix, RESTORING_MARK + target)).fetchall()]
    for leftover in leftovers:
        drop_with_subscriptions(ctx.settings, admin, leftover)
        ctx.warn(f"dropped {leftover!r}, left behind by an interrupted restore into {target!r}")


def mark_restoring(admin: Connection, scratch: str, target: str) -> None:
    # as_text: names that are not ASCII, sent as UTF-8 on a SQL_ASCII session. No text of
    # its own for a refusal: lock_target sent these names (or their characters) first.
    with as_text(admin):
        admin.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
            sql.Identifier(scratch), sql.Literal(RESTORING_MARK + target)))


class TargetHoldsData(ConfigError):
    """The target already holds tables and --replace was not given."""


def check_targets(admin: Connection, settings: Settings,
                  targets: list[tuple[str, bool]]) -> tuple[str, ...]:
    """:func:`check_target` of every one of ``targets`` ((name, replace) each), asked before
    a whole-cluster restore changes anything: raises, as it does, for any that could not be
    swapped out; the ones holding tables are returned, to be named together."""
    holding = []
    for target, replace in targets:
        try:
            check_target(admin, settings, target, replace=replace)
        except TargetHoldsData:
            holding.append(target)
    return tuple(holding)


def check_target(admin: Connection, settings: Settings, target: str, *,
                 replace: bool) -> bool:
    """Whether ``target`` exists; raises, before any work, when it cannot be swapped out."""
    with as_text(admin):
        row = admin.execute("SELECT datistemplate, pg_get_userbyid(datdba) FROM pg_database "
                            "WHERE datname = %s", (target,)).fetchone()
        if row is None:
            return False
        is_template, owner = bool(row[0]), str(row[1])
        if is_template:
            raise ConfigError(f"--target-db: database {target!r} is a template; restoring into it "
                              "would put the backup into databases created from it; choose "
                              "another name")
        if not replace and not is_empty(settings, target):
            raise TargetHoldsData(
                f"--target-db: database {target!r} already holds tables; pass --replace to "
                "restore into a fresh database and swap it in (the current one is kept, renamed)")
        check_swappable(admin, target, owner)
        return True


def check_swappable(admin: Connection, target: str, owner: str) -> None:
    """What would make the final rename fail, found before the restore instead of after it
    (also template1's restore: the one check of a swap)."""
    with as_text(admin):
        nothing = NOTHING_CHANGED
        row = admin.execute("SELECT count(*), string_agg(gid, ', ' ORDER BY gid) "
                            "FROM pg_prepared_xacts WHERE database = %s", (target,)).fetchone()
        if row is not None and row[0]:
            raise JobFailed(
                f"database {target!r} holds {row[0]} prepared transaction(s) ({row[1]}), which "
                "keep it from being renamed; COMMIT PREPARED or ROLLBACK PREPARED them first"
                + nothing)
        row = admin.execute(
            "SELECT current_user, rolsuper, rolcreatedb, pg_has_role(current_user, %s, 'MEMBER') "
            "FROM pg_roles WHERE rolname = current_user", (owner,)).fetchone()
        assert row is not None
        user, superuser, createdb, owns = str(row[0]), bool(row[1]), bool(row[2]), bool(row[3])
        if superuser:
            return
        if not createdb:
            raise JobFailed(f"role {user!r} lacks CREATEDB, needed to restore into a new database "
                            f"and rename it into place; ALTER ROLE {user} CREATEDB" + nothing)
        if not owns:
            raise JobFailed(
                f"database {target!r} is owned by {owner!r}; role {user!r} can only rename it out "
                f"of the way as a superuser or a member of {owner!r} (GRANT {owner} TO {user})"
                + nothing)
        row = admin.execute(
            "SELECT count(*), string_agg(DISTINCT usename, ', ') FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid() AND NOT ("
            "pg_has_role(current_user, usesysid, 'MEMBER') OR ("
            "pg_has_role(current_user, 'pg_signal_backend', 'MEMBER') AND NOT "
            "coalesce((SELECT rolsuper FROM pg_roles WHERE oid = usesysid), false)))",
            (target,)).fetchone()
        if row is not None and row[0]:
            raise JobFailed(
                f"database {target!r} has {row[0]} session(s) of {row[1]} that role {user!r} may "
                "not end (that needs superuser, pg_signal_backend or membership in their role); "
                "end them first" + nothing)



def is_empty(settings: Settings, database: str) -> bool:
    """No tables, views, sequences or foreign tables of its own."""
    with connect(settings, database) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') "
            "AND n.nspname NOT LIKE 'pg_toast%%' AND c.relkind IN ('r','p','v','m','S','f')"
        ).fetchone()
    return row is not None and row[0] == 0


def holds_nothing(settings: Settings, database: str) -> bool:
    """Not a single object of its own (nothing any user created, no changed privilege, no
    subscription: backupd.postgres.user_objects, the one definition): only then does
    dropping it lose nothing. Asked without naming any object: this runs on whole production
    databases (the one a replace kept, after every ``restore --replace``)."""
    with connect(settings, database) as conn:
        return user_objects.holds_nothing(conn)


def install(admin: Connection, scratch: str, target: str,
            properties: DatabaseProperties | None, kept: str | None, *,
            template: bool = False) -> list[str]:
    """Give the restored ``scratch`` its properties and its name, moving an existing target
    to ``kept``: one transaction, so either all of it happens or none. Warnings returned.
    ``template``: the target is a template database (template1, backupd.commands.template1):
    the one moved away stops being one, so it can be dropped, and the restored one becomes
    one."""
    warnings: list[str] = []
    try:
        # as_text: the names are sent as UTF-8 on a SQL_ASCII session ("café" is not ASCII).
        # No text of its own for a refusal: lock_target sent these names' characters first,
        # and apply_properties makes each statement's error a warning.
        with as_text(admin), admin.transaction():
            if properties is not None:
                warnings = apply_properties(admin, scratch, properties)
            else:
                admin.execute(sql.SQL("COMMENT ON DATABASE {} IS NULL").format(
                    sql.Identifier(scratch)))  # the restoring mark goes
            if kept is not None:
                # The rename waits up to 5 s for the terminated sessions to go.
                admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = %s AND pid <> pg_backend_pid()", (target,))
                if template:
                    _set_template(admin, target, False)
                _rename(admin, target, kept)
            _rename(admin, scratch, target)
            if template:
                _set_template(admin, target, True)
    except psycopg.Error as exc:
        raise JobFailed(f"could not put the restored database in place of {target!r}: "
                        f"{describe_pg_error(exc)}; {target!r} is unchanged") from None
    return warnings


def _rename(admin: Connection, old: str, new: str) -> None:
    admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
        sql.Identifier(old), sql.Identifier(new)))


def _set_template(admin: Connection, name: str, template: bool) -> None:
    admin.execute(sql.SQL("ALTER DATABASE {} IS_TEMPLATE {}").format(
        sql.Identifier(name), sql.Literal(template)))

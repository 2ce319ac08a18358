"""template1's contents in a whole-system backup and recovery (POSTGRES_DB='*').

What an administrator puts into template1 (an extension, a schema, functions) so that every
new database gets it is in no database's dump: each restore creates its database from
template0 (docs/reliability.md R4), and ``*`` leaves the templates out. So with ``*`` a
backup run also dumps template1 whenever it holds anything template0 lacks
(backupd.postgres.user_objects), as one more database of the run: same name scheme,
manifest, verification, offsite copy and retention, a plain dump ``gunzip -c | psql``
restores. A whole-system restore puts it back into the new server's template1, and only
there: a template1 that already holds objects of its own is left alone, with a warning. A
restore never goes into template1 otherwise (``--target-db template1`` stays refused, R2).
"""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg

from backupd.commands import restore, restore_load, selection
from backupd.commands.restore_options import Without, current_user
from backupd.commands.restore_target import (
    MAINTENANCE_DB,
    NOTHING_CHANGED,
    RESTORING,
    check_swappable,
    derived_name,
    holds_nothing,
    lock_target,
)
from backupd.commands.template1_look import objects_in, objects_in_template1
from backupd.database_properties import DatabaseProperties
from backupd.errors import JobFailed
from backupd.job import JobContext
from backupd.postgres.connection import (
    as_text,
    connect,
    describe_error,
    describe_pg_error,
    drop_database,
)
from backupd.postgres.databases import (
    TEMPLATE_DATABASE,
    drop_with_subscriptions,
    read_properties,
)
from backupd.postgres.not_text import NameNotText
from backupd.postgres.user_objects import UserObjects
from backupd.settings import Settings
from backupd.storage.base import BackupEntry, Repository

Connection = psycopg.Connection[tuple]  # type: ignore[type-arg]


def restore_template1(ctx: JobContext, repository: Repository, entry: BackupEntry,
                      without: Without) -> str | None:
    """Restore the template1 dump ``entry`` into the server's template1 when that holds
    nothing of its own (a new server): verified in full, loaded into a scratch database made
    like the backed-up one, then swapped in for the empty template1 in one transaction, as
    every restore puts its database in place. Returns None when restored, else why not (the
    server's template1 already holds objects, or the role may not swap it: left as it is,
    and warned, unless it holds what the backup does)."""
    settings = ctx.settings
    with connect(settings, MAINTENANCE_DB) as admin:
        lock_target(ctx, admin, TEMPLATE_DATABASE)
        refused = _may_not_swap(admin)
        if refused is not None:
            return _left_alone(ctx, entry, refused)
        with selection.local_file(ctx, repository, entry) as path:
            identities = restore.identities_for(ctx, entry)
            restore_load.verify_first(path, entry, identities, ctx)
            carried = entry.manifest.database_properties if entry.manifest is not None else None
            current = read_properties(admin, TEMPLATE_DATABASE)
            properties = without.apply(carried or current, current_user(admin))
            stamp = datetime.now(UTC).strftime("%Y%m%d_%H%M%S")
            scratch = derived_name(TEMPLATE_DATABASE, f"{RESTORING}{stamp}")
            kept = derived_name(TEMPLATE_DATABASE, f"_before_restore_{stamp}")
            with restore.scratch_database(ctx, admin, scratch, TEMPLATE_DATABASE,
                                          properties) as made:
                ctx.say(f"{entry.name} verified; restoring it into {scratch!r}, to take "
                        "template1's place")
                placed = restore_load.load(
                    ctx, path, entry, scratch, identities, without.pg_restore_options,
                    tablespaces=made.object_tablespaces)
                # Asked only now: what the backed-up template1 holds is known once loaded,
                # and nothing may have come into the server's since.
                present = _looked_into(settings, TEMPLATE_DATABASE)
                if not present.empty:
                    backed_up = _looked_into(settings, scratch)
                    # The loaded copy may hold a subscription: DROP DATABASE alone is refused.
                    drop_with_subscriptions(settings, admin, scratch)
                    return _holding_objects(ctx, entry, present, backed_up)
                made.put_in_place(entry, properties, kept, placed, template=True)
                changed = _new_default_locale(current, properties)
                if changed is not None:
                    ctx.say(changed)
        _drop_previous(ctx, admin, kept)
    try:
        held = objects_in_template1(settings).describe()
    except (JobFailed, psycopg.Error):  # restored all the same: only the closing line lacks it
        held = f"what {entry.name} holds"
    ctx.say(f"template1 restored from {entry.name}: every database created from now on gets "
            f"{held}")
    return None


def _looked_into(settings: Settings, database: str) -> UserObjects:
    """objects_in, failing as a restore of template1 does (JobFailed naming it) when the
    objects cannot be read: e.g. a SQL_ASCII server's template1 holding a name that is not
    UTF-8, which the server refuses to send as UTF-8."""
    try:
        return objects_in(settings, database)
    except (psycopg.Error, NameNotText) as exc:
        raise JobFailed(f"could not read what {database!r} holds, to decide whether the "
                        f"backed-up template1 may take the place of the server's: "
                        f"{describe_pg_error(exc)}; template1 is unchanged") from None


def _may_not_swap(admin: Connection) -> str | None:
    """Why template1 could not be put out of the way (the role may not rename it, a prepared
    transaction in it, sessions the role may not end): the ordinary restore's check, asked
    before anything is loaded; None when it can."""
    with as_text(admin):
        row = admin.execute("SELECT pg_get_userbyid(datdba) FROM pg_database "
                            "WHERE datname = %s", (TEMPLATE_DATABASE,)).fetchone()
    try:
        check_swappable(admin, TEMPLATE_DATABASE, str(row[0]) if row is not None else "")
    except JobFailed as exc:
        return str(exc).removesuffix(NOTHING_CHANGED)
    return None


def _new_default_locale(before: DatabaseProperties | None,
                        after: DatabaseProperties | None) -> str | None:
    """The one line saying that the restored template1 changed the server's default
    encoding or locale (what CREATE DATABASE gives without ENCODING or LOCALE); None when
    it did not."""
    if before is None or after is None or _locale(before) == _locale(after):
        return None
    return (f"template1 now has the backed-up one's {_locale(after)}, where the server's had "
            f"{_locale(before)}: databases created from now on without ENCODING or LOCALE "
            "get the backed-up one's (template0 keeps initdb's)")


def _locale(properties: DatabaseProperties) -> str:
    ctype = "" if properties.ctype == properties.collate else f", ctype {properties.ctype!r}"
    provider = ("" if properties.locale_provider == "libc" else
                f", {properties.locale_provider} locale {properties.provider_locale!r}")
    return f"encoding {properties.encoding}, locale {properties.collate!r}{ctype}{provider}"


def _holding_objects(ctx: JobContext, entry: BackupEntry, present: UserObjects,
                     backed_up: UserObjects) -> str:
    if present == backed_up:
        note = (f"not restored: the server's template1 already holds what {entry.name} does "
                f"({present.describe()})")
        ctx.say(f"template1: {note}")
        return note
    return _left_alone(ctx, entry, f"it already holds {present.describe()}, where "
                                   f"{entry.name} holds {backed_up.describe()}")


def _left_alone(ctx: JobContext, entry: BackupEntry, why: str) -> str:
    ctx.warn(f"template1 on {ctx.settings.postgres_host}:{ctx.settings.postgres_port} was left "
             f"as it is: {why}; databases created there later get the server's template1, "
             f"not the backed-up one. To see the backed-up one, run `backupd restore "
             f"{entry.name} --target-db template1_from_backup`, then put what template1 "
             "should hold into it with psql -d template1")
    return f"not restored: {why}"


def _drop_previous(ctx: JobContext, admin: Connection, kept: str) -> None:
    """The template1 swapped out held nothing of its own when looked into before the swap;
    looked into again (the same definition, backupd.postgres.user_objects), it is dropped
    only if it still holds nothing: whatever came into it since is kept, and said so."""
    try:
        empty = holds_nothing(ctx.settings, kept)
    except (JobFailed, psycopg.Error) as exc:
        reason = describe_error(exc)
        ctx.warn(f"template1 was restored; the one it replaced could not be looked into "
                 f"({reason}), so it was kept as {kept!r}: drop it once you know it holds "
                 "nothing you need")
        return
    if not empty:
        ctx.warn(f"template1 was restored; the one it replaced was kept as {kept!r}: "
                 "something was put into it during the restore; take what you need from "
                 "it, then drop it")
        return
    try:
        drop_database(admin, kept)
    except psycopg.Error as exc:
        ctx.warn(f"template1 was restored, but the empty one it replaced, {kept!r}, could not "
                 f"be dropped ({describe_pg_error(exc)}); drop it by hand")

"""What a backup run of ``*`` finds in template1, and whether it must dump it too
(backupd.commands.template1 says why; this is the backup side alone, so that a backup does
not load the restore's modules)."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from backupd.errors import ConfigError, JobFailed
from backupd.job import JobContext
from backupd.manifest import TEMPLATE1_DUMPED, TEMPLATE1_EMPTY, TEMPLATE1_FAILED
from backupd.pipeline import dump
from backupd.postgres.connection import connect, describe_error
from backupd.postgres.databases import TEMPLATE_DATABASE
from backupd.postgres.user_objects import UserObjects, read_user_objects
from backupd.settings import Settings


@dataclass(frozen=True)
class TemplateLook:
    """What a backup run of ``*`` found in template1: ``databases``, ``[template1]`` when
    it must be dumped too; ``look``, for every dump manifest of the run (Manifest.
    template1_look: restore and health read it, backupd.storage.template1_runs): None when
    DB_BACKUP_EXCLUDE leaves template1 out (nothing to say), else dumped, empty or failed."""

    databases: tuple[str, ...] = ()
    look: str | None = None

    @property
    def empty(self) -> bool | None:
        """For the globals manifest (``template1_empty``, what older versions read): True
        when looked into and found holding nothing, False when it holds objects, None when
        not looked into."""
        return {TEMPLATE1_EMPTY: True, TEMPLATE1_DUMPED: False}.get(self.look or "")


def template_to_back_up(ctx: JobContext) -> TemplateLook:
    """Whether a backup run of ``*`` must dump template1 too (it holds objects and
    DB_BACKUP_EXCLUDE does not leave it out), said so."""
    settings = ctx.settings
    if not settings.database_selection.choose([TEMPLATE_DATABASE]):
        return TemplateLook()
    try:
        held = objects_in_template1(settings, backup=True)
    except (JobFailed, psycopg.Error) as exc:
        reason = describe_error(exc)
        ctx.warn(f"could not look into template1 ({reason}): objects put there for every new "
                 "database are not backed up; let POSTGRES_USER connect to template1, or set "
                 "DB_BACKUP_EXCLUDE=template1 to leave it out knowingly")
        return TemplateLook(look=TEMPLATE1_FAILED)
    if held.empty:
        return TemplateLook(look=TEMPLATE1_EMPTY)
    ctx.say(f"template1 holds objects template0 lacks ({held.describe()}): backing it up too, "
            "so that a whole-system restore brings them back into a new server's template1")
    return TemplateLook((TEMPLATE_DATABASE,), look=TEMPLATE1_DUMPED)


def objects_in_template1(settings: Settings, *, backup: bool = False) -> UserObjects:
    return objects_in(settings, TEMPLATE_DATABASE, backup=backup)


def objects_in(settings: Settings, database: str, *, backup: bool = False) -> UserObjects:
    """What ``database`` holds of its own. ``backup``: as the pg_dump this run chooses
    carries it (a public schema comment only from pg_dump 15 on); otherwise as the restore
    side counts it (user_objects.comment_counts)."""
    with connect(settings, database) as conn:
        # Asked after connecting: the client follows the server's major, noted by connect.
        return read_user_objects(conn, _pg_dump_major() if backup else None)


def _pg_dump_major() -> int | None:
    try:
        return dump.client_major()
    except (ConfigError, OSError):
        # A pg_dump that cannot say its version, or cannot be started at all (not
        # executable, its interpreter or directory gone: OSError), fails the dump itself,
        # naming why; until then the comment counts (a dump too many is harmless, one too
        # few loses it).
        return None

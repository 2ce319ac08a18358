"""What a backup run of ``*`` finds in template1, and whether it must dump it too
(backupd.commands.template1 says why; this is the backup side alone, so that a backup does
not load the restore's modules)."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from backupd.errors import JobFailed
from backupd.job import JobContext
from backupd.postgres.connection import connect, describe_error
from backupd.postgres.databases import TEMPLATE_DATABASE
from backupd.postgres.user_objects import UserObjects, read_user_objects
from backupd.settings import Settings


@dataclass(frozen=True)
class TemplateLook:
    """What a backup run of ``*`` found in template1: ``databases``, ``[template1]`` when
    it must be dumped too; ``empty``, for the run's record and globals manifest (health and
    metrics judge template1's dumps only while the newest run took one): True when looked into and
    found holding nothing, False when it holds objects, None when not looked into."""

    databases: tuple[str, ...] = ()
    empty: bool | None = None


def template_to_back_up(ctx: JobContext) -> TemplateLook:
    """Whether a backup run of ``*`` must dump template1 too (it holds objects and
    DB_BACKUP_EXCLUDE does not leave it out), said so."""
    settings = ctx.settings
    if not settings.database_selection.choose([TEMPLATE_DATABASE]):
        return TemplateLook()
    try:
        held = objects_in_template1(settings)
    except (JobFailed, psycopg.Error) as exc:
        reason = describe_error(exc)
        ctx.warn(f"could not look into template1 ({reason}): objects put there for every new "
                 "database are not backed up; let POSTGRES_USER connect to template1, or set "
                 "DB_BACKUP_EXCLUDE=template1 to leave it out knowingly")
        return TemplateLook()
    if held.empty:
        return TemplateLook(empty=True)
    ctx.say(f"template1 holds objects template0 lacks ({held.describe()}): backing it up too, "
            "so that a whole-system restore brings them back into a new server's template1")
    return TemplateLook((TEMPLATE_DATABASE,), empty=False)


def objects_in_template1(settings: Settings) -> UserObjects:
    return objects_in(settings, TEMPLATE_DATABASE)


def objects_in(settings: Settings, database: str) -> UserObjects:
    with connect(settings, database) as conn:
        return read_user_objects(conn)

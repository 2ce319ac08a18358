r"""``backupd restore``: restore only a verified backup, never leave a half-restored database.

* Every backup is fully verified before a byte of it reaches psql or pg_restore: SQL that
  failed its checksum must never run, not even in a transaction that is rolled back later
  (psql meta-commands such as ``\!`` act outside the transaction).
* Plain SQL is then checked again as it streams into psql: the final COMMIT is sent only
  after the last byte and only if the bytes still match (the file cannot change between
  the verify and the restore unnoticed); commits along the way go at pg_dump's entry
  boundaries (backupd.pipeline.commit_chunks), so thousands of tables need no lock each at once.
* The verify runs no SQL, so (unless a question is asked first) it runs while the scratch
  database is created; psql and pg_restore start after its verdict, in sessions tuned for
  a bulk load (configs.restore_connection: synchronous_commit=off, maintenance_work_mem).
* Plain SQL with DB_RESTORE_JOBS > 1: that same pre-verify also notes the indexes and
  PK/UNIQUE/EXCLUDE constraints of tables with data (backupd.pipeline.early_entries); they
  are left out of psql's stream and built on worker sessions as each table's data commits
  (backupd.pipeline.early_jobs; each may use maintenance_work_mem). DB_RESTORE_JOBS=1, or a
  dump not recognised, restores through the one psql alone.
* Every restore goes into a new scratch database, created from template0 like the backed-up
  database, dropped if the restore fails, and renamed into place with the database's
  recorded properties only once complete (backupd.commands.restore_target). An existing target is
  refused when it holds tables, unless ``--replace``: it is then kept, renamed, so nothing
  is lost.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from pyrage import x25519

from backupd.commands import selection
from backupd.commands.restore_load import (
    load,
    recorded_tablespaces,
    require_verified,
    restore_outcome,
)
from backupd.commands.restore_options import EVERYTHING, Without, current_user
from backupd.commands.restore_target import (
    MAINTENANCE_DB,
    RESTORING,
    admin_database,
    check_target,
    derived_name,
    holds_nothing,
    install,
    lock_target,
    mark_restoring,
    target_name,
)
from backupd.configs import age_key_files
from backupd.database_properties import DatabaseProperties
from backupd.errors import ConfigError, JobFailed
from backupd.job import JobContext
from backupd.naming import GLOBALS_KIND
from backupd.outcomes import RestoreOutcome
from backupd.pipeline.early_entries import EarlyCapture, EarlyPlan
from backupd.pipeline.encrypt import load_identities
from backupd.pipeline.verification import verify_file
from backupd.postgres.connection import connect, describe_error, describe_pg_error, drop_database
from backupd.postgres.databases import create_like, drop_with_subscriptions, read_properties
from backupd.postgres.tablespaces import (
    ObjectsPlaced,
    ObjectTablespaces,
    Placement,
    ServerTablespaces,
    database_tablespace,
    fallback_warning,
    place,
    server_tablespaces,
)
from backupd.storage.base import BackupEntry

Confirm = Callable[[str], bool]
Connection = psycopg.Connection[tuple]  # type: ignore[type-arg]
__all__ = ["MAINTENANCE_DB", "derived_name", "restore_file", "run"]


def run(
    ctx: JobContext,
    name: str | None,
    *,
    latest: bool = False,
    target_db: str | None = None,
    replace: bool = False,
    confirm: Confirm | None = None,
    from_s3: bool = False,
    without: Without = EVERYTHING,
) -> None:
    # --from-s3 (disaster recovery) only chooses the repository: the backup is downloaded
    # into DB_BACKUP_DIR, then goes through the very same verify + restore.
    repository = ctx.repos.choose(from_s3, "--from-s3")
    entry = selection.pick(ctx, repository, name, latest)
    # Bad input before any download.
    target_name(ctx.settings, target_db, replace=replace, backup_database=entry.parsed.database)
    without.check(entry)
    with selection.local_file(ctx, repository, entry) as path:
        restore_file(ctx, path, entry, target_db=target_db, replace=replace, confirm=confirm,
                     without=without)


def restore_file(
    ctx: JobContext,
    path: Path,
    entry: BackupEntry,
    *,
    target_db: str | None = None,
    replace: bool = False,
    confirm: Confirm | None = None,
    without: Without = EVERYTHING,
) -> None:
    """Verify ``path`` and restore it into the target database (shared with S3).
    ``without``: leave out ownership and/or privileges (custom format only). The target is
    checked here, under its lock, whatever a caller checked before (a cluster restore
    checks every database up front, maybe hours before this one's turn: it may have gained
    tables, sessions or prepared transactions since)."""
    settings = ctx.settings
    target = target_name(settings, target_db, replace=replace,
                         backup_database=entry.parsed.database)
    without.check(entry)
    ctx.result.backup_name = entry.name
    outcome = restore_outcome(ctx)
    if outcome is None:
        outcome = ctx.result.outcome = RestoreOutcome(target_database=target)
    outcome.target_database = target
    identities = identities_for(ctx, entry)
    verified = _PreVerify(ctx, path, entry, identities, overlap=confirm is None)
    if confirm is not None:
        verified.wait()
        if not confirm(target):
            raise ConfigError("restore: not confirmed; nothing was changed")

    with verified.reported_first(), connect(settings, admin_database(target)) as admin:
        lock_target(ctx, admin, target)
        exists = check_target(admin, settings, target, replace=replace)
        properties = without.apply(
            _properties(ctx, entry, read_properties(admin, target) if exists else None),
            current_user(admin))
        stamp = datetime.now(UTC).strftime("%Y%m%d_%H%M%S")
        scratch = derived_name(target, f"{RESTORING}{stamp}")
        kept = derived_name(target, f"_before_restore_{stamp}") if exists else None
        # Past every refusal: the scratch database is made while the file is still being
        # verified (no byte of it reaches the database before the verdict, and the log says
        # "restoring" only once the verdict is in and the load starts).
        ctx.say(f"preparing database {scratch!r} to restore {entry.name} into {target!r}")
        with scratch_database(ctx, admin, scratch, target, properties) as made:
            verified.wait()
            ctx.say(f"restoring {entry.name} into database {target!r} (by way of {scratch!r})")
            placed = load(ctx, path, entry, scratch, identities, without.pg_restore_options,
                          plan=verified.plan(), tablespaces=made.object_tablespaces)
            made.put_in_place(entry, properties, kept, placed)
        if kept is not None:
            _report_kept(ctx, admin, kept, outcome)
    ctx.say(f"restore of {entry.name} into {target!r} completed")


class _PreVerify:
    """The full verification before anything of the file is restored. It reads the whole
    file and runs no SQL, so when no question is asked in between (``overlap``) it runs in a
    thread while the scratch database is created and the target's preconditions checked;
    ``wait`` gives its verdict (JobFailed naming what failed) before the first byte is loaded."""

    def __init__(self, ctx: JobContext, path: Path, entry: BackupEntry,
                 identities: list[x25519.Identity] | None, *, overlap: bool) -> None:
        self._ctx, self._entry = ctx, entry
        self._done = False
        # Plain SQL with DB_RESTORE_JOBS > 1: what may be built beside the load is found in
        # this pass (backupd.pipeline.early_entries), so it is verified SQL.
        self._capture = (EarlyCapture() if entry.parsed.backup_format == "plain"
                         and entry.parsed.kind != GLOBALS_KIND
                         and ctx.settings.restore_jobs > 1 else None)
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pre-verify")
        # The capture takes the SQL as fast as it comes: the members are inflated on both
        # cores while it scans them in order.
        self._report = pool.submit(verify_file, path, entry.parsed, entry.manifest,
                                   entry.manifest_error, identities, forward=self._capture,
                                   forward_ahead=True)
        pool.shutdown(wait=False)
        if not overlap:
            self.wait()

    def wait(self) -> None:
        if self._done:
            return
        self._done = True
        require_verified(self._ctx, self._entry, self._report.result())
        self._ctx.say(f"{self._entry.name} verified")

    def plan(self) -> EarlyPlan | None:
        """After ``wait``: the indexes and constraints to build beside the load, if any."""
        return self._capture.plan() if self._capture is not None else None

    @contextlib.contextmanager
    def reported_first(self) -> Iterator[None]:
        """Should the preparation fail while the verify runs, a failed verify is the error
        reported (as when it ran first)."""
        try:
            yield
        except BaseException:
            self.wait()
            raise


@dataclasses.dataclass(frozen=True)
class ScratchDatabase:
    """A scratch database made by :func:`scratch_database`, to be loaded, then put in
    place of ``target``."""

    ctx: JobContext
    admin: Connection
    name: str
    target: str
    placement: Placement  # landed: read back once it was marked as the restore's
    tablespaces: ServerTablespaces

    @property
    def object_tablespaces(self) -> ObjectTablespaces:
        return ObjectTablespaces(self.tablespaces, self.placement.landed)

    def put_in_place(self, entry: BackupEntry, properties: DatabaseProperties | None,
                     kept: str | None, placed: ObjectsPlaced, *, template: bool = False) -> None:
        """The loaded database in ``target``'s place (``install``), warning of what it
        could not keep: properties, and tablespaces that fell back to the default."""
        for warning in install(self.admin, self.name, self.target, properties, kept,
                               template=template):
            self.ctx.warn(warning)
        fallback = fallback_warning(self.target, self.placement, placed,
                                    recorded=recorded_tablespaces(entry))
        if fallback is not None:
            self.ctx.warn(fallback)


@contextlib.contextmanager
def scratch_database(ctx: JobContext, admin: Connection, scratch: str, target: str,
                     properties: DatabaseProperties | None) -> Iterator[ScratchDatabase]:
    """The one way a restore (of a database, of template1) makes the database it loads
    into: created like the backed-up one, marked as the restore of ``target`` before
    anything else is asked of it, and dropped when anything in the ``with`` fails (a
    cancel too), so no half-restored database is left."""
    spaces = server_tablespaces(admin, properties.encoding if properties else None)
    placement = create_database(admin, scratch, properties, spaces)
    ctx.cancel.progress.working_in(scratch)  # its index builds are the job's work
    try:
        mark_restoring(admin, scratch, target)
        yield ScratchDatabase(ctx, admin, scratch, target,
                              landed(admin, scratch, placement, spaces), spaces)
    except BaseException:
        drop_incomplete(ctx, admin, scratch, target)
        raise


def drop_incomplete(ctx: JobContext, admin: Connection, scratch: str, target: str) -> None:
    """Drop the scratch database of a failed restore; should that fail too (the server or
    our session gone), say so without hiding why the restore failed."""
    try:
        drop_with_subscriptions(ctx.settings, admin, scratch)
    except (psycopg.Error, JobFailed) as exc:
        reason = describe_error(exc)
        ctx.warn(f"restore failed, and the incomplete database {scratch!r} could not be "
                 f"dropped ({reason}); the next restore into {target!r} drops it, or drop it "
                 "by hand")
        return
    ctx.say(f"restore failed; dropped the incomplete database {scratch!r}")


def identities_for(ctx: JobContext, entry: BackupEntry) -> list[x25519.Identity] | None:
    identities = load_identities(age_key_files(ctx.settings))
    if entry.parsed.encrypted and identities is None:
        raise ConfigError(f"DB_BACKUP_AGE_IDENTITY_FILE: {entry.name} is encrypted; set it to "
                          "the age identity file whose key it was encrypted to; nothing was "
                          "changed")
    return identities


def _properties(ctx: JobContext, entry: BackupEntry,
                current: DatabaseProperties | None) -> DatabaseProperties | None:
    """The database properties the backup carries; for a backup from before they were
    recorded, those of the database it replaces, or else the server's defaults."""
    carried = entry.manifest.database_properties if entry.manifest is not None else None
    if carried is None:
        ctx.say(f"{entry.name} records no database properties (an older backup): "
                + ("keeping those of the database it replaces" if current is not None
                   else "the new database gets the server's defaults"))
        return current
    return carried


def create_database(admin: Connection, name: str, properties: DatabaseProperties | None,
                    tablespaces: ServerTablespaces, *,
                    connection_limit: int | None = None) -> Placement:
    """The one way restore and drill create a database: from template0, like the source,
    in its tablespace when this server has it (``tablespaces``), else in the default one
    (backupd.postgres.tablespaces); where it was meant to go. One statement: when it fails,
    there is no database. Where it went is read by :func:`landed`, once the caller has
    marked it as its own (so that a failure there leaves nothing it would not drop)."""
    placement = place(properties, tablespaces)
    try:
        create_like(admin, name, properties, connection_limit=connection_limit,
                    tablespace=placement.tablespace)
    except psycopg.Error as exc:
        raise JobFailed(f"cannot create database {name!r} like the backed-up one: "
                        f"{describe_pg_error(exc)}; nothing was changed") from None
    return placement


def landed(admin: Connection, name: str, placement: Placement,
           tablespaces: ServerTablespaces) -> Placement:
    """``placement`` with the tablespace database ``name`` was actually created in, read
    back (for the objects kept there and the report; its name read as ``tablespaces``'
    were); JobFailed when it cannot be read."""
    try:
        where = database_tablespace(admin, name, tablespaces.encoding)
    except psycopg.Error as exc:
        raise JobFailed(f"cannot read which tablespace database {name!r} was created in: "
                        f"{describe_pg_error(exc)}") from None
    return dataclasses.replace(placement, landed=where)


def _report_kept(ctx: JobContext, admin: Connection, kept: str,
                 outcome: RestoreOutcome) -> None:
    try:
        empty = holds_nothing(ctx.settings, kept)
    except (JobFailed, psycopg.Error) as exc:
        # The restore is complete; a previous database we cannot look into is kept.
        ctx.say(f"could not look into the previous database ({exc}); keeping it")
        empty = False
    if empty:
        drop_database(admin, kept)
        ctx.say("the previous database held nothing; it was dropped")
        return
    outcome.previous_database_kept_as = kept
    ctx.say(f"the previous database was kept as {kept!r}; drop it when satisfied")

"""``backupd drill``: prove that the latest backup restores, and that it matches the live database.

1. Refuse a scratch name that could be the live database (or a database backupd
   did not create), and skip with a reason when the server lacks room.
2. Create the scratch database as ``backupd restore`` creates one (from template0, the
   backed-up encoding and locale; a small connection limit), mark it with a comment, and
   restore the backup into it with the same code (verified first).
3. Compare it with the live database (:mod:`backupd.postgres.compare`), its database
   properties included: those the backup carries are applied to the scratch database in
   a transaction that is rolled back (the mark stays), read back and compared.
4. Record the outcome and the measured restore time in the backup's manifest.
5. Drop the scratch database -- in a ``finally``, and, should the process have been
   killed, at the start of the next drill: only a database carrying backupd's
   mark is ever dropped, so a name typed by mistake never costs anyone their data.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from psycopg import sql

from backupd.commands import restore, restore_load, selection
from backupd.commands.drill_server import check_not_live, drill_server_settings
from backupd.commands.drill_template1 import with_template1
from backupd.database_properties import DatabaseProperties
from backupd.errors import Cancelled, ConfigError, JobFailed, JobSkipped, OffsiteError
from backupd.job import JobContext, run_job
from backupd.manifest import Manifest
from backupd.naming import SCRATCH_MARK, parse_backup_name
from backupd.notify.base import NotifierChain
from backupd.outcomes import ROLES_NOT_PROVEN, DrillOutcome, RestoreOutcome
from backupd.postgres.compare import (
    Comparison,
    Connection,
    compare,
    compare_properties,
    read_catalog,
)
from backupd.postgres.connection import advisory_lock, as_text, connect, describe_pg_error
from backupd.postgres.databases import (
    drop_with_subscriptions,
    read_properties,
    resolve_databases,
    trial_properties,
)
from backupd.postgres.tablespaces import (
    ObjectTablespaces,
    Placement,
    ServerTablespaces,
    fallback_warning,
    server_tablespaces,
)
from backupd.result import Status, human_bytes
from backupd.settings import Settings
from backupd.storage.base import BackupEntry, Repository

# psql (or pg_restore) plus the comparison's one connection. Superusers are exempt
# from connection limits; the drill itself never opens more than this anyway.
SCRATCH_CONNECTION_LIMIT = 2
RESERVED_DATABASES = frozenset({restore.MAINTENANCE_DB, "template0", "template1"})


Recorder = Callable[[Manifest], None]


def run(ctx: JobContext, name: str | None = None, *, from_s3: bool = False) -> None:
    """Drill backup ``name`` (default: the newest verified one). The daemon calls ``run(ctx)``.

    ``from_s3``: drill the copy in S3 instead (downloaded, verified, then restored), and
    record the outcome in its S3 manifest.

    With WAL_ARCHIVE=on the drill of the newest backups is also a PITR drill
    (:mod:`backupd.commands.pitr_drill`), run whether the dump drill passed or not; the job
    fails if either did. A PITR drill skipped (no server binaries of the archive's major)
    is a warning beside the dump drill's verdict.
    """
    if name is not None or from_s3 or not ctx.settings.wal_archive:
        _run_dump_drill(ctx, name, from_s3=from_s3)
        return
    from backupd.commands import pitr_drill

    failure: JobFailed | None = None
    try:
        _run_dump_drill(ctx, name, from_s3=from_s3)
    except JobFailed as exc:
        failure = exc
    outcome = ctx.result.outcome
    try:
        pitr = pitr_drill.run(ctx)
    except JobSkipped as exc:
        # The dump drill's verdict stands (a failure of it is never hidden by this skip).
        ctx.warn(str(exc))
        if failure is not None:
            raise failure from None
        return
    except JobFailed as exc:
        if isinstance(outcome, DrillOutcome):
            outcome.pitr_error = str(exc)
        raise JobFailed(f"{failure}; {exc}" if failure else str(exc)) from None
    if isinstance(outcome, DrillOutcome):
        outcome.pitr = pitr
    if failure is not None:
        raise failure


def _run_dump_drill(ctx: JobContext, name: str | None, *, from_s3: bool) -> None:
    settings = ctx.settings
    drill_server = drill_server_settings(settings)
    if drill_server is not None:
        check_not_live(settings, drill_server)  # before anything else
        from backupd.commands import cluster_drill

        def record(repository: Repository, entry: BackupEntry, ok: bool,
                   seconds: float | None) -> None:
            _record(ctx, entry, _recorder(ctx, repository), ok=ok, seconds=seconds)

        cluster_drill.run(ctx, drill_server, name, from_s3=from_s3, record=record)
        return
    if settings.database_selection.several:
        _drill_each(ctx, name, from_s3=from_s3)
        return
    scratch = scratch_database(settings)
    ctx.result.outcome = DrillOutcome(scratch_database=scratch,
                                      restore=RestoreOutcome(target_database=scratch))
    with advisory_lock(settings, "drill"):
        repository = ctx.repos.choose(from_s3, "--from-s3")
        entry = selection.pick(ctx, repository, name, latest=name is None)
        if from_s3:
            check_room(settings)  # before the download, too
        with selection.local_file(ctx, repository, entry) as path:
            _drill(ctx, path, entry, scratch, _recorder(ctx, repository))


def _drill_each(ctx: JobContext, name: str | None, *, from_s3: bool) -> None:
    """Several databases, no drill server: each database's drill beside it, as a job of its
    own (its own result to every notifier), one after another; fails naming those that did."""
    settings = ctx.settings
    if name is not None:
        parsed = parse_backup_name(name)
        if parsed is None or parsed.is_globals:
            raise ConfigError(f"NAME: {name!r} is not a database backup's file name")
        databases = [parsed.database]
    else:
        resolved = resolve_databases(settings)
        for warning in [*resolved.warnings, *resolved.unnamed_warnings]:
            ctx.warn(warning)
        if resolved.missing:
            raise JobFailed(f"database(s) {', '.join(resolved.missing)} (POSTGRES_DB) do not "
                            "exist on the server")
        databases = with_template1(ctx, resolved.databases, from_s3=from_s3)
    chain = ctx.chain or NotifierChain([])
    failed = []
    for database in databases:
        ctx.cancel.raise_if_cancelled()
        result = run_job("drill", settings.for_database(database),
                         lambda sub: _run_dump_drill(sub, name, from_s3=from_s3), chain,
                         ctx.cancel, ctx.repositories, scheduled_for=ctx.result.scheduled_for,
                         announce=False)
        ctx.say(f"  {database!r}: {result.status.value}"
                + (f": {result.error}" if result.error else ""))
        if result.status == Status.CANCELLED:
            raise Cancelled(result.error or "drill cancelled by shutdown")
        if result.status == Status.FAILED:
            failed.append(database)
    if failed:
        raise JobFailed(f"restore drills of {len(failed)} of {len(databases)} databases failed: "
                        + ", ".join(map(repr, failed)))
    ctx.say(f"Restore drills of {len(databases)} databases passed; {ROLES_NOT_PROVEN}")


def _drill(ctx: JobContext, path: Path, entry: BackupEntry, scratch: str,
           record: Recorder) -> None:
    settings = ctx.settings
    ctx.result.backup_name = entry.name
    check_room(settings)
    ctx.say(f"Restore drill of {entry.name} into scratch database {scratch!r}")
    with _admin(settings) as admin:
        _drop_leftover(ctx, admin, scratch)
        live = read_properties(admin, settings.postgres_db)
        if live is None:
            raise JobFailed(f"database {settings.postgres_db!r} (POSTGRES_DB) does not exist "
                            "on the server")
        carried = entry.manifest.database_properties if entry.manifest is not None else None
        spaces = server_tablespaces(admin, (carried or live).encoding)
        placement = _create_scratch(admin, scratch, settings.postgres_db, carried or live,
                                    spaces)
        ctx.cancel.progress.working_in(scratch)  # its index builds are the job's work
        try:
            placement = restore.landed(admin, scratch, placement, spaces)
        except JobFailed:
            _drop_scratch(ctx, scratch)
            raise
    try:
        comparison, seconds = _restore_and_compare(
            ctx, path, entry, scratch, record, Properties(carried, live, placement, spaces))
    finally:
        _drop_scratch(ctx, scratch)
    if not comparison.ok:
        raise JobFailed(f"restore drill of {entry.name} failed: {comparison.summary}")
    ctx.say(f"Restore drill of {entry.name} passed in "
            f"{seconds:.1f}s: {comparison.summary}")
    ctx.say(ROLES_NOT_PROVEN)


def scratch_database(settings: Settings) -> str:
    """DRILL_DATABASE (default ``<db>_drill``), refused when it could be a real database."""
    name = settings.drill_database or restore.derived_name(settings.postgres_db, "_drill")
    if name == settings.postgres_db:
        raise ConfigError(
            f"DRILL_DATABASE: {name!r} is POSTGRES_DB, the live database; the drill drops its "
            "scratch database afterwards, so give it another name (or unset it for "
            f"{restore.derived_name(settings.postgres_db, '_drill')!r})")
    if name in RESERVED_DATABASES:
        raise ConfigError(f"DRILL_DATABASE: {name!r} is a system database; choose another name")
    if not name or len(name.encode()) > 63 or "\x00" in name:
        raise ConfigError("DRILL_DATABASE: must be 1 to 63 bytes with no NUL character")
    return name


def check_room(settings: Settings) -> None:
    """Skip (not fail) when a scratch copy of the database could crowd the server."""
    probe = _existing_parent(settings.backup_dir)
    usage = shutil.disk_usage(probe)
    free_percent = usage.free * 100 / usage.total if usage.total else 0.0
    if free_percent < settings.drill_min_free_percent:
        raise JobSkipped(
            f"restore drill skipped: only {free_percent:.1f}% free on the filesystem of "
            f"DB_BACKUP_DIR ({probe}); DRILL_MIN_FREE_PERCENT asks for "
            f"{settings.drill_min_free_percent:g}%")
    if settings.drill_max_db_bytes is not None:
        with connect(settings) as conn:
            row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        size = int(row[0]) if row else 0
        if size > settings.drill_max_db_bytes:
            raise JobSkipped(
                f"restore drill skipped: database {settings.postgres_db!r} is "
                f"{human_bytes(size)}, more than DRILL_MAX_DB_BYTES "
                f"({human_bytes(settings.drill_max_db_bytes)}) allows for a scratch copy")


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


@contextmanager
def _admin(settings: Settings) -> Iterator[Connection]:
    # Short-lived: the drill holds no maintenance connection while it restores.
    with connect(settings, restore.MAINTENANCE_DB) as conn:
        yield conn


def _drop_scratch(ctx: JobContext, scratch: str) -> None:
    # Never masks the drill's own outcome: a drop that fails is a warning, and the
    # next drill drops the leftover (it carries the mark).
    try:
        with _admin(ctx.settings) as admin:
            drop_with_subscriptions(ctx.settings, admin, scratch)
    except (JobFailed, psycopg.Error) as exc:
        ctx.warn(f"could not drop the scratch database {scratch!r} "
                 f"({describe_pg_error(exc)}); the next drill drops it")
        return
    ctx.say(f"dropped the scratch database {scratch!r}")


def _drop_leftover(ctx: JobContext, admin: Connection, scratch: str) -> None:
    with as_text(admin):  # the name sent as UTF-8 on a SQL_ASCII session
        row = admin.execute(
            "SELECT starts_with(coalesce(shobj_description(oid, 'pg_database'), ''), %s) "
            "FROM pg_database WHERE datname = %s", (SCRATCH_MARK, scratch)).fetchone()
    if row is None:
        return
    if not row[0]:
        raise ConfigError(
            f"DRILL_DATABASE: database {scratch!r} already exists and was not created by a "
            "backupd drill, so backupd will not drop it; set DRILL_DATABASE to an unused name "
            "or drop that database yourself")
    drop_with_subscriptions(ctx.settings, admin, scratch)
    # A warning reaches the job's log file with the result (LogFileNotifier), like every other.
    ctx.warn(f"dropped the scratch database {scratch!r} that an interrupted drill left behind")


def _create_scratch(admin: Connection, scratch: str, live: str,
                    properties: DatabaseProperties, spaces: ServerTablespaces) -> Placement:
    # As `backupd restore` creates databases: from template0 with the backed-up database's
    # encoding and locale (the live one's for an older backup that records none), in its
    # tablespace.
    placement = restore.create_database(admin, scratch, properties, spaces,
                                        connection_limit=SCRATCH_CONNECTION_LIMIT)
    # The mark goes on at once: it is what later allows dropping a leftover.
    with as_text(admin):
        admin.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
            sql.Identifier(scratch),
            sql.Literal(f"{SCRATCH_MARK} for {live}; backupd drops it after every drill")))
    return placement


@dataclass(frozen=True)
class Properties:
    carried: DatabaseProperties | None  # by the backup's manifest (None: an older backup)
    live: DatabaseProperties
    placement: Placement  # where the scratch database went
    spaces: ServerTablespaces  # the server's, for the objects


def _restore_and_compare(ctx: JobContext, path: Path, entry: BackupEntry, scratch: str,
                         record: Recorder, properties: Properties) -> tuple[Comparison, float]:
    """The comparison, and the restore's measured time in seconds."""
    outcome = ctx.result.outcome
    assert isinstance(outcome, DrillOutcome)  # set by run()
    try:
        identities = restore.identities_for(ctx, entry)
        restore_load.verify_first(path, entry, identities, ctx)
        ctx.say(f"{entry.name} verified; restoring into scratch database {scratch!r}")
        placed = restore_load.load(ctx, path, entry, scratch, identities,
                                   tablespaces=ObjectTablespaces(properties.spaces,
                                                                 properties.placement.landed))
    except JobFailed as exc:
        outcome.differences = [f"the backup does not restore: {exc}"]
        outcome.drift = []
        outcome.comparison_summary = "not compared: the restore failed"
        _record(ctx, entry, record, ok=False, seconds=None)
        raise JobFailed(f"restore drill of {entry.name} failed: {exc}") from None
    seconds = outcome.restore_seconds or 0.0  # restore_load.load measured it
    # Beside the live database its tablespaces are there, unless dropped since the backup.
    fallback = fallback_warning(scratch, properties.placement, placed, drill_copy=True)
    if fallback is not None:
        ctx.warn(f"restore drill: {fallback}")
    ctx.cancel.raise_if_cancelled()
    with connect(ctx.settings, ctx.settings.postgres_db) as live_conn:
        live_conn.execute("SET default_transaction_read_only = on")
        live = read_catalog(live_conn, ctx.progress.touch)
    with connect(ctx.settings, scratch) as scratch_conn:
        restored = read_catalog(scratch_conn, ctx.progress.touch)
    backup_rows = entry.manifest.table_rows if entry.manifest is not None else None
    comparison = compare(live, restored, backup_rows)
    if properties.carried is None:
        comparison.warnings.append(
            f"{entry.name} records no database properties (an older backup): owner, "
            "settings, privileges and comment were not compared")
    else:
        with _admin(ctx.settings) as admin:
            as_restored = trial_properties(admin, scratch, properties.carried)
        compare_properties(comparison, properties.carried, as_restored, properties.live,
                           expected=properties.placement.expected(properties.carried))
    outcome.differences = comparison.differences
    outcome.drift = comparison.drift
    outcome.drift_rows = comparison.drift_rows
    outcome.objects_compared = comparison.objects_compared
    outcome.comparison_summary = f"{comparison.summary}; {ROLES_NOT_PROVEN}"
    for warning in comparison.warnings:
        ctx.warn(warning)
    for line in comparison.differences:
        ctx.say(f"difference: {line}")
    for line in comparison.drift:
        ctx.say(f"drift: {line}")
    _record(ctx, entry, record, ok=comparison.ok, seconds=seconds)
    return comparison, seconds


def _record(ctx: JobContext, entry: BackupEntry, record: Recorder, *, ok: bool,
            seconds: float | None) -> None:
    if entry.manifest is None:
        ctx.warn(f"{entry.name} has no usable manifest ({entry.manifest_error or 'missing'}); "
                 "the drill's outcome was not recorded")
        return
    manifest = entry.manifest.model_copy()
    manifest.drilled_at = datetime.now(UTC)
    manifest.drill_ok = ok
    manifest.drill_restore_seconds = seconds
    record(manifest)


def _recorder(ctx: JobContext, repository: Repository) -> Recorder:
    def write(drilled: Manifest) -> None:
        # Re-read first: a verify may have rewritten the manifest while the drill ran.
        try:
            current, _ = repository.load_manifest(drilled.name)
        except OffsiteError:
            current = None
        manifest = current or drilled
        manifest.drilled_at = drilled.drilled_at
        manifest.drill_ok = drilled.drill_ok
        manifest.drill_restore_seconds = drilled.drill_restore_seconds
        # Read-only mounts and credentials lose the record, not the drill.
        selection.record(ctx, repository, manifest, "the drill's outcome")

    return write

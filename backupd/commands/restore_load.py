"""Loading a verified backup into a new, empty database: plain SQL streamed into psql (its
bytes checked again as they go, COMMIT only after the last one), custom and directory
archives through pg_restore. Shared by ``backupd restore`` (backupd.commands.restore, which
chooses and prepares the database and puts it in place) and the drills.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from pyrage import x25519

from backupd.configs import restore_config, restore_connection
from backupd.errors import JobFailed
from backupd.job import JobContext
from backupd.outcomes import DrillOutcome, FileReport, RestoreOutcome
from backupd.pipeline.commit_chunks import CommitChunks
from backupd.pipeline.config import ConnectionConfig
from backupd.pipeline.custom import restore_archive
from backupd.pipeline.directory import Extractor, scratch
from backupd.pipeline.early_entries import EarlyPlan
from backupd.pipeline.early_jobs import EarlyJobs, fewer_sessions_hint, out_of_slots
from backupd.pipeline.psql import Feed, run_in_one_transaction
from backupd.pipeline.tablespace_sets import TablespaceSets
from backupd.pipeline.verification import HeaderGate, VerifyReport, verify_file
from backupd.postgres.tablespaces import (
    ObjectsPlaced,
    ObjectTablespaces,
    name_codec,
    unlisted_hint,
)
from backupd.storage.base import BackupEntry


def listed_tablespaces(entry: BackupEntry) -> tuple[str, ...] | None:
    """The tablespaces other than the database's own that the backup's objects were in, as
    its manifest records them; None for an older backup (or a manifest lost), which does not."""
    recorded = entry.manifest.object_tablespaces if entry.manifest is not None else None
    return None if recorded is None else tuple(recorded)


def recorded_tablespaces(entry: BackupEntry) -> tuple[str, ...]:
    """:func:`listed_tablespaces`, none for an older backup."""
    return listed_tablespaces(entry) or ()


def load(ctx: JobContext, path: Path, entry: BackupEntry, database: str,
         identities: list[x25519.Identity] | None, options: tuple[str, ...] = (),
         plan: EarlyPlan | None = None,
         tablespaces: ObjectTablespaces | None = None) -> ObjectsPlaced:
    """Restore the verified backup into the new, empty ``database`` (dropped by the caller
    on failure, so no single transaction over the whole restore is needed). ``plan``: of
    plain SQL, the entries its verify found to build beside the load. ``tablespaces``: those
    the restore may keep objects in; objects the backup has in others go to the database's
    default tablespace (backupd.postgres.tablespaces), and the result names those others."""
    started = datetime.now(UTC)
    placed = ObjectsPlaced()
    role = tablespaces.server.role if tablespaces is not None else None
    if entry.parsed.backup_format in ("custom", "directory") and tablespaces is not None:
        recorded = recorded_tablespaces(entry)
        if tablespaces.left_out(recorded):
            options = (*options, "--no-tablespaces")
            placed = tablespaces.without_any(recorded)
    if entry.parsed.backup_format == "custom":
        jobs = ctx.settings.restore_jobs
        if entry.parsed.encrypted and jobs > 1:
            ctx.say(f"{path.name} is encrypted: decrypted straight into one pg_restore job, "
                    f"never to disk (DB_RESTORE_JOBS={jobs} applies to unencrypted .dump files)")
        _pg_restore(ctx, path, database, identities if entry.parsed.encrypted else None, options,
                    role=role, listed=listed_tablespaces(entry))
    elif entry.parsed.backup_format == "directory":
        _restore_directory(ctx, path, entry, database, identities, options, role)
    else:
        sets = (TablespaceSets(tablespaces.kept, name_codec(tablespaces.server.encoding))
                if tablespaces is not None else None)
        stream_into_psql(ctx, path, entry, database, identities, plan, sets)
        if sets is not None and tablespaces is not None:
            placed = ObjectsPlaced(tablespaces.left_out(sets.left_out))
    outcome = restore_outcome(ctx)
    if outcome is not None:
        outcome.restore_seconds = (datetime.now(UTC) - started).total_seconds()
    return placed


def verify_first(path: Path, entry: BackupEntry, identities: list[x25519.Identity] | None,
                 ctx: JobContext) -> None:
    """The full verification before anything else; JobFailed naming what failed."""
    report = verify_file(path, entry.parsed, entry.manifest, entry.manifest_error, identities,
                         progress=ctx.progress)
    require_verified(ctx, entry, report)


def restore_outcome(ctx: JobContext) -> RestoreOutcome | None:
    """The typed record this restore fills in (a drill's outcome carries one of its own)."""
    outcome = ctx.result.outcome
    if isinstance(outcome, DrillOutcome):
        return outcome.restore
    return outcome if isinstance(outcome, RestoreOutcome) else None


def require_verified(ctx: JobContext, entry: BackupEntry, report: VerifyReport) -> None:
    outcome = restore_outcome(ctx)
    if outcome is not None:
        outcome.verify = FileReport.of(report)
    if not report.ok:
        raise JobFailed(f"refusing to restore {entry.name}: it failed verification: "
                        f"{report.problem}")


def _pg_restore(ctx: JobContext, source: Path, database: str,
                identities: list[x25519.Identity] | None, options: tuple[str, ...] = (), *,
                role: str | None, listed: tuple[str, ...] | None) -> None:
    """pg_restore of a custom archive (decrypted on the fly with ``identities``) or of a
    verified directory, into the new scratch database (dropped on failure); DB_RESTORE_JOBS
    parallel jobs where pg_restore can seek. ``role``: the restoring role, and ``listed``:
    the object tablespaces the manifest lists (:func:`listed_tablespaces`), for the hint."""
    problem, stderr = restore_archive(restore_config(ctx.settings), source, database,
                                      ctx.cancel, identities=identities, options=options)
    if problem is not None:
        ctx.result.stderr_tail = "\n".join(stderr) or None
        ctx.result.stderr_tool = "pg_restore"
        hint = unlisted_hint(problem, role, listed)
        if hint is not None:
            problem += f"; {hint}"
        raise JobFailed(f"restore into {database!r} failed: {problem}")


def _restore_directory(ctx: JobContext, path: Path, entry: BackupEntry, database: str,
                       identities: list[x25519.Identity] | None,
                       options: tuple[str, ...], role: str | None) -> None:
    """Directory format: unpack the tar (decrypting it) into a private scratch directory
    while every check of ``backupd verify`` runs again on the same bytes; pg_restore -j
    starts only once they all passed (the file cannot change after the verify unnoticed)."""
    with scratch(path, "restore") as directory:
        report = verify_file(path, entry.parsed, entry.manifest, entry.manifest_error,
                             identities, extract=Extractor(directory), progress=ctx.progress)
        require_verified(ctx, entry, report)
        _pg_restore(ctx, directory, database, None, options, role=role,
                    listed=listed_tablespaces(entry))


def stream_into_psql(ctx: JobContext, path: Path, entry: BackupEntry, database: str,
                     identities: list[x25519.Identity] | None = None,
                     plan: EarlyPlan | None = None,
                     tablespaces: TablespaceSets | None = None) -> None:
    """Verify the plain SQL backup while feeding it to psql: one transaction, stop at the
    first error, COMMIT only once every check of ``backupd verify`` passed.

    The transaction, the COMMIT after the last byte and its confirmation are psql's side
    (backupd.pipeline.psql); here the verified SQL is produced. When the file fails
    verification (checksum, compressed stream, pg_dump's footer) no COMMIT is sent and
    PostgreSQL rolls the transaction back.

    With a ``plan`` (DB_RESTORE_JOBS > 1), its indexes and constraints are built by worker
    sessions as each table's data is committed (backupd.pipeline.early_jobs) and left out
    of the stream; the rest of post-data still runs here, in dump order, after them.
    With ``tablespaces``, objects in a tablespace it does not keep go to the database's
    default one (backupd.pipeline.tablespace_sets).
    """
    connection = restore_connection(ctx.settings, database)
    reports: list[VerifyReport] = []

    def verified_sql(feed: Feed) -> bool:
        # Commits along the way into the new database (one transaction would hold a lock
        # per table, see pipeline.commit_chunks); the final COMMIT still after the last byte.
        with _beside(ctx, plan, connection, feed) as beside:
            chunks = CommitChunks(feed, plan=plan, beside=beside, tablespaces=tablespaces)
            # The same scan as `backupd verify`, handing on only the SQL it has checked.
            reports.append(verify_file(path, entry.parsed, entry.manifest,
                                       entry.manifest_error, identities,
                                       forward=HeaderGate(chunks), progress=ctx.progress))
            chunks.finish()
            if reports[0].ok:
                feed.send(chunks.final_check())  # fails the restore unless every boundary ran
        return reports[0].ok

    psql = run_in_one_transaction(
        connection, ctx.cancel, verified_sql,
        before_commit=lambda: ctx.say(
            f"{entry.name} verified; restoring it: sending COMMIT to {database!r}"))
    # A file that failed verification is reported as such, even if psql also failed on it.
    require_verified(ctx, entry, reports[0])
    if psql.exit_code == 0 and not psql.committed:
        # psql ended without an error but never got as far as the COMMIT: nothing was restored.
        raise JobFailed(f"restore into {database!r} failed: psql did not confirm the COMMIT "
                        "(it stopped reading early); the transaction was rolled back")
    if psql.failed:
        detail = psql.error_line or f"psql exit code {psql.exit_code}"
        if plan is not None and out_of_slots(detail):  # the listener may have taken its slot
            detail += f"; {fewer_sessions_hint(ctx.settings.restore_jobs)}"
        ctx.result.stderr_tail = psql.stderr_tail or None
        ctx.result.stderr_tool = "psql"
        raise JobFailed(f"restore into {database!r} failed and was rolled back: {detail}")


@contextlib.contextmanager
def _beside(ctx: JobContext, plan: EarlyPlan | None, connection: ConnectionConfig,
            main: Feed) -> Iterator[EarlyJobs | None]:
    """The worker sessions of ``plan`` (none without one), opened as psql's stream starts:
    they stop waiting for data once ``main`` (psql) is gone."""
    if plan is None:
        yield None
        return
    jobs = ctx.settings.restore_jobs
    ctx.say(f"building {len(plan.entries)} indexes and constraints on up to {jobs} sessions "
            f"beside the load (DB_RESTORE_JOBS={jobs})")
    with EarlyJobs(plan, connection, jobs, ctx.cancel, main_gone=main.gone) as beside:
        yield beside

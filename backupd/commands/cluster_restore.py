"""Restoring a cluster's globals onto a server: the one function restore and drills share.

The globals artifact (``pg_dumpall --globals-only``, gzip, maybe age) is verified in full
through the one verification stream first, like every backup before a restore; only SQL
that passed every check is applied (backupd.postgres.globals: existing roles kept and
reported, each statement on its own, tablespaces that cannot be made reported).
"""

from __future__ import annotations

from pathlib import Path

import psycopg

from backupd.commands.restore import identities_for
from backupd.errors import JobFailed
from backupd.job import JobContext
from backupd.outcomes import FileReport, GlobalsOutcome
from backupd.pipeline.verification import verify_file
from backupd.postgres.connection import describe_pg_error
from backupd.postgres.globals import apply_globals
from backupd.storage.base import BackupEntry

Connection = psycopg.Connection[tuple]  # type: ignore[type-arg]


def restore_globals(ctx: JobContext, conn: Connection, path: Path,
                    entry: BackupEntry) -> GlobalsOutcome:
    """Verify the globals artifact ``entry`` (its bytes at ``path``, e.g. from
    ``selection.local_file``), then apply it through ``conn``: an autocommit connection,
    as a superuser (or a role with CREATEROLE), to any database of the target server.

    Returns what was created, kept and not restored (also said in the job's log, problems
    as warnings). Raises JobFailed, with nothing applied, when the artifact fails
    verification or the server refuses the whole transaction.
    """
    identities = identities_for(ctx, entry)
    chunks: list[bytes] = []
    report = verify_file(path, entry.parsed, entry.manifest, entry.manifest_error,
                         identities, forward=chunks.append)
    outcome = GlobalsOutcome(name=entry.name, verify=FileReport.of(report))
    if not report.ok:
        raise JobFailed(f"refusing to restore the globals {entry.name}: it failed "
                        f"verification: {report.problem}")
    ctx.say(f"{entry.name} verified; restoring roles and tablespaces")
    try:
        applied = apply_globals(conn, b"".join(chunks))
    except psycopg.Error as exc:
        raise JobFailed(f"restoring the globals {entry.name} failed and was rolled back: "
                        f"{describe_pg_error(exc)}") from None
    outcome = outcome.model_copy(update={
        "roles_created": applied.roles_created, "roles_kept": applied.roles_kept,
        "memberships_granted": applied.memberships_granted,
        "tablespaces_created": applied.tablespaces_created,
        "tablespaces_kept": applied.tablespaces_kept,
        "problems": applied.problems, "restore_seconds": applied.seconds})
    ctx.say(f"globals restored from {entry.name}: {len(applied.roles_created)} role(s) "
            f"created, {len(applied.roles_kept)} kept as they were "
            f"({', '.join(applied.roles_kept) or 'none'}), "
            f"{applied.memberships_granted} membership(s), "
            f"{len(applied.tablespaces_created)} tablespace(s) created")
    for problem in applied.problems:
        ctx.warn(f"globals: {problem}")
    return outcome

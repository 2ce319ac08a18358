"""A backup run: every database POSTGRES_DB selects, plus the cluster's globals (issue 14).

One database with DB_BACKUP_GLOBALS unset is today's ``backup`` exactly
(commands.backup.run). Otherwise one run, under one advisory lock, backs up each database
in turn, each as a job of its own (``job.run_job`` with the settings narrowed to it), so
each database has its own result, reaching every notifier (Slack, metrics with a
``database`` label, the log files), its own verification, offsite copy and retention; a
database that fails never stops the others. Then the globals. The run's own result is the
summary: one line per database, and it fails, naming them, when any database (or the
globals) failed. Every manifest of the run records the same ``run_id``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime

from backupd.commands import backup, globals_backup
from backupd.commands.template1_look import TemplateLook, template_to_back_up
from backupd.errors import Cancelled, JobFailed, JobSkipped
from backupd.job import JobBody, JobContext, run_job
from backupd.manifest import TEMPLATE1_DUMPED
from backupd.naming import globals_name, run_id
from backupd.notify.base import NotifierChain
from backupd.outcomes import BackupRunOutcome, DatabaseBackup
from backupd.postgres.connection import lock_key
from backupd.postgres.databases import (
    TEMPLATE_DATABASE,
    Connection,
    maintenance_connection,
    resolve_databases,
)
from backupd.postgres.not_text import unnamed_database
from backupd.result import JobResult, Status
from backupd.settings import Settings


def run(ctx: JobContext, *, apply_retention: bool = True,
        not_before: datetime | None = None) -> None:
    settings = ctx.settings
    if not settings.database_selection.several and not settings.globals_enabled:
        backup.run(ctx, apply_retention=apply_retention, not_before=not_before)
        return
    offsite = ctx.repos.offsite()  # bad S3 settings: exit 2 before any dump
    with maintenance_connection(settings) as conn, _run_lock(conn, settings), \
            ExitStack() as reservation:
        resolved = resolve_databases(settings, conn)  # bad POSTGRES_DB: exit 2, nothing done
        ctx.store.prepare()
        for warning in resolved.warnings:
            ctx.warn(warning)
        template = _template1(ctx, resolved.databases)
        databases = [*resolved.databases, *template.databases]
        # The run's id is its start to the second: never reuse an earlier run's (nor its
        # globals' name), nor share one starting at once; held until the run ends.
        started = reservation.enter_context(ctx.store.reserved_run_start(
            lambda at: [globals_name(at, encrypted) for encrypted in (False, True)]))
        rid = run_id(started)
        facts = ctx.result.outcome = BackupRunOutcome(run_id=rid)
        ctx.say(f"Backup run {rid}: databases {', '.join(map(repr, databases))}"
                + (f"; missing {', '.join(map(repr, resolved.missing))}"
                   if resolved.missing else "")
                + (f"; named in bytes that are not UTF-8 {', '.join(resolved.unnamed)}"
                   if resolved.unnamed else ""))
        chain = ctx.chain or NotifierChain([])
        for database in databases:
            ctx.cancel.raise_if_cancelled()
            result = run_job(
                "backup", settings.for_database(database),
                _dump_body(apply_retention, not_before, rid, template.look), chain, ctx.cancel,
                ctx.repositories, scheduled_for=ctx.result.scheduled_for, announce=False)
            facts.databases.append(_summary_of(result))
            if result.status == Status.CANCELLED:
                raise Cancelled(result.error or "backup run cancelled by shutdown")
        # Each a failure of its own, as every notifier hears of a database's backup.
        refusals = [(database, _missing_body(settings, database))
                    for database in resolved.missing]
        refusals += [(database, _failing_body(unnamed_database(database)))
                     for database in resolved.unnamed]
        for database, refusal in refusals:
            result = run_job("backup", settings.for_database(database), refusal, chain,
                             ctx.cancel, ctx.repositories,
                             scheduled_for=ctx.result.scheduled_for, announce=False)
            facts.databases.append(_summary_of(result))
        if settings.globals_enabled:
            ctx.cancel.raise_if_cancelled()
            facts.globals = globals_backup.backup_globals(
                ctx, conn, started, rid, offsite=offsite, apply_retention=apply_retention,
                not_before=not_before, databases=databases, template1_empty=template.empty,
                run_of_every=settings.database_selection.every)
    _conclude(ctx, facts, frozenset(resolved.unnamed))


def _conclude(ctx: JobContext, facts: BackupRunOutcome, unnamed: frozenset[str]) -> None:
    """``unnamed``: '*''s databases named as not_text.shown shows them, escaped already:
    repr would escape their backslashes a second time."""
    def named(database: str) -> str:
        return database if database in unnamed else repr(database)

    failed = facts.failed
    problems = []
    if failed:
        problems.append(f"{len(failed)} of {len(facts.databases)} databases failed: "
                        + ", ".join(named(name) for name in failed))
    if facts.globals is not None and not facts.globals.ok and not facts.globals.skipped:
        problems.append(f"the globals failed: {facts.globals.error}")
    for entry in facts.databases:
        ctx.say(f"  {named(entry.database)}: {entry.status}"
                + (f" ({entry.backup_name})" if entry.backup_name else "")
                + (f": {entry.error}" if entry.error and entry.status != "success" else ""))
    if problems:
        raise JobFailed(f"backup run {facts.run_id}: " + "; ".join(problems))
    skipped = [d for d in facts.databases if d.status == "skipped"]
    if skipped and len(skipped) == len(facts.databases) and (
            facts.globals is None or facts.globals.skipped):
        raise JobSkipped(f"backup run {facts.run_id}: every database was skipped "
                         f"({skipped[0].error})")
    ctx.say(f"Backup run {facts.run_id} completed: {len(facts.databases)} database"
            f"{'s' if len(facts.databases) != 1 else ''}"
            + (", globals" if facts.globals is not None and facts.globals.ok else ""))


def _template1(ctx: JobContext, databases: list[str]) -> TemplateLook:
    """'*' leaves the templates out, but what was put into template1 is in no other dump:
    looked into, and dumped too when it holds anything. One not marked a template '*' has
    taken already: dumped, as any database."""
    if not ctx.settings.database_selection.every:
        return TemplateLook()
    if TEMPLATE_DATABASE in databases:
        return TemplateLook(look=TEMPLATE1_DUMPED)
    return template_to_back_up(ctx)


def _dump_body(apply_retention: bool, not_before: datetime | None, rid: str,
               template1_look: str | None) -> JobBody:
    # Every dump of the run carries what it did with template1: no globals manifest may
    # be written (DB_BACKUP_GLOBALS=off), and the dumps travel to S3.
    def body(sub: JobContext) -> None:
        backup.run(sub, apply_retention=apply_retention, not_before=not_before, run_id=rid,
                   template1_look=template1_look)
    return body


def _missing_body(settings: Settings, database: str) -> JobBody:
    return _failing_body(f"database {database!r} (listed in POSTGRES_DB) does not exist on "
                         f"{settings.postgres_host}:{settings.postgres_port}; create it or "
                         "remove it from POSTGRES_DB")


def _failing_body(problem: str) -> JobBody:
    def body(_sub: JobContext) -> None:
        raise JobFailed(problem)
    return body


def _summary_of(result: JobResult) -> DatabaseBackup:
    return DatabaseBackup(database=result.database, status=result.status.value,
                          backup_name=result.backup_name, size_bytes=result.size_bytes,
                          duration_seconds=result.duration_seconds, error=result.error)


@contextmanager
def _run_lock(conn: Connection, settings: Settings) -> Iterator[None]:
    """One backup run at a time for this POSTGRES_DB, across every backupd pointed at the
    server (each database's own dump lock is taken inside, as for a single database)."""
    key = lock_key("backup-run", settings.postgres_db)
    row = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
    if not row or not row[0]:
        raise JobSkipped(f"another backupd is already running a backup run of POSTGRES_DB "
                         f"{settings.postgres_db!r} (advisory lock held); this run was skipped")
    try:
        yield
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (key,))



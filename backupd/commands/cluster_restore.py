"""Restoring a whole cluster onto a server (``restore --latest``): the globals first, then
every database POSTGRES_DB names, each from its newest verified backup; and
:func:`restore_globals`, the one function restore and drills share for the globals.

The globals artifact (``pg_dumpall --globals-only``, gzip, maybe age) is verified in full
through the one verification stream first, like every backup before a restore; only SQL
that passed every check is applied (backupd.postgres.globals: existing roles kept and
reported, each statement on its own, tablespaces that cannot be made reported).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import psycopg

from backupd.commands import restore, selection
from backupd.commands.cluster_selection import (
    Chosen,
    choose_databases,
    never_backed_up_said,
    way_through,
)
from backupd.commands.restore import identities_for, restore_file
from backupd.commands.restore_options import EVERYTHING, Without
from backupd.commands.restore_target import MAINTENANCE_DB, check_targets
from backupd.commands.template1 import restore_template1
from backupd.errors import ConfigError, JobFailed
from backupd.job import JobContext
from backupd.naming import GLOBALS_DATABASE, GLOBALS_KIND
from backupd.outcomes import ClusterRestoreOutcome, DatabaseRestore, FileReport, GlobalsOutcome
from backupd.pipeline.verification import verify_file
from backupd.postgres.connection import describe_pg_error
from backupd.postgres.databases import TEMPLATE_DATABASE, maintenance_connection
from backupd.postgres.globals import apply_globals
from backupd.result import JobResult
from backupd.storage.base import BackupEntry, Repository, newest_verified

Connection = psycopg.Connection[tuple]  # type: ignore[type-arg]


def restore_globals(ctx: JobContext, conn: Connection, path: Path,
                    entry: BackupEntry, *, drill_server: bool = False) -> GlobalsOutcome:
    """Verify the globals artifact ``entry`` (its bytes at ``path``, e.g. from
    ``selection.local_file``), then apply it through ``conn``: an autocommit connection,
    as a superuser (or a role with CREATEROLE), to any database of the target server.

    Returns what was created, kept and not restored (also said in the job's log, problems
    as warnings; onto a ``drill_server``, a tablespace it cannot create is said, not
    warned: a drill server seldom has the live server's directories, and the drill says
    what it did instead). Raises JobFailed, with nothing applied, when the artifact fails
    verification or the server refuses the whole transaction.
    """
    identities = identities_for(ctx, entry)
    chunks: list[bytes] = []
    report = verify_file(path, entry.parsed, entry.manifest, entry.manifest_error,
                         identities, forward=chunks.append, progress=ctx.progress)
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
        "tablespaces_not_created": applied.tablespaces_not_created,
        "problems": applied.problems, "restore_seconds": applied.seconds})
    ctx.say(f"globals restored from {entry.name}: {len(applied.roles_created)} role(s) "
            f"created, {len(applied.roles_kept)} kept as they were "
            f"({', '.join(applied.roles_kept) or 'none'}), "
            f"{applied.memberships_granted} membership(s), "
            f"{len(applied.tablespaces_created)} tablespace(s) created")
    for item in applied.not_restored:
        if drill_server and item.tablespace is not None:
            ctx.say(f"globals: {item.text}")
        else:
            ctx.warn(f"globals: {item.text}")
    return outcome


def run_cluster(ctx: JobContext, *, database: str | None = None, replace: bool = False,
                confirm: Callable[[str], bool] | None = None, from_s3: bool = False,
                without: Without = EVERYTHING,
                globals_entries: list[BackupEntry] | None = None,
                skip: tuple[str, ...] = ()) -> None:
    """``restore --latest``: the newest verified globals, then each database POSTGRES_DB
    names (``*``: every database with a backup in the repository; ``database``: just that
    one) from its newest verified backup. A database that fails does not stop the others;
    the restore fails naming each. With ``without`` (--no-owner/--no-privileges) no role
    is created. ``globals_entries``: the repository's globals, when the caller listed them.
    ``skip``: databases of '*' left out, as asked (--skip)."""
    started = time.monotonic()
    repository = ctx.repos.choose(from_s3, "--from-s3")
    if globals_entries is None:
        globals_entries = repository.list_backups(GLOBALS_DATABASE, GLOBALS_KIND)
    listings: dict[str, list[BackupEntry]] = {}

    def listed(name: str) -> list[BackupEntry]:
        # Each database listed once (from S3, every manifest is a request).
        if name not in listings:
            listings[name] = repository.list_backups(name)
        return listings[name]

    chosen = choose_databases(ctx, repository, database, globals_entries, listed, skip)
    names = chosen.names
    every = database is None and ctx.settings.database_selection.every
    plan = []
    unverified: list[str] = []
    for name in names:
        entries = listed(name)
        if database is not None and not entries:
            have = repository.databases()
            raise ConfigError(
                f"--database: there is no backup of {database!r} in {repository.description}; "
                f"give one of the databases backed up there ({', '.join(have) or 'none'}); "
                f"{selection.list_hint(repository)}")
        selection.warn_future(ctx, entries)
        entry = newest_verified(entries)
        if entry is None and every:
            unverified.append(name)  # stopped for below, with every other kind at once
            continue
        if entry is None:
            raise JobFailed(_no_verified(repository, name, entries, chosen, None))
        without.check(entry)
        plan.append(entry)
    if unverified or chosen.never:
        raise JobFailed(_no_verified(repository, unverified[0] if unverified else None,
                                     listed(unverified[0]) if unverified else [], chosen,
                                     unverified))
    runs = [e.manifest.run_id for e in plan if e.manifest is not None and e.manifest.run_id]
    newest_run = max(runs) if runs else None
    globals_entry = None if without.any else _globals(ctx, repository, globals_entries,
                                                      newest_run)
    outcome = ClusterRestoreOutcome(run_id=newest_run)
    ctx.result.outcome = outcome
    # template1 is never replaced: restored into only while it holds nothing (template1.py).
    _check_targets(ctx, [entry.database for entry in plan
                         if entry.database != TEMPLATE_DATABASE], replace=replace)
    server = f"{ctx.settings.postgres_host}:{ctx.settings.postgres_port}"
    if confirm is not None and not confirm(
            f"the roles and the databases {', '.join(names)} onto {server}"):
        raise ConfigError("restore: not confirmed; nothing was changed")
    if globals_entry is not None:
        with selection.local_file(ctx, repository, globals_entry) as path, \
                maintenance_connection(ctx.settings) as conn:
            outcome.globals = restore_globals(ctx, conn, path, globals_entry)
    for entry in plan:
        # One in the newest run of '*' is not an incomplete run's when a list's run is newer.
        incomplete_unless = None if entry.database in chosen.current else newest_run
        outcome.databases.append(_restore_one(ctx, repository, entry, incomplete_unless,
                                              chosen.notes.get(entry.database),
                                              replace=replace, without=without))
    outcome.total_seconds = time.monotonic() - started
    ctx.say("restored " + ", ".join(
        f"{d.database} FAILED" if not d.ok else f"{d.database} not restored" if d.skipped
        else f"{d.database} in {d.restore_seconds:.1f}s"
        for d in outcome.databases) + f"; total {outcome.total_seconds:.1f}s")
    if outcome.failed:
        reasons = "; ".join(f"{d.database}: {d.error}" for d in outcome.databases if not d.ok)
        raise JobFailed(f"restore of {len(outcome.failed)} of {len(plan)} database(s) "
                        f"failed ({reasons})")


def _no_verified(repository: Repository, name: str | None, entries: list[BackupEntry],
                 chosen: Chosen, missing: list[str] | None) -> str:
    """Why the restore stops for ``name``, with no verified backup (``entries``), and for
    chosen.never, with no backup at all (``name`` None: those alone). ``missing``: with
    '*', every database without a verified backup, which the one command that restores
    the others leaves out with chosen.never (cluster_selection.way_through), so that
    command does not stop again; ``name`` in chosen.dropped: it looks dropped."""
    # Only future-dated ones (a clock behind, here or where they were taken): no verified
    # time, so stopped like any other database without one, not left out.
    future = any(e.verified for e in entries)
    dated = "; its verified backups are all dated in the future" if future else ""
    clock = "set this host's clock right and restore again"
    hint = selection.list_hint(repository)
    if missing is None:
        return (f"no verified backup of {name!r} in {repository.description}{dated}"
                f"{': ' + clock if future else ''}; {hint}; nothing was changed")
    stops = [never_backed_up_said(repository, chosen)] if chosen.never else []
    ways = []
    if name is not None:
        others = [repr(n) for n in missing if n != name]
        nor = f" (nor of {', '.join(others)})" if others else ""
        run = chosen.dropped.get(name)
        dropped = (f"; {name} looks dropped: it is not in the newest backup run of every "
                   f"database ({run})" if run is not None else "")
        stops.append(f"no verified backup of {name!r}{nor} in {repository.description}"
                     f"{dated}{dropped}")
        ways.append(f"{clock + ', or ' if future else ''}{hint} for its backups")
    if chosen.never:
        ways.append("if its server is still there, take a backup of it and restore again; "
                    "or restore the others one by one with --database NAME")
    # The way through first: the other databases back in one command.
    return (f"{'; '.join(stops)}; nothing was changed; "
            f"{way_through(repository, chosen, [*chosen.never, *missing])}; or "
            f"{'; or '.join(ways)}")


def _check_targets(ctx: JobContext, names: list[str], *, replace: bool) -> None:
    """Every database's target, before the globals or any database is restored: a database
    that holds tables would otherwise fail only in its turn, after the roles were created
    and the databases before it restored. Only to refuse early: each restore checks its
    target again under its lock, in its turn (restore.restore_file)."""
    with maintenance_connection(ctx.settings) as admin:
        # The maintenance database is always swapped out (see _restore_one).
        holding = check_targets(
            admin, ctx.settings, [(name, replace or name == MAINTENANCE_DB) for name in names])
    if holding:
        raise ConfigError(
            f"--replace: database(s) {', '.join(holding)} already hold tables on the "
            "server; pass --replace to restore each into a fresh database and swap it in (the "
            "current one is kept, renamed), or drop them first; nothing was changed")


def _globals(ctx: JobContext, repository: Repository, entries: list[BackupEntry],
             run_id: str | None) -> BackupEntry | None:
    same_run = [e for e in entries if e.manifest is not None and e.manifest.run_id == run_id]
    entry = newest_verified(same_run) if run_id else None
    if entry is None:
        entry = newest_verified(entries)
        if entry is None:
            ctx.warn(f"no verified globals backup in {repository.description}: roles are not "
                     "restored (databases whose objects belong to missing roles will fail; "
                     "see --no-owner/--no-privileges)")
            return None
        if run_id is not None:
            ctx.say(f"no verified globals of run {run_id}; restoring the newest ones, "
                    f"{entry.name}")
    return entry


def _restore_one(ctx: JobContext, repository: Repository, entry: BackupEntry,
                 newest_run: str | None, warned: str | None, *, replace: bool,
                 without: Without) -> DatabaseRestore:
    """``warned``: the note of a database the choice of '*' already warned of, with its one
    reason (cluster_selection.Chosen); no second warning then."""
    name = entry.database
    run_id = entry.manifest.run_id if entry.manifest is not None else None
    done = DatabaseRestore(database=name, backup_name=entry.name, run_id=run_id)
    if warned is not None:
        done.note = warned
    elif newest_run is not None and run_id != newest_run:
        done.note = (f"not in the newest run {newest_run} (it has no verified backup of "
                     f"{name!r}: that run was incomplete); taking its newest verified "
                     f"backup {entry.name}")
        ctx.warn(f"{name}: {done.note}")
    if name == MAINTENANCE_DB and not replace:
        # Every server has one (a new server's is empty): swapped for the restored one, the
        # current one kept renamed unless it held nothing, as with --replace.
        replace = True
        ctx.say(f"{name!r} is the maintenance database: the restored one takes its place "
                "(the current one is kept, renamed, unless it holds nothing)")
    sub = JobContext(ctx.settings.for_database(name), JobResult(job="restore", database=name),
                     ctx.cancel, ctx.repositories)
    started = time.monotonic()
    try:
        if name == TEMPLATE_DATABASE:
            done.note = restore_template1(sub, repository, entry, without)
            done.skipped = done.note is not None
        else:
            with selection.local_file(sub, repository, entry) as path:
                restore_file(sub, path, entry, replace=replace, without=without)
        done.ok = True
    except (JobFailed, ConfigError) as exc:
        done.error = str(exc)
        ctx.warn(f"restore of {name!r} failed: {exc}")
    finally:
        done.restore_seconds = time.monotonic() - started
        ctx.result.warnings.extend(w for w in sub.result.warnings
                                   if w not in ctx.result.warnings)
    return done


def run(ctx: JobContext, name: str | None, *, latest: bool, target_db: str | None,
        database: str | None, replace: bool, from_s3: bool, without: Without,
        confirm_database: Callable[[str], bool] | None,
        confirm_cluster: Callable[[str], bool] | None, skip: tuple[str, ...] = ()) -> None:
    """``backupd restore``: a named backup, --latest into --target-db, or --latest
    --replace of the one POSTGRES_DB is one database as it always was (commands.restore, no
    roles); --latest otherwise restores the cluster: the globals, then every database
    POSTGRES_DB names (or --database), whenever POSTGRES_DB names several, --database is
    given, or the repository holds globals. ``skip`` (--skip): databases the whole-system
    restore of '*' leaves out."""
    if skip and (not latest or target_db is not None or database is not None
                 or not ctx.settings.database_selection.every):
        raise ConfigError("--skip: leaves databases out of the whole-system restore of "
                          "POSTGRES_DB='*' (restore --latest, without --database, "
                          "--target-db or NAME); nothing was changed")
    if database is not None and (name or target_db):
        raise ConfigError("--database: restores the newest backup of that database with its "
                          "roles; it goes with --latest, not with NAME or --target-db")
    if database is not None and not database.strip():
        raise ConfigError("--database: the database name is empty; give the database to "
                          "restore with the roles (see `backupd list`), or leave --database "
                          "out to restore every database POSTGRES_DB names")
    if latest and target_db is not None and ctx.settings.database_selection.several:
        raise ConfigError(
            f"--target-db: POSTGRES_DB names several databases ({ctx.settings.postgres_db}), "
            f"so --latest does not say whose backup goes into {target_db!r}; give that "
            "backup's NAME instead of --latest (see `backupd list`), or set POSTGRES_DB to "
            "the one database")
    repository = ctx.repos.choose(from_s3, "--from-s3")
    several = database is not None or ctx.settings.database_selection.several
    # --replace of the one database is the restore over the live database: applying the
    # globals there would re-create roles an admin dropped since, with their old passwords.
    listed = (repository.list_backups(GLOBALS_DATABASE, GLOBALS_KIND)
              if latest and target_db is None and not several and not replace else None)
    whole = latest and target_db is None and (several or bool(listed))
    if not whole:
        restore.run(ctx, name, latest=latest, target_db=target_db, replace=replace,
                    confirm=confirm_database, from_s3=from_s3, without=without)
        return
    run_cluster(ctx, database=database, replace=replace, confirm=confirm_cluster,
                from_s3=from_s3, without=without, globals_entries=listed, skip=skip)

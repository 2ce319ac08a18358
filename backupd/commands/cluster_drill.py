"""``backupd drill`` onto a drill server (DRILL_POSTGRES_HOST): the true DR proof.

The newest verified globals artifact names a backup run; its roles are restored onto the
drill server first (the one globals restore, shared with ``backupd restore``), then every
database POSTGRES_DB selects, from the same run, under its own name (the maintenance
database ``postgres`` under ``backupd_drill_postgres``, beside the drill server's own).
The whole-cluster restore time is measured (the RTO a disaster would see). Then the drill
server is compared with the live cluster: roles and memberships, and per database its
properties, objects and row counts (:mod:`backupd.postgres.compare`). Finally the drill
server is left as it was found: only what the drill created is dropped
(:mod:`backupd.commands.drill_server`); a killed drill's leftovers are cleaned up by the
next one.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import psycopg
from psycopg import sql

from backupd.commands import restore, restore_load, selection
from backupd.commands.cluster_restore import restore_globals
from backupd.commands.drill_server import (
    CLUSTER_MARK,
    MAINTENANCE_DB,
    Connection,
    Inventory,
    connect_drill_server,
    interrupted_drill,
    inventory,
    lock_drill_server,
    mark_started,
    restore_server,
)
from backupd.commands.template1_look import objects_in_template1
from backupd.errors import ConfigError, JobFailed
from backupd.job import JobContext
from backupd.naming import GLOBALS_DATABASE, GLOBALS_KIND
from backupd.outcomes import DatabaseDrill, DrillOutcome, RestoreOutcome
from backupd.postgres.compare import (
    Comparison,
    RoleCatalog,
    compare,
    compare_properties,
    compare_roles,
    read_catalog,
    read_roles,
)
from backupd.postgres.connection import as_text, connect
from backupd.postgres.databases import (
    TEMPLATE_DATABASE,
    maintenance_connection,
    read_properties,
    resolve_databases,
    trial_properties,
)
from backupd.postgres.tablespaces import (
    ObjectTablespaces,
    expected_without,
    fallback_warning,
    server_tablespaces,
)
from backupd.settings import Settings
from backupd.storage.base import BackupEntry, Repository, newest_verified

Recorder = Callable[[Repository, BackupEntry, bool, float | None], None]

# Every drill server has a maintenance database of its own, its admin sessions (the drill's
# included) connect to it, and the drill leaves the server as found: the live one's backup
# (POSTGRES_DB='*' takes it) is restored beside it under this name, and compared from there.
MAINTENANCE_COPY = "backupd_drill_postgres"
# Likewise template1 (in a run of '*' when it holds objects): the drill server's own is left
# as found, the backed-up one restored beside it, as a whole-system restore makes it (from
# template0 like the backed-up one, then loaded), and compared with the live template1.
TEMPLATE_COPY = "backupd_drill_template1"


def drill_name(database: str) -> str:
    """The name a database is restored under on the drill server."""
    return {MAINTENANCE_DB: MAINTENANCE_COPY, TEMPLATE_DATABASE: TEMPLATE_COPY}.get(
        database, database)


@dataclasses.dataclass(frozen=True)
class RunSet:
    """The artifacts one drill restores: the globals, then a dump per database."""

    globals_entry: BackupEntry
    dumps: list[BackupEntry]


def run(ctx: JobContext, drill: Settings, name: str | None, *, from_s3: bool,
        record: Recorder) -> None:
    outcome = DrillOutcome(scratch_database=f"the drill server {drill.postgres_host}:"
                                            f"{drill.postgres_port}",
                           restore=RestoreOutcome(target_database="(whole cluster)"),
                           drill_server=f"{drill.postgres_host}:{drill.postgres_port}",
                           roles_proven=False)
    ctx.result.outcome = outcome
    repository = ctx.repos.choose(from_s3, "--from-s3")
    run_set = choose_run(ctx, repository, name)
    ctx.result.backup_name = run_set.globals_entry.name
    with connect_drill_server(drill) as admin:
        lock_drill_server(admin)
        leftover = interrupted_drill(drill, admin)
        if leftover is not None:
            problems = restore_server(drill, admin, leftover)
            if problems:
                raise JobFailed("the drill server still holds what an interrupted drill left "
                                f"and it cannot be removed: {'; '.join(problems)}")
            ctx.warn("removed what an interrupted drill left on the drill server (its "
                     "databases and roles)")
        before = inventory(admin)
        present = sorted({drill_name(e.database) for e in run_set.dumps} & before.databases)
        if present:
            raise ConfigError(
                f"DRILL_POSTGRES_HOST: the drill server already has database(s) "
                f"{', '.join(present)}, not created by a drill; a drill restores onto an "
                "empty server: drop them there or use another drill server")
        roles_before = read_roles(admin)
        mark_started(admin, before)
        try:
            comparison = _restore_and_compare(ctx, drill, admin, repository, run_set,
                                              roles_before, record)
        finally:
            _leave_as_found(ctx, drill, admin, before)
    if not comparison.ok:
        raise JobFailed(f"whole-cluster drill of {run_set.globals_entry.name} failed: "
                        f"{comparison.summary}")
    ctx.say(f"whole-cluster drill of {run_set.globals_entry.name} passed: roles and "
            f"{len(run_set.dumps)} database(s) restored in "
            f"{outcome.cluster_restore_seconds or 0:.1f}s (RTO); "
            f"{outcome.comparison_summary}")


def choose_run(ctx: JobContext, repository: Repository, name: str | None) -> RunSet:
    """The newest verified globals artifact (or ``name``), and per database POSTGRES_DB
    selects the verified dump of the same run (else its newest, with a warning)."""
    globals_entries = repository.list_backups(GLOBALS_DATABASE, GLOBALS_KIND)
    if name is not None:
        chosen = next((e for e in globals_entries if e.name == name), None)
        if chosen is None:
            raise ConfigError(f"NAME: with DRILL_POSTGRES_HOST a drill restores a whole run; "
                              f"give the name of a globals artifact (globals_<time>"
                              f".globals.sql.gz) in {repository.description}, or none for "
                              "the newest")
    else:
        chosen = newest_verified(globals_entries)
    if chosen is None:
        raise JobFailed(f"no verified globals artifact in {repository.description}: a drill "
                        "onto the drill server restores the roles first, and without them "
                        "the databases would not restore as on a new server; take a backup "
                        "(every run dumps the globals)")
    run_id = chosen.manifest.run_id if chosen.manifest is not None else None
    resolved = resolve_databases(ctx.settings)
    for warning in [*resolved.warnings, *resolved.unnamed_warnings]:
        ctx.warn(warning)
    if resolved.missing:
        raise JobFailed(f"database(s) {', '.join(resolved.missing)} (POSTGRES_DB) do not exist "
                        "on the live server")
    dumps = []
    for database in resolved.databases:
        entries = [e for e in repository.list_backups(database) if e.proven_good()]
        same_run = [e for e in entries
                    if run_id is not None and e.manifest is not None
                    and e.manifest.run_id == run_id]
        entry = same_run[0] if same_run else (entries[0] if entries else None)
        if entry is None:
            raise JobFailed(f"database {database!r} has no verified backup in "
                            f"{repository.description}; the drill cannot restore the cluster")
        if not same_run:
            ctx.warn(f"{entry.name} is not from the run of {chosen.name}; drilling it with "
                     "those roles anyway (the newest verified backup of that database)")
        dumps.append(entry)
    return RunSet(chosen, dumps + _template1_of_run(ctx, repository, run_id))


def _template1_of_run(ctx: JobContext, repository: Repository,
                      run_id: str | None) -> list[BackupEntry]:
    """The run's verified template1 dump, when a run of '*' took one (template1 held
    objects then); none otherwise: a new server's own template1 is what it had."""
    if run_id is None or not ctx.settings.database_selection.every or \
            not ctx.settings.database_selection.choose([TEMPLATE_DATABASE]):
        return []
    taken = [e for e in repository.list_backups(TEMPLATE_DATABASE) if e.proven_good()
             and e.manifest is not None and e.manifest.run_id == run_id][:1]
    if not taken:
        _warn_if_template1_holds_objects(ctx, run_id)
    return taken


def _warn_if_template1_holds_objects(ctx: JobContext, run_id: str) -> None:
    """A live template1 with objects the run has no backup of (put there since, or the dump
    failed): a whole-system restore of this run gives a new server an empty template1."""
    try:
        held = objects_in_template1(ctx.settings)
    except (JobFailed, psycopg.Error):
        return  # the backup run warns that it cannot look into template1
    if not held.empty:
        ctx.warn(f"the live template1 holds {held.describe()}, and run {run_id} has no backup "
                 "of template1: a whole-system restore of it would give a new server's "
                 "template1 none of it; the next backup run of '*' takes it")


def _restore_and_compare(ctx: JobContext, drill: Settings, admin: Connection,
                         repository: Repository, run_set: RunSet, roles_before: RoleCatalog,
                         record: Recorder) -> Comparison:
    outcome = ctx.result.outcome
    assert isinstance(outcome, DrillOutcome)
    drill_ctx = dataclasses.replace(ctx, settings=drill)
    started = time.monotonic()
    with selection.local_file(ctx, repository, run_set.globals_entry) as path:
        try:
            outcome.globals_restore = restore_globals(drill_ctx, admin, path,
                                                      run_set.globals_entry, drill_server=True)
        except JobFailed as exc:
            outcome.differences = [f"the globals do not restore: {exc}"]
            outcome.comparison_summary = "not compared: the globals restore failed"
            record(repository, run_set.globals_entry, False, None)
            raise
    for entry in run_set.dumps:
        try:
            outcome.databases.append(_restore_database(drill_ctx, admin, repository, entry))
        except JobFailed as exc:
            outcome.differences = [f"database {entry.database}: the backup does not restore "
                                   f"on the drill server: {exc}"]
            outcome.comparison_summary = "not compared: a database's restore failed"
            record(repository, run_set.globals_entry, False, None)
            record(repository, entry, False, None)
            raise JobFailed(f"whole-cluster drill of {run_set.globals_entry.name} failed: "
                            f"{entry.name} does not restore on the drill server: {exc}"
                            ) from None
    outcome.cluster_restore_seconds = time.monotonic() - started
    ctx.say(f"whole cluster restored on the drill server in "
            f"{outcome.cluster_restore_seconds:.1f}s (globals and {len(run_set.dumps)} "
            "database(s), one after another)")
    ctx.cancel.raise_if_cancelled()
    total = _compare_cluster(ctx, drill, admin, run_set, roles_before)
    outcome.differences, outcome.drift = total.differences, total.drift
    outcome.drift_rows, outcome.objects_compared = total.drift_rows, total.objects_compared
    outcome.comparison_summary = total.summary.replace("the live database", "the live cluster")
    outcome.roles_proven = total.roles_compared and total.ok
    for line in total.differences:
        ctx.say(f"difference: {line}")
    for line in total.drift:
        ctx.say(f"drift: {line}")
    for warning in total.warnings:
        ctx.warn(warning)
    seconds = outcome.cluster_restore_seconds
    record(repository, run_set.globals_entry, total.ok, seconds)
    for entry, drilled in zip(run_set.dumps, outcome.databases, strict=True):
        record(repository, entry, total.ok and drilled.ok, drilled.restore_seconds)
    return total


def _restore_database(drill_ctx: JobContext, admin: Connection, repository: Repository,
                      entry: BackupEntry) -> DatabaseDrill:
    outcome = drill_ctx.result.outcome
    assert isinstance(outcome, DrillOutcome)
    database = entry.database
    target = drill_name(database)
    carried = entry.manifest.database_properties if entry.manifest is not None else None
    drilled = DatabaseDrill(database=database, backup_name=entry.name)
    with selection.local_file(drill_ctx, repository, entry) as path:
        identities = restore.identities_for(drill_ctx, entry)
        restore_load.verify_first(path, entry, identities, drill_ctx)
        spaces = server_tablespaces(admin, carried.encoding if carried else None)
        placement = restore.create_database(admin, target, carried, spaces)
        # Its index builds are the drill's work, on the drill server the watchdog asks too.
        drill_ctx.progress.working_in(target, drill_ctx.settings)
        mark_restored(admin, target)
        placement = restore.landed(admin, target, placement, spaces)
        drill_ctx.say(f"{entry.name} verified; restoring it into {target!r} on the drill "
                      "server" + (f" (beside the drill server's own {database!r})"
                                  if target != database else ""))
        outcome.restore.restore_seconds = None
        placed = restore_load.load(drill_ctx, path, entry, target, identities,
                                   tablespaces=ObjectTablespaces(spaces, placement.landed))
    drilled.restore_seconds = outcome.restore.restore_seconds
    unusable = {*(space.name for space in placed.left_out),
                *([placement.missing.name] if placement.missing else [])}
    drilled.tablespaces_unusable = sorted(unusable)
    fallback = fallback_warning(target, placement, placed, drill_copy=True)
    if fallback is not None:
        # Said, not warned: the drill server is a scratch server, seldom given the live
        # server's directories; this is what `backupd restore` does onto such a server.
        drill_ctx.say(f"{fallback} (where they are is not compared)")
    return drilled


def mark_restored(admin: Connection, database: str) -> None:
    with as_text(admin):  # the name sent as UTF-8 on a SQL_ASCII session
        admin.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
            sql.Identifier(database), sql.Literal(f"{CLUSTER_MARK}; backupd drops it after "
                                                  "the drill")))


def _compare_cluster(ctx: JobContext, drill: Settings, admin: Connection, run_set: RunSet,
                     roles_before: RoleCatalog) -> Comparison:
    outcome = ctx.result.outcome
    assert isinstance(outcome, DrillOutcome)
    total = Comparison()
    with maintenance_connection(ctx.settings) as live_admin:
        live_roles = read_roles(live_admin)
    compare_roles(total, live_roles, read_roles(admin), roles_before)
    kept = sorted(set(roles_before.roles) & set(live_roles.roles))
    if kept:
        ctx.say(f"role(s) {', '.join(kept)} were on the drill server before the drill and "
                "were kept as they were: compared by name and memberships only")
    for entry, drilled in zip(run_set.dumps, outcome.databases, strict=True):
        one = _compare_database(ctx, drill, admin, entry, drilled)
        drilled.ok = one.ok
        drilled.comparison_summary = one.summary
        prefix = f"database {entry.database}: "
        total.differences += [prefix + line for line in one.differences]
        total.drift += [prefix + line for line in one.drift]
        total.warnings += [prefix + line for line in one.warnings]
        total.drift_rows += one.drift_rows
        for kind, count in one.objects_compared.items():
            total.objects_compared[kind] = total.objects_compared.get(kind, 0) + count
        total.properties_compared = total.properties_compared or one.properties_compared
    return total


def _compare_database(ctx: JobContext, drill: Settings, admin: Connection,
                      entry: BackupEntry, drilled: DatabaseDrill) -> Comparison:
    database = entry.database
    live_settings = ctx.settings.for_database(database)
    with connect(live_settings, database) as live_conn:
        live_conn.execute("SET default_transaction_read_only = on")
        live = read_catalog(live_conn, ctx.progress.touch)
        live_properties = read_properties(live_conn, database)
    with connect_drill_server(drill, drill_name(database)) as restored_conn:
        restored = read_catalog(restored_conn, ctx.progress.touch)
    backup_rows = entry.manifest.table_rows if entry.manifest is not None else None
    result = compare(live, restored, backup_rows)
    carried = entry.manifest.database_properties if entry.manifest is not None else None
    if carried is None or live_properties is None:
        result.warnings.append(f"{entry.name} records no database properties (an older "
                               "backup): they were not compared")
    else:
        trial = trial_properties(admin, drill_name(database), carried)
        compare_properties(result, carried, trial, live_properties,
                           expected=expected_without(carried, drilled.tablespaces_unusable))
    return result


def _leave_as_found(ctx: JobContext, drill: Settings, admin: Connection,
                    before: Inventory) -> None:
    problems = restore_server(drill, admin, before)
    if problems:
        ctx.warn("the drill server is not yet as the drill found it; the next drill removes "
                 f"the rest: {'; '.join(problems)}")
        return
    after = inventory(admin)
    if after != before:
        ctx.warn(f"the drill server differs from before the drill: {after} vs {before}")
    ctx.say("the drill server is as the drill found it: its databases and roles only")


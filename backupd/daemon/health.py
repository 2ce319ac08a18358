"""Is backupd doing its job? One answer for ``GET /healthz`` and ``backupd health``.

Healthy means: the scheduler runs (when we can see it), the newest *verified* backup
is younger than BACKUP_MAX_AGE_HOURS, and, when DRILL_MAX_AGE_DAYS is set, a restore
drill succeeded recently enough. Each failed condition adds one reason a person can
act on; the facts say what was found.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from backupd.archive.status import WalStatus, read_status
from backupd.archive.walnames import WAL_SUBDIRECTORY
from backupd.daemon.cron import parse_cron, parse_zone
from backupd.daemon.state import STALE_AFTER, STATE_FILE, newest_heartbeat, read_state
from backupd.errors import ConfigError
from backupd.naming import BASE_DATABASE, BASE_KIND, GLOBALS_DATABASE, GLOBALS_KIND
from backupd.result import human_duration
from backupd.settings import Settings
from backupd.storage.base import (
    CLOCK_TOLERANCE,
    BackupEntry,
    describe_future,
    future_entries,
    newest_drilled,
    newest_verified,
)
from backupd.storage.local import LocalStore

# The daemon refreshes `updated_at` every HEARTBEAT_SECONDS; silent for longer than the
# daemon's own STALE_AFTER, it is gone (the same rule `backupd status` applies).
DAEMON_STATE_STALE = STALE_AFTER
# BACKUP_MAX_AGE_HOURS default: the longest gap between two scheduled runs, times this,
# plus MAX_AGE_SLACK (one slow or retried backup must not flap the health check).
MAX_AGE_FACTOR = 1.5
MAX_AGE_SLACK = timedelta(hours=1)
_GAPS_SAMPLED = 32
_SAMPLE_HORIZON = timedelta(days=400)


class DatabaseHealth(BaseModel):
    """One database of several (POSTGRES_DB a list or `*`), or the cluster's globals."""

    database: str
    local_backups: int = 0
    newest_verified_backup: str | None = None
    newest_verified_backup_age_hours: float | None = None
    # The database's last successful restore drill (for the globals: the whole cluster's).
    last_successful_drill_age_hours: float | None = None
    last_drill_restore_seconds: float | None = None


class HealthFacts(BaseModel):
    """What the check found; a fact it could not establish stays None (and is not shown)."""

    database: str
    # POSTGRES_DB a list or `*`: each database's own facts (and the globals' when taken).
    databases: list[DatabaseHealth] | None = None
    scheduler_alive: bool | None = None
    daemon_state_age_seconds: int | None = None
    backup_max_age_hours: float | None = None
    local_backups: int | None = None
    newest_verified_backup: str | None = None
    newest_verified_backup_age_hours: float | None = None
    last_successful_drill_age_hours: float | None = None
    last_drill_restore_seconds: float | None = None
    # WAL_ARCHIVE=on (issue 15).
    wal_streaming: bool | None = None
    wal_receive_lag_seconds: float | None = None
    wal_slot_retained_bytes: int | None = None


class HealthReport(BaseModel):
    ok: bool
    reasons: list[str] = Field(default_factory=list)
    facts: HealthFacts

    def render_text(self) -> str:
        lines = ["ok" if self.ok else "unhealthy"]
        lines += [f"reason: {reason}" for reason in self.reasons]
        lines += [f"{key}: {value}" for key, value in self._shown_facts().items()]
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``backupd health --json``, ``backupd status --json``)."""
        return {"ok": self.ok, "reasons": self.reasons, "facts": self._shown_facts()}

    def _shown_facts(self) -> dict[str, Any]:
        return self.facts.model_dump(mode="json", exclude_none=True)


@dataclass(frozen=True)
class DrillRecord:
    """A restore drill's outcome from outside the manifests (the daemon's last result)."""

    finished_at: datetime
    ok: bool


def evaluate(
    settings: Settings,
    store: LocalStore,
    scheduler_alive: bool | None,
    now: datetime | None = None,
    *,
    daemon_updated_at: datetime | None = None,
    drill_records: Iterable[DrillRecord] = (),
    wal_status: WalStatus | None = None,
) -> HealthReport:
    """Check everything; ``scheduler_alive=None`` means "cannot tell" (the CLI)."""
    now = now or datetime.now(UTC)
    report = HealthReport(ok=True, facts=HealthFacts(database=settings.postgres_db))
    facts, reasons = report.facts, report.reasons

    if scheduler_alive is not None:
        facts.scheduler_alive = scheduler_alive
        if not scheduler_alive:
            reasons.append("the scheduler is not running: no backup will be taken")
    if daemon_updated_at is not None:
        quiet = now - daemon_updated_at
        facts.daemon_state_age_seconds = int(quiet.total_seconds())
        if quiet > DAEMON_STATE_STALE:
            reasons.append(f"the daemon has not updated its state for {_human(quiet)} "
                           "(is it running?)")
        elif -quiet > CLOCK_TOLERANCE:
            # Every entry is ahead of this clock: stamped before it was stepped back (a
            # running daemon here rewrites its own within a heartbeat), or by a daemon on
            # a host whose clock is ahead. Which one cannot be told from here.
            reasons.append(f"a daemon's clock reads ahead of this host's (stepped back, or "
                           f"the clocks differ): its last update reads {_human(-quiet)} "
                           "ahead and none is on this clock (is the daemon running?)")

    if settings.wal_archive:
        _check_wal(settings, wal_status, now, report)
        _check_base_backups(settings, store, now, report)
    max_age = max_backup_age(settings, now)
    facts.backup_max_age_hours = round(max_age.total_seconds() / 3600, 2)
    if settings.database_selection.several or settings.globals_enabled:
        entries = _check_each_database(settings, store, max_age, now, report)
        if settings.drill_max_age_days is not None:
            _check_drill(settings.drill_max_age_days, entries, drill_records, now, report)
        report.ok = not reasons
        return report
    entries = store.list_backups(settings.postgres_db)
    newest = newest_verified(entries, now)
    facts.local_backups = len(entries)
    facts.last_drill_restore_seconds = _drill_facts(entries, now)[1]
    reasons.extend(describe_future(e, now) for e in future_entries(entries, now))
    if newest is None:
        reasons.append(f"no verified backup of database {settings.postgres_db!r} in "
                       f"{store.directory}")
    else:
        age = now - newest.parsed.taken_at
        facts.newest_verified_backup = newest.name
        facts.newest_verified_backup_age_hours = round(age.total_seconds() / 3600, 2)
        if age > max_age:
            reasons.append(f"the newest verified backup {newest.name} is {_human(age)} old, "
                           f"more than BACKUP_MAX_AGE_HOURS ({_human(max_age)})")

    if settings.drill_max_age_days is not None:
        _check_drill(settings.drill_max_age_days, entries, drill_records, now, report)

    report.ok = not reasons
    return report


def _check_wal(settings: Settings, status: WalStatus | None, now: datetime,
               report: HealthReport) -> None:
    """WAL archiving: streaming, and the local archive within WAL_MAX_LAG_SECONDS."""
    status = status or read_status(settings.backup_dir / WAL_SUBDIRECTORY)
    if status is None:
        report.reasons.append("WAL archiving: no report yet (WAL_ARCHIVE=on, but the daemon "
                              "has not streamed)")
        return
    facts = report.facts
    facts.wal_streaming = status.streaming and not status.stale(now)
    facts.wal_receive_lag_seconds = (round(status.receive_lag_seconds, 1)
                                     if status.receive_lag_seconds is not None else None)
    facts.wal_slot_retained_bytes = status.retained_bytes
    report.reasons.extend(status.problems(settings.wal_max_lag_seconds, now))


def _check_each_database(settings: Settings, store: LocalStore, max_age: timedelta,
                         now: datetime, report: HealthReport) -> list[BackupEntry]:
    """One set of checks per database (and the globals); every dump entry, for the drill
    check."""
    facts, reasons = report.facts, report.reasons
    facts.databases = []
    # For `*` (the server is not asked here): every database with a backup but the
    # excluded, so one dropped from the server shows until its backups are removed.
    found = store.watched_dumps(settings.database_selection,
                                with_globals=settings.globals_enabled)
    watched = [(name, entries, repr(name)) for name, entries in found.backups.items()]
    if settings.globals_enabled:
        watched.append((GLOBALS_DATABASE, found.globals, "the cluster's globals"))
    if settings.database_selection.every and len(watched) == (1 if settings.globals_enabled
                                                              else 0):
        reasons.append(f"no verified backup of any database (POSTGRES_DB='*') in "
                       f"{store.directory}")
    dumps: list[BackupEntry] = []
    for name, entries, what in watched:
        drill_age, drill_seconds = _drill_facts(entries, now)
        fact = DatabaseHealth(database=name, local_backups=len(entries),
                              last_successful_drill_age_hours=drill_age,
                              last_drill_restore_seconds=drill_seconds)
        facts.databases.append(fact)
        dumps += [e for e in entries if e.kind != GLOBALS_KIND]
        reasons.extend(describe_future(e, now) for e in future_entries(entries, now))
        newest = newest_verified(entries, now)
        if newest is None:
            reasons.append(f"no verified backup of {what} in {store.directory}")
            continue
        age = now - newest.parsed.taken_at
        fact.newest_verified_backup = newest.name
        fact.newest_verified_backup_age_hours = round(age.total_seconds() / 3600, 2)
        if age > max_age:
            reasons.append(f"the newest verified backup of {what}, {newest.name}, is "
                           f"{_human(age)} old, more than BACKUP_MAX_AGE_HOURS "
                           f"({_human(max_age)})")
    facts.local_backups = len(dumps)
    return dumps


def _drill_facts(entries: list[BackupEntry], now: datetime) -> tuple[float | None, float | None]:
    """The age (hours) of the last successful drill recorded in ``entries``' manifests, and
    how long its restore took."""
    drilled = newest_drilled(entries, passed=True)
    if drilled is None or drilled.manifest is None or drilled.manifest.drilled_at is None:
        return None, None
    age = (now - drilled.manifest.drilled_at).total_seconds() / 3600
    seconds = drilled.manifest.drill_restore_seconds
    return round(age, 2), round(seconds, 1) if seconds is not None else None


def _check_drill(max_days: float, entries: list[BackupEntry], records: Iterable[DrillRecord],
                 now: datetime, report: HealthReport) -> None:
    successes = [e.manifest.drilled_at for e in entries
                 if e.manifest and e.manifest.drill_ok and e.manifest.drilled_at]
    # A drilled backup may since have been pruned: the daemon's record still counts.
    successes += [r.finished_at for r in records if r.ok]
    limit = timedelta(days=max_days)
    if not successes:
        report.reasons.append("no successful restore drill on record "
                              f"(DRILL_MAX_AGE_DAYS={max_days:g}); run `backupd drill`")
        return
    age = now - max(successes)
    report.facts.last_successful_drill_age_hours = round(age.total_seconds() / 3600, 2)
    if age > limit:
        report.reasons.append(f"the last successful restore drill is {_human(age)} old, more "
                              f"than DRILL_MAX_AGE_DAYS ({_human(limit)})")


def _check_base_backups(settings: Settings, store: LocalStore, now: datetime,
                        report: HealthReport) -> None:
    """WAL is recovered from a base backup: without a recent verified one the archive is
    worth little (and retention cannot let old WAL go)."""
    newest = newest_verified(store.list_backups(BASE_DATABASE, BASE_KIND), now)
    if newest is None:
        report.reasons.append(f"base backups: no verified base backup in {store.directory}; "
                              "the WAL archive cannot be recovered from without one "
                              "(`backupd basebackup` takes one)")
        return
    if settings.basebackup_schedule is None:
        return
    age = now - newest.parsed.taken_at
    try:
        allowed = longest_gap(settings.basebackup_schedule, settings.timezone, now,
                              allow_seconds=settings.schedule_seconds_field) \
            * MAX_AGE_FACTOR + MAX_AGE_SLACK
    except ConfigError:
        return  # a bad schedule is refused by `backupd run` itself, naming the setting
    if age > allowed:
        report.reasons.append(f"base backups: the newest verified one, {newest.name}, is "
                              f"{_human(age)} old, more than BASEBACKUP_SCHEDULE allows "
                              f"({_human(allowed)})")


def max_backup_age(settings: Settings, now: datetime | None = None) -> timedelta:
    """BACKUP_MAX_AGE_HOURS, or derived from BACKUP_SCHEDULE when unset."""
    if settings.backup_max_age_hours is not None:
        return timedelta(hours=settings.backup_max_age_hours)
    return longest_gap(settings.backup_schedule, settings.timezone, now,
                       allow_seconds=settings.schedule_seconds_field) * MAX_AGE_FACTOR \
        + MAX_AGE_SLACK


def longest_gap(expression: str, zone_name: str, now: datetime | None = None, *,
                allow_seconds: bool = False) -> timedelta:
    """The longest interval between consecutive runs of a cron schedule, from ``now`` on.

    The longest, not the next: "0 2 * * 1-5" is 24 h most days but 72 h over a weekend,
    and a health check must not fail every Monday morning.
    """
    zone = parse_zone(zone_name)
    schedule = parse_cron(expression, "BACKUP_SCHEDULE", zone, allow_seconds=allow_seconds)
    start = now or datetime.now(UTC)
    fire = schedule.next_at_or_after(start)
    if fire is None:  # parse_cron already refuses schedules that never fire
        raise ConfigError(f"BACKUP_SCHEDULE: {expression!r} never fires")
    first, longest = fire, timedelta(0)
    for _ in range(_GAPS_SAMPLED):
        following = schedule.next_at_or_after(fire + timedelta(seconds=1))
        if following is None:
            break
        longest = max(longest, following - fire)
        fire = following
        if fire - first > _SAMPLE_HORIZON:
            break
    return longest


# --- the daemon's state file, as `backupd health` sees it ------------------------------


@dataclass(frozen=True)
class DaemonStateFile:
    updated_at: datetime | None
    drill_records: list[DrillRecord]


def read_daemon_state(directory: Path, now: datetime | None = None) -> DaemonStateFile | None:
    """What the daemons last wrote, or None when there is no (readable) state file. The
    heartbeat is judged per entry on this clock (``now``), not taken from the file's flat
    one, which is its last writer's view: replicas whose clocks differ would flip it."""
    if not (directory / STATE_FILE).is_file():
        return None
    state = read_state(directory)  # the one reader of the file (an unreadable one is empty)
    # A file with no daemon entries (written by hand, or by some other tool) has only the
    # flat heartbeat to go by.
    updated_at = newest_heartbeat(state.daemons.values(), now or datetime.now(UTC)) \
        if state.daemons else state.updated_at
    drill = state.last_results.get("drill")
    records = [DrillRecord(drill.finished_at, drill.ok)] \
        if drill is not None and drill.finished_at is not None else []
    return DaemonStateFile(updated_at, records)


def _human(span: timedelta) -> str:
    return human_duration(span.total_seconds())

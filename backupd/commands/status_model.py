"""What ``backupd status`` and the status page show: ONE typed model, collected once from
the daemon's state file and the backup directory, rendered as text and JSON
(commands/status.py) and as HTML (commands/status_page.py).

It works from another process (``docker exec``) and also when no daemon runs. Next run
times come from the running daemon when there is one, else from the schedule settings. The
last result of every job kind is shown however it ran: by the daemon or as a one-off
command (both record it in the state file).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, field_serializer

from backupd.archive.status import WalStatus, read_status
from backupd.archive.walnames import WAL_SUBDIRECTORY
from backupd.commands.health import check as health_check
from backupd.commands.jobs import job_table, scheduled_jobs
from backupd.commands.prune import retention_policy
from backupd.commands.selection import artifact_sets
from backupd.daemon.health import HealthReport
from backupd.daemon.history import RunFigures, RunRecord, runs_of
from backupd.daemon.scheduler import ScheduledJob
from backupd.daemon.state import RECORDED_JOBS, StateFile, iso_utc, read_state
from backupd.naming import BASE_DATABASE, BASE_KIND, DUMP_KIND
from backupd.outcomes import BackupOutcome, PruneOutcome
from backupd.pipeline import clients as pgclients
from backupd.result import JobResult, UtcDateTime
from backupd.settings import Settings
from backupd.storage.base import BackupEntry, latest_upload, newest_verified
from backupd.storage.local import LocalStore

# The runs the charts and the drill table show.
CHARTED_RUNS = 30

# How a job comes to run: its own schedule; retention without RETENTION_SCHEDULE runs
# inside every backup; "off" jobs (and upload) run only when a person runs the command.
Runs = Literal["on schedule", "after every backup", "one-off only"]


class ResultBrief(RunFigures):
    error: str | None = None
    warnings: list[str] = []
    deleted: int = 0  # backups retention deleted in this run
    dry_run: bool = False  # a `prune --dry-run`: it deleted nothing

    @classmethod
    def of(cls, result: JobResult | None) -> ResultBrief | None:
        if result is None:
            return None
        return cls(status=result.status.value, started_at=result.started_at,
                   finished_at=result.finished_at, duration_seconds=result.duration_seconds,
                   backup_name=result.backup_name, size_bytes=result.size_bytes,
                   error=result.error, warnings=result.warnings, deleted=len(result.deleted),
                   dry_run=isinstance(result.outcome, PruneOutcome) and result.outcome.dry_run)

    def describe(self) -> str:
        text = f"{self.status} at {iso_utc(self.finished_at or self.started_at)}"
        if self.backup_name:
            text += f" {self.backup_name}"
        if self.dry_run:
            text += " (dry run, nothing deleted)"
        if self.error:
            text += f": {self.error}"
        return text


class JobStatus(BaseModel):
    job: str
    setting: str | None
    runs: Runs
    schedule: str | None
    next_run: UtcDateTime | None
    running_since: UtcDateTime | None
    last_result: ResultBrief | None
    last_outcome: ResultBrief | None
    # Retention without its own schedule: the last backup that ran it.
    with_backup: ResultBrief | None = None
    # Retention (prune): what it keeps, in words (age, keep-min, the calendar tiers).
    keeps: str | None = None


class DaemonInstance(BaseModel):
    host: str
    pid: int
    started_at: UtcDateTime
    updated_at: UtcDateTime


class DaemonStatus(BaseModel):
    running: bool
    instances: list[DaemonInstance]


class NewestBackup(BaseModel):
    name: str
    taken_at: UtcDateTime
    age_seconds: int
    size_bytes: int
    # Committed in S3; None when offsite copies are off (DB_BACKUP_S3_BUCKET not set).
    offsite: bool | None = None

    @classmethod
    def of(cls, entry: BackupEntry | None, now: datetime, s3_on: bool) -> NewestBackup | None:
        if entry is None:
            return None
        uploaded = entry.manifest is not None and entry.manifest.uploaded_at is not None
        return cls(name=entry.name, taken_at=entry.parsed.taken_at,
                   age_seconds=int((now - entry.parsed.taken_at).total_seconds()),
                   size_bytes=entry.size, offsite=uploaded if s3_on else None)


class DatabaseStatus(BaseModel):
    """One database's backups (each of several when POSTGRES_DB is a list or `*`)."""

    database: str
    backups: int
    newest_verified_backup: NewestBackup | None


class OffsiteStatus(BaseModel):
    bucket: str
    prefix: str
    last_upload: UtcDateTime | None
    pending_uploads: int


class StatusReport(BaseModel):
    database: str
    timezone: str
    daemon: DaemonStatus
    jobs: list[JobStatus]
    newest_verified_backup: NewestBackup | None
    backups: int
    offsite: OffsiteStatus | None
    # WAL_ARCHIVE=on: the streamer's last report (DB_BACKUP_DIR/wal/status.json); None when
    # archiving is off or nothing has reported yet. The text, JSON and page all show this one.
    wal: WalStatus | None = None
    health: HealthReport
    postgres_client: pgclients.ClientReport
    databases: list[DatabaseStatus] = []
    # The last CHARTED_RUNS backup runs and drills (the state file's history), oldest first.
    backup_runs: list[RunRecord] = []
    drills: list[RunRecord] = []
    # The newest verified base backup (issue 15); None when there is none.
    newest_base_backup: NewestBackup | None = None

    @field_serializer("health")
    def _health_as_the_health_command_prints_it(self, health: HealthReport) -> dict[str, Any]:
        return health.to_dict()

    @field_serializer("postgres_client")
    def _client_report(self, client: pgclients.ClientReport) -> dict[str, object]:
        return client.to_dict()


def collect(settings: Settings, now: datetime | None = None) -> StatusReport:
    """Everything ``status`` shows."""
    now = now or datetime.now(UTC)
    scheduled = {job.spec.name: job for job in scheduled_jobs(settings)}
    state = read_state(settings.backup_dir)
    daemons = state.alive_daemons(now)
    names = [spec.name for spec in job_table()]
    settings_of = {spec.name: spec.setting for spec in job_table()}
    # Kinds the daemon never schedules (upload) appear once a one-off run recorded them.
    names += sorted(name for name in state.jobs if name in RECORDED_JOBS and name not in names)
    jobs = [_job_status(name, settings_of.get(name), scheduled.get(name), state, settings, now)
            for name in names]
    store = LocalStore(settings.backup_dir)
    s3_on = bool(settings.s3_bucket)
    per_database = {database: store.list_backups(database, kind)
                    for database, kind in artifact_sets(settings, store) if kind == DUMP_KIND}
    # Several databases: their dumps together (health, below, judges each on its own).
    entries = [entry for listed in per_database.values() for entry in listed]
    newest = newest_verified(entries)
    return StatusReport(
        database=settings.postgres_db,
        timezone=settings.timezone,
        daemon=DaemonStatus(running=bool(daemons), instances=[
            DaemonInstance(host=d.host, pid=d.pid, started_at=d.started_at,
                           updated_at=d.updated_at) for d in daemons]),
        jobs=jobs,
        newest_verified_backup=NewestBackup.of(newest, now, s3_on),
        backups=len(entries),
        offsite=None if not settings.s3_bucket else OffsiteStatus(
            bucket=settings.s3_bucket, prefix=settings.s3_prefix,
            last_upload=latest_upload(entries),
            pending_uploads=sum(1 for e in entries if e.awaiting_upload)),
        wal=read_status(settings.backup_dir / WAL_SUBDIRECTORY) if settings.wal_archive else None,
        health=health_check(settings),
        postgres_client=pgclients.report(
            newest.manifest.server_version if newest and newest.manifest else None),
        databases=[DatabaseStatus(database=database, backups=len(listed),
                                  newest_verified_backup=NewestBackup.of(
                                      newest_verified(listed, now), now, s3_on))
                   for database, listed in per_database.items()],
        backup_runs=runs_of(state.history, "backup", CHARTED_RUNS),
        drills=runs_of(state.history, "drill", CHARTED_RUNS),
        newest_base_backup=NewestBackup.of(
            newest_verified(store.list_backups(BASE_DATABASE, BASE_KIND), now), now, s3_on),
    )


def _job_status(name: str, setting: str | None, job: ScheduledJob | None, state: StateFile,
                settings: Settings, now: datetime) -> JobStatus:
    record = state.jobs.get(name)
    runs: Runs = "on schedule" if job is not None else "one-off only"
    with_backup = None
    if name == "prune" and job is None:
        # Without its own schedule, retention is part of every backup (backup.py).
        runs = "after every backup"
        with_backup = _last_sweep(state)
    return JobStatus(
        job=name, setting=setting, runs=runs,
        schedule=job.schedule.expression if job else None,
        next_run=_next_run(name, state, now, job) if job else None,
        running_since=_running_since(name, state, now),
        last_result=ResultBrief.of(record.last_result if record else None),
        last_outcome=ResultBrief.of(record.last_outcome if record else None),
        with_backup=with_backup,
        keeps=retention_policy(settings).describe() if name == "prune" else None,
    )


def _last_sweep(state: StateFile) -> ResultBrief | None:
    """The last backup that ran the retention sweep (a successful one)."""
    record = state.jobs.get("backup")
    backup = record.last_outcome if record else None
    if backup is None or not backup.ok or not isinstance(backup.outcome, BackupOutcome) \
            or not backup.outcome.retention_ran:
        return None
    return ResultBrief.of(backup)


def _next_run(name: str, state: StateFile, now: datetime, job: ScheduledJob) -> datetime | None:
    # The daemon's own view wins (it includes a pending catch-up run), unless it has
    # passed since the daemon last wrote it: then the schedule knows better.
    for daemon in state.alive_daemons(now):
        when = daemon.next_runs.get(name)
        if when is not None and when > now:
            return when
    return job.schedule.next_at_or_after(now)


def _running_since(name: str, state: StateFile, now: datetime) -> datetime | None:
    starts = [d.running[name] for d in state.alive_daemons(now) if name in d.running]
    return min(starts) if starts else None

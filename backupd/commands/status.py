"""``backupd status``: what the daemon is doing, from outside it, as text or JSON.

The model (``status_model.StatusReport``) is collected once from the state file and the
backup directory; the status page (``status_page``) renders the same model as HTML.
"""

from __future__ import annotations

from backupd.archive.status import WalStatus
from backupd.commands.status_model import JobStatus, StatusReport, collect
from backupd.daemon.state import iso_utc
from backupd.log import redact
from backupd.result import human_bytes, human_duration
from backupd.settings import Settings


def render_text(report: StatusReport) -> str:
    lines = [f"database: {report.database!r}"]
    if report.daemon.running:
        for item in report.daemon.instances:
            lines.append(f"daemon: running on {item.host} (pid {item.pid}) "
                         f"since {iso_utc(item.started_at)}")
    else:
        lines.append("daemon: not running (no recent heartbeat in the state file)")
    lines.append(f"schedules (TZ={report.timezone}):")
    for job in report.jobs:
        lines += _job_lines(job)
    newest = report.newest_verified_backup
    if newest is None:
        lines.append(f"newest verified backup: none ({report.backups} backups in total)")
    else:
        lines.append(f"newest verified backup: {newest.name} "
                     f"({human_bytes(newest.size_bytes)}, "
                     f"{human_duration(newest.age_seconds)} old)")
    offsite = report.offsite
    if offsite is None:
        lines.append("offsite: off (DB_BACKUP_S3_BUCKET not set)")
    else:
        lines.append(f"offsite: s3://{offsite.bucket}/{offsite.prefix} last upload "
                     f"{iso_utc(offsite.last_upload) or 'never'}, "
                     f"{offsite.pending_uploads} pending upload(s)")
    if report.wal is not None:
        lines += _wal_lines(report.wal)
    base = report.newest_base_backup
    if base is not None or report.wal is not None:
        lines.append("newest verified base backup: " + (
            "none (`backupd basebackup` takes one)" if base is None else
            f"{base.name} ({human_bytes(base.size_bytes)}, {human_duration(base.age_seconds)} "
            "old)"))
    lines.append(report.postgres_client.line())
    health = report.health
    lines.append("health: " + ("ok" if health.ok else "UNHEALTHY"))
    lines.extend(f"  - {reason}" for reason in health.reasons)
    return redact("\n".join(lines)) + "\n"


def _wal_lines(wal: WalStatus) -> list[str]:
    def figure(value: float | None, unit: str) -> str:
        return "unknown" if value is None else f"{value:.1f}{unit}"

    streaming = "streaming" if wal.streaming and not wal.stale() else "NOT streaming"
    retained = human_bytes(wal.retained_bytes) if wal.retained_bytes is not None else "unknown"
    lines = [f"WAL archive: {streaming} (slot {wal.slot_name or '?'}), reported "
             f"{iso_utc(wal.updated_at)}",
             f"  receive lag {figure(wal.receive_lag_seconds, 's')}, slot retains {retained}, "
             f"last segment archived {wal.last_archived or 'none'} "
             f"at {iso_utc(wal.last_archived_at) or 'never'}"]
    if wal.offsite_lag_seconds is not None or wal.pending_uploads:
        lines.append(f"  offsite lag {figure(wal.offsite_lag_seconds, 's')}, "
                     f"{wal.pending_uploads} segment(s) queued for upload")
    lines += [f"  error: {e}" for e in (wal.streaming_error, wal.archive_error,
                                        wal.offsite_error) if e]
    return lines


def _job_lines(job: JobStatus) -> list[str]:
    if job.runs == "on schedule":
        lines = [f"  {job.job:<7} {job.schedule:<16} next {iso_utc(job.next_run) or '-'}"]
    elif job.runs == "after every backup":
        lines = [f"  {job.job:<7} after every backup ({job.setting} not set)"]
    elif job.setting is not None:
        lines = [f"  {job.job:<7} off ({job.setting} not set)"]
    else:
        lines = [f"  {job.job:<7} one-off only (`backupd {job.job}`)"]
    if job.keeps:
        lines.append(f"          keeps: {job.keeps}")
    if job.running_since:
        lines.append(f"          running since {iso_utc(job.running_since)}")
    last, outcome = job.last_result, job.last_outcome
    if job.with_backup is not None:
        lines.append(f"          last with a backup: {job.with_backup.describe()}, "
                     f"deleted {job.with_backup.deleted}")
    if last is None:
        alone = "never ran on its own" if job.with_backup else "never ran"
        lines.append(f"          last: {alone}")
    else:
        lines.append(f"          last: {last.describe()}")
        if outcome is not None and outcome != last:
            lines.append(f"          last outcome: {outcome.describe()}")
    return lines


def run(settings: Settings, *, as_json: bool = False) -> int:
    report = collect(settings)
    text = report.model_dump_json(indent=2) + "\n" if as_json else render_text(report)
    print(redact(text), end="")
    return 0



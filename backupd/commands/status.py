"""``backupd status``: what the daemon is doing, from outside it.

Reads the daemon's state file and the backup directory, so it works from another
process (``docker exec``) and also when no daemon runs. Next run times come from
the running daemon when there is one, else from the schedule settings.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from backupd import pgclients
from backupd.commands.health import check as health_check
from backupd.daemon.scheduler import job_table, load_schedules
from backupd.daemon.state import StateFile, iso_utc, read_state
from backupd.log import redact
from backupd.result import human_bytes, human_duration
from backupd.settings import Settings
from backupd.storage.base import latest_upload
from backupd.storage.local import LocalStore


def collect(settings: Settings, now: datetime | None = None) -> dict[str, Any]:
    """Everything ``status`` shows, as JSON-ready data."""
    now = now or datetime.now(UTC)
    scheduled = {job.spec.name: job for job in load_schedules(settings)}
    state = read_state(settings.backup_dir)
    daemons = state.alive_daemons(now)
    jobs = []
    for spec in job_table(settings):
        job = scheduled.get(spec.name)
        record = state.jobs.get(spec.name)
        jobs.append({
            "job": spec.name,
            "setting": spec.setting,
            "schedule": job.schedule.expression if job else None,
            "next_run": iso_utc(_next_run(spec.name, state, now, job)) if job else None,
            "running_since": _running_since(spec.name, state, now),
            "last_result": _brief(record.last_result) if record else None,
            "last_outcome": _brief(record.last_outcome) if record else None,
        })
    entries = LocalStore(settings.backup_dir).list_backups(settings.postgres_db)
    newest = next((e for e in entries if e.verified), None)
    return {
        "database": settings.postgres_db,
        "timezone": settings.timezone,
        "daemon": {
            "running": bool(daemons),
            "instances": [{"host": d.host, "pid": d.pid, "started_at": iso_utc(d.started_at),
                           "updated_at": iso_utc(d.updated_at)} for d in daemons],
        },
        "jobs": jobs,
        "newest_verified_backup": None if newest is None else {
            "name": newest.name,
            "taken_at": iso_utc(newest.parsed.taken_at),
            "age_seconds": int((now - newest.parsed.taken_at).total_seconds()),
            "size_bytes": newest.size,
        },
        "backups": len(entries),
        "offsite": None if not settings.s3_bucket else {
            "bucket": settings.s3_bucket,
            "prefix": settings.s3_prefix,
            "last_upload": iso_utc(latest_upload(entries)),
            "pending_uploads": sum(1 for e in entries if e.awaiting_upload),
        },
        "health": health_check(settings).to_dict(),
        "postgres_client": pgclients.report(
            newest.manifest.server_version if newest and newest.manifest else None).to_dict(),
    }


def render_text(data: dict[str, Any]) -> str:
    lines = [f"database: {data['database']!r}"]
    daemon = data["daemon"]
    if daemon["running"]:
        for item in daemon["instances"]:
            lines.append(f"daemon: running on {item['host']} (pid {item['pid']}) "
                         f"since {item['started_at']}")
    else:
        lines.append("daemon: not running (no recent heartbeat in the state file)")
    lines.append(f"schedules (TZ={data['timezone']}):")
    for job in data["jobs"]:
        if job["schedule"] is None:
            lines.append(f"  {job['job']:<7} off ({job['setting']} not set)")
            continue
        lines.append(f"  {job['job']:<7} {job['schedule']:<16} next {job['next_run'] or '-'}")
        if job["running_since"]:
            lines.append(f"          running since {job['running_since']}")
        last, outcome = job["last_result"], job["last_outcome"]
        if last is None:
            lines.append("          last: never ran")
        else:
            lines.append(f"          last: {_describe(last)}")
            if outcome is not None and outcome != last:
                lines.append(f"          last outcome: {_describe(outcome)}")
    newest = data["newest_verified_backup"]
    if newest is None:
        lines.append(f"newest verified backup: none ({data['backups']} backups in total)")
    else:
        lines.append(f"newest verified backup: {newest['name']} "
                     f"({human_bytes(newest['size_bytes'])}, "
                     f"{human_duration(newest['age_seconds'])} old)")
    offsite = data["offsite"]
    if offsite is None:
        lines.append("offsite: off (DB_BACKUP_S3_BUCKET not set)")
    else:
        lines.append(f"offsite: s3://{offsite['bucket']}/{offsite['prefix']} last upload "
                     f"{offsite['last_upload'] or 'never'}, "
                     f"{offsite['pending_uploads']} pending upload(s)")
    lines.append(data["postgres_client"]["summary"])
    health = data["health"]
    lines.append("health: " + ("ok" if health["ok"] else "UNHEALTHY"))
    lines.extend(f"  - {reason}" for reason in health["reasons"])
    return redact("\n".join(lines)) + "\n"


def run(settings: Settings, *, as_json: bool = False) -> int:
    data = collect(settings)
    text = json.dumps(data, indent=2) + "\n" if as_json else render_text(data)
    print(redact(text), end="")
    return 0


def _next_run(name: str, state: StateFile, now: datetime, job: Any) -> datetime | None:
    # The daemon's own view wins (it includes a pending catch-up run), unless it has
    # passed since the daemon last wrote it: then the schedule knows better.
    for daemon in state.alive_daemons(now):
        when = daemon.next_runs.get(name)
        if when is not None and when > now:
            return when
    result: datetime | None = job.schedule.next_at_or_after(now)
    return result


def _running_since(name: str, state: StateFile, now: datetime) -> str | None:
    starts = [d.running[name] for d in state.alive_daemons(now) if name in d.running]
    return iso_utc(min(starts)) if starts else None


def _brief(result: dict[str, Any] | None) -> dict[str, Any] | None:
    if result is None:
        return None
    keys = ("status", "started_at", "finished_at", "duration_seconds", "backup_name",
            "size_bytes", "error", "warnings")
    return {key: result.get(key) for key in keys}


def _describe(result: dict[str, Any]) -> str:
    text = f"{result['status']} at {result.get('finished_at') or result.get('started_at')}"
    if result.get("backup_name"):
        text += f" {result['backup_name']}"
    if result.get("error"):
        text += f": {result['error']}"
    return text



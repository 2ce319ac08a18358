"""The status page (STATUS_PAGE=on, ``GET /`` on HEALTH_PORT): the status model as HTML.

The same ``StatusReport`` as ``backupd status`` (one source, rendered twice). Read-only,
one self-contained document: inline CSS and SVG, no script, no external asset (it must
work on an offline network), reloaded by a meta refresh. Every value is HTML-escaped, and
the whole page passes the log redactor, so no configured secret can appear in it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from html import escape
from typing import Any

from backupd.commands.charts import Point, line_chart
from backupd.commands.status_model import (
    JobStatus,
    NewestBackup,
    ResultBrief,
    StatusReport,
    collect,
)
from backupd.daemon.history import RunRecord
from backupd.log import redact, shown_utc
from backupd.result import human_bytes, human_duration
from backupd.settings import Settings

# Fields of StatusReport the page shows in its own sections; any other (a later issue's,
# such as the WAL archive's lag) is shown in a generic section, so it appears when it lands.
_SHOWN = frozenset({"database", "timezone", "daemon", "jobs", "newest_verified_backup",
                    "backups", "offsite", "health", "postgres_client", "databases",
                    "backup_runs", "drills", "wal"})

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1d232a;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
table{border-collapse:collapse;margin:4px 0}th,td{padding:4px 10px;text-align:left;
border-bottom:1px solid #dde2e6;vertical-align:top}th{background:#f1f4f6}
.ok{color:#17703a;font-weight:600}.bad{color:#b3261e;font-weight:600}.muted{color:#68737d}
.verdict{display:inline-block;padding:6px 14px;border-radius:4px;color:#fff;font-weight:700}
.verdict.ok{background:#17703a}.verdict.bad{background:#b3261e}
.chart{border:1px solid #dde2e6;margin:6px 12px 6px 0}.chart .grid{stroke:#e6eaed}
.chart .line{fill:none;stroke:#2f6fb5;stroke-width:2}.chart .point{fill:#2f6fb5}
.chart .point.failed{fill:#b3261e}.chart text{font-size:11px;fill:#68737d}
.chart .chart-title{font-size:13px;fill:#1d232a;font-weight:600}
"""


def page(settings: Settings) -> str:
    """The page as the daemon serves it, from the state file and the backup directory."""
    return render_html(collect(settings), settings.status_page_refresh_seconds)


def render_html(report: StatusReport, refresh_seconds: int, now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    healthy = report.health.ok
    title = f"backupd: {report.database} ({'ok' if healthy else 'UNHEALTHY'})"
    body = [
        f"<h1>backupd status: {_e(report.database)}</h1>",
        f'<p class="muted">{_e(_when(now))}; reloads every {refresh_seconds} s; '
        f"schedules in TZ={_e(report.timezone)}</p>",
        _health(report),
        "<h2>Databases</h2>", _databases(report),
        "<h2>Jobs</h2>", _jobs(report.jobs),
        "<h2>Restore drills</h2>", _drills(report.drills),
        *_wal(report),
        "<h2>Charts</h2>", _charts(report),
        *_extra_sections(report),
        "<h2>Daemon</h2>", _daemon(report),
    ]
    html = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="refresh" content="{refresh_seconds}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>"
            + "\n".join(body) + "</body></html>\n")
    return redact(html)


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else shown_utc(moment)


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 10 else human_duration(value)


def _table(headers: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    """``rows`` hold HTML already escaped by the caller."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    lines = ["<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows]
    if not lines:
        return '<p class="muted">none</p>'
    return f"<table><tr>{head}</tr>{''.join(lines)}</table>"


def _health(report: StatusReport) -> str:
    ok = report.health.ok
    verdict = (f'<p><span class="verdict {"ok" if ok else "bad"}">'
               f'{"healthy" if ok else "UNHEALTHY"}</span></p>')
    reasons = "".join(f"<li>{_e(reason)}</li>" for reason in report.health.reasons)
    return verdict + (f'<ul class="reasons">{reasons}</ul>' if reasons else "")


def _newest_cells(newest: NewestBackup | None) -> list[str]:
    if newest is None:
        return ['<span class="bad">no verified backup</span>', "-", "-", "-"]
    offsite = {None: '<span class="muted">off</span>', True: '<span class="ok">yes</span>',
               False: '<span class="bad">pending</span>'}[newest.offsite]
    return [_e(newest.name), _e(human_duration(newest.age_seconds)),
            _e(human_bytes(newest.size_bytes)), offsite]


def _databases(report: StatusReport) -> str:
    rows = [[_e(d.database), *_newest_cells(d.newest_verified_backup), _e(d.backups)]
            for d in report.databases]
    table = _table(["database", "newest verified backup", "age", "size", "offsite",
                    "backups"], rows)
    offsite = report.offsite
    if offsite is None:
        line = "offsite copies: off (DB_BACKUP_S3_BUCKET not set)"
    else:
        line = (f"offsite: s3://{offsite.bucket}/{offsite.prefix}, last upload "
                f"{_when(offsite.last_upload)}, {offsite.pending_uploads} pending")
    return table + f'<p class="muted">{_e(line)}</p>'


def _result_cell(result: ResultBrief | None) -> str:
    if result is None:
        return '<span class="muted">never ran</span>'
    css = "ok" if result.status == "success" else "bad"
    text = f'<span class="{css}">{_e(result.status)}</span> {_e(_when(result.finished_at))}'
    if result.duration_seconds is not None:
        text += f" ({_e(_seconds(result.duration_seconds))})"
    if result.backup_name:
        text += f"<br>{_e(result.backup_name)}"
    if result.error:
        text += f'<br><span class="bad">{_e(result.error)}</span>'
    return text


def _jobs(jobs: list[JobStatus]) -> str:
    rows = []
    for job in jobs:
        how = _e(job.schedule) if job.runs == "on schedule" else _e(job.runs)
        running = f"running since {_e(_when(job.running_since))}" if job.running_since else ""
        rows.append([_e(job.job), how, _e(_when(job.next_run)) if job.next_run else "-",
                     _result_cell(job.last_result), running])
    return _table(["job", "runs", "next run", "last result", "now"], rows)


def _drills(drills: list[RunRecord]) -> str:
    rows = [[_e(_when(d.finished_at)), _e(d.backup_name or "-"),
             '<span class="ok">ok</span>' if d.ok else '<span class="bad">failed</span>',
             _e(f"{d.restore_seconds:.1f} s") if d.restore_seconds is not None else "-",
             _e(d.drill_server or "beside the live database")]
            for d in reversed(drills)]
    return _table(["finished", "backup", "result", "measured RTO", "restored on"], rows)


def _charts(report: StatusReport) -> str:
    runs = [r for r in report.backup_runs if r.ok]
    sizes = [Point(i, r.size_bytes or 0, f"{r.backup_name or r.database}: "
                   f"{human_bytes(r.size_bytes or 0)}") for i, r in enumerate(runs)]
    durations = [Point(i, r.duration_seconds or 0.0, f"{r.backup_name or r.database}: "
                       f"{r.duration_seconds or 0:.1f} s") for i, r in enumerate(runs)]
    drills = [d for d in report.drills if d.restore_seconds is not None and d.finished_at]
    rto = [Point(d.finished_at.timestamp() if d.finished_at else 0.0, d.restore_seconds or 0.0,
                 f"{_when(d.finished_at)}: {d.restore_seconds or 0:.1f} s"
                 + ("" if d.ok else " (failed)"), failed=not d.ok) for d in drills]
    caption = f"last {len(runs)} successful backup runs, oldest left"
    return "".join([
        line_chart("chart-backup-size", "Backup size", sizes, human_bytes, caption),
        line_chart("chart-backup-duration", "Backup duration", durations,
                   _seconds, caption),
        line_chart("chart-drill-rto", "Drill RTO (measured restore time)", rto,
                   _seconds, "drills over time"),
    ])


def _wal(report: StatusReport) -> list[str]:
    wal = report.wal
    if wal is None:
        return []
    def lag(seconds: float | None) -> str:
        return "-" if seconds is None else _e(_seconds(seconds))
    rows = [
        ["streaming", '<span class="ok">yes</span>' if wal.streaming and not wal.stale()
         else '<span class="bad">no</span>'],
        ["lag of the local archive behind the server", lag(wal.receive_lag_seconds)],
        ["last segment archived", f"{_e(wal.last_archived or '-')} "
                                  f"({_e(_when(wal.last_archived_at))})"],
        ["offsite lag", lag(wal.offsite_lag_seconds)],
        ["segments pending upload", _e(wal.pending_uploads)],
        ["reported", _e(_when(wal.updated_at))],
    ]
    rows += [[label, f'<span class="bad">{_e(error)}</span>'] for label, error in
             (("streaming error", wal.streaming_error), ("archive error", wal.archive_error),
              ("offsite error", wal.offsite_error)) if error]
    return ["<h2>WAL archive</h2>", _table(["", ""], rows)]


def _extra_sections(report: StatusReport) -> list[str]:
    data = report.model_dump(mode="json")
    sections = []
    for name in type(report).model_fields:
        if name in _SHOWN or data.get(name) is None:
            continue
        sections += [f"<h2>{_e(name.replace('_', ' ').capitalize())}</h2>",
                     _generic(data[name])]
    return sections


def _generic(value: Any) -> str:
    if isinstance(value, dict):
        rows = [[_e(key.replace("_", " ")), _generic(item)] for key, item in value.items()]
        return _table(["", ""], rows)
    if isinstance(value, list):
        return "<ul>" + "".join(f"<li>{_generic(item)}</li>" for item in value) + "</ul>"
    return _e("-" if value is None else value)


def _daemon(report: StatusReport) -> str:
    if not report.daemon.running:
        text = "not running (no recent heartbeat in the state file)"
        return f'<p class="bad">{_e(text)}</p>'
    rows = [[_e(i.host), _e(i.pid), _e(_when(i.started_at)), _e(_when(i.updated_at))]
            for i in report.daemon.instances]
    return (_table(["host", "pid", "started", "last heartbeat"], rows)
            + f'<p class="muted">{_e(report.postgres_client.line())}</p>')

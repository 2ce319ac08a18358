"""The status page (STATUS_PAGE=on, ``GET /`` on HEALTH_PORT) of a real daemon: what it shows
after real backups and a real drill, its charts, its token, and that no secret reaches it.
Where Debian's chromium is installed, a headless browser renders it."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from helpers.backups import backup_files, take_backup
from helpers.browser import CHROMIUM, dump_dom, non_white_pixels, screenshot
from helpers.cli import BackupdProcess, run_backupd
from helpers.cluster import free_port
from helpers.daemon import FAST, NEVER_DURING_TEST, SchedulerStub
from helpers.faults import wait_until
from helpers.http_receiver import HttpReceiver
from helpers.logs import jobs_finished

from backupd.archive.status import WalStatus
from backupd.commands import status_page
from backupd.commands.status_model import collect
from backupd.commands.status_page import render_html
from backupd.daemon.history import RUNS_KEPT
from backupd.daemon.http import start_http_server
from backupd.daemon.state import STATE_FILE, StateFile, read_state, remember
from backupd.notify.metrics import BackupdMetrics
from backupd.result import JobResult, Status
from backupd.settings import load_settings

TOKEN = "page-token-7f3a9c1e"
PASSWORD = "pw-never-on-the-page-91b2"
HOOK_SECRET = "T00SECRET/B00HOOK/xyzzy-hook-5d1e"


def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except urllib.error.URLError:
        return 0, "not listening (yet)"


def chart_points(html: str, chart_id: str) -> int:
    match = re.search(rf'<svg id="{chart_id}".*?</svg>', html, re.S)
    assert match, f"no chart {chart_id} on the page"
    return match.group(0).count('<circle class="point')


def test_daemon_serves_backups_drills_charts_and_health_without_secrets(
    small_db: str, backup_dir: Path, backupd_env: Callable[..., dict[str, str]],
    backupd_daemon: Callable[..., BackupdProcess], http_receiver: HttpReceiver,
) -> None:
    hook = f"http://127.0.0.1:{http_receiver.port}/services/{HOOK_SECRET}"
    port = free_port()
    env = backupd_env(small_db, POSTGRES_PASSWORD=PASSWORD, SLACK_WEBHOOK_URL=hook,
                      HEARTBEAT_URL=hook + "/beat", STATUS_PAGE="on", STATUS_PAGE_TOKEN=TOKEN,
                      HEALTH_PORT=str(port), BACKUP_SCHEDULE=NEVER_DURING_TEST,
                      BACKUP_ON_START="false", **FAST)
    backups = [take_backup(env).name for _ in range(3)]
    drill = run_backupd(["drill"], env)
    assert drill.returncode == 0, drill.stderr
    rto = jobs_finished(drill.stderr, job="drill")[-1]["outcome"]["restore_seconds"]

    daemon = backupd_daemon(["run"], env)
    wait_until(lambda: get(port, "/healthz")[0] in (200, 503), 30, "the health server")

    assert get(port, "/")[0] == 401
    assert get(port, "/?token=wrong")[0] == 403
    assert get(port, "/", {"Authorization": "Bearer wrong"})[0] == 403
    assert get(port, "/", {"Authorization": f"Bearer {TOKEN}"})[0] == 200
    status, html = get(port, f"/?token={TOKEN}")
    assert status == 200, html
    assert daemon.poll() is None

    assert small_db in html
    assert max(backups) == max(backup_files(backup_dir)) and max(backups) in html
    assert f"{rto:.1f} s" in html  # the drill's measured RTO
    assert '<meta http-equiv="refresh"' in html and "<script" not in html
    assert not re.search(r'(src|href)="(https?:)?//', html), "an external asset"
    assert chart_points(html, "chart-backup-size") == 3
    assert chart_points(html, "chart-backup-duration") == 3
    assert chart_points(html, "chart-drill-rto") == 1
    assert '<span class="verdict ok">healthy</span>' in html
    for secret in (PASSWORD, HOOK_SECRET, "xyzzy-hook", hook, TOKEN):
        assert secret not in html, f"a secret on the status page: {secret!r}"


@pytest.fixture
def page_server(small_db: str, backupd_env: Callable[..., dict[str, str]],
                monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., int]]:
    """``page_server(**settings)``: the HTTP server in-process on a free port; its port."""
    stops: list[Callable[[], None]] = []

    def start(**overrides: str) -> int:
        for key, value in backupd_env(small_db, **overrides).items():
            monkeypatch.setenv(key, value)
        settings = load_settings()
        settings.health_port = free_port()
        page = (lambda: status_page.page(settings)) if settings.status_page else None
        stops.append(start_http_server(settings, SchedulerStub(), metrics=BackupdMetrics(settings),
                                       host="127.0.0.1", page=page))
        return settings.health_port

    yield start
    for stop in stops:
        stop()


def test_the_page_is_off_by_default_and_open_without_a_token(
        page_server: Callable[..., int], env: dict[str, str]) -> None:
    take_backup(env)
    off = page_server()
    assert get(off, "/")[0] == 404
    assert get(off, "/healthz")[0] == 200
    open_page = page_server(STATUS_PAGE="on")
    status, html = get(open_page, "/")
    assert status == 200 and "<title>backupd:" in html
    assert chart_points(html, "chart-backup-size") == 1


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get "
                    "install chromium): the page is not rendered by a browser here")
def test_a_headless_browser_renders_the_page(
        page_server: Callable[..., int], env: dict[str, str], tmp_path: Path) -> None:
    take_backup(env)
    port = page_server(STATUS_PAGE="on")
    url = f"http://127.0.0.1:{port}/"
    dom = dump_dom(url, tmp_path / "profile-dom")
    assert "<title>backupd:" in dom and "chart-backup-size" in dom
    png = screenshot(url, tmp_path / "profile-shot", tmp_path / "page.png")
    assert non_white_pixels(png) > 2000, "the screenshot is blank"


def test_the_run_history_is_bounded_kept_once_and_survives_damage(tmp_path: Path) -> None:
    start = datetime(2030, 1, 1, tzinfo=UTC)
    state = StateFile()
    for i in range(RUNS_KEPT + 5):
        result = JobResult(job="backup", database="db", started_at=start + timedelta(hours=i),
                           backup_name=f"db_{i}", size_bytes=i)
        result.finish(Status.SUCCESS)
        remember(state, result)
        remember(state, result)  # delivered twice (daemon and file): recorded once
    skipped = JobResult(job="backup", database="db")
    skipped.finish(Status.SKIPPED)
    remember(state, skipped)
    kept = [run.backup_name for run in state.history]
    assert kept == [f"db_{i}" for i in range(5, RUNS_KEPT + 5)]

    data = json.loads(state.to_json())
    data["history"] = [{"job": "backup"}]  # damaged: the rest of the file still reads
    (tmp_path / STATE_FILE).write_text(json.dumps(data))
    again = read_state(tmp_path)
    assert again.history == [] and again.jobs["backup"].last_result is not None


def test_the_wal_archive_lag_is_shown_when_archiving_reports(
        backupd_env: Callable[..., dict[str, str]], monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in backupd_env("postgres").items():
        monkeypatch.setenv(key, value)
    report = collect(load_settings())
    assert "WAL archive" not in render_html(report, 60)  # archiving off: no section
    report.wal = WalStatus(
        updated_at=datetime.now(UTC), streaming=True, receive_lag_seconds=4.25,
        last_archived="00000001000000000000002A", archive_error="disk <full> & more")
    html = render_html(report, 60)
    assert "<h2>WAL archive</h2>" in html and "4.2 s" in html
    # In its own section only, not again in the generic one for fields the page has no
    # section for.
    assert html.count("00000001000000000000002A") == 1
    assert "disk &lt;full&gt; &amp; more" in html  # escaped

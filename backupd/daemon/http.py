"""``GET /healthz`` and ``GET /metrics`` on HEALTH_PORT, in a background thread of the daemon;
with STATUS_PAGE=on also ``GET /``, the status page (rendered by the caller's ``page``).

Both answers are computed per request from the backup directory and the scheduler's
state, so they can never be staler than the request. The server never blocks a job:
it runs in its own threads and only reads.
"""

from __future__ import annotations

import errno
import hmac
import threading
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs

from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.core import GaugeMetricFamily, Metric

from backupd.archive.status import WalStatus
from backupd.daemon.health import DrillRecord, evaluate, max_backup_age
from backupd.errors import ConfigError
from backupd.log import get_logger, redact
from backupd.notify.metrics import BackupdMetrics, shared_metrics
from backupd.result import JobResult, Status
from backupd.settings import Settings
from backupd.storage.local import LocalStore

# Every interface: probes and Prometheus come from outside the container.
LISTEN_HOST = "0.0.0.0"  # noqa: S104
# A client that connects and never sends a request must not hold a thread forever.
REQUEST_TIMEOUT_SECONDS = 10
# The page is one self-contained document: nothing may load from elsewhere, nothing runs.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                               "img-src data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # the token may be in the URL
}
TEXT = "text/plain; charset=utf-8"
# Renders the status page (commands/status_page.py); the daemon package does not import it.
PageRenderer = Callable[[], str]


class SchedulerState(Protocol):
    """What the server needs from the daemon (backupd.daemon.state.DaemonState provides it)."""

    def scheduler_alive(self) -> bool: ...

    def next_runs(self) -> Mapping[str, datetime | None]: ...

    @property
    def last_results(self) -> Mapping[str, JobResult]: ...


def start_http_server(
    settings: Settings,
    state: SchedulerState,
    *,
    metrics: BackupdMetrics | None = None,
    host: str = LISTEN_HOST,
    page: PageRenderer | None = None,
    wal_status: Callable[[], WalStatus | None] | None = None,
) -> Callable[[], None]:
    """Serve on HEALTH_PORT until the returned function is called; ConfigError if taken.
    ``page``: the status page at ``/`` (None: ``/`` is not found); ``wal_status``: the WAL
    streamer's figures (WAL_ARCHIVE=on)."""
    metrics = metrics or shared_metrics(settings)
    metrics.state = state
    metrics.limits = lambda: health_limits(settings)
    metrics.wal_status = wal_status
    metrics.seed(state.last_results.values())  # the last values survive a restart
    try:
        server = _Server((host, settings.health_port), _Handler)
    except OSError as exc:
        hint = "is another process using it? " if exc.errno == errno.EADDRINUSE else ""
        raise ConfigError(f"HEALTH_PORT: cannot listen on port {settings.health_port} "
                          f"({exc.strerror}); {hint}choose another port, or 0 to turn the "
                          "health and metrics server off") from None
    server.settings, server.state, server.metrics = settings, state, metrics
    server.page = page
    thread = threading.Thread(target=server.serve_forever, name="health-http", daemon=True)
    thread.start()
    get_logger().info("health and metrics server listening", port=server.server_address[1])

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop


def health_limits(settings: Settings) -> Iterator[Metric]:
    """The limits /healthz applies (read at each scrape, like the health check)."""
    yield GaugeMetricFamily(
        "backupd_backup_max_age_seconds",
        "BACKUP_MAX_AGE_HOURS (or derived from BACKUP_SCHEDULE), in seconds: a newest "
        "verified backup older than this makes backupd unhealthy.",
        value=max_backup_age(settings).total_seconds())
    if settings.drill_max_age_days is not None:
        yield GaugeMetricFamily(
            "backupd_drill_max_age_seconds",
            "DRILL_MAX_AGE_DAYS in seconds: no successful drill for longer makes backupd "
            "unhealthy.", value=settings.drill_max_age_days * 86400)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    settings: Settings
    state: SchedulerState
    metrics: BackupdMetrics
    page: PageRenderer | None


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = REQUEST_TIMEOUT_SECONDS
    server_version = "backupd"
    sys_version = ""

    def do_GET(self) -> None:
        self._answer(head=False)

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def _answer(self, *, head: bool) -> None:
        path, _, query = self.path.partition("?")
        headers: dict[str, str] = {}
        try:
            if path == "/healthz":
                status, content_type, body = self._healthz()
            elif path == "/metrics":
                status, content_type, body = 200, CONTENT_TYPE_LATEST, self.server.metrics.render()
            elif path == "/" and self.server.page is not None:
                status, content_type, body, headers = self._page(query)
            else:
                status, content_type, body = 404, TEXT, b"not found: try /healthz or /metrics\n"
        except Exception as exc:  # a probe must get an answer, and the reason
            get_logger().exception("health server error")
            status, content_type = 500, TEXT
            body = redact(f"error: {type(exc).__name__}: {exc}\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _healthz(self) -> tuple[int, str, bytes]:
        settings, state = self.server.settings, self.server.state
        drill = state.last_results.get("drill")
        records = [DrillRecord(drill.finished_at, drill.status == Status.SUCCESS)] \
            if drill is not None and drill.finished_at is not None else []
        wal = self.server.metrics.wal_status
        report = evaluate(settings, LocalStore(settings.backup_dir), state.scheduler_alive(),
                          datetime.now(UTC), drill_records=records,
                          wal_status=wal() if wal is not None else None)
        body = redact(report.render_text()).encode()
        return (200 if report.ok else 503), "text/plain; charset=utf-8", body

    def _page(self, query: str) -> tuple[int, str, bytes, dict[str, str]]:
        token = self.server.settings.status_page_token
        if token is not None:
            given = _presented_token(self.headers.get("Authorization"), query)
            if given is None:
                return 401, TEXT, b"the status page needs ?token= or Authorization: Bearer\n", \
                    {"WWW-Authenticate": 'Bearer realm="backupd status"'}
            if not hmac.compare_digest(given.encode(), token.get_secret_value().encode()):
                return 403, TEXT, b"wrong token for the status page\n", {}
        assert self.server.page is not None
        body = self.server.page().encode()
        return 200, "text/html; charset=utf-8", body, PAGE_HEADERS

    def log_message(self, format: str, *args: Any) -> None:
        pass  # probes every few seconds would drown the log; failures are logged above


def _presented_token(authorization: str | None, query: str) -> str | None:
    """The token a request presents: the bearer header's, else the ``token`` parameter."""
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    values = parse_qs(query).get("token")
    return values[0] if values else None

"""Prometheus metrics: what the last runs did (from results) and what is on disk (at scrape).

Two tables drive everything, so a new metric is one line in one of them:
- RESULT_GAUGES: set from each JobResult, labelled by job and database;
- STORE_GAUGES (``store_metrics``): computed on every scrape from the backup directory's
  manifests, labelled by database.
Labels are only ``job``, ``database`` and ``status``: never secrets, never row data. The
database is the result's (a name from POSTGRES_DB or the server's catalog); a backup run of
several databases reports each database under its own name and the run's summary under the
POSTGRES_DB value (``app,billing``, ``*``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import ClassVar, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from backupd.archive.status import WalStatus
from backupd.log import get_logger
from backupd.notify.store_metrics import store_metrics, unix_time
from backupd.notify.wal_metrics import wal_families
from backupd.outcomes import BackupRunOutcome
from backupd.result import ALERT_STATUSES, JobResult, Status
from backupd.settings import Settings

# --- facts from results ----------------------------------------------------------------


@dataclass(frozen=True)
class ResultGauge:
    name: str
    help: str
    value: Callable[[JobResult], float | None]  # None: leave the gauge as it was


RESULT_GAUGES: tuple[ResultGauge, ...] = (
    ResultGauge("backupd_job_last_run_timestamp_seconds",
                "When the job's last run finished (Unix time).",
                lambda r: unix_time(r.finished_at)),
    ResultGauge("backupd_job_last_success_timestamp_seconds",
                "When the job last finished successfully (Unix time).",
                lambda r: unix_time(r.finished_at) if r.ok else None),
    ResultGauge("backupd_job_last_duration_seconds",
                "How long the job's last run took.", lambda r: r.duration_seconds),
    ResultGauge("backupd_job_last_run_success",
                "1 if the job's last run succeeded, 0 if not.", lambda r: float(r.ok)),
    # What to alert on: a skipped run (another replica has the slot, the lock is held)
    # is no news either way, so it leaves the gauge as the last real run set it.
    ResultGauge("backupd_job_last_run_failed",
                "1 if the job's last run that was not skipped failed, was missed or was "
                "cancelled; 0 if it succeeded.",
                lambda r: None if r.status == Status.SKIPPED
                else float(r.status in ALERT_STATUSES)),
    ResultGauge("backupd_job_last_backup_size_bytes",
                "Size of the backup the job's last successful run wrote.",
                lambda r: r.size_bytes if r.ok else None),
    ResultGauge("backupd_job_last_size_change_ratio",
                "Last backup's size relative to the previous one (1.0 = same size).",
                lambda r: (r.size_bytes / r.previous_size_bytes)
                if r.ok and r.size_bytes is not None and r.previous_size_bytes else None),
    ResultGauge("backupd_job_last_retention_deleted",
                "Backups the job's last run deleted by retention.", lambda r: len(r.deleted)),
    ResultGauge("backupd_job_last_warnings",
                "Warnings the job's last run raised (a shrunken backup, ...).",
                lambda r: len(r.warnings)),
)


# Several databases (POSTGRES_DB a list or `*`, or DB_BACKUP_GLOBALS on) only, from each
# database's own backup result: the names dashboards used before every series carried a
# database label (the same facts as backupd_job_last_*{job="backup",database=...}).
DATABASE_GAUGES: tuple[ResultGauge, ...] = (
    ResultGauge("backupd_database_last_backup_timestamp_seconds",
                "When the database's last backup finished (Unix time).",
                lambda r: unix_time(r.finished_at)),
    ResultGauge("backupd_database_last_backup_success",
                "1 if the database's last backup succeeded, 0 if not.", lambda r: float(r.ok)),
    ResultGauge("backupd_database_last_success_timestamp_seconds",
                "When the database's last backup succeeded (Unix time).",
                lambda r: unix_time(r.finished_at) if r.ok else None),
    ResultGauge("backupd_database_last_backup_size_bytes",
                "Size of the database's last successful backup.",
                lambda r: r.size_bytes if r.ok else None),
    ResultGauge("backupd_database_last_backup_duration_seconds",
                "How long the database's last backup took.", lambda r: r.duration_seconds),
)


class StateView(Protocol):
    """What the metrics read from the daemon's state (backupd.daemon.state.DaemonState)."""

    def scheduler_alive(self) -> bool: ...

    def next_runs(self) -> Mapping[str, datetime | None]: ...


class _ScrapeCollector(Collector):
    def __init__(self, metrics: BackupdMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        yield from self._store_metrics()
        yield from self._state_metrics()
        if self.metrics.limits is not None:
            yield from self.metrics.limits()
        if self.metrics.settings.wal_archive:
            source = self.metrics.wal_status
            yield from wal_families(source() if source is not None else None,
                                    datetime.now(UTC))

    def _store_metrics(self) -> Iterator[Metric]:
        readable = GaugeMetricFamily("backupd_local_store_readable",
                                     "1 if DB_BACKUP_DIR could be listed at this scrape.")
        try:
            families = list(store_metrics(self.metrics.settings, datetime.now(UTC),
                                          legacy_aliases=self.metrics.per_database))
        except OSError as exc:
            get_logger().warning("metrics: cannot list backups", error=exc.strerror)
            readable.add_metric([], 0.0)
            yield readable
            return
        readable.add_metric([], 1.0)
        yield readable
        yield from families

    def _state_metrics(self) -> Iterator[Metric]:
        state = self.metrics.state
        if state is None:
            return
        yield GaugeMetricFamily("backupd_scheduler_up", "1 while the scheduler thread runs.",
                                value=float(state.scheduler_alive()))
        next_runs = GaugeMetricFamily("backupd_job_next_run_timestamp_seconds",
                                      "When the job is next scheduled (Unix time).",
                                      labels=["job"])
        for job, when in sorted(state.next_runs().items()):
            if when is not None:
                next_runs.add_metric([job], when.timestamp())
        yield next_runs


# --- the registry and the notifier that feeds it -------------------------------------------


class BackupdMetrics:
    """backupd's own registry (never prometheus_client's global one)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state: StateView | None = None
        # The daemon's health limits as gauges (backupd.daemon.http sets it), so alert rules
        # compare against the limits /healthz applies.
        self.limits: Callable[[], Iterable[Metric]] | None = None
        # The WAL streamer's figures (WAL_ARCHIVE=on), set by the daemon.
        self.wal_status: Callable[[], WalStatus | None] | None = None
        self.registry = CollectorRegistry()
        self._lock = threading.Lock()
        self._seen: set[tuple[str, str]] = set()  # (job, database)
        self.runs = Counter("backupd_job_runs", "Job runs by job, database and outcome.",
                            ["job", "database", "status"], registry=self.registry)
        self.gauges = {g.name: Gauge(g.name, g.help, ["job", "database"],
                                     registry=self.registry)
                       for g in RESULT_GAUGES}
        self.per_database = settings.database_selection.several or settings.globals_enabled
        self.database_gauges = {
            g.name: Gauge(g.name, g.help, ["database"], registry=self.registry)
            for g in DATABASE_GAUGES} if self.per_database else {}
        self.registry.register(_ScrapeCollector(self))

    def observe(self, result: JobResult, *, count: bool = True) -> None:
        with self._lock:
            key = (result.job, result.database)
            if key not in self._seen:
                self._seen.add(key)
                # Every status at 0 from the start, so rate() and increase() see the first failure.
                for status in Status:
                    if status != Status.RUNNING:
                        self.runs.labels(*key, status.value)
            if count:
                self.runs.labels(*key, result.status.value).inc()
            for gauge in RESULT_GAUGES:
                value = gauge.value(result)
                if value is not None:
                    self.gauges[gauge.name].labels(*key).set(value)
            if (self.database_gauges and result.job == "backup"
                    and not isinstance(result.outcome, BackupRunOutcome)):
                for gauge in DATABASE_GAUGES:
                    value = gauge.value(result)
                    if value is not None:
                        self.database_gauges[gauge.name].labels(
                            database=result.database).set(value)

    def seed(self, results: Iterable[JobResult]) -> None:
        """Last values from a previous life of the daemon (its state file); counts stay at 0."""
        for result in results:
            if (result.job, result.database) not in self._seen:
                self.observe(result, count=False)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsNotifier:
    name = "metrics"
    remote: ClassVar[bool] = False

    def __init__(self, metrics: BackupdMetrics) -> None:
        self.metrics = metrics

    def notify(self, result: JobResult) -> None:
        self.metrics.observe(result)


_shared: dict[tuple[str, str], BackupdMetrics] = {}
_shared_lock = threading.Lock()


def shared_metrics(settings: Settings) -> BackupdMetrics:
    """The process's metrics for this directory and database: the chain feeds them, /metrics
    serves them."""
    key = (str(settings.backup_dir), settings.postgres_db)
    with _shared_lock:
        if key not in _shared:
            _shared[key] = BackupdMetrics(settings)
        return _shared[key]

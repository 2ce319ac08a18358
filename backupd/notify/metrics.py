"""Prometheus metrics: what the last runs did (from results) and what is on disk (at scrape).

Two tables drive everything, so a new metric is one line in one of them:
- RESULT_GAUGES: set from each JobResult, labelled by job;
- STORE_GAUGES: computed on every scrape from the backup directory's manifests (they
  survive restarts, and an upload or drill recorded by another process shows up too).
Labels are only ``job`` and ``status``: never secrets, never database-supplied text; with
several databases (POSTGRES_DB a list or `*`) the ``backupd_database_*`` families add a
``database`` label (names from POSTGRES_DB or the server's catalog, never row data).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from backupd.log import get_logger
from backupd.naming import GLOBALS_DATABASE, GLOBALS_KIND
from backupd.outcomes import BackupRunOutcome
from backupd.result import JobResult, Status
from backupd.settings import Settings
from backupd.storage.base import BackupEntry, latest_upload, newest_verified
from backupd.storage.local import LocalStore

# --- facts from results ----------------------------------------------------------------


@dataclass(frozen=True)
class ResultGauge:
    name: str
    help: str
    value: Callable[[JobResult], float | None]  # None: leave the gauge as it was


def _timestamp(moment: datetime | None) -> float | None:
    return moment.timestamp() if moment is not None else None


RESULT_GAUGES: tuple[ResultGauge, ...] = (
    ResultGauge("backupd_job_last_run_timestamp_seconds",
                "When the job's last run finished (Unix time).",
                lambda r: _timestamp(r.finished_at)),
    ResultGauge("backupd_job_last_success_timestamp_seconds",
                "When the job last finished successfully (Unix time).",
                lambda r: _timestamp(r.finished_at) if r.ok else None),
    ResultGauge("backupd_job_last_duration_seconds",
                "How long the job's last run took.", lambda r: r.duration_seconds),
    ResultGauge("backupd_job_last_run_success",
                "1 if the job's last run succeeded, 0 if not.", lambda r: float(r.ok)),
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


# Per database (POSTGRES_DB a list or `*`, or DB_BACKUP_GLOBALS on), from each database's
# own backup result; labelled by database.
DATABASE_GAUGES: tuple[ResultGauge, ...] = (
    ResultGauge("backupd_database_last_backup_timestamp_seconds",
                "When the database's last backup finished (Unix time).",
                lambda r: _timestamp(r.finished_at)),
    ResultGauge("backupd_database_last_backup_success",
                "1 if the database's last backup succeeded, 0 if not.", lambda r: float(r.ok)),
    ResultGauge("backupd_database_last_success_timestamp_seconds",
                "When the database's last backup succeeded (Unix time).",
                lambda r: _timestamp(r.finished_at) if r.ok else None),
    ResultGauge("backupd_database_last_backup_size_bytes",
                "Size of the database's last successful backup.",
                lambda r: r.size_bytes if r.ok else None),
    ResultGauge("backupd_database_last_backup_duration_seconds",
                "How long the database's last backup took.", lambda r: r.duration_seconds),
)


# --- facts from the backup directory, at scrape time -------------------------------------


class StateView(Protocol):
    """What the metrics read from the daemon's state (backupd.daemon.state.DaemonState)."""

    def scheduler_alive(self) -> bool: ...

    def next_runs(self) -> Mapping[str, datetime | None]: ...


@dataclass
class StoreSnapshot:
    settings: Settings
    entries: list[BackupEntry]
    now: datetime

    @cached_property
    def newest_verified(self) -> BackupEntry | None:
        return newest_verified(self.entries, self.now)

    @cached_property
    def newest_good_drill(self) -> BackupEntry | None:
        drilled = [e for e in self.entries
                   if e.manifest and e.manifest.drill_ok and e.manifest.drilled_at]
        return max(drilled, key=lambda e: e.manifest.drilled_at, default=None)  # type: ignore[union-attr, arg-type, return-value]

    def newest_upload(self) -> datetime | None:
        return latest_upload(self.entries)

    def pending_uploads(self) -> int | None:
        if not self.settings.s3_bucket:
            return None
        return sum(1 for e in self.entries if e.awaiting_upload)

    def age(self, moment: datetime | None) -> float | None:
        return (self.now - moment).total_seconds() if moment else None


@dataclass(frozen=True)
class StoreGauge:
    name: str
    help: str
    value: Callable[[StoreSnapshot], float | None]  # None: not exported this scrape


def _drilled_at(s: StoreSnapshot) -> datetime | None:
    entry = s.newest_good_drill
    return entry.manifest.drilled_at if entry and entry.manifest else None


def _taken_at(entry: BackupEntry | None) -> datetime | None:
    return entry.parsed.taken_at if entry else None


STORE_GAUGES: tuple[StoreGauge, ...] = (
    StoreGauge("backupd_local_backups", "Backups of POSTGRES_DB in DB_BACKUP_DIR.",
               lambda s: len(s.entries)),
    StoreGauge("backupd_local_verified_backups",
               "Verified backups of POSTGRES_DB in DB_BACKUP_DIR.",
               lambda s: sum(1 for e in s.entries if e.verified)),
    StoreGauge("backupd_local_backups_bytes", "Total size of the backups in DB_BACKUP_DIR.",
               lambda s: sum(e.size for e in s.entries)),
    StoreGauge("backupd_newest_verified_backup_timestamp_seconds",
               "When the newest verified backup was taken (Unix time).",
               lambda s: _timestamp(_taken_at(s.newest_verified))),
    StoreGauge("backupd_newest_verified_backup_age_seconds",
               "Age of the newest verified backup.", lambda s: s.age(_taken_at(s.newest_verified))),
    StoreGauge("backupd_newest_verified_backup_size_bytes", "Size of the newest verified backup.",
               lambda s: s.newest_verified.size if s.newest_verified else None),
    # Offsite copies (issue 4) and restore drills (issue 7), from the manifests.
    StoreGauge("backupd_offsite_last_upload_timestamp_seconds",
               "When a backup was last committed offsite (Unix time).",
               lambda s: _timestamp(s.newest_upload())),
    StoreGauge("backupd_offsite_pending_uploads",
               "Verified local backups not yet committed offsite.", lambda s: s.pending_uploads()),
    StoreGauge("backupd_drill_last_success_timestamp_seconds",
               "When a restore drill last succeeded (Unix time).",
               lambda s: _timestamp(_drilled_at(s))),
    StoreGauge("backupd_drill_last_success_age_seconds",
               "Age of the last successful restore drill.", lambda s: s.age(_drilled_at(s))),
    StoreGauge("backupd_drill_last_restore_seconds",
               "How long the last successful drill's restore took.",
               lambda s: s.newest_good_drill.manifest.drill_restore_seconds  # type: ignore[union-attr]
               if s.newest_good_drill else None),
)


class _ScrapeCollector(Collector):
    def __init__(self, metrics: BackupdMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        yield from self._store_metrics()
        yield from self._state_metrics()

    def _store_metrics(self) -> Iterator[Metric]:
        settings = self.metrics.settings
        readable = GaugeMetricFamily("backupd_local_store_readable",
                                     "1 if DB_BACKUP_DIR could be listed at this scrape.")
        try:
            store = LocalStore(settings.backup_dir)
            entries = store.list_backups(settings.postgres_db) if not self.metrics.per_database \
                else [e for name in settings.database_selection.watched(store.dump_databases())
                      for e in store.list_backups(name)]
        except OSError as exc:
            get_logger().warning("metrics: cannot list backups", error=exc.strerror)
            readable.add_metric([], 0.0)
            yield readable
            return
        readable.add_metric([], 1.0)
        yield readable
        snapshot = StoreSnapshot(settings, entries, datetime.now(UTC))
        for gauge in STORE_GAUGES:
            value = gauge.value(snapshot)
            if value is not None:
                yield GaugeMetricFamily(gauge.name, gauge.help, value=float(value))
        if self.metrics.per_database:
            yield from self._per_database(settings, snapshot.now)

    def _per_database(self, settings: Settings, now: datetime) -> Iterator[Metric]:
        store = LocalStore(settings.backup_dir)
        count = GaugeMetricFamily("backupd_database_local_backups",
                                  "Backups of the database in DB_BACKUP_DIR.",
                                  labels=["database"])
        age = GaugeMetricFamily("backupd_database_newest_verified_backup_age_seconds",
                                "Age of the database's newest verified backup.",
                                labels=["database"])
        try:
            for database in settings.database_selection.watched(store.dump_databases()):
                entries = store.list_backups(database)
                count.add_metric([database], float(len(entries)))
                newest = newest_verified(entries, now)
                if newest is not None:
                    age.add_metric([database], (now - newest.parsed.taken_at).total_seconds())
            if settings.globals_enabled:
                newest = newest_verified(store.list_backups(GLOBALS_DATABASE, GLOBALS_KIND), now)
                if newest is not None:
                    yield GaugeMetricFamily(
                        "backupd_globals_newest_verified_backup_age_seconds",
                        "Age of the newest verified globals (roles, tablespaces) artifact.",
                        value=(now - newest.parsed.taken_at).total_seconds())
        except OSError:
            return
        yield count
        yield age

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
        self.registry = CollectorRegistry()
        self._lock = threading.Lock()
        self._seen_jobs: set[str] = set()
        self.runs = Counter("backupd_job_runs", "Job runs by job and outcome.",
                            ["job", "status"], registry=self.registry)
        self.gauges = {g.name: Gauge(g.name, g.help, ["job"], registry=self.registry)
                       for g in RESULT_GAUGES}
        self.per_database = settings.database_selection.several or settings.globals_enabled
        self.database_gauges = {
            g.name: Gauge(g.name, g.help, ["database"], registry=self.registry)
            for g in DATABASE_GAUGES} if self.per_database else {}
        self.registry.register(_ScrapeCollector(self))

    def observe(self, result: JobResult, *, count: bool = True) -> None:
        with self._lock:
            if result.job not in self._seen_jobs:
                self._seen_jobs.add(result.job)
                # Every status at 0 from the start, so rate() and increase() see the first failure.
                for status in Status:
                    if status != Status.RUNNING:
                        self.runs.labels(job=result.job, status=status.value)
            if count:
                self.runs.labels(job=result.job, status=result.status.value).inc()
            for gauge in RESULT_GAUGES:
                value = gauge.value(result)
                if value is not None:
                    self.gauges[gauge.name].labels(job=result.job).set(value)
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
            if result.job not in self._seen_jobs:
                self.observe(result, count=False)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsNotifier:
    name = "metrics"

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

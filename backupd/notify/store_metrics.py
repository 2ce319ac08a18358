"""The metrics computed at every scrape from the backup directory's manifests.

They survive restarts, and an upload or drill recorded by another process (a one-off
``backupd drill``) shows up too. Every series is per database (label ``database``: the
names POSTGRES_DB lists, or for `*` those with backups here, never row data), so one
sidecar serving several databases has one series per database and a single database has
exactly one. The cluster's globals artifact is not a database: it has its own gauges,
including the whole-cluster drill's restore time (the RTO), recorded in its manifest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property

from prometheus_client.core import GaugeMetricFamily, Metric

from backupd.naming import BASE_DATABASE, BASE_KIND
from backupd.settings import Settings
from backupd.storage.base import BackupEntry, latest_upload, newest_drilled, newest_verified
from backupd.storage.local import LocalStore


@dataclass
class StoreSnapshot:
    """One database's (or the globals') artifacts at one scrape."""

    settings: Settings
    entries: list[BackupEntry]
    now: datetime

    @cached_property
    def newest_verified(self) -> BackupEntry | None:
        return newest_verified(self.entries, self.now)

    @cached_property
    def newest_drill(self) -> BackupEntry | None:
        return newest_drilled(self.entries)

    @cached_property
    def newest_good_drill(self) -> BackupEntry | None:
        return newest_drilled(self.entries, passed=True)

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


def unix_time(moment: datetime | None) -> float | None:
    """A gauge's value for a moment (None: the gauge is not exported)."""
    return moment.timestamp() if moment is not None else None


def _drilled_at(entry: BackupEntry | None) -> datetime | None:
    return entry.manifest.drilled_at if entry is not None and entry.manifest else None


def _restore_seconds(entry: BackupEntry | None) -> float | None:
    return entry.manifest.drill_restore_seconds if entry is not None and entry.manifest \
        else None


def _drill_passed(entry: BackupEntry | None) -> float | None:
    return float(bool(entry.manifest.drill_ok)) if entry is not None and entry.manifest \
        else None


def _taken_at(entry: BackupEntry | None) -> datetime | None:
    return entry.parsed.taken_at if entry else None


STORE_GAUGES: tuple[StoreGauge, ...] = (
    StoreGauge("backupd_local_backups", "Backups of the database in DB_BACKUP_DIR.",
               lambda s: len(s.entries)),
    StoreGauge("backupd_local_verified_backups",
               "Verified backups of the database in DB_BACKUP_DIR.",
               lambda s: sum(1 for e in s.entries if e.verified)),
    StoreGauge("backupd_local_backups_bytes",
               "Total size of the database's backups in DB_BACKUP_DIR.",
               lambda s: sum(e.size for e in s.entries)),
    StoreGauge("backupd_newest_verified_backup_timestamp_seconds",
               "When the database's newest verified backup was taken (Unix time).",
               lambda s: unix_time(_taken_at(s.newest_verified))),
    StoreGauge("backupd_newest_verified_backup_age_seconds",
               "Age of the database's newest verified backup.",
               lambda s: s.age(_taken_at(s.newest_verified))),
    StoreGauge("backupd_newest_verified_backup_size_bytes",
               "Size of the database's newest verified backup.",
               lambda s: s.newest_verified.size if s.newest_verified else None),
    # Offsite copies (issue 4) and restore drills (issue 7), from the manifests.
    StoreGauge("backupd_offsite_last_upload_timestamp_seconds",
               "When a backup of the database was last committed offsite (Unix time).",
               lambda s: unix_time(s.newest_upload())),
    StoreGauge("backupd_offsite_pending_uploads",
               "Verified local backups of the database not yet committed offsite.",
               lambda s: s.pending_uploads()),
    StoreGauge("backupd_drill_last_run_success",
               "1 if the database's newest recorded restore drill passed, 0 if it failed.",
               lambda s: _drill_passed(s.newest_drill)),
    StoreGauge("backupd_drill_last_run_timestamp_seconds",
               "When the database's newest recorded restore drill ran (Unix time).",
               lambda s: unix_time(_drilled_at(s.newest_drill))),
    StoreGauge("backupd_drill_last_success_timestamp_seconds",
               "When a restore drill of the database last succeeded (Unix time).",
               lambda s: unix_time(_drilled_at(s.newest_good_drill))),
    StoreGauge("backupd_drill_last_success_age_seconds",
               "Age of the database's last successful restore drill.",
               lambda s: s.age(_drilled_at(s.newest_good_drill))),
    StoreGauge("backupd_drill_last_restore_seconds",
               "How long the restore of the database's last successful drill took (its RTO).",
               lambda s: _restore_seconds(s.newest_good_drill)),
)

# The whole-cluster drill (DRILL_POSTGRES_HOST) records its measured recovery time (globals
# plus every database, restored in turn) in the globals artifact's manifest.
CLUSTER_GAUGES: tuple[StoreGauge, ...] = (
    StoreGauge("backupd_globals_newest_verified_backup_age_seconds",
               "Age of the newest verified globals (roles, tablespaces) artifact.",
               lambda s: s.age(_taken_at(s.newest_verified))),
    StoreGauge("backupd_drill_cluster_last_run_success",
               "1 if the newest whole-cluster drill passed, 0 if it failed.",
               lambda s: _drill_passed(s.newest_drill)),
    StoreGauge("backupd_drill_cluster_last_success_timestamp_seconds",
               "When a whole-cluster drill last succeeded (Unix time).",
               lambda s: unix_time(_drilled_at(s.newest_good_drill))),
    StoreGauge("backupd_drill_cluster_restore_seconds",
               "How long the last successful whole-cluster drill took to restore the "
               "globals and every database (the cluster's RTO).",
               lambda s: _restore_seconds(s.newest_good_drill)),
)

# Before every series carried a database label, several databases had these two
# per-database names (the unlabelled ones then meant "all databases"); kept for dashboards.
LEGACY_ALIASES = {
    "backupd_local_backups": "backupd_database_local_backups",
    "backupd_newest_verified_backup_age_seconds":
        "backupd_database_newest_verified_backup_age_seconds",
}


def store_metrics(settings: Settings, now: datetime, *, legacy_aliases: bool) -> Iterator[Metric]:
    """Every store gauge, one series per database; raises OSError when the directory cannot
    be listed (the caller reports that)."""
    store = LocalStore(settings.backup_dir)
    found = store.watched_dumps(settings.database_selection,
                                with_globals=settings.globals_enabled)
    snapshots = {name: StoreSnapshot(settings, entries, now)
                 for name, entries in found.backups.items()}
    globals_snapshot = (StoreSnapshot(settings, found.globals, now)
                        if settings.globals_enabled else None)
    for gauge in STORE_GAUGES:
        names = [gauge.name] + ([LEGACY_ALIASES[gauge.name]]
                                if legacy_aliases and gauge.name in LEGACY_ALIASES else [])
        families = [GaugeMetricFamily(name, gauge.help, labels=["database"]) for name in names]
        for database, snapshot in snapshots.items():
            value = gauge.value(snapshot)
            if value is not None:
                for family in families:
                    family.add_metric([database], float(value))
        yield from (family for family in families if family.samples)
    if globals_snapshot is not None:
        for gauge in CLUSTER_GAUGES:
            value = gauge.value(globals_snapshot)
            if value is not None:
                yield GaugeMetricFamily(gauge.name, gauge.help, value=float(value))
    newest_base = newest_verified(store.list_backups(BASE_DATABASE, BASE_KIND), now)
    if newest_base is not None:
        yield GaugeMetricFamily("backupd_basebackup_newest_verified_timestamp_seconds",
                                "When the newest verified base backup was taken (Unix time).",
                                value=newest_base.parsed.taken_at.timestamp())

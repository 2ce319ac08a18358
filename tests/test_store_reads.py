"""Each manifest in DB_BACKUP_DIR is read once per health probe, metrics scrape and
BACKUP_ON_START check of POSTGRES_DB='*'. Judging whether template1 is still due
(LocalStore.watched_dumps) lists every watched database's backups; those callers then listed
them all again, every manifest read twice, at each probe and scrape. Counted by the kernel
(inotify), from outside the code under test."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from helpers.backups import back_up, manifest_path
from helpers.cli import run_backupd, server_env
from helpers.file_opens import OpenCounter
from helpers.template1 import cluster_holding

from backupd.commands.jobs import scheduled_jobs
from backupd.daemon.scheduler import Daemon
from backupd.daemon.state import DaemonState
from backupd.notify.base import NotifierChain
from backupd.notify.store_metrics import store_metrics
from backupd.settings import Settings, load_settings

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class EveryDatabase:
    env: dict[str, str]
    manifest: Path  # of the postgres database's dump: one a run of '*' always takes
    globals_manifest: Path  # of the run's globals: judging template1 reads it too


@pytest.fixture(scope="module")
def every_database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EveryDatabase]:
    """A run of '*' whose template1 held objects: template1 is judged, so the lookup of the
    newest run's template1 reads the manifests."""
    with cluster_holding("store-reads-pw") as cluster:
        directory = tmp_path_factory.mktemp("store-reads") / "backups"
        back_up(cluster.address, "*", directory, HEALTH_PORT="0")
        [dump] = directory.glob("postgres_*.sql.gz")
        [cluster_globals] = directory.glob("globals_*.sql.gz")
        yield EveryDatabase(server_env(cluster.address, "*", directory, HEALTH_PORT="0",
                                       DB_BACKUP_GLOBALS="on"), manifest_path(dump),
                            manifest_path(cluster_globals))


def _settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return load_settings()


def test_a_health_probe_reads_each_manifest_once(every_database: EveryDatabase) -> None:
    with OpenCounter(every_database.manifest) as opens, \
            OpenCounter(every_database.globals_manifest) as globals_opens:
        proc = run_backupd(["health"], every_database.env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert opens.count() == 1
        assert globals_opens.count() == 1


def test_a_metrics_scrape_reads_each_manifest_once(
        every_database: EveryDatabase, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(every_database.env, monkeypatch)
    with OpenCounter(every_database.manifest) as opens, \
            OpenCounter(every_database.globals_manifest) as globals_opens:
        families = list(store_metrics(settings, datetime.now(UTC), legacy_aliases=False))
        assert opens.count() == 1
        assert globals_opens.count() == 1
    assert {sample.labels["database"] for family in families
            if family.name == "backupd_newest_verified_backup_age_seconds"
            for sample in family.samples} == {"postgres", "template1"}


def test_the_backup_on_start_check_reads_each_manifest_once(
        every_database: EveryDatabase, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(every_database.env, monkeypatch)
    daemon = Daemon(settings, scheduled_jobs(settings), NotifierChain([]),
                    DaemonState(settings.backup_dir))
    with OpenCounter(every_database.manifest) as opens:
        reason = daemon._backup_on_start_reason(daemon.jobs["backup"].schedule,
                                                datetime.now(UTC))
        assert opens.count() == 1
    assert reason is None  # every database (template1 too) has a fresh verified dump

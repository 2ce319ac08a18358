"""/metrics, /healthz and `backupd health`, against real backups in a real backup directory.

The HTTP server runs in-process on a free port; the backups are made by the real backup
job (in-process through run_job, or the CLI), so the values checked are the real ones.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from helpers.cli import run_backupd
from helpers.cluster import free_port
from helpers.daemon import SchedulerStub
from helpers.metrics import Samples, parse_samples

from backupd.commands import backup as backup_cmd
from backupd.daemon.health import evaluate, longest_gap, max_backup_age
from backupd.daemon.http import start_http_server
from backupd.daemon.state import STATE_FILE
from backupd.errors import ConfigError
from backupd.job import run_job
from backupd.notify import build_chain
from backupd.notify.metrics import BackupdMetrics, MetricsNotifier
from backupd.result import JobResult, Status
from backupd.settings import Settings, load_settings
from backupd.storage.local import LocalStore


@pytest.fixture
def settings_for(
    backupd_env: Callable[..., dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Settings]:
    def make(db: str, **overrides: str) -> Settings:
        for key, value in backupd_env(db, **overrides).items():
            monkeypatch.setenv(key, value)
        return load_settings()

    return make


@dataclass
class Served:
    settings: Settings
    state: SchedulerStub
    metrics: BackupdMetrics
    port: int

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def backup(self) -> JobResult:
        chain = build_chain(self.settings, MetricsNotifier(self.metrics))
        return run_job("backup", self.settings, lambda ctx: backup_cmd.run(ctx), chain)


@pytest.fixture
def served(fixture_db: str, settings_for: Callable[..., Settings]) -> Iterator[Served]:
    settings = settings_for(fixture_db)  # HEALTH_PORT=0: build_chain adds no shared metrics
    state = SchedulerStub(runs={"backup": datetime(2030, 1, 1, 2, tzinfo=UTC), "verify": None})
    metrics = BackupdMetrics(settings)
    port = free_port()
    settings.health_port = port
    stop = start_http_server(settings, state, metrics=metrics, host="127.0.0.1")
    try:
        yield Served(settings, state, metrics, port)
    finally:
        stop()


def scrape(served: Served) -> Samples:
    status, text = served.get("/metrics")
    assert status == 200
    samples = parse_samples(text)
    for name, labels in samples:  # nothing else in labels
        assert {label for label, _ in labels} <= {"job", "database", "status"}, (name, labels)
    return samples


def test_metrics_carry_the_last_run(served: Served) -> None:
    result = served.backup()
    assert result.status == Status.SUCCESS, result.error
    samples = scrape(served)
    db = (("database", served.settings.postgres_db),)
    job = (*db, ("job", "backup"))
    path = served.settings.backup_dir / str(result.backup_name)
    assert result.finished_at is not None
    assert samples[("backupd_job_last_success_timestamp_seconds", job)] == pytest.approx(
        result.finished_at.timestamp())
    assert samples[("backupd_job_last_duration_seconds", job)] == pytest.approx(
        result.duration_seconds)
    assert samples[("backupd_job_last_backup_size_bytes", job)] == path.stat().st_size
    assert samples[("backupd_job_last_run_failed", job)] == 0
    assert samples[("backupd_job_runs_total", (*job, ("status", "success")))] == 1
    assert samples[("backupd_job_runs_total", (*job, ("status", "failed")))] == 0
    assert samples[("backupd_local_backups", db)] == 1
    assert samples[("backupd_local_verified_backups", db)] == 1
    assert samples[("backupd_local_backups_bytes", db)] == path.stat().st_size
    assert 0 <= samples[("backupd_newest_verified_backup_age_seconds", db)] < 120
    assert samples[("backupd_scheduler_up", ())] == 1
    assert samples[("backupd_backup_max_age_seconds", ())] == 37 * 3600  # daily: 24 h * 1.5 + 1 h
    assert samples[("backupd_job_next_run_timestamp_seconds", (("job", "backup"),))] == datetime(
        2030, 1, 1, 2, tzinfo=UTC).timestamp()
    # S3 off, no drill yet: those gauges are absent rather than a misleading 0.
    assert ("backupd_offsite_pending_uploads", db) not in samples
    assert ("backupd_drill_last_success_timestamp_seconds", db) not in samples

    # A failed run: counted, last-run gauges move, the last good size stays.
    served.settings.postgres_port = free_port()
    failed = served.backup()
    assert failed.status == Status.FAILED
    samples = scrape(served)
    assert samples[("backupd_job_runs_total", (*job, ("status", "failed")))] == 1
    assert samples[("backupd_job_last_run_success", job)] == 0
    assert samples[("backupd_job_last_run_failed", job)] == 1
    # A skipped run (another replica had the slot) is no news: the failure stands.
    skipped = JobResult(job="backup", database=served.settings.postgres_db)
    skipped.finish(Status.SKIPPED, "another backupd is already running")
    served.metrics.observe(skipped)
    samples = scrape(served)
    assert samples[("backupd_job_last_run_failed", job)] == 1
    assert samples[("backupd_job_last_run_success", job)] == 0
    assert samples[("backupd_job_last_backup_size_bytes", job)] == path.stat().st_size
    _, text = served.get("/metrics")
    assert served.settings.password not in text


def test_healthz_flips_to_503_when_the_newest_backup_is_too_old(served: Served) -> None:
    status, body = served.get("/healthz")
    assert status == 503 and "no verified backup" in body  # nothing yet
    assert served.backup().status == Status.SUCCESS
    status, body = served.get("/healthz")
    assert status == 200, body
    assert body.startswith("ok\n")
    served.settings.backup_max_age_hours = 1e-6  # the same backup, now "too old"
    status, body = served.get("/healthz")
    assert status == 503
    assert "is " in body and "more than BACKUP_MAX_AGE_HOURS" in body
    served.settings.backup_max_age_hours = 24
    served.state.alive = False
    status, body = served.get("/healthz")
    assert status == 503 and "scheduler is not running" in body
    assert served.get("/nope")[0] == 404


def test_drill_age_is_required_when_configured(served: Served) -> None:
    assert served.backup().status == Status.SUCCESS
    served.settings.drill_max_age_days = 7
    status, body = served.get("/healthz")
    assert status == 503 and "no successful restore drill" in body
    store = LocalStore(served.settings.backup_dir)
    (entry,) = store.list_backups(served.settings.postgres_db)
    manifest = entry.manifest
    assert manifest is not None
    manifest.drilled_at, manifest.drill_ok = datetime.now(UTC) - timedelta(days=8), True
    manifest.drill_restore_seconds = 4.5
    store.write_manifest(manifest)
    status, body = served.get("/healthz")
    assert status == 503 and "more than DRILL_MAX_AGE_DAYS" in body
    manifest.drilled_at = datetime.now(UTC) - timedelta(hours=1)
    store.write_manifest(manifest)
    assert served.get("/healthz")[0] == 200
    samples = scrape(served)
    db = (("database", served.settings.postgres_db),)
    assert samples[("backupd_drill_last_restore_seconds", db)] == 4.5
    assert samples[("backupd_drill_last_run_success", db)] == 1
    assert samples[("backupd_drill_max_age_seconds", ())] == 7 * 86400
    assert 3500 < samples[("backupd_drill_last_success_age_seconds", db)] < 3700
    # The drill fails when run again: the newest drill says so, and no good one is left.
    manifest.drilled_at, manifest.drill_ok = datetime.now(UTC), False
    manifest.drill_restore_seconds = None
    store.write_manifest(manifest)
    samples = scrape(served)
    assert samples[("backupd_drill_last_run_success", db)] == 0
    assert ("backupd_drill_last_restore_seconds", db) not in samples  # its only drill failed
    # A drill the daemon recorded counts too (its backup may have been pruned since).
    manifest.drilled_at = None
    store.write_manifest(manifest)
    drill = JobResult(job="drill", database=served.settings.postgres_db)
    drill.finish(Status.SUCCESS)
    served.state.last_results["drill"] = drill
    assert served.get("/healthz")[0] == 200


def test_port_in_use_is_a_config_error(settings_for: Callable[..., Settings]) -> None:
    settings = settings_for("postgres")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings.health_port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match="HEALTH_PORT"):
            start_http_server(settings, SchedulerStub(), host="127.0.0.1")


# --- BACKUP_MAX_AGE_HOURS from the schedule ------------------------------------------------


@pytest.mark.parametrize(("schedule", "zone", "gap_hours"), [
    ("0 2 * * *", "UTC", 24),
    ("*/15 * * * *", "UTC", 0.25),
    ("0 4 * * 0", "UTC", 7 * 24),        # cron's 0 = Sunday: weekly either way
    ("0 2 * * 1-5", "UTC", 72),           # the weekend gap, not the weekday one
    ("0 2 1 * *", "UTC", 31 * 24),
    ("0 2 * * *", "Europe/Berlin", 25),   # the night the clocks go back
])
def test_default_max_age_uses_the_longest_gap(schedule: str, zone: str, gap_hours: float) -> None:
    now = datetime(2025, 10, 20, 12, tzinfo=UTC)  # a week before Europe's autumn change
    assert longest_gap(schedule, zone, now) == timedelta(hours=gap_hours)
    settings = Settings(BACKUP_SCHEDULE=schedule, TZ=zone)  # type: ignore[call-arg]
    assert max_backup_age(settings, now) == timedelta(hours=gap_hours * 1.5 + 1)


def test_explicit_max_age_wins_and_bad_schedules_name_the_setting() -> None:
    settings = Settings(BACKUP_MAX_AGE_HOURS=6, BACKUP_SCHEDULE="nonsense")  # type: ignore[call-arg]
    assert max_backup_age(settings) == timedelta(hours=6)
    with pytest.raises(ConfigError, match="BACKUP_SCHEDULE"):
        max_backup_age(Settings(BACKUP_SCHEDULE="61 * * * *"))  # type: ignore[call-arg]


def test_unverified_backups_do_not_count(served: Served) -> None:
    assert served.backup().status == Status.SUCCESS
    store = LocalStore(served.settings.backup_dir)
    (entry,) = store.list_backups(served.settings.postgres_db)
    assert entry.manifest is not None
    entry.manifest.verified = False
    store.write_manifest(entry.manifest)
    report = evaluate(served.settings, store, scheduler_alive=True)
    assert not report.ok
    assert report.reasons == [f"no verified backup of database {served.settings.postgres_db!r} "
                              f"in {served.settings.backup_dir}"]


# --- `backupd health` ---------------------------------------------------------------------------


def test_backupd_health_command(
    make_db: Callable[..., str], backupd_env: Callable[..., dict[str, str]], backup_dir: Path
) -> None:
    env = backupd_env(make_db())

    # The daemon's state file: a fresh heartbeat passes, a stale one means the daemon is gone.
    def write_state(updated: datetime) -> None:
        (backup_dir / STATE_FILE).write_text(json.dumps(
            {"version": 1, "updated_at": updated.isoformat(), "last_results": {},
             "daemons": {}, "jobs": {}}))

    empty = run_backupd(["health"], env)
    assert empty.returncode == 1
    assert "no verified backup" in empty.stdout
    assert run_backupd(["backup"], env).returncode == 0
    write_state(datetime.now(UTC))
    healthy = run_backupd(["health", "--json"], env)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    report = json.loads(healthy.stdout)
    assert report["ok"] is True and report["facts"]["backup_max_age_hours"] == 37.0
    assert report["facts"]["daemon_state_age_seconds"] < 60
    too_old = run_backupd(["health"], {**env, "BACKUP_MAX_AGE_HOURS": "0.0001"})
    assert too_old.returncode == 1 and "more than BACKUP_MAX_AGE_HOURS" in too_old.stdout
    write_state(datetime.now(UTC) - timedelta(minutes=10))
    stale = run_backupd(["health"], env)
    assert stale.returncode == 1 and "has not updated its state" in stale.stdout


@pytest.mark.parametrize("flag", ["1", "true", "yes"])
def test_health_reads_the_seconds_field_setting_like_the_daemon(flag: str, tmp_path: Path) -> None:
    """SCHEDULE_SECONDS_FIELD is a boolean setting: every spelling the daemon accepts must let
    `backupd health` read the same 6-field schedule (no backup yet: unhealthy, exit 1; a
    misread setting would make it a configuration error, exit 2)."""
    env = {"POSTGRES_HOST": "127.0.0.1", "DB_BACKUP_DIR": str(tmp_path / "backups"),
           "HEALTH_PORT": "0", "SCHEDULE_SECONDS_FIELD": flag, "BACKUP_SCHEDULE": "*/5 * * * * *"}

    proc = run_backupd(["health"], env)

    assert proc.returncode == 1, proc.stderr
    assert "BACKUP_SCHEDULE" not in proc.stderr

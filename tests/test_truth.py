"""Output that tells the truth (issue 11 §2): what backupd says matches what it did.

A dry run says "would delete"; a restore names the database it wrote; a refused restore
never logs that it began; a connection failure names the setting to fix; a stderr tail
is labelled with the tool it came from.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from helpers.backups import (
    backup_files,
    manifest_path,
    redate,
    refresh_manifest,
    sql_of,
    take_backup,
    write_gzip_sql,
)
from helpers.cli import BackupdProcess, EnvFactory, run_backupd, stop_backupd
from helpers.cluster import PrivateCluster, free_port
from helpers.faults import wait_until
from helpers.http_receiver import HttpReceiver
from helpers.logs import jobs_finished, log_events
from helpers.pg import unique_db_name

from backupd.commands import prune as prune_cmd
from backupd.commands import restore as restore_cmd
from backupd.errors import JobFailed
from backupd.job import run_job
from backupd.notify.base import NotifierChain
from backupd.notify.metrics import BackupdMetrics, MetricsNotifier
from backupd.notify.slack import build_message
from backupd.outcomes import PruneOutcome
from backupd.postgres.connection import connect
from backupd.settings import load_settings


@pytest.fixture
def env(small_db: str, backupd_env: EnvFactory) -> dict[str, str]:
    return backupd_env(small_db)


def summary_line(output: str, job: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith(f"{job} ")]
    assert lines, output
    return lines[-1]


def _expired_copies(env: dict[str, str], *days: int) -> list[Path]:
    source = take_backup(env)
    now = datetime.now(UTC)
    return [redate(source, now - timedelta(days=d)) for d in days]


def _backups_and_manifests(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith((".gz", ".json"))
                  and not p.name.startswith("."))


# --- prune --dry-run ------------------------------------------------------------------------


def test_prune_dry_run_says_would_delete_everywhere_and_deletes_nothing(
    env: dict[str, str], backup_dir: Path, http_receiver: HttpReceiver
) -> None:
    old = _expired_copies(env, 10, 20)
    before = _backups_and_manifests(backup_dir)
    webhook = f"{http_receiver.url}/T0001/B0001/{secrets.token_hex(12)}"

    proc = run_backupd(["prune", "--dry-run"], {
        **env, "DB_BACKUP_RETENTION_DAYS": "7", "DB_BACKUP_KEEP_MIN": "1",
        "SLACK_WEBHOOK_URL": webhook})

    assert proc.returncode == 0, proc.stderr
    assert _backups_and_manifests(backup_dir) == before
    summary = summary_line(proc.stdout, "prune")
    assert "would_delete=2" in summary and "dry run" in summary, summary
    assert " deleted=" not in summary, summary
    log_lines = (backup_dir / "backup_log.txt").read_text().splitlines()
    logged = summary_line("\n".join(line.split("] ", 1)[-1] for line in log_lines), "prune")
    assert "would_delete=2" in logged and " deleted=" not in logged, logged
    for path in old:
        assert f"would delete {path.name}" in proc.stdout
    slack = str(http_receiver.requests[-1].json)
    assert "Would delete (dry run)" in slack and "Retention deleted" not in slack, slack
    status = run_backupd(["status"], env).stdout
    assert "last: success" in status and "(dry run, nothing deleted)" in status, status


def test_prune_dry_run_does_not_count_as_retention_deleted(
    env: dict[str, str], backup_dir: Path
) -> None:
    _expired_copies(env, 10, 20)
    settings = load_settings(**{**env, "DB_BACKUP_RETENTION_DAYS": "7",
                                "DB_BACKUP_KEEP_MIN": "1"})
    metrics = BackupdMetrics(settings)

    result = run_job("prune", settings, lambda ctx: prune_cmd.run(ctx, dry_run=True),
                     NotifierChain([MetricsNotifier(metrics)]))

    assert result.ok, result.summary()
    assert isinstance(result.outcome, PruneOutcome) and result.outcome.dry_run
    assert result.deleted == [] and len(result.outcome.would_delete) == 2
    rendered = metrics.render().decode()
    assert (f'backupd_job_last_retention_deleted{{database="{settings.postgres_db}",job="prune"}} '
            "0.0") in rendered, rendered
    assert len(backup_files(backup_dir)) == 3


# --- restores and drills name the database they wrote ------------------------------------------


def test_restore_summary_names_the_target_database(
    env: dict[str, str], backup_dir: Path, target_db: str
) -> None:
    backup = take_backup(env)
    target = target_db  # dropped after the test (each run left one behind)

    proc = run_backupd(["restore", backup.name, "--yes", "--target-db", target], env)

    assert proc.returncode == 0, proc.stderr
    summary = summary_line(proc.stdout, "restore")
    assert f"target={target!r}" in summary, summary
    assert f"source={env['POSTGRES_DB']!r}" in summary, summary
    log = (backup_dir / "restore_log.txt").read_text()
    assert f"target={target!r}" in log


def test_slack_names_the_restore_target(env: dict[str, str], target_db: str) -> None:
    backup = take_backup(env)
    target = target_db
    settings = load_settings(**env)

    result = run_job("restore", settings, lambda ctx: restore_cmd.run(
        ctx, backup.name, target_db=target), NotifierChain([]))

    assert result.ok, result.summary()
    header = build_message(result)["blocks"][0]["text"]["text"]
    assert target in header, header


def test_drill_summary_names_the_scratch_database(
    env: dict[str, str], backup_dir: Path
) -> None:
    take_backup(env)

    proc = run_backupd(["drill"], env)

    assert proc.returncode == 0, proc.stderr
    summary = summary_line(proc.stdout, "drill")
    assert f"target={env['POSTGRES_DB'] + '_drill'!r}" in summary, summary


# --- a refused restore never says it began --------------------------------------------------------


def test_refused_restore_logs_no_restoring_into(env: dict[str, str], backup_dir: Path) -> None:
    backup = take_backup(env)  # POSTGRES_DB itself holds tables: the restore is refused

    proc = run_backupd(["restore", backup.name, "--yes"], env)

    assert proc.returncode == 2, proc.stderr
    log = (backup_dir / "restore_log.txt").read_text()
    assert "restoring into" not in log, log
    assert "restoring into" not in proc.stderr


def test_unconfirmed_restore_logs_no_restoring_into(
    env: dict[str, str], backup_dir: Path
) -> None:
    backup = take_backup(env)
    settings = load_settings(**env)
    asked: list[str] = []

    def refuse(target: str) -> bool:
        asked.append(target)
        return False

    result = run_job("restore", settings, lambda ctx: restore_cmd.run(
        ctx, backup.name, target_db=unique_db_name("unconfirmed"), confirm=refuse),
        NotifierChain([]))

    assert result.exit_code == 2 and asked
    log = (backup_dir / "restore_log.txt").read_text()
    assert "restoring into" not in log, log


# --- a failing restore labels its stderr with the tool that wrote it -----------------------------


def test_restore_log_labels_psql_stderr(env: dict[str, str], backup_dir: Path) -> None:
    backup = take_backup(env)
    sql = sql_of(backup)
    copy_end = sql.index(b"\n\\.\n") + len(b"\n\\.\n")
    write_gzip_sql(backup, sql[:copy_end] + b"\nSELECT * FROM no_such_table_truth;\n"
                   + sql[copy_end:])
    refresh_manifest(backup)
    assert manifest_path(backup).exists()

    proc = run_backupd(["restore", backup.name, "--yes", "--target-db",
                        unique_db_name("broken")], env)

    assert proc.returncode == 1, proc.stderr
    log = (backup_dir / "restore_log.txt").read_text()
    assert "psql stderr (tail)" in log and "no_such_table_truth" in log, log
    assert "pg_dump stderr" not in log, log


# --- connection failures name the setting to fix -------------------------------------------------


def _connect_error(env: dict[str, str], **overrides: str) -> str:
    settings = load_settings(**{**env, "POSTGRES_CONNECT_TIMEOUT": "5", **overrides})
    with pytest.raises(JobFailed) as failure:
        connect(settings).close()
    return str(failure.value)


def test_unknown_host_names_postgres_host(env: dict[str, str]) -> None:
    message = _connect_error(env, POSTGRES_HOST="no-such-host.invalid")
    assert "POSTGRES_HOST" in message and "POSTGRES_PORT" not in message, message


def test_refused_connection_names_host_and_port(env: dict[str, str]) -> None:
    message = _connect_error(env, POSTGRES_HOST="127.0.0.1", POSTGRES_PORT=str(free_port()))
    assert "POSTGRES_HOST" in message and "POSTGRES_PORT" in message, message


def test_missing_database_names_postgres_db(env: dict[str, str]) -> None:
    message = _connect_error(env, POSTGRES_DB=unique_db_name("missing"))
    assert "POSTGRES_DB" in message, message
    assert "POSTGRES_HOST" not in message, message


def test_wrong_password_names_the_password_settings(
    private_cluster: Callable[..., PrivateCluster], env: dict[str, str]
) -> None:
    cluster = private_cluster()
    address = cluster.address
    message = _connect_error(env, POSTGRES_HOST=address.host, POSTGRES_PORT=str(address.port),
                             POSTGRES_USER=address.user, POSTGRES_DB="postgres",
                             POSTGRES_PASSWORD="certainly-not-the-password")
    assert "POSTGRES_PASSWORD" in message and "POSTGRES_PASSWORD_FILE" in message, message
    assert "certainly-not-the-password" not in message


# --- status shows one-off runs, and retention as it really runs -----------------------------------


def test_status_shows_one_off_backup_and_drill_and_retention_after_every_backup(
    env: dict[str, str],
) -> None:
    assert run_backupd(["backup"], env).returncode == 0  # retention runs after it
    assert run_backupd(["drill"], env).returncode == 0

    text = run_backupd(["status"], env)
    data = json.loads(run_backupd(["status", "--json"], env).stdout)

    assert text.returncode == 0, text.stderr
    jobs = {job["job"]: job for job in data["jobs"]}
    assert jobs["backup"]["last_result"]["status"] == "success"
    assert jobs["drill"]["last_result"]["status"] == "success"
    assert jobs["prune"]["runs"] == "after every backup"
    assert jobs["prune"]["with_backup"]["status"] == "success"
    lines = text.stdout.splitlines()
    backup_at = next(i for i, line in enumerate(lines) if line.startswith("  backup "))
    drill_at = next(i for i, line in enumerate(lines) if line.startswith("  drill "))
    assert lines[backup_at + 1].strip().startswith("last: success"), text.stdout
    assert lines[drill_at + 1].strip().startswith("last: success"), text.stdout
    assert "never ran" not in "\n".join(lines[backup_at:backup_at + 2])
    assert "  prune   after every backup (RETENTION_SCHEDULE not set)" in lines, text.stdout
    assert "prune   off" not in text.stdout


def test_bad_input_is_not_recorded_as_a_run(env: dict[str, str]) -> None:
    take_backup(env)
    assert run_backupd(["verify", "no-such-backup.sql.gz"], env).returncode == 2

    data = json.loads(run_backupd(["status", "--json"], env).stdout)

    verify = next(job for job in data["jobs"] if job["job"] == "verify")
    assert verify["last_result"] is None


# --- piping a one-off command: the summary line, JSON one flag away ---------------------------


def test_a_piped_one_off_command_prints_its_summary_not_json(env: dict[str, str]) -> None:
    auto = {key: value for key, value in env.items() if key != "BACKUPD_LOG_FORMAT"}

    proc = run_backupd(["backup", "--no-prune"], auto)  # stdout and stderr are pipes

    assert proc.returncode == 0, proc.stderr
    assert [line for line in proc.stdout.splitlines() if line] == [
        summary_line(proc.stdout, "backup")]
    assert log_events(proc.stderr) == [], proc.stderr
    assert "job finished" not in proc.stderr
    assert "Starting backup of database" in proc.stderr  # progress, readable


def test_json_logs_are_one_flag_away(env: dict[str, str]) -> None:
    auto = {key: value for key, value in env.items() if key != "BACKUPD_LOG_FORMAT"}

    proc = run_backupd(["--log-format", "json", "backup", "--no-prune"], auto)

    assert proc.returncode == 0, proc.stderr
    [finished] = jobs_finished(proc.stderr, job="backup")
    assert finished["status"] == "success" and finished["outcome"]["kind"] == "backup"


def test_the_daemon_off_a_terminal_still_logs_json(
    env: dict[str, str], backupd_daemon: Callable[..., BackupdProcess]
) -> None:
    auto = {key: value for key, value in env.items() if key != "BACKUPD_LOG_FORMAT"}
    daemon = backupd_daemon(["run"], {**auto, "BACKUP_ON_START": "false"})

    wait_until(lambda: any(e.get("event") == "backupd daemon started"
                           for e in log_events(daemon.read_stderr())), 30,
               "the daemon to start")
    assert stop_backupd(daemon, timeout=15) == 0


def test_a_drill_in_a_fresh_directory_starts_no_state_file(
    env: dict[str, str], backup_dir: Path, tmp_path: Path
) -> None:
    take_backup(env)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    for name in backup_files(backup_dir):
        (fresh / name).write_bytes((backup_dir / name).read_bytes())
        (fresh / f"{name}.manifest.json").write_bytes(
            (backup_dir / f"{name}.manifest.json").read_bytes())

    assert run_backupd(["drill"], {**env, "DB_BACKUP_DIR": str(fresh)}).returncode == 0

    assert not [p.name for p in fresh.iterdir() if p.name.startswith(".backupd-state")]

"""``backupd drill``: the latest backup really restores, and matches the live database.

Every test runs the real CLI against the real PostgreSQL and checks, besides the verdict,
that the scratch database is gone afterwards.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.backups import (
    manifest_path,
    read_manifest,
    refresh_manifest,
    sql_of,
    take_backup,
    write_gzip_sql,
    write_manifest,
)
from helpers.cli import EnvFactory, run_backupd, start_backupd
from helpers.logs import jobs_finished
from helpers.offsite import remote_manifest, s3_env
from helpers.pg import (
    FixtureTemplate,
    ServerAddress,
    create_database,
    database_exists,
    drop_database,
    psql,
    unique_db_name,
)
from helpers.s3server import S3Server
from helpers.slow_restore import kill_once_paused, pausing_psql

from backupd.commands import backup as backup_cmd
from backupd.commands import drill as drill_cmd
from backupd.job import run_job
from backupd.notify.base import NotifierChain
from backupd.notify.slack import build_message
from backupd.outcomes import DrillOutcome
from backupd.result import JobResult
from backupd.settings import load_settings


@pytest.fixture
def env(fixture_db: str, backupd_env: EnvFactory) -> dict[str, str]:
    return backupd_env(fixture_db)


@pytest.fixture
def clone_db(pg_server: ServerAddress, fixture_template: FixtureTemplate) -> Iterator[str]:
    """A second copy of the fixture, to take "wrong" backups from."""
    name = unique_db_name("drillsrc")
    create_database(pg_server, name, template=fixture_template.name)
    yield name
    drop_database(pg_server, name)


def scratch_of(env: dict[str, str]) -> str:
    return env.get("DRILL_DATABASE") or f"{env['POSTGRES_DB']}_drill"


def drill(env: dict[str, str], *args: str) -> tuple[int, dict[str, Any], str]:
    """Run ``backupd drill``; (exit code, the job result as logged, stdout + stderr)."""
    proc = run_backupd(["drill", *args], env)
    output = proc.stdout + proc.stderr
    results = jobs_finished(proc.stderr)
    return proc.returncode, results[-1] if results else {}, output


def _run_here(job: str, env: dict[str, str], body: Callable[..., None]) -> JobResult:
    # In-process (the same run_job the CLI uses) where the CLI's output is not the point:
    # a drill in a subprocess costs seconds of interpreter start-up on a busy machine.
    return run_job(job, load_settings(**env), body, NotifierChain([]))


def drill_here(env: dict[str, str], name: str | None = None) -> tuple[int, dict[str, Any]]:
    result = _run_here("drill", env, lambda ctx: drill_cmd.run(ctx, name))
    return result.exit_code, result.to_dict()


def backup_here(env: dict[str, str]) -> Path:
    result = _run_here("backup", env, lambda ctx: backup_cmd.run(ctx, apply_retention=False))
    assert result.ok and result.backup_name, result.summary()
    return Path(env["DB_BACKUP_DIR"]) / result.backup_name


def adopt(source: Path, live_db: str, directory: Path) -> Path:
    """Copy a backup of another database into ``directory`` under ``live_db``'s name, its
    manifest rewritten to match: a backup of the wrong database that looks like ours."""
    stamp = re.search(r"_(\d{8}_\d{6})(\..+)$", source.name)
    assert stamp is not None
    target = directory / f"{live_db}_{stamp.group(1)}{stamp.group(2)}"
    directory.mkdir(parents=True, exist_ok=True)
    target.write_bytes(source.read_bytes())
    manifest = read_manifest(source)
    manifest.update(name=target.name, database=live_db)
    write_manifest(target, manifest)
    return target


def backup_of(db: str, backupd_env: EnvFactory, tmp_path: Path) -> Path:
    return backup_here(backupd_env(db, DB_BACKUP_DIR=str(tmp_path / f"other-{db}")))


def test_good_backup_drills_clean_and_records_the_restore_time(
        env: dict[str, str], pg_server: ServerAddress) -> None:
    backup = take_backup(env)
    assert read_manifest(backup)["table_rows"]["public.certificates"] > 0

    code, result, output = drill(env)

    assert code == 0, output
    details = result["outcome"]  # the drill's typed outcome, as logged
    assert details["differences"] == [] and details["drift"] == []
    assert details["restore_seconds"] > 0
    assert details["comparison_summary"].startswith("matches the live database (4 tables")
    assert "restore time:" in output and "comparison: matches" in output
    # Beside the live database the roles exist already: the drill says it proved nothing of them.
    assert "roles not proven: drilled beside the live database" in details["comparison_summary"]
    assert "roles=not-proven" in output
    manifest = read_manifest(backup)
    assert manifest["drill_ok"] is True and manifest["drilled_at"]
    assert manifest["drill_restore_seconds"] == details["restore_seconds"]
    assert not database_exists(pg_server, scratch_of(env))


def test_rows_written_after_the_backup_are_drift_not_failure(
        env: dict[str, str], pg_server: ServerAddress, fixture_template: FixtureTemplate) -> None:
    backup = backup_here(env)
    psql(pg_server, env["POSTGRES_DB"], """
        INSERT INTO issuers (name, country, public_key)
        SELECT 'late issuer ' || i, 'NL', '\\x00' FROM generate_series(1, 5) i;
        DELETE FROM verification_events WHERE id <= 10;""")

    job = _run_here("drill", env, lambda ctx: drill_cmd.run(ctx, backup.name))

    assert job.exit_code == 0, job.summary()
    details = job.outcome
    assert isinstance(details, DrillOutcome)
    assert details.differences == []
    drift = "\n".join(details.drift)
    assert "table public.issuers:" in drift and "(+5 since the backup)" in drift
    assert "table public.verification_events:" in drift and "(-10 since the backup)" in drift
    assert details.drift_rows == -5
    assert "drift since the backup: 2 change(s)" in (details.comparison_summary or "")
    # Slack shows the restore time and the comparison.
    slack = json.dumps(build_message(job))
    assert "*Restore time*" in slack and "drift since the backup: 2 change(s)" in slack
    assert read_manifest(backup)["drill_ok"] is True
    assert not database_exists(pg_server, scratch_of(env))


def test_backup_of_a_different_database_fails(
        env: dict[str, str], pg_server: ServerAddress, make_db: Callable[..., str],
        backupd_env: EnvFactory, tmp_path: Path) -> None:
    other = make_db()
    psql(pg_server, other, "CREATE TABLE invoices (id int PRIMARY KEY); "
                           "INSERT INTO invoices SELECT generate_series(1, 50);")
    wrong = adopt(backup_of(other, backupd_env, tmp_path), env["POSTGRES_DB"],
                  Path(env["DB_BACKUP_DIR"]))

    code, result = drill_here(env)

    assert code == 1, result
    differences = result["outcome"]["differences"]
    assert differences[0] == ("the backup holds none of the live database's 4 tables "
                              "(a backup of a different or an empty database?)")
    assert "table public.certificates is missing from the backup" in differences
    assert "view public.valid_certificates is missing from the backup" in differences
    assert any("public.invoices is in the backup but no longer" in d
               for d in result["outcome"]["drift"])
    assert "restore drill of" in result["error"] and "holds none" in result["error"]
    assert read_manifest(wrong)["drill_ok"] is False
    assert not database_exists(pg_server, scratch_of(env))


def test_empty_backup_fails(
        env: dict[str, str], pg_server: ServerAddress, make_db: Callable[..., str],
        backupd_env: EnvFactory, tmp_path: Path) -> None:
    adopt(backup_of(make_db(), backupd_env, tmp_path), env["POSTGRES_DB"],
          Path(env["DB_BACKUP_DIR"]))

    code, result = drill_here(env)

    assert code == 1, result
    differences = result["outcome"]["differences"]
    assert differences[0].startswith("the backup holds none of the live database's 4 tables")
    assert "function public.mark_revoked() is missing from the backup" in differences
    assert not database_exists(pg_server, scratch_of(env))


def test_backup_missing_a_table_fails_naming_it(
        env: dict[str, str], pg_server: ServerAddress, clone_db: str,
        backupd_env: EnvFactory, tmp_path: Path) -> None:
    psql(pg_server, clone_db, "DROP TABLE revocations CASCADE")
    adopt(backup_of(clone_db, backupd_env, tmp_path), env["POSTGRES_DB"],
          Path(env["DB_BACKUP_DIR"]))

    code, result = drill_here(env)

    assert code == 1, result
    differences = result["outcome"]["differences"]
    assert differences[0] == "table public.revocations is missing from the backup"
    assert "index public.revocations_pkey is missing from the backup" in differences
    assert not any("holds none" in d for d in differences)
    assert "table public.revocations is missing from the backup" in result["error"]
    assert not database_exists(pg_server, scratch_of(env))


def test_table_with_rows_at_backup_time_but_empty_in_the_backup_fails(
        env: dict[str, str], pg_server: ServerAddress) -> None:
    backup = backup_here(env)
    rows_then = read_manifest(backup)["table_rows"]["public.verification_events"]
    # Remove the table's data from the dump (as --exclude-table-data would), keeping the
    # file one that the manifest vouches for: only the drill can notice.
    text = sql_of(backup)
    text, count = re.subn(rb"(COPY public\.verification_events [^\n]*\n).*?(\n\\\.\n)",
                          rb"\1\\.\n", text, flags=re.S)
    assert count == 1
    write_gzip_sql(backup, text)
    refresh_manifest(backup, raw_bytes=len(text))

    code, result = drill_here(env)

    assert code == 1, result
    assert result["outcome"]["differences"] == [
        f"table public.verification_events is empty in the backup but had {rows_then} rows "
        "when the backup was taken"]
    assert not database_exists(pg_server, scratch_of(env))

    # A manifest from before row counts existed cannot tell loss from drift: a warning.
    refresh_manifest(backup, table_rows=None)
    code, result = drill_here(env)
    assert code == 0, result
    assert any("cannot tell whether" in w for w in result["warnings"])


def test_backup_that_does_not_restore_fails_and_drops_the_scratch_database(
        env: dict[str, str], pg_server: ServerAddress) -> None:
    backup = backup_here(env)
    text = sql_of(backup).replace(b"\nCREATE VIEW", b"\nSELECT 1/0;\nCREATE VIEW", 1)
    write_gzip_sql(backup, text)
    refresh_manifest(backup, raw_bytes=len(text))

    code, result = drill_here(env)

    assert code == 1, result
    assert "does not restore" in result["outcome"]["differences"][0]
    assert "division by zero" in result["error"]
    manifest = read_manifest(backup)
    assert manifest["drill_ok"] is False and manifest["drill_restore_seconds"] is None
    assert not database_exists(pg_server, scratch_of(env))


def test_scratch_name_that_could_be_real_data_is_refused(
        env: dict[str, str], pg_server: ServerAddress, make_db: Callable[..., str]) -> None:
    backup_here(env)
    live = env["POSTGRES_DB"]

    code, _, output = drill({**env, "DRILL_DATABASE": live})
    assert code == 2
    assert output.strip().splitlines()[-1].startswith(
        f"backupd: error: DRILL_DATABASE: '{live}' is POSTGRES_DB, the live database")
    assert psql(pg_server, live, "SELECT count(*) > 0 FROM certificates").strip() == "t"

    # A database of that name that backupd did not create is never dropped.
    precious = make_db(unique_db_name("precious"))
    psql(pg_server, precious, "CREATE TABLE keep (x int); INSERT INTO keep VALUES (1);")
    code, _, output = drill({**env, "DRILL_DATABASE": precious})
    assert code == 2
    assert "was not created by a backupd drill, so backupd will not drop it" in output
    assert psql(pg_server, precious, "SELECT count(*) FROM keep").strip() == "1"


def test_drill_is_skipped_with_a_reason_when_the_server_lacks_room(
        env: dict[str, str], pg_server: ServerAddress) -> None:
    backup = backup_here(env)

    code, result = drill_here({**env, "DRILL_MAX_DB_BYTES": "1000"})
    assert code == 1 and result["status"] == "skipped"
    assert "more than DRILL_MAX_DB_BYTES (1000 B)" in result["error"]

    code, result = drill_here({**env, "DRILL_MIN_FREE_PERCENT": "100"})
    assert code == 1 and result["status"] == "skipped"
    assert "DRILL_MIN_FREE_PERCENT asks for 100%" in result["error"]

    assert read_manifest(backup)["drilled_at"] is None
    assert not database_exists(pg_server, scratch_of(env))


def test_drill_killed_mid_restore_then_restarted(
        env: dict[str, str], pg_server: ServerAddress, tmp_path: Path) -> None:
    backup = backup_here(env)
    scratch = scratch_of(env)
    shim_pid = tmp_path / "psql.pid"
    shim_dir = pausing_psql(tmp_path / "shim", shim_pid)
    slow_env = {**env, "PATH": f"{shim_dir}{os.pathsep}{os.environ['PATH']}"}
    proc = start_backupd(["drill"], slow_env, log_dir=tmp_path / "killed")
    # The restore transaction open in the scratch database, tables created.
    kill_once_paused(proc, pg_server, scratch, shim_pid)
    assert database_exists(pg_server, scratch), "the killed drill should leave its scratch db"
    assert read_manifest(backup)["drilled_at"] is None

    code, result, output = drill(env)

    assert code == 0, output
    assert any(f"dropped the scratch database '{scratch}' that an interrupted drill left"
               in w for w in result["warnings"])
    assert result["outcome"]["differences"] == []
    assert read_manifest(backup)["drill_ok"] is True
    assert not database_exists(pg_server, scratch)
    assert manifest_path(backup).exists()


def test_drill_from_s3_records_the_outcome_in_the_s3_manifest(
        pg_server: ServerAddress, fixture_db: str, backupd_env: EnvFactory, tmp_path: Path,
        s3_server: S3Server, s3_bucket: str) -> None:
    uploaded = take_backup(backupd_env(fixture_db, **s3_env(s3_server, s3_bucket)))
    # A machine with nothing local: the drill proves the offsite copy.
    fresh = tmp_path / "fresh"
    env = backupd_env(fixture_db, DB_BACKUP_DIR=str(fresh), **s3_env(s3_server, s3_bucket))

    code, result, output = drill(env, "--from-s3")

    assert code == 0, output
    assert result["backup_name"] == uploaded.name
    assert result["outcome"]["differences"] == []
    manifest = remote_manifest(s3_server, s3_bucket, uploaded.name)
    assert manifest["drill_ok"] is True
    assert manifest["drill_restore_seconds"] == result["outcome"]["restore_seconds"]
    assert not [p.name for p in fresh.iterdir() if not p.name.endswith("_log.txt")]
    assert not database_exists(pg_server, scratch_of(env))

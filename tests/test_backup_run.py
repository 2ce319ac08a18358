"""One backup run of several databases plus the cluster's globals (issue 14)."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from helpers.age import make_age_keys
from helpers.backups import backup_files, flip_byte, read_manifest, seed_small_db
from helpers.cli import EnvFactory, run_backupd, server_env
from helpers.cluster import PrivateCluster
from helpers.http_receiver import HttpReceiver
from helpers.logs import jobs_finished
from helpers.offsite import object_keys, s3_env
from helpers.pg import (
    ServerAddress,
    connect,
    database_exists,
    drop_database,
    psql,
    unique_db_name,
)
from helpers.s3server import S3Server

from backupd.commands.cluster_restore import restore_globals
from backupd.commands.jobs import scheduled_jobs
from backupd.daemon.health import evaluate
from backupd.daemon.scheduler import Daemon
from backupd.daemon.state import DaemonState
from backupd.job import JobContext
from backupd.naming import parse_backup_name
from backupd.notify.base import NotifierChain
from backupd.notify.metrics import BackupdMetrics
from backupd.result import JobResult, Status
from backupd.settings import load_settings
from backupd.storage.local import LocalStore


def _globals_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".globals.sql.gz" in p.name
                  and not p.name.endswith(".manifest.json"))


def _dumps(directory: Path) -> list[str]:
    return [n for n in backup_files(directory) if ".globals." not in n]


def test_two_databases_one_run_two_files_one_globals_one_run_id(
        pg_server: ServerAddress, make_db: Callable[..., str], backupd_env: EnvFactory,
        backup_dir: Path) -> None:
    first, second = make_db(), make_db()
    for db in (first, second):
        seed_small_db(pg_server, db)
    proc = run_backupd(["backup", "--no-prune"], backupd_env(f"{first}, {second}"))
    assert proc.returncode == 0, proc.stderr
    dumps = _dumps(backup_dir)
    assert sorted(p.database for p in map(parse_backup_name, dumps) if p) == sorted(
        [first, second])
    (globals_file,) = _globals_files(backup_dir)
    run_ids = {read_manifest(backup_dir / name)["run_id"] for name in [*dumps, globals_file]}
    assert len(run_ids) == 1 and None not in run_ids, run_ids
    assert globals_file == f"globals_{run_ids.pop()}.globals.sql.gz"
    manifest = read_manifest(backup_dir / globals_file)
    assert manifest["kind"] == "globals" and manifest["verified"] is True
    sql = gzip.decompress((backup_dir / globals_file).read_bytes())
    assert b"CREATE ROLE" in sql or b"ALTER ROLE" in sql
    # One result per database reached the notifiers, then the run's summary.
    finished = jobs_finished(proc.stderr)
    assert [r.get("database") for r in finished][:2] == [first, second], finished
    assert f"databases={first}:success,{second}:success" in proc.stdout
    assert "globals=ok" in proc.stdout


def test_a_failing_database_does_not_stop_the_others_and_the_run_names_it(
        pg_server: ServerAddress, make_db: Callable[..., str], backupd_env: EnvFactory,
        backup_dir: Path) -> None:
    good = make_db()
    seed_small_db(pg_server, good)
    absent = unique_db_name("absent")
    proc = run_backupd(["backup", "--no-prune"], backupd_env(f"{absent},{good}"))
    assert proc.returncode == 1, proc.stderr
    [dump] = _dumps(backup_dir)
    parsed = parse_backup_name(dump)
    assert parsed is not None and parsed.database == good
    assert read_manifest(backup_dir / dump)["verified"] is True
    assert len(_globals_files(backup_dir)) == 1
    assert f"1 of 2 databases failed: {absent!r}" in proc.stderr
    assert f"{absent!r} (listed in POSTGRES_DB) does not exist" in (
        backup_dir / "backup_log.txt").read_text()


def test_a_database_whose_dump_fails_does_not_stop_the_next(
        pg_server: ServerAddress, make_db: Callable[..., str], backupd_env: EnvFactory,
        backup_dir: Path) -> None:
    broken, good = make_db(), make_db()
    seed_small_db(pg_server, good)
    with connect(pg_server, broken) as conn:
        conn.execute("REVOKE CONNECT ON DATABASE " + f'"{broken}"' + " FROM PUBLIC")
    # Connections are refused for everyone but superusers: a login that is not one fails.
    with connect(pg_server) as conn:
        conn.execute(f'ALTER DATABASE "{broken}" ALLOW_CONNECTIONS false')
    try:
        proc = run_backupd(["backup", "--no-prune"], backupd_env(f"{broken},{good}"))
    finally:
        with connect(pg_server) as conn:
            conn.execute(f'ALTER DATABASE "{broken}" ALLOW_CONNECTIONS true')
    assert proc.returncode == 1, proc.stderr
    [dump] = _dumps(backup_dir)
    assert dump.startswith(good)
    assert f"1 of 2 databases failed: {broken!r}" in proc.stderr


def test_globals_verify_and_a_damaged_one_fails_verify(
        pg_server: ServerAddress, make_db: Callable[..., str], backupd_env: EnvFactory,
        backup_dir: Path) -> None:
    db = make_db()
    env = backupd_env(db, DB_BACKUP_GLOBALS="on")
    proc = run_backupd(["backup", "--no-prune"], env)
    assert proc.returncode == 0, proc.stderr
    (name,) = _globals_files(backup_dir)
    verified = run_backupd(["verify", name], env)
    assert verified.returncode == 0, verified.stderr + verified.stdout
    flip_byte(backup_dir / name)
    damaged = run_backupd(["verify", name], env)
    assert damaged.returncode == 1, damaged.stdout
    assert name in damaged.stdout + damaged.stderr


def test_verify_rejects_a_pg_dump_file_posing_as_globals(tmp_path: Path) -> None:
    from backupd.pipeline.verification import verify_file

    name = "globals_20261201_000000.globals.sql.gz"
    path = tmp_path / name
    path.write_bytes(gzip.compress(b"--\n-- PostgreSQL database dump\n--\n\n"
                                   b"--\n-- PostgreSQL database dump complete\n--\n"))
    parsed = parse_backup_name(name)
    assert parsed is not None
    report = verify_file(path, parsed, None)
    assert not report.ok
    assert "pg_dumpall" in (report.problem or "")


def test_globals_reach_s3_and_are_pruned_by_retention(
        pg_server: ServerAddress, make_db: Callable[..., str], backupd_env: EnvFactory,
        backup_dir: Path, s3_server: S3Server, s3_bucket: str) -> None:
    first, second = make_db(), make_db()
    env = backupd_env(f"{first},{second}", **s3_env(s3_server, s3_bucket),
                      DB_BACKUP_RETENTION_DAYS="0", DB_BACKUP_KEEP_MIN="1")
    proc = run_backupd(["backup"], env)
    assert proc.returncode == 0, proc.stderr
    (old,) = _globals_files(backup_dir)
    keys = object_keys(s3_server, s3_bucket)
    assert old in keys and old + ".manifest.json" in keys
    proc = run_backupd(["backup"], env)
    assert proc.returncode == 0, proc.stderr
    (new,) = _globals_files(backup_dir)
    assert new != old  # the older globals went, the newest verified one stays (KEEP_MIN=1)
    keys = object_keys(s3_server, s3_bucket)
    assert new in keys and old not in keys
    assert len(_dumps(backup_dir)) == 2  # one per database, per KEEP_MIN


def test_a_role_that_is_not_a_superuser_warns_once_and_takes_what_it_can(
        private_cluster: Callable[..., PrivateCluster], tmp_path: Path) -> None:
    cluster = private_cluster()
    with connect(cluster.address) as conn:
        conn.execute("CREATE ROLE app LOGIN PASSWORD 'app-secret'")
        conn.execute("CREATE ROLE reader NOLOGIN IN ROLE app")
        conn.execute("ALTER ROLE app SET work_mem = '8MB'")
        conn.execute("CREATE ROLE backup LOGIN PASSWORD 'bk' IN ROLE pg_read_all_data")
        conn.execute("CREATE DATABASE one OWNER app")
        conn.execute("CREATE DATABASE two OWNER app")
    backup_dir = tmp_path / "backups"
    user = ServerAddress(cluster.address.host, cluster.port, "backup", "bk")
    env = server_env(user, "one,two", backup_dir, HEALTH_PORT="0")
    proc = run_backupd(["backup", "--no-prune"], env)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in (backup_dir / "backup_log.txt").read_text().splitlines()
                if "without the roles' password hashes" in line]
    assert len(warnings) == 1, warnings
    (name,) = _globals_files(backup_dir)
    assert read_manifest(backup_dir / name)["role_passwords"] is False
    sql = gzip.decompress((backup_dir / name).read_bytes()).decode()
    assert "CREATE ROLE app" in sql and "work_mem" in sql and "GRANT app TO reader" in sql
    assert "SCRAM-SHA-256" not in sql and "app-secret" not in sql
    assert "globals=ok(no-role-passwords)" in proc.stdout


@pytest.mark.parametrize(("value", "words"), [
    ("app,,billing", "empty"), ("app,billing,app", "twice")])
def test_bad_lists_are_exit_2_before_anything(
        backupd_env: EnvFactory, backup_dir: Path, value: str, words: str) -> None:
    proc = run_backupd(["backup"], backupd_env(value))
    assert proc.returncode == 2, proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if not ln.startswith("{")]
    assert "POSTGRES_DB" in line and words in line, line
    assert not backup_dir.exists()


def test_health_and_metrics_per_database(
        pg_server: ServerAddress, make_db: Callable[..., str], backupd_env: EnvFactory,
        backup_dir: Path) -> None:
    first, second = make_db(), make_db()
    proc = run_backupd(["backup", "--no-prune"], backupd_env(f"{first},{second}"))
    assert proc.returncode == 0, proc.stderr
    store = LocalStore(backup_dir)

    settings = load_settings(POSTGRES_DB=f"{first},{second}", DB_BACKUP_DIR=str(backup_dir))
    report = evaluate(settings, store, None)
    assert report.ok, report.reasons
    assert report.facts.databases is not None
    assert [d.database for d in report.facts.databases] == [first, second, "globals"]
    assert all(d.newest_verified_backup for d in report.facts.databases)

    never = unique_db_name("never")
    report = evaluate(load_settings(POSTGRES_DB=f"{first},{never}",
                                    DB_BACKUP_DIR=str(backup_dir)), store, None)
    assert not report.ok
    assert report.reasons == [f"no verified backup of {never!r} in {backup_dir}"]

    metrics = BackupdMetrics(settings)
    failed = JobResult(job="backup", database=second)
    failed.finish(Status.FAILED, "pg_dump failed")
    metrics.observe(failed)
    text = metrics.render().decode()
    assert f'backupd_database_last_backup_success{{database="{second}"}} 0.0' in text
    assert f'backupd_database_local_backups{{database="{first}"}} 1.0' in text
    assert "backupd_globals_newest_verified_backup_age_seconds" in text


def test_slack_hears_each_database_and_the_run(
        pg_server: ServerAddress, make_db: Callable[..., str], backupd_env: EnvFactory,
        http_receiver: HttpReceiver) -> None:
    good = make_db()
    absent = unique_db_name("absent")
    env = backupd_env(f"{good},{absent}",
                      SLACK_WEBHOOK_URL=f"{http_receiver.url}/T0001/B0001/x0x0x0x0")
    proc = run_backupd(["backup", "--no-prune"], env)
    assert proc.returncode == 1, proc.stderr
    texts = [json.dumps(r.json) for r in http_receiver.wait_for(3)]
    assert len(texts) == 3, texts  # one per database, then the run's summary
    assert good in texts[0] and absent in texts[1] and "does not exist" in texts[1]
    assert "1 of 2 databases failed" in texts[2] and absent in texts[2], texts[2]


def test_scheduled_prune_verify_and_list_work_per_database(
        pg_server: ServerAddress, make_db: Callable[..., str], backupd_env: EnvFactory,
        backup_dir: Path) -> None:
    first, second = make_db(), make_db()
    env = backupd_env(f"{first},{second}", DB_BACKUP_RETENTION_DAYS="0",
                      DB_BACKUP_KEEP_MIN="1")
    for _ in range(2):
        proc = run_backupd(["backup", "--no-prune"], env)
        assert proc.returncode == 0, proc.stderr
    assert len(_dumps(backup_dir)) == 4 and len(_globals_files(backup_dir)) == 2
    listed = run_backupd(["list", "--json"], env)
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)) == 6
    pruned = run_backupd(["prune"], env)
    assert pruned.returncode == 0, pruned.stderr
    # DB_BACKUP_KEEP_MIN is per database: the newest of each, and the newest globals.
    remaining = [p for p in map(parse_backup_name, backup_files(backup_dir)) if p]
    assert sorted((p.database, p.kind) for p in remaining) == sorted(
        [(first, "dump"), (second, "dump"), ("globals", "globals")])
    verified = run_backupd(["verify"], env)
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.count("OK ") == 3, verified.stdout


def test_every_database_with_an_exclusion_backs_up_exactly_the_right_set(
        private_cluster: Callable[..., PrivateCluster], tmp_path: Path) -> None:
    cluster = private_cluster()
    with connect(cluster.address) as conn:
        for name in ("app", "billing", "scratch"):
            conn.execute(f'CREATE DATABASE "{name}"')
    backup_dir = tmp_path / "backups"
    env = server_env(cluster.address, "*", backup_dir, HEALTH_PORT="0",
                     DB_BACKUP_EXCLUDE="scratch")
    proc = run_backupd(["backup", "--no-prune"], env)
    assert proc.returncode == 0, proc.stderr
    databases = sorted(p.database for p in map(parse_backup_name, _dumps(backup_dir)) if p)
    assert databases == ["app", "billing", "postgres"]
    assert len(_globals_files(backup_dir)) == 1


def test_globals_are_encrypted_when_encryption_is_on(
        pg_server: ServerAddress, make_db: Callable[..., str], backupd_env: EnvFactory,
        backup_dir: Path, tmp_path: Path) -> None:
    keys = make_age_keys(tmp_path / "keys")
    first, second = make_db(), make_db()
    env = backupd_env(f"{first},{second}",
                      DB_BACKUP_AGE_RECIPIENTS_FILE=str(keys.recipients_file),
                      DB_BACKUP_AGE_IDENTITY_FILE=str(keys.identity_file))
    proc = run_backupd(["backup", "--no-prune"], env)
    assert proc.returncode == 0, proc.stderr
    (name,) = _globals_files(backup_dir)
    assert name.endswith(".globals.sql.gz.age")
    manifest = read_manifest(backup_dir / name)
    assert manifest["encrypted"] is True and manifest["verified"] is True
    assert not (backup_dir / name).read_bytes().startswith(b"\x1f\x8b")  # not plain gzip
    verified = run_backupd(["verify", name], env)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "encrypted: size and SHA-256" not in verified.stdout  # the content was checked


def test_backup_on_start_looks_at_every_listed_database(
        pg_server: ServerAddress, make_db: Callable[..., str], backupd_env: EnvFactory,
        backup_dir: Path) -> None:
    first, second = make_db(), make_db()
    proc = run_backupd(["backup", "--no-prune"], backupd_env(first, DB_BACKUP_GLOBALS="on"))
    assert proc.returncode == 0, proc.stderr

    def reason(databases: str) -> str | None:
        settings = load_settings(POSTGRES_DB=databases, DB_BACKUP_DIR=str(backup_dir))
        daemon = Daemon(settings, scheduled_jobs(settings), NotifierChain([]),
                        DaemonState(backup_dir))
        backup = daemon.jobs["backup"]
        return daemon._backup_on_start_reason(backup.schedule, datetime.now(UTC))

    assert reason(first) is None
    # The run is due: the second database has never been backed up.
    assert reason(f"{first},{second}") == (
        "BACKUP_ON_START: a database has no verified backup yet")
    proc = run_backupd(["backup", "--no-prune"], backupd_env(second))
    assert proc.returncode == 0, proc.stderr
    assert reason(f"{first},{second}") is None  # both covered: no extra run at start


def test_status_counts_every_database(
        pg_server: ServerAddress, make_db: Callable[..., str], backupd_env: EnvFactory,
        backup_dir: Path) -> None:
    first, second = make_db(), make_db()
    env = backupd_env(f"{first},{second}")
    proc = run_backupd(["backup", "--no-prune"], env)
    assert proc.returncode == 0, proc.stderr
    status = run_backupd(["status", "--json"], env)
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["backups"] == 2, report
    assert report["health"]["ok"] is True, report["health"]


def test_the_runs_globals_restore_the_roles_onto_a_fresh_server(
        private_cluster: Callable[..., PrivateCluster], tmp_path: Path) -> None:
    source, target = private_cluster(), private_cluster()
    with connect(source.address) as conn:
        conn.execute("CREATE ROLE app LOGIN PASSWORD 'old-app-pw'")
        conn.execute("CREATE ROLE reader NOLOGIN IN ROLE app")
        conn.execute("CREATE DATABASE one OWNER app")
        conn.execute("CREATE DATABASE two OWNER app")
    backup_dir = tmp_path / "backups"
    proc = run_backupd(["backup", "--no-prune"],
                       server_env(source.address, "one,two", backup_dir, HEALTH_PORT="0"))
    assert proc.returncode == 0, proc.stderr
    (name,) = _globals_files(backup_dir)
    assert read_manifest(backup_dir / name)["role_passwords"] is True
    settings = load_settings(
        POSTGRES_HOST=target.address.host, POSTGRES_PORT=str(target.port),
        POSTGRES_USER="postgres", POSTGRES_PASSWORD=target.password, POSTGRES_DB="postgres",
        DB_BACKUP_DIR=str(backup_dir))
    ctx = JobContext(settings, JobResult(job="restore", database="postgres"))
    entry = LocalStore(backup_dir).entry(name)
    with connect(target.address) as conn:
        restored = restore_globals(ctx, conn, backup_dir / name, entry)
    assert {"app", "reader"} <= set(restored.roles_created)
    # The owner logs in on the new server with its old password (the hash travelled).
    with connect(ServerAddress(target.address.host, target.port, "app", "old-app-pw")) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("app",)


def test_a_named_backup_of_several_restores_into_its_own_database(
        pg_server: ServerAddress, make_db: Callable[..., str], backupd_env: EnvFactory,
        backup_dir: Path) -> None:
    """With POSTGRES_DB naming several databases, `restore NAME` goes back into the database
    the backup was taken of, never into a database named after the whole list."""
    first, second = make_db(), make_db()
    for db in (first, second):
        seed_small_db(pg_server, db)
    env = backupd_env(f"{first},{second}")
    assert run_backupd(["backup", "--no-prune"], env).returncode == 0
    (name,) = [n for n in _dumps(backup_dir) if n.startswith(f"{first}_")]
    drop_database(pg_server, first)

    proc = run_backupd(["restore", name, "--yes"], env)

    wrong = f"{first},{second}"
    try:
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert database_exists(pg_server, first)
        assert psql(pg_server, first, "SELECT count(*) FROM items").strip() != "0"
        assert not database_exists(pg_server, wrong)
        assert f"target={first!r}" in proc.stdout
    finally:
        drop_database(pg_server, wrong)

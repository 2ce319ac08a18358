"""A whole-cluster drill onto a drill server (DRILL_POSTGRES_*), against real clusters: a
private "live" cluster with an application role, a reader role and two databases, and a
second, freshly initialised one as the drill server (never the shared 5432 server: roles)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers.backups import read_manifest, refresh_manifest, sql_of, write_gzip_sql
from helpers.cli import server_env, start_backupd
from helpers.cluster import PrivateCluster
from helpers.metrics import parse_samples
from helpers.pg import ServerAddress, connect, psql
from helpers.slow_restore import kill_once_paused, pausing_psql
from helpers.template1 import put_into_template1, template_objects

from backupd.commands import backup_run
from backupd.commands import drill as drill_cmd
from backupd.commands.drill_server import CLUSTER_MARK, STATE_DATABASE, STATE_MARK
from backupd.job import run_job
from backupd.notify.base import NotifierChain
from backupd.notify.metrics import BackupdMetrics
from backupd.notify.slack import build_message
from backupd.outcomes import DrillOutcome
from backupd.result import JobResult
from backupd.settings import load_settings

ClusterFactory = Callable[..., PrivateCluster]

LIVE_ROLES = """
    CREATE ROLE app LOGIN PASSWORD 'app''s pw';
    CREATE ROLE reader NOLOGIN;
    GRANT app TO reader;
    ALTER ROLE app SET statement_timeout = '42s';
    CREATE DATABASE appdb OWNER app;
    CREATE DATABASE second;
"""
APP_DATABASE = """
    SET ROLE app;
    CREATE TABLE notes (id int PRIMARY KEY, body text);
    INSERT INTO notes SELECT i, 'note ' || i FROM generate_series(1, 50) i;
    GRANT SELECT ON notes TO reader;
    ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
    CREATE POLICY reader_sees ON notes FOR SELECT TO reader USING (id > 10);
    ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO reader;
    RESET ROLE;
    COMMENT ON DATABASE appdb IS 'the application';
    ALTER DATABASE appdb SET work_mem = '8MB';
    REVOKE CONNECT ON DATABASE appdb FROM PUBLIC;
    GRANT CONNECT ON DATABASE appdb TO reader;
"""
EMPTY_SERVER = ({"postgres", "template0", "template1"}, {"postgres"})


@dataclass
class Clusters:
    live: ServerAddress
    drill: ServerAddress
    backups: Path

    def env(self, **extra: str) -> dict[str, str]:
        return server_env(self.live, "appdb,second", self.backups,
                          HEALTH_PORT="0", DRILL_POSTGRES_HOST=self.drill.host,
                          DRILL_POSTGRES_PORT=str(self.drill.port),
                          DRILL_POSTGRES_PASSWORD=self.drill.password or "", **extra)


def run_here(job: str, env: dict[str, str], body: Callable[..., None]) -> JobResult:
    return run_job(job, load_settings(**env), body, NotifierChain([]))


def drill(clusters: Clusters) -> tuple[JobResult, DrillOutcome]:
    result = run_here("drill", clusters.env(), lambda ctx: drill_cmd.run(ctx))
    assert isinstance(result.outcome, DrillOutcome), result.summary()
    return result, result.outcome


def server_contents(server: ServerAddress) -> tuple[set[str], set[str]]:
    with connect(server) as conn:
        databases = {str(r[0]) for r in conn.execute("SELECT datname FROM pg_database")}
        roles = {str(r[0]) for r in conn.execute(
            "SELECT rolname FROM pg_roles WHERE rolname NOT LIKE 'pg\\_%'")}
    return databases, roles


@pytest.fixture
def clusters(private_cluster: ClusterFactory, tmp_path: Path) -> Iterator[Clusters]:
    live = private_cluster("live pw").address
    fresh = private_cluster("drill pw").address
    psql(live, "postgres", LIVE_ROLES)
    psql(live, "appdb", APP_DATABASE)
    psql(live, "second", "CREATE TABLE t (x int); INSERT INTO t SELECT generate_series(1, 7);")
    backups = tmp_path / "backups"
    # One backup run: the globals and both databases, sharing a run_id.
    result = run_here("backup", server_env(live, "appdb,second", backups, HEALTH_PORT="0"),
                      lambda ctx: backup_run.run(ctx, apply_retention=False))
    assert result.ok, result.summary()
    assert len(list(backups.glob("globals_*.globals.sql.gz"))) == 1
    yield Clusters(live, fresh, backups)


def test_drill_onto_a_fresh_server_passes_and_leaves_it_empty(clusters: Clusters) -> None:
    assert server_contents(clusters.drill) == EMPTY_SERVER

    result, outcome = drill(clusters)

    assert result.exit_code == 0, (result.summary(), outcome.differences)
    assert outcome.differences == []
    assert outcome.roles_proven
    assert not any("is not from the run" in w for w in result.warnings)  # one run, drilled
    assert outcome.drill_server == f"{clusters.drill.host}:{clusters.drill.port}"
    assert [d.database for d in outcome.databases] == ["appdb", "second"]
    assert all(d.ok and d.restore_seconds for d in outcome.databases)
    assert outcome.cluster_restore_seconds and outcome.cluster_restore_seconds >= sum(
        d.restore_seconds or 0 for d in outcome.databases)
    assert outcome.objects_compared["role"] == 3  # postgres, app, reader
    assert outcome.objects_compared["membership"] == 1
    assert "rto=" in result.summary()
    assert outcome.restore_seconds == outcome.cluster_restore_seconds  # Slack, metrics: the RTO
    assert "Restore time (whole cluster, RTO)" in json.dumps(build_message(result))
    assert outcome.globals_restore is not None
    assert sorted(outcome.globals_restore.roles_created) == ["app", "reader"]
    assert outcome.globals_restore.roles_kept == ["postgres"]
    assert server_contents(clusters.drill) == EMPTY_SERVER
    # /metrics serves each database's restore time and the cluster's RTO, from the manifests.
    text = BackupdMetrics(load_settings(**clusters.env())).render().decode()
    served = parse_samples(text)
    assert served[("backupd_drill_cluster_restore_seconds", ())] == pytest.approx(
        outcome.cluster_restore_seconds)
    assert served[("backupd_drill_cluster_last_run_success", ())] == 1
    for drilled in outcome.databases:
        assert served[("backupd_drill_last_restore_seconds",
                       (("database", drilled.database),))] == pytest.approx(drilled.restore_seconds)


def test_a_backup_set_without_its_globals_fails(clusters: Clusters) -> None:
    for path in clusters.backups.glob("globals_*"):
        path.unlink()

    result, _ = drill(clusters)

    assert result.exit_code == 1
    assert result.error and "no verified globals artifact" in result.error
    assert server_contents(clusters.drill) == EMPTY_SERVER


def test_a_membership_the_restore_lacks_fails_the_drill(clusters: Clusters) -> None:
    # Granted after the globals were dumped: the live cluster has it, the backup does not.
    psql(clusters.live, "postgres", "CREATE ROLE auditor NOLOGIN; GRANT reader TO auditor;")

    result, outcome = drill(clusters)

    assert result.exit_code == 1, result.summary()
    assert "role auditor is missing from the restore" in outcome.differences
    assert "membership auditor in reader is missing from the restore" in outcome.differences
    assert not outcome.roles_proven
    assert server_contents(clusters.drill) == EMPTY_SERVER


def test_a_killed_drills_leftovers_are_removed_by_the_next(clusters: Clusters) -> None:
    # What a drill killed after the globals and one database were restored leaves behind.
    before = '{"roles": ["postgres"], "tablespaces": ["pg_default", "pg_global"], ' \
             '"databases": ["postgres", "template0", "template1"]}'
    psql(clusters.drill, "postgres", f"""
        CREATE DATABASE {STATE_DATABASE};
        COMMENT ON DATABASE {STATE_DATABASE} IS '{STATE_MARK}{before}';
        CREATE ROLE app LOGIN; CREATE ROLE reader; GRANT app TO reader;
        CREATE DATABASE appdb OWNER app;
        COMMENT ON DATABASE appdb IS '{CLUSTER_MARK}; backupd drops it after the drill';""")

    result, outcome = drill(clusters)

    assert result.exit_code == 0, (result.summary(), outcome.differences)
    assert any("removed what an interrupted drill left" in w for w in result.warnings)
    assert server_contents(clusters.drill) == EMPTY_SERVER


def test_a_drill_killed_mid_restore_is_cleaned_up_by_the_next(
        clusters: Clusters, tmp_path: Path) -> None:
    shim_pid = tmp_path / "psql.pid"
    shim = pausing_psql(tmp_path / "shim", shim_pid)
    env = {**clusters.env(), "PATH": f"{shim}{os.pathsep}{os.environ['PATH']}"}
    proc = start_backupd(["drill"], env, log_dir=tmp_path / "killed")
    # Roles restored, appdb's restore transaction open with its tables created.
    kill_once_paused(proc, clusters.drill, "appdb", shim_pid)
    databases, roles = server_contents(clusters.drill)
    assert {STATE_DATABASE, "appdb"} <= databases and {"app", "reader"} <= roles

    result, outcome = drill(clusters)

    assert result.exit_code == 0, (result.summary(), outcome.differences)
    assert any("removed what an interrupted drill left" in w for w in result.warnings)
    assert server_contents(clusters.drill) == EMPTY_SERVER


def test_a_database_that_does_not_restore_fails_the_drill_and_is_removed(
        clusters: Clusters) -> None:
    dump = next(clusters.backups.glob("second_*.sql.gz"))
    text = sql_of(dump).replace(b"\nCOPY ", b"\nSELECT 1/0;\nCOPY ", 1)
    write_gzip_sql(dump, text)
    refresh_manifest(dump, raw_bytes=len(text))

    result, outcome = drill(clusters)

    assert result.exit_code == 1
    assert result.error and f"{dump.name} does not restore on the drill server" in result.error
    assert "division by zero" in result.error
    assert outcome.differences[0].startswith("database second: the backup does not restore")
    assert read_manifest(dump)["drill_ok"] is False
    assert server_contents(clusters.drill) == EMPTY_SERVER


def test_a_drill_server_that_is_not_empty_is_refused(clusters: Clusters) -> None:
    psql(clusters.drill, "postgres", "CREATE DATABASE second")

    result, _ = drill(clusters)

    assert result.exit_code == 2
    assert result.error and result.error.startswith(
        "DRILL_POSTGRES_HOST: the drill server already has database(s) second")
    databases, roles = server_contents(clusters.drill)
    assert databases == EMPTY_SERVER[0] | {"second"} and roles == EMPTY_SERVER[1]


def test_a_long_index_build_on_the_drill_server_is_not_a_stall(clusters: Clusters) -> None:
    """The drill's index builds run on the drill server, not on the live one the job is set
    up for: the stall watchdog counts that server's work too. Here one index takes ~12 s to
    build on the drill server (10 ms a row, only there), three times DB_BACKUP_STALL_SECONDS,
    with no byte moving in the restore's streams."""
    psql(clusters.live, "second", f"""
        CREATE FUNCTION slow(int) RETURNS int IMMUTABLE LANGUAGE sql AS $$
          SELECT $1 + 0 FROM pg_catalog.pg_sleep(CASE WHEN
            pg_catalog.current_setting('port') = '{clusters.drill.port}' THEN 0.01 ELSE 0 END) $$;
        -- Wide rows, a few to a block: the build's progress counter (blocks) moves often.
        CREATE TABLE wide (id int, pad char(2000) DEFAULT '');
        INSERT INTO wide (id) SELECT generate_series(1, 1200);
        CREATE INDEX wide_slow_idx ON wide (slow(id));""")
    taken = run_here("backup", server_env(clusters.live, "appdb,second", clusters.backups,
                                          HEALTH_PORT="0"),
                     lambda ctx: backup_run.run(ctx, apply_retention=False))
    assert taken.ok, taken.summary()

    result = run_here("drill", clusters.env(DB_BACKUP_STALL_SECONDS="4"),
                      lambda ctx: drill_cmd.run(ctx))

    assert result.exit_code == 0, result.summary()
    outcome = result.outcome
    assert isinstance(outcome, DrillOutcome)
    (second,) = [d for d in outcome.databases if d.database == "second"]
    assert second.restore_seconds and second.restore_seconds > 10  # the build was really slow
    assert server_contents(clusters.drill) == EMPTY_SERVER


def test_a_drill_of_every_database_passes_and_leaves_the_drill_servers_postgres(
        clusters: Clusters, tmp_path: Path) -> None:
    """POSTGRES_DB='*' takes `postgres` too, which every drill server has of its own."""
    psql(clusters.live, "postgres", "CREATE TABLE live_notes (x int); "
                                    "INSERT INTO live_notes VALUES (1), (2), (3);")
    psql(clusters.drill, "postgres", "CREATE TABLE drill_own (y int);")
    every = clusters.env(POSTGRES_DB="*", DB_BACKUP_DIR=str(tmp_path / "every"))
    taken = run_here("backup", every, lambda ctx: backup_run.run(ctx, apply_retention=False))
    assert taken.ok, taken.summary()

    result = run_here("drill", every, lambda ctx: drill_cmd.run(ctx))

    assert result.exit_code == 0, result.summary()
    outcome = result.outcome
    assert isinstance(outcome, DrillOutcome)
    assert [d.database for d in outcome.databases] == ["appdb", "postgres", "second"]
    assert all(d.ok for d in outcome.databases), outcome.differences
    assert outcome.differences == []
    assert server_contents(clusters.drill) == EMPTY_SERVER
    with connect(clusters.drill) as conn:
        assert conn.execute("SELECT array_agg(relname::text ORDER BY relname) FROM pg_class "
                            "WHERE relname IN ('drill_own', 'live_notes')"
                            ).fetchone() == (["drill_own"],)


def test_a_drill_of_every_database_restores_and_compares_template1(
        clusters: Clusters, tmp_path: Path) -> None:
    """A run of '*' that took template1 (it holds objects): the drill restores it beside the
    drill server's own, compares it with the live one, and leaves the drill server's alone."""
    put_into_template1(clusters.live)
    backups = tmp_path / "every"
    every = clusters.env(POSTGRES_DB="*", DB_BACKUP_DIR=str(backups))
    taken = run_here("backup", every, lambda ctx: backup_run.run(ctx, apply_retention=False))
    assert taken.ok, taken.summary()
    [dump] = backups.glob("template1_*.sql.gz")

    result = run_here("drill", every, lambda ctx: drill_cmd.run(ctx))

    assert result.exit_code == 0, result.summary()
    outcome = result.outcome
    assert isinstance(outcome, DrillOutcome)
    assert [d.database for d in outcome.databases] == ["appdb", "postgres", "second",
                                                       "template1"]
    assert all(d.ok for d in outcome.databases) and outcome.differences == []
    assert read_manifest(dump)["drill_ok"] is True
    assert server_contents(clusters.drill) == EMPTY_SERVER
    assert template_objects(clusters.drill) == []

    # Compared like any database: a template1 backup that lost the function fails the drill.
    text = sql_of(dump).replace(b"util.shout(", b"util.whisper(")
    write_gzip_sql(dump, text)
    refresh_manifest(dump, raw_bytes=len(text))
    failed = run_here("drill", every, lambda ctx: drill_cmd.run(ctx))
    assert failed.exit_code == 1
    differences = failed.outcome.differences if isinstance(failed.outcome, DrillOutcome) else []
    assert any(line.startswith("database template1: ") and "shout" in line
               for line in differences), differences
    assert template_objects(clusters.drill) == []


def test_a_drill_warns_when_template1_holds_objects_the_run_has_no_backup_of(
        clusters: Clusters, tmp_path: Path) -> None:
    every = clusters.env(POSTGRES_DB="*", DB_BACKUP_DIR=str(tmp_path / "every"))
    taken = run_here("backup", every, lambda ctx: backup_run.run(ctx, apply_retention=False))
    assert taken.ok, taken.summary()
    put_into_template1(clusters.live)  # after the run: a restore of it would lack them

    result = run_here("drill", every, lambda ctx: drill_cmd.run(ctx))

    assert result.exit_code == 0, result.summary()
    [warning] = [w for w in result.warnings if "template1" in w]
    assert "extension citext" in warning and "no backup of template1" in warning


def test_a_live_database_without_a_verified_backup_fails_a_drill_of_every_database(
        clusters: Clusters, tmp_path: Path) -> None:
    """The drill agrees with the whole-system restore of '*': that restores every database
    with a verified backup and stops on one without; a live database it would not bring
    back (here: second, whose only backup failed verification) fails the drill, named."""
    every = clusters.env(POSTGRES_DB="*", DB_BACKUP_DIR=str(tmp_path / "every"))
    taken = run_here("backup", every, lambda ctx: backup_run.run(ctx, apply_retention=False))
    assert taken.ok, taken.summary()
    [second_dump] = (tmp_path / "every").glob("second_*.sql.gz")
    refresh_manifest(second_dump, verified=False, verify_error="checksum mismatch")

    result = run_here("drill", every, lambda ctx: drill_cmd.run(ctx))

    assert result.exit_code == 1, result.summary()
    assert "database 'second' has no verified backup" in (result.error or ""), result.error
    assert server_contents(clusters.drill) == EMPTY_SERVER

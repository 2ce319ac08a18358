"""The regular drill (no drill server) of POSTGRES_DB='*' drills template1's dump too, when
the newest run took one: loaded into a scratch database made from template0 on the same
server, compared with the live template1, reported as one more database, dropped. The live
template1 is never touched. Private clusters only: these tests change template1."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.backups import back_up, read_manifest
from helpers.cli import server_env
from helpers.cluster import PrivateCluster
from helpers.notifiers import RecordingNotifier
from helpers.offsite import s3_env
from helpers.pg import ServerAddress, connect, psql
from helpers.s3server import S3Server
from helpers.template1 import EMPTY_TEMPLATE1, put_into_template1, template1_flags, template_objects

from backupd.commands import drill as drill_cmd
from backupd.job import run_job
from backupd.notify.base import NotifierChain
from backupd.outcomes import DrillOutcome
from backupd.result import JobResult, Status
from backupd.settings import load_settings

pytestmark = pytest.mark.slow

ClusterFactory = Callable[..., PrivateCluster]
IN_TEMPLATE1 = ["extension citext", "function util.shout(text)", "schema util"]

# A dump that verifies and cannot load, as pg_dump really writes it: the index expression
# calls a function whose body finds another one through the search_path, which pg_dump's
# output empties (search_path = ''), so the index build on the restored rows fails.
UNLOADABLE = """
    CREATE SCHEMA util;
    SET search_path = util, public;
    CREATE FUNCTION util.inner_f(t text) RETURNS text LANGUAGE sql IMMUTABLE
        AS 'SELECT upper(t)';
    CREATE FUNCTION util.outer_f(t text) RETURNS text LANGUAGE sql IMMUTABLE
        AS 'SELECT inner_f(t)';
    ALTER DATABASE template1 SET search_path = util, public;
    CREATE TABLE public.words (w text);
    INSERT INTO public.words VALUES ('a'), ('b');
    CREATE INDEX words_outer ON public.words (util.outer_f(w));
"""


def drill_every(server: ServerAddress, backups: Path, *, from_s3: bool = False,
                **extra: str) -> tuple[JobResult, RecordingNotifier]:
    results = RecordingNotifier()
    settings = load_settings(**server_env(server, "*", backups, HEALTH_PORT="0", **extra))
    result = run_job("drill", settings, lambda ctx: drill_cmd.run(ctx, from_s3=from_s3),
                     NotifierChain([results]))
    return result, results


def back_up_twice(server: ServerAddress, backups: Path, database: str, between: str,
                  **extra: str) -> None:
    """Two runs of '*' into ``backups``, ``between`` run in ``database`` after the first."""
    back_up(server, "*", backups, HEALTH_PORT="0", **extra)
    psql(server, database, between)
    back_up(server, "*", backups, HEALTH_PORT="0", **extra)


def databases(server: ServerAddress) -> set[str]:
    with connect(server) as conn:
        return {str(row[0]) for row in conn.execute("SELECT datname FROM pg_database")}


def test_the_drill_of_every_database_drills_template1s_dump_too(
        private_cluster: ClusterFactory, tmp_path: Path) -> None:
    server = private_cluster("t1-drill-pw").address
    put_into_template1(server)
    backups = tmp_path / "backups"
    back_up(server, "*", backups, HEALTH_PORT="0")
    [dump] = backups.glob("template1_*.sql.gz")
    before = databases(server)

    result, results = drill_every(server, backups)

    assert result.status == Status.SUCCESS, result.summary()
    drilled = results.of("template1")
    assert drilled.status == Status.SUCCESS, drilled.summary()
    assert drilled.backup_name == dump.name
    outcome = drilled.outcome
    assert isinstance(outcome, DrillOutcome)
    assert outcome.differences == [] and outcome.objects_compared
    assert read_manifest(dump)["drill_ok"] is True
    # Beside it, never in it: the live template1 as it was, the scratch gone.
    assert template_objects(server) == IN_TEMPLATE1
    assert template1_flags(server) == (True, True)
    assert databases(server) == before


def test_a_template1_dump_that_does_not_load_fails_the_drill_naming_template1(
        private_cluster: ClusterFactory, tmp_path: Path) -> None:
    server = private_cluster("t1-drill2-pw").address
    psql(server, "template1", UNLOADABLE)
    backups = tmp_path / "backups"
    back_up(server, "*", backups, HEALTH_PORT="0")  # dumped and verified: it is a good file
    [dump] = backups.glob("template1_*.sql.gz")
    before = databases(server)

    result, results = drill_every(server, backups)

    assert result.status == Status.FAILED
    assert "'template1'" in (result.error or ""), result.error
    assert results.of("postgres").status == Status.SUCCESS
    failed = results.of("template1")
    assert failed.status == Status.FAILED
    assert "inner_f" in (failed.error or ""), failed.error
    outcome = failed.outcome
    assert isinstance(outcome, DrillOutcome)
    assert outcome.differences[0].startswith("the backup does not restore")
    assert read_manifest(dump)["drill_ok"] is False
    assert databases(server) == before


def test_once_a_run_finds_template1_empty_its_older_dumps_are_not_drilled(
        private_cluster: ClusterFactory, tmp_path: Path) -> None:
    server = private_cluster("t1-drill3-pw").address
    put_into_template1(server)
    backups = tmp_path / "backups"
    back_up_twice(server, backups, "template1", EMPTY_TEMPLATE1)
    # The second run took no template1: the older one stays.
    assert len(list(backups.glob("template1_*.sql.gz"))) == 1

    result, results = drill_every(server, backups)

    # Not what a restore brings back any more: no drill compares it with the emptied one.
    assert result.status == Status.SUCCESS, result.summary()
    assert results.all_of("template1") == []
    assert results.of("postgres").status == Status.SUCCESS  # the drill did drill


def test_a_drill_from_s3_judges_an_emptied_template1_by_the_bucket(
        private_cluster: ClusterFactory, tmp_path: Path, s3_server: S3Server,
        s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """drill --from-s3 reads the bucket's runs, not DB_BACKUP_DIR's: here an empty directory
    (a new machine), where nothing says template1 was emptied."""
    offsite = s3_env(s3_server, s3_bucket, "prod")
    server = private_cluster("t1-drill5-pw").address
    put_into_template1(server)
    backups = tmp_path / "backups"
    back_up_twice(server, backups, "template1", EMPTY_TEMPLATE1, **offsite)

    for name, value in offsite.items():  # the AWS client reads its own from the environment
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    result, results = drill_every(server, tmp_path / "empty", from_s3=True, **offsite)

    assert result.status == Status.SUCCESS, result.summary()
    assert results.of("postgres").status == Status.SUCCESS
    assert results.all_of("template1") == []


def test_when_the_newest_run_could_not_look_into_template1_its_older_dump_is_not_drilled(
        private_cluster: ClusterFactory, tmp_path: Path) -> None:
    server = private_cluster("t1-drill4-pw").address
    put_into_template1(server)
    backups = tmp_path / "backups"
    # Nobody may connect to template1 after the first run, backupd's role neither: the
    # second run's look fails (it warns and goes on), and a drill could not compare with the
    # live template1 either.
    back_up_twice(server, backups, "postgres",
                  "ALTER DATABASE template1 ALLOW_CONNECTIONS false;")
    newest = max(backups.glob("postgres_*.sql.gz"), key=lambda p: p.name)
    assert read_manifest(newest)["template1_look"] == "failed"

    result, results = drill_every(server, backups)

    assert result.status == Status.SUCCESS, result.summary()
    assert results.all_of("template1") == []
    assert any("could not look into template1" in w for w in result.warnings), result.warnings
    assert results.of("postgres").status == Status.SUCCESS  # the drill did drill

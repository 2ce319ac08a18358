"""template1's contents in a whole-system backup and recovery (POSTGRES_DB='*'): objects an
administrator put into template1 so that every new database gets them (an extension, a
schema, a function) are backed up as one more verified dump of the run, restored into a new
server's template1, and left alone (with a warning) on a server whose template1 has its own.
Private clusters only: these tests change template1."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from helpers.backups import back_up, read_manifest, redate, sql_of, write_manifest
from helpers.cli import one_error_line, run_backupd, server_env
from helpers.cluster import PrivateCluster
from helpers.logs import log_events, warnings_logged
from helpers.pg import ServerAddress, connect, psql
from helpers.tablespaces import make_tablespace, relation_tablespaces
from helpers.template1 import (
    EMPTY_TEMPLATE1,
    SUBSCRIPTION,
    TEMPLATE1_OBJECTS,
    a_new_database_gets,
    cluster_holding,
    first_run_with_the_globals_off,
    objects_in,
    put_into_template1,
    restore_latest,
    subscriptions_in,
    template1_flags,
    template_objects,
)

from backupd.notify.store_metrics import store_metrics
from backupd.settings import load_settings

pytestmark = pytest.mark.slow

ClusterFactory = Callable[..., PrivateCluster]
IN_TEMPLATE1 = ["extension citext", "function util.shout(text)", "schema util"]


@pytest.fixture(scope="module")
def source() -> Iterator[PrivateCluster]:
    """A server whose template1 holds objects, and a database made from it since."""
    with cluster_holding("source-pw") as cluster:
        psql(cluster.address, "postgres", "CREATE DATABASE appdb")  # inherits citext, util
        psql(cluster.address, "appdb", "CREATE TABLE names (n citext PRIMARY KEY); "
                                       "INSERT INTO names VALUES ('Ann'), ('bob');")
        yield cluster


@pytest.fixture(scope="module")
def backups(source: PrivateCluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("template1") / "backups"
    back_up(source.address, "*", directory, HEALTH_PORT="0")
    return directory


def test_a_run_of_every_database_backs_up_template1_when_it_holds_objects(
        source: PrivateCluster, tmp_path: Path) -> None:
    directory = tmp_path / "backups"
    proc = run_backupd(["backup", "--no-prune"],
                       server_env(source.address, "*", directory, HEALTH_PORT="0"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [dump] = directory.glob("template1_*.sql.gz")
    manifest = read_manifest(dump)
    assert manifest["verified"] is True and manifest["database"] == "template1"
    [globals_file] = directory.glob("globals_*.globals.sql.gz")
    assert manifest["run_id"] == read_manifest(globals_file)["run_id"]
    assert "template1" in read_manifest(globals_file)["run_databases"]
    said = [str(event.get("event")) for event in log_events(proc.stderr)]
    assert any("template1 holds objects template0 lacks" in line and "citext" in line
               for line in said), said
    # `gunzip -c FILE | psql` brings the objects into a database made from template0.
    psql(source.address, "postgres", "CREATE DATABASE plain_check TEMPLATE template0")
    try:
        psql(source.address, "plain_check", sql_of(dump).decode())
        assert template_objects(source.address, "plain_check") == IN_TEMPLATE1
    finally:
        psql(source.address, "postgres", "DROP DATABASE plain_check")


def test_an_empty_template1_adds_no_artifact(private_cluster: ClusterFactory,
                                             tmp_path: Path) -> None:
    cluster = private_cluster()
    # A temporary table leaves its session's pg_temp namespace behind in template1: not an
    # object anyone put there.
    psql(cluster.address, "template1", "CREATE TEMP TABLE scratch (x int)")
    with connect(cluster.address, "template1") as conn:
        assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname LIKE "
                            "'pg\\_temp\\_%'").fetchone() == (1,)
    directory = tmp_path / "backups"
    proc = run_backupd(["backup", "--no-prune"],
                       server_env(cluster.address, "*", directory, HEALTH_PORT="0"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert list(directory.glob("template1_*")) == []
    assert "template1" not in proc.stderr


def test_a_whole_system_restore_brings_template1_back_onto_a_new_server(
        source: PrivateCluster, backups: Path) -> None:
    with PrivateCluster("target-pw") as target:
        target.start()
        proc = restore_latest(target.address, backups)
        assert "template1: ok" in proc.stdout
        assert template_objects(target.address) == IN_TEMPLATE1
        assert template1_flags(target.address) == (True, True)
        # What the server is for: a database created later gets template1's objects.
        assert a_new_database_gets(target.address) == IN_TEMPLATE1
        # The databases still come from template0: nothing inherited twice.
        assert "appdb: ok" in proc.stdout
        assert psql(target.address, "appdb", "SELECT count(*) FROM names WHERE n = 'ANN'"
                    ).strip() == "1"
        with connect(target.address) as conn:
            assert conn.execute("SELECT count(*) FROM pg_database WHERE datname LIKE "
                                "'template1%'").fetchone() == (1,)


def test_a_template1_with_objects_of_its_own_is_left_alone_with_a_warning(
        backups: Path) -> None:
    with cluster_holding("target2-pw", "CREATE EXTENSION hstore;") as target:
        proc = restore_latest(target.address, backups)
        assert template_objects(target.address) == ["extension hstore"]
        [dump] = backups.glob("template1_*.sql.gz")
        warnings = warnings_logged(proc.stderr)
        assert len(warnings) == 1, proc.stderr
        assert warnings[0].startswith("template1 on ")
        assert "hstore" in warnings[0] and dump.name in warnings[0]
        assert "--target-db" in warnings[0]  # what to run to look at the backed-up one
        assert "template1: skipped" in proc.stdout
        assert "appdb: ok" in proc.stdout


def test_db_backup_exclude_leaves_template1_out_without_a_warning(
        source: PrivateCluster, tmp_path: Path) -> None:
    directory = tmp_path / "backups"
    proc = run_backupd(["backup", "--no-prune"],
                       server_env(source.address, "*", directory, HEALTH_PORT="0",
                                  DB_BACKUP_EXCLUDE="template1"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert list(directory.glob("template1_*")) == []
    assert warnings_logged(proc.stderr) == []


def test_a_role_that_may_not_swap_template1_leaves_it_alone_with_a_warning(
        backups: Path) -> None:
    """A managed service's admin (CREATEDB, not a superuser, template1 not its own) cannot
    put a restored template1 in place: said before anything is loaded, not a failed restore."""
    with PrivateCluster("target3-pw") as target:
        target.start()
        psql(target.address, "postgres",
             "CREATE ROLE admin LOGIN CREATEDB CREATEROLE PASSWORD 'admin-pw'")
        admin = ServerAddress(target.address.host, target.port, "admin", "admin-pw")
        proc = restore_latest(admin, backups, "--database", "template1")
        assert template_objects(target.address) == []
        warnings = warnings_logged(proc.stderr)
        assert [w for w in warnings if w.startswith("template1 on ")] == [
            w for w in warnings if "template1" in w], warnings
        [warning] = [w for w in warnings if w.startswith("template1 on ")]
        assert "'admin'" in warning and "--target-db" in warning
        assert not any("restoring it into" in str(e.get("event"))
                       for e in log_events(proc.stderr))
        assert "template1: skipped" in proc.stdout


def test_a_template1_holding_only_a_subscription_is_left_alone(backups: Path) -> None:
    """A subscription lives in template1 as any object does: the one definition of "holds
    nothing" counts it, so template1 is not swapped out (and the subscription not lost with
    the template1 it was in)."""
    with cluster_holding("target4-pw", SUBSCRIPTION) as target:
        proc = restore_latest(target.address, backups, "--database", "template1")
        assert subscriptions_in(target.address) == [("feed_sub", "template1")]
        warnings = warnings_logged(proc.stderr)
        [warning] = [w for w in warnings if w.startswith("template1 on ")]
        assert "1 subscription" in warning
        assert "template1: skipped" in proc.stdout
        with connect(target.address) as conn:
            assert conn.execute("SELECT count(*) FROM pg_database WHERE datname LIKE "
                                "'template1%'").fetchone() == (1,)


def test_what_template1_holds_is_counted_as_a_user_made_it(
        private_cluster: ClusterFactory) -> None:
    """One table with a text column is one relation (its toast table and the toast table's
    index are PostgreSQL's, not the user's)."""
    cluster = private_cluster()
    put_into_template1(cluster.address, "CREATE TABLE notes (body text);")
    held = objects_in(cluster.address)
    assert held.describe() == "1 relation"
    assert held.identities == ("relation table notes",)


def test_a_template1_not_marked_a_template_is_dumped_once_per_run(
        private_cluster: ClusterFactory, tmp_path: Path) -> None:
    """'*' already takes a template1 that is not marked a template, as any database."""
    cluster = private_cluster()
    put_into_template1(cluster.address)
    psql(cluster.address, "postgres", "ALTER DATABASE template1 IS_TEMPLATE false")
    directory = tmp_path / "backups"
    back_up(cluster.address, "*", directory, HEALTH_PORT="0")
    [dump] = directory.glob("template1_*.sql.gz")
    [globals_file] = directory.glob("globals_*.globals.sql.gz")
    assert read_manifest(globals_file)["run_databases"].count("template1") == 1
    assert read_manifest(dump)["run_id"] == read_manifest(globals_file)["run_id"]


def test_health_and_metrics_stop_judging_template1_once_a_run_finds_it_empty(
        private_cluster: ClusterFactory, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Emptied, template1 gets no more dumps: its last one (kept, DB_BACKUP_KEEP_MIN) must not
    make the system unhealthy forever. While the newest run took it, it is judged."""
    cluster = private_cluster()
    put_into_template1(cluster.address)
    directory = tmp_path / "backups"
    env = server_env(cluster.address, "*", directory, HEALTH_PORT="0", DB_BACKUP_GLOBALS="on",
                     BACKUP_MAX_AGE_HOURS="24")
    back_up(cluster.address, "*", directory, HEALTH_PORT="0")
    [dump] = directory.glob("template1_*.sql.gz")
    redate(dump, datetime.now(UTC) - timedelta(days=2), keep_source=False)
    still_held = run_backupd(["health"], env)
    # The newest run took template1: its dump (re-dated as two days old) is judged.
    assert still_held.returncode == 1 and "template1" in still_held.stdout + still_held.stderr
    assert series_databases(env, monkeypatch) == ["postgres", "template1"]
    # A run that cannot look into template1 records nothing: it is still judged.
    psql(cluster.address, "postgres", "ALTER DATABASE template1 ALLOW_CONNECTIONS false")
    back_up(cluster.address, "*", directory, HEALTH_PORT="0")
    psql(cluster.address, "postgres", "ALTER DATABASE template1 ALLOW_CONNECTIONS true")
    assert run_backupd(["health"], env).returncode == 1
    psql(cluster.address, "template1", EMPTY_TEMPLATE1)
    back_up(cluster.address, "*", directory, HEALTH_PORT="0")
    assert len(list(directory.glob("template1_*.sql.gz"))) == 1  # the old one, kept
    healthy = run_backupd(["health"], env)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert series_databases(env, monkeypatch) == ["postgres"]
    # Runs of older versions recorded it in the globals manifest alone: still read.
    for data in directory.glob("*.sql.gz"):
        write_manifest(data, {k: v for k, v in read_manifest(data).items()
                              if k != "template1_look"})
    assert run_backupd(["health"], env).returncode == 0
    # A whole-system restore of that run leaves the old template1 backup out, saying why.
    target = private_cluster("t1-emptied-target-pw")
    proc = restore_latest(target.address, directory)
    [line] = [str(e["event"]) for e in log_events(proc.stderr)
              if "template1" in str(e.get("event"))]
    assert "holding nothing of its own" in line and "--database template1" in line, line
    assert "no longer in the cluster" not in line
    assert template_objects(target.address) == []


def test_with_the_globals_off_health_and_metrics_stop_judging_an_emptied_template1(
        private_cluster: ClusterFactory, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """DB_BACKUP_GLOBALS=off writes no globals manifest: the run still records what it found
    in template1, or its last dump would be judged (and go stale) forever."""
    cluster = private_cluster()
    directory = tmp_path / "backups"
    env = first_run_with_the_globals_off(cluster.address, directory, BACKUP_MAX_AGE_HOURS="24")
    assert list(directory.glob("globals_*")) == []
    [dump] = directory.glob("template1_*.sql.gz")
    redate(dump, datetime.now(UTC) - timedelta(days=2), keep_source=False)
    assert run_backupd(["health"], env).returncode == 1
    psql(cluster.address, "template1", EMPTY_TEMPLATE1)
    proc = run_backupd(["backup", "--no-prune"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(list(directory.glob("template1_*.sql.gz"))) == 1  # the old one, kept
    healthy = run_backupd(["health"], env)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert series_databases(env, monkeypatch) == ["postgres"]
    # Filled again: the next run's dump is judged again.
    put_into_template1(cluster.address)
    assert run_backupd(["backup", "--no-prune"], env).returncode == 0
    assert series_databases(env, monkeypatch) == ["postgres", "template1"]


def series_databases(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The databases the per-database metrics report on."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    families = store_metrics(load_settings(), datetime.now(UTC), legacy_aliases=False)
    return sorted({sample.labels["database"] for family in families
                   if family.name == "backupd_newest_verified_backup_age_seconds"
                   for sample in family.samples})


def test_a_template1_that_cannot_be_swapped_out_is_left_alone_before_loading(
        backups: Path) -> None:
    """A prepared transaction in the new server's template1 keeps it from being renamed:
    found by the ordinary restore's check before anything is loaded, not after the load."""
    with PrivateCluster("target5-pw",
                        server_settings={"max_prepared_transactions": "2"}) as target:
        target.start()
        with connect(target.address, "template1") as holder:
            holder.execute("BEGIN")
            holder.execute("SELECT pg_advisory_xact_lock(1)")
            holder.execute("PREPARE TRANSACTION 'tpl-pending-1'")
        proc = restore_latest(target.address, backups, "--database", "template1")
        warnings = warnings_logged(proc.stderr)
        [warning] = [w for w in warnings if w.startswith("template1 on ")]
        assert "prepared transaction" in warning and "tpl-pending-1" in warning, warning
        assert not any("restoring it into" in str(e.get("event"))
                       for e in log_events(proc.stderr))
        assert "template1: skipped" in proc.stdout
        assert template_objects(target.address) == []
        psql(target.address, "template1", "ROLLBACK PREPARED 'tpl-pending-1'")


def test_a_template1_restored_without_its_tablespace_says_where_its_tables_went(
        private_cluster: ClusterFactory, tmp_path: Path) -> None:
    """As every restore: a table of template1's in a tablespace the new server lacks goes
    to the default one, and the one fallback warning says so and what to run."""
    source = private_cluster("t1-space-pw")
    make_tablespace(source, "space_t1")
    put_into_template1(source.address, "CREATE TABLE lookup (x int) TABLESPACE space_t1;")
    directory = tmp_path / "backups"
    back_up(source.address, "*", directory, HEALTH_PORT="0")
    target = private_cluster("t1-space-target-pw")
    proc = restore_latest(target.address, directory, "--database", "template1")
    assert relation_tablespaces(target.address, "template1") == {"lookup": "pg_default"}
    warnings = warnings_logged(proc.stderr)
    [fallback] = [w for w in warnings if "without some of its tablespaces" in w]
    assert fallback.startswith("database 'template1'") and "'space_t1'" in fallback


def test_a_template1_restored_out_of_its_tablespace_says_to_move_its_pg_default_objects_back(
        private_cluster: ClusterFactory, tmp_path: Path) -> None:
    """As every restore: template1 in space_t1 with a table explicitly in pg_default goes to
    the default tablespace on a server without space_t1, and the table becomes one of its
    own: the warning says to move it back after the ALTER DATABASE it gives."""
    source = private_cluster("t1-default-pw")
    make_tablespace(source, "space_t1")
    psql(source.address, "postgres", "ALTER DATABASE template1 SET TABLESPACE space_t1")
    put_into_template1(source.address, "CREATE TABLE lookup (x int) TABLESPACE pg_default;")
    directory = tmp_path / "backups"
    back_up(source.address, "*", directory, HEALTH_PORT="0")
    target = private_cluster("t1-default-target-pw")
    proc = restore_latest(target.address, directory, "--database", "template1")
    warnings = warnings_logged(proc.stderr)
    [fallback] = [w for w in warnings if "without some of its tablespaces" in w]
    assert ('SET TABLESPACE "pg_default" for each object the backup lists with '
            "'Tablespace: pg_default'") in fallback, fallback


def test_a_restored_template1_with_another_locale_says_the_default_changes(
        backups: Path) -> None:
    """The restored template1 comes with the backed-up one's encoding and locale, which
    every database created from it later gets: said when they differ from the server's."""
    with PrivateCluster("target6-pw", initdb_options=("--locale=C",)) as target:
        target.start()
        proc = restore_latest(target.address, backups, "--database", "template1")
        with connect(target.address) as conn:
            assert conn.execute("SELECT datcollate FROM pg_database WHERE datname = "
                                "'template1'").fetchone() == ("C.UTF-8",)
        said = [str(event.get("event")) for event in log_events(proc.stderr)]
        [line] = [s for s in said if "locale" in s]
        assert "template1" in line and "'C.UTF-8'" in line and "'C'" in line, line


def test_restoring_a_template1_backup_by_name_points_to_the_whole_system_restore(
        backups: Path) -> None:
    [dump] = backups.glob("template1_*.sql.gz")
    proc = run_backupd(["restore", dump.name, "--yes"],
                       server_env(ServerAddress("127.0.0.1", 1, "nobody", "x"), "*", backups))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = one_error_line(proc.stderr)
    assert "restore --latest" in line and "--target-db" in line, line


def test_a_template1_with_as_many_objects_but_other_ones_is_not_taken_for_the_backed_up_one(
        backups: Path) -> None:
    """Same extension, schema and number of functions, but another function: not "what the
    backup holds" (that is said only of the same objects), so the usual warning."""
    with cluster_holding("target7-pw", TEMPLATE1_OBJECTS.replace("shout", "whisper")) as target:
        proc = restore_latest(target.address, backups, "--database", "template1")
        said = [str(event.get("event")) for event in log_events(proc.stderr)]
        assert not any("already holds what" in line for line in said), said
        assert any(line.startswith("template1 on ") for line in said), said
        assert template_objects(target.address) == [
            "extension citext", "function util.whisper(text)", "schema util"]

"""template1's restore when the server's template1 cannot take the backed-up one: whatever
the loaded copy holds (a subscription, which PostgreSQL refuses to drop a database with) and
whatever the server's holds (a name that is not UTF-8, on a SQL_ASCII server), the whole
cluster restore goes on, saying what happened to template1: never "internal error".
Private clusters only: these tests change template1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.backups import back_up
from helpers.cli import run_backupd, server_env
from helpers.cluster import PrivateCluster
from helpers.logs import log_events, warnings_logged
from helpers.pg import connect, psql
from helpers.template1 import SUBSCRIPTION, cluster_holding, restore_latest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def backups(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A whole-system backup whose template1 holds a schema and a subscription."""
    with cluster_holding("source-pw", "CREATE SCHEMA util;" + SUBSCRIPTION) as source:
        psql(source.address, "postgres", "CREATE DATABASE appdb")
        directory = tmp_path_factory.mktemp("template1-failures") / "backups"
        back_up(source.address, "*", directory, HEALTH_PORT="0")
        assert list(directory.glob("template1_*.sql.gz"))
        yield directory


def template1_copies(cluster: PrivateCluster) -> int:
    with connect(cluster.address) as conn:
        conn.execute("SET client_encoding = 'UTF8'")
        row = conn.execute("SELECT count(*) FROM pg_database WHERE datname LIKE 'template1%'"
                           ).fetchone()
    assert row is not None
    return int(row[0])


def test_a_loaded_template1_holding_a_subscription_is_dropped_when_not_swapped_in(
        backups: Path) -> None:
    with cluster_holding("target-pw", "CREATE SCHEMA other;") as target:
        proc = restore_latest(target.address, backups)
        assert "internal error" not in proc.stderr
        assert "template1: skipped" in proc.stdout
        assert "appdb: ok" in proc.stdout
        warnings = warnings_logged(proc.stderr)
        assert any(w.startswith("template1 on ") and "schema other" in w for w in warnings)
        assert template1_copies(target) == 1  # the loaded copy went, subscription and all


def test_a_sql_ascii_template1_with_a_name_that_is_not_utf8_fails_naming_template1(
        backups: Path) -> None:
    with PrivateCluster("target-pw", encoding="SQL_ASCII") as target:
        target.start()
        with connect(target.address, "template1") as conn:
            conn.execute(b'CREATE SCHEMA "caf\xe9"')  # LATIN1 bytes, as a SQL_ASCII server takes
        proc = run_backupd(["restore", "--latest", "--yes"],
                           server_env(target.address, "*", backups), timeout=300)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "internal error" not in proc.stderr
        assert "appdb: ok" in proc.stdout
        warnings = warnings_logged(proc.stderr)
        [failed] = [w for w in warnings if w.startswith("restore of 'template1' failed")]
        assert "template1" in failed.removeprefix("restore of 'template1' failed"), failed
        assert template1_copies(target) == 1


def test_a_pg_dump_that_cannot_be_run_fails_the_dumps_not_the_look_into_template1(
        tmp_path: Path) -> None:
    """A pg_dump first on PATH that cannot be started (its interpreter is gone: a broken
    install): asking its version raises OSError. The look into template1 counts the public
    schema comment then (the cautious side) and each dump fails on its own, saying so; the
    run never ends in an internal error before any dump."""
    tools = tmp_path / "bin"
    tools.mkdir()
    broken = tools / "pg_dump"
    broken.write_text("#!/nonexistent/interpreter\n")
    broken.chmod(0o755)
    with PrivateCluster("source-pw") as source:
        source.start()
        env = server_env(source.address, "*", tmp_path / "backups", HEALTH_PORT="0",
                         DB_BACKUP_GLOBALS="off", PATH=f"{tools}:/usr/bin:/bin")
        proc = run_backupd(["backup", "--no-prune"], env, timeout=300)
    said = proc.stdout + proc.stderr
    assert proc.returncode == 1, said
    finished = {e.get("database"): e for e in log_events(proc.stderr)
                if e.get("event") == "job finished"}
    # The run went on to the dumps: the one failing is postgres's own, not the run's.
    assert str(finished["*"]["error"]).endswith("1 of 1 databases failed: 'postgres'"), said
    assert finished["postgres"]["status"] == "failed", said

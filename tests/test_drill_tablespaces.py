"""Tablespaces in restore drills, against real clusters: beside the live database (its
tablespace compared like its other properties, its copy put where the server can) and onto
a drill server without the tablespaces or whose role may not create in them. The source
and its tablespaces: helpers.tablespaces.tablespace_source."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.backups import back_up
from helpers.cli import run_backupd, server_env
from helpers.cluster import PrivateCluster
from helpers.logs import jobs_finished, log_events
from helpers.pg import connect, psql
from helpers.tablespaces import (
    FALLBACK,
    RESTORER,
    SOURCE_DATABASES,
    fallbacks,
    make_restorer,
    make_tablespace,
    tablespaces,
)

pytestmark = pytest.mark.slow


def test_a_drill_beside_the_live_database_compares_its_tablespace(
        source: PrivateCluster, tmp_path: Path) -> None:
    """Beside the live database (no drill server) the tablespaces are there: the scratch
    copy goes into the database's own, and the tablespace is compared like the other
    properties, so moving the live database since the backup is drift, named."""
    directory = tmp_path / "b"
    env = server_env(source.address, "appdb", directory)
    back_up(source.address, SOURCE_DATABASES, directory)

    clean = run_backupd(["drill"], env, timeout=300)

    assert clean.returncode == 0, clean.stdout + clean.stderr
    [result] = jobs_finished(clean.stderr, "drill")
    assert result["outcome"]["differences"] == [] and result["outcome"]["drift"] == []
    make_tablespace(source, "space_moved")
    psql(source.address, "postgres", "ALTER DATABASE appdb SET TABLESPACE space_moved")
    try:
        moved = run_backupd(["drill"], env, timeout=300)
        assert moved.returncode == 0, moved.stdout + moved.stderr
        [result] = jobs_finished(moved.stderr, "drill")
        assert result["outcome"]["drift"] == [
            "database tablespace: 'space_db' in the backup, 'space_moved' in the live database"]
    finally:
        psql(source.address, "postgres", "ALTER DATABASE appdb SET TABLESPACE space_db; "
                                         "DROP TABLESPACE space_moved")


def test_a_drill_beside_a_database_whose_tablespace_was_dropped_says_where_its_copy_went(
        source: PrivateCluster, tmp_path: Path) -> None:
    """The live database moved out of its tablespace, which was then dropped, since the
    backup: the scratch copy goes into the default one, and the warning is about that copy,
    which the drill drops; nothing in it is to be run on the live database."""
    directory = tmp_path / "b"
    make_tablespace(source, "space_gone")
    psql(source.address, "postgres", "CREATE DATABASE gonedb TABLESPACE space_gone")
    try:
        psql(source.address, "gonedb", "CREATE TABLE t (x int); INSERT INTO t VALUES (1);")
        env = server_env(source.address, "gonedb", directory)
        backed_up = run_backupd(["backup"], env, timeout=300)
        assert backed_up.returncode == 0, backed_up.stdout + backed_up.stderr
        psql(source.address, "postgres", "ALTER DATABASE gonedb SET TABLESPACE pg_default; "
                                         "DROP TABLESPACE space_gone")

        proc = run_backupd(["drill"], env, timeout=300)

        assert proc.returncode == 0, proc.stdout + proc.stderr
        [result] = jobs_finished(proc.stderr, "drill")
        [warning] = fallbacks(dict(result))
        assert "'gonedb_drill'" in warning and "instead of 'space_gone'" in warning, warning
        assert "drops" in warning, warning
        assert "ALTER DATABASE" not in warning and "ALTER TABLE" not in warning, warning
    finally:
        psql(source.address, "postgres", "DROP DATABASE IF EXISTS gonedb; "
                                         "DROP TABLESPACE IF EXISTS space_gone")


def test_a_drill_server_role_without_create_is_said_so_not_that_the_tablespace_is_missing(
        source: PrivateCluster, target: PrivateCluster, tmp_path: Path) -> None:
    """The drill server has every tablespace, but its drill role (not a superuser) may
    create only in space_db: the drill says so in restore's words, with the GRANT."""
    directory = tmp_path / "b"
    back_up(source.address, "grantdb", directory)
    make_tablespace(target, "space_db")
    make_tablespace(target, "space_tbl")
    make_restorer(target)
    # The roles of the globals are there already (the restorer may not create roles).
    psql(target.address, "postgres", f"CREATE ROLE app; "
                                     f"GRANT CREATE ON TABLESPACE space_db TO {RESTORER.user}")
    env = server_env(source.address, "grantdb", directory,
                     DRILL_POSTGRES_HOST=target.address.host,
                     DRILL_POSTGRES_PORT=str(target.port), DRILL_POSTGRES_USER=RESTORER.user,
                     DRILL_POSTGRES_PASSWORD=RESTORER.password or "")

    proc = run_backupd(["drill"], env, timeout=300)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    [result] = jobs_finished(proc.stderr, "drill")
    [grantdb] = result["outcome"]["databases"]
    assert grantdb["ok"] and grantdb["tablespaces_missing"] == ["pg_default", "space_tbl"]
    said = [str(event.get("event")) for event in log_events(proc.stderr)]
    [line] = [line for line in said if FALLBACK in line]
    assert "'space_tbl' (role 'restorer' may not create in it)" in line, line
    assert 'GRANT CREATE ON TABLESPACE "pg_default" TO "restorer"' in line, line
    assert "ALTER DATABASE" not in line, line
    assert not [w for w in result["warnings"] if FALLBACK in w], result["warnings"]


def test_a_drill_onto_a_server_without_the_tablespaces_passes_and_says_what_it_did(
        source: PrivateCluster, target: PrivateCluster, tmp_path: Path) -> None:
    directory = tmp_path / "b"
    back_up(source.address, SOURCE_DATABASES, directory)
    with connect(target.address) as conn:
        before = sorted(str(r[0]) for r in conn.execute("SELECT datname FROM pg_database"))
    env = server_env(source.address, SOURCE_DATABASES, directory,
                     DRILL_POSTGRES_HOST=target.address.host,
                     DRILL_POSTGRES_PORT=str(target.port),
                     DRILL_POSTGRES_PASSWORD=target.password)

    proc = run_backupd(["drill"], env, timeout=300)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    [result] = jobs_finished(proc.stderr, "drill")
    outcome = result["outcome"]
    assert outcome["differences"] == [], outcome
    [appdb, plaindb] = outcome["databases"]
    assert appdb["ok"] and plaindb["ok"]
    assert appdb["tablespaces_missing"] == ["space_db", "space_tbl"]
    assert plaindb["tablespaces_missing"] == []
    # Said, not warned: a drill server seldom has the live server's directories.
    said = (proc.stdout + proc.stderr)
    assert "instead of 'space_db' (no such tablespace here)" in said
    assert not [w for w in result["warnings"] if "tablespace" in w], result["warnings"]
    # Left as it was found.
    with connect(target.address) as conn:
        after = sorted(str(r[0]) for r in conn.execute("SELECT datname FROM pg_database"))
    assert after == before and tablespaces(target.address) == set()

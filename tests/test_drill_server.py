"""Drills onto a drill server (DRILL_POSTGRES_*): the settings, and the refusal of a drill
server that is the live server whatever name reaches it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.backups import take_backup
from helpers.cli import EnvFactory, run_backupd
from helpers.logs import jobs_finished
from helpers.pg import ServerAddress, database_exists, psql

from backupd.errors import ConfigError
from backupd.outcomes import ROLES_NOT_PROVEN
from backupd.settings import load_settings


def last_line(output: str) -> str:
    return output.strip().splitlines()[-1]


def test_drill_server_named_like_the_live_server_is_refused(
        env: dict[str, str]) -> None:
    proc = run_backupd(["drill"], {**env, "DRILL_POSTGRES_HOST": env["POSTGRES_HOST"],
                                   "DRILL_POSTGRES_PORT": env["POSTGRES_PORT"]})
    assert proc.returncode == 2, proc.stderr
    assert last_line(proc.stderr).startswith(
        f"backupd: error: DRILL_POSTGRES_HOST: {env['POSTGRES_HOST']}:{env['POSTGRES_PORT']} "
        "is the live server")


def test_drill_server_reached_by_another_name_is_refused_by_its_identity(
        env: dict[str, str], pg_server: ServerAddress) -> None:
    take_backup(env)
    # The same server by its Unix socket: only its system identifier gives it away.
    proc = run_backupd(["drill"], {**env, "DRILL_POSTGRES_HOST": "/var/run/postgresql",
                                   "DRILL_POSTGRES_PORT": env["POSTGRES_PORT"],
                                   "DRILL_POSTGRES_USER": pg_server.user})
    assert proc.returncode == 2, proc.stderr
    line = last_line(proc.stderr)
    assert line.startswith("backupd: error: DRILL_POSTGRES_HOST: the drill server "
                           "/var/run/postgresql:"), line
    assert "is the live server (system identifier" in line


def test_drill_server_password_file_is_read_like_the_other_secret_files(
        env: dict[str, str], tmp_path: Path) -> None:
    base = {**env, "DRILL_POSTGRES_HOST": "drill.invalid"}
    with pytest.raises(ConfigError, match=r"^DRILL_POSTGRES_PASSWORD_FILE: .*is a directory"):
        load_settings(**{**base, "DRILL_POSTGRES_PASSWORD_FILE": str(tmp_path)})
    secret = tmp_path / "drill_password"
    secret.write_text("s3cret-drill\n")
    settings = load_settings(**{**base, "DRILL_POSTGRES_PASSWORD": "ignored",
                                "DRILL_POSTGRES_PASSWORD_FILE": str(secret)})
    assert settings.drill_password == "s3cret-drill"
    assert "s3cret-drill" in settings.secret_values()  # masked in every log line
    # Without DRILL_POSTGRES_HOST the other DRILL_POSTGRES_* settings are not read.
    unused = load_settings(**{**env, "DRILL_POSTGRES_PASSWORD_FILE": str(tmp_path)})
    assert unused.drill_postgres_host is None


def test_without_a_drill_server_each_listed_database_is_drilled_beside_it(
        fixture_db: str, make_db: Callable[..., str], backupd_env: EnvFactory,
        pg_server: ServerAddress) -> None:
    other = make_db()
    psql(pg_server, other, "CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2);")
    for database in (fixture_db, other):
        take_backup(backupd_env(database))

    proc = run_backupd(["drill"], backupd_env(f"{fixture_db},{other}"))

    assert proc.returncode == 0, proc.stderr
    finished = jobs_finished(proc.stderr)
    per_database = {r["database"]: r for r in finished if r["database"] in (fixture_db, other)}
    assert set(per_database) == {fixture_db, other}
    for record in per_database.values():
        assert record["status"] == "success"
        assert "roles not proven" in record["outcome"]["comparison_summary"]
    assert f"Restore drills of 2 databases passed; {ROLES_NOT_PROVEN}" in proc.stderr
    for database in (fixture_db, other):
        assert not database_exists(pg_server, f"{database}_drill")

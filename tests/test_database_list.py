"""POSTGRES_DB as a list or `*` (issue 14): parsed once (Settings.database_selection), resolved
against a server by one function (postgres.databases.resolve_databases)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from helpers.cli import run_backupd, server_env
from helpers.cluster import PrivateCluster
from helpers.logs import log_events
from helpers.pg import ServerAddress, connect, unique_db_name

from backupd.errors import ConfigError
from backupd.naming import (
    DUMP_KIND,
    GLOBALS_DATABASE,
    GLOBALS_KIND,
    SCRATCH_MARK,
    backup_name,
    globals_name,
    parse_backup_name,
    run_id,
)
from backupd.postgres.databases import resolve_databases
from backupd.settings import DatabaseSelection, Settings, load_settings
from backupd.storage.local import LocalRepository


def _settings(server: ServerAddress, databases: str, **extra: str) -> Settings:
    return load_settings(POSTGRES_HOST=server.host, POSTGRES_PORT=str(server.port),
                         POSTGRES_USER=server.user,
                         POSTGRES_PASSWORD=server.password or "postgres",
                         POSTGRES_DB=databases, **extra)


def _refusal(**env: str) -> str:
    with pytest.raises(ConfigError) as refused:
        load_settings(**env)
    (line,) = str(refused.value).splitlines()
    return line


def test_a_single_database_is_taken_verbatim() -> None:
    for name in ("certificate_verification", " spaced name ", "a;b"):
        selection = load_settings(POSTGRES_DB=name).database_selection
        assert selection == DatabaseSelection((name,))
        assert not selection.several


def test_a_list_is_split_and_stripped_in_order() -> None:
    settings = load_settings(POSTGRES_DB="app, billing ,audit")
    assert settings.database_selection == DatabaseSelection(("app", "billing", "audit"))
    assert settings.database_selection.several
    assert settings.for_database("billing").postgres_db == "billing"
    assert not settings.for_database("billing").database_selection.several


def test_every_database_with_exclusions() -> None:
    settings = load_settings(POSTGRES_DB="*", DB_BACKUP_EXCLUDE="scratch, postgres")
    selection = settings.database_selection
    assert selection.every and selection.several
    assert selection.exclude == ("scratch", "postgres")
    assert selection.choose(["b", "postgres", "a", "scratch"]) == ["a", "b"]
    assert settings.for_database("a").backup_exclude is None


@pytest.mark.parametrize(("env", "words"), [
    ({"POSTGRES_DB": "app,,billing"}, "element 2"),
    ({"POSTGRES_DB": "app,"}, "empty"),
    ({"POSTGRES_DB": "app, billing, app"}, "'app' is listed twice"),
    ({"POSTGRES_DB": "app,*"}, "'*'"),
    ({"POSTGRES_DB": "app," + "d" * 64}, "63"),
    ({"POSTGRES_DB": "app", "DB_BACKUP_EXCLUDE": "billing"}, "POSTGRES_DB='*'"),
    ({"POSTGRES_DB": "*", "DB_BACKUP_EXCLUDE": "a,,b"}, "empty"),
    ({"POSTGRES_DB": "*", "DB_BACKUP_EXCLUDE": "a,a"}, "twice"),
], ids=["empty-element", "trailing-comma", "duplicate", "star-in-list", "too-long",
        "exclude-without-star", "exclude-empty-element", "exclude-duplicate"])
def test_bad_lists_are_one_line_naming_the_setting(env: dict[str, str], words: str) -> None:
    line = _refusal(**env)
    setting = "DB_BACKUP_EXCLUDE" if "DB_BACKUP_EXCLUDE" in env else "POSTGRES_DB"
    assert line.startswith(f"{setting}: "), line
    assert words in line, line


def test_a_listed_database_the_server_lacks_is_missing(
        pg_server: ServerAddress, make_db: Callable[..., str]) -> None:
    first, second = make_db(), make_db()
    absent = unique_db_name("absent")
    resolved = resolve_databases(_settings(pg_server, f"{second},{absent},{first}"))
    assert resolved.databases == [second, first]
    assert resolved.missing == [absent]


def test_every_database_minus_exclusions_is_exactly_the_right_set(
        private_cluster: Callable[..., PrivateCluster]) -> None:
    cluster = private_cluster()
    with connect(cluster.address) as conn:
        for name in ("app", "billing", "scratch", "no_connections"):
            conn.execute(f'CREATE DATABASE "{name}"')
        conn.execute('ALTER DATABASE "no_connections" ALLOW_CONNECTIONS false')
        conn.execute('CREATE DATABASE "tmpl" IS_TEMPLATE true')
    settings = _settings(cluster.address, "*", DB_BACKUP_EXCLUDE="scratch,gone")
    resolved = resolve_databases(settings)
    # postgres is an ordinary database; templates and databases refusing connections are not.
    assert resolved.databases == ["app", "billing", "postgres"]
    assert resolved.missing == []
    assert len(resolved.warnings) == 1 and "'gone'" in resolved.warnings[0]

    everything = _settings(cluster.address, "*", DB_BACKUP_EXCLUDE="app,billing,postgres,scratch")
    with pytest.raises(ConfigError, match=r"^POSTGRES_DB: .*selects no database"):
        resolve_databases(everything)



def test_a_scratch_database_a_killed_drill_left_behind_is_not_backed_up_by_every(
        private_cluster: Callable[..., PrivateCluster], tmp_path: Path) -> None:
    """A killed or cancelled drill leaves its marked scratch database (removed only by the
    next drill of the same database): a run of '*' leaves it out, saying so once."""
    cluster = private_cluster()
    with connect(cluster.address) as conn:
        conn.execute('CREATE DATABASE "app"')
        conn.execute('CREATE DATABASE "app_drill"')  # as the drill marks it
        conn.execute(f"COMMENT ON DATABASE app_drill IS '{SCRATCH_MARK} for app; backupd "
                     "drops it after every drill'")
    backup_dir = tmp_path / "backups"
    proc = run_backupd(["backup"], server_env(cluster.address, "*", backup_dir,
                                              HEALTH_PORT="0"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert list(backup_dir.glob("app_2*.sql.gz"))
    assert not list(backup_dir.glob("app_drill_*")), sorted(p.name for p in backup_dir.iterdir())
    said = [str(e["event"]) for e in log_events(proc.stderr) if "app_drill" in str(e["event"])]
    assert len(said) == 1 and "drill" in said[0] and "left" in said[0], said


def test_excluding_a_scratch_database_left_behind_does_not_say_it_is_missing(
        private_cluster: Callable[..., PrivateCluster]) -> None:
    """DB_BACKUP_EXCLUDE=app_drill was the way to keep a drill's leftover out of '*' before
    '*' left marked scratch databases out itself: it is there, so no "there is no database"."""
    cluster = private_cluster()
    with connect(cluster.address) as conn:
        conn.execute('CREATE DATABASE "app"')
        conn.execute('CREATE DATABASE "app_drill"')
        conn.execute(f"COMMENT ON DATABASE app_drill IS '{SCRATCH_MARK} for app; backupd "
                     "drops it after every drill'")
    resolved = resolve_databases(_settings(cluster.address, "*", DB_BACKUP_EXCLUDE="app_drill"))
    assert resolved.databases == ["app", "postgres"]
    assert not [w for w in resolved.warnings if "there is no database" in w], resolved.warnings


def test_every_database_where_the_role_cannot_list_them_is_exit_2(
        private_cluster: Callable[..., PrivateCluster], tmp_path: Path) -> None:
    cluster = private_cluster()
    with connect(cluster.address) as conn:
        conn.execute("CREATE ROLE lister LOGIN PASSWORD 'pw'")
        conn.execute("REVOKE SELECT ON pg_catalog.pg_database FROM PUBLIC")
    lister = ServerAddress(cluster.address.host, cluster.port, "lister", "pw")
    with connect(lister) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("SELECT datname FROM pg_database")  # the premise
    with pytest.raises(ConfigError) as refused:
        resolve_databases(_settings(lister, "*"))
    (line,) = str(refused.value).splitlines()
    assert line.startswith("POSTGRES_DB: "), line
    assert "'lister'" in line and "pg_database" in line, line

    backup_dir = tmp_path / "backups"
    proc = run_backupd(["backup"], server_env(lister, "*", backup_dir, HEALTH_PORT="0"))
    assert proc.returncode == 2, proc.stderr
    (error,) = [ln for ln in proc.stderr.splitlines() if not ln.startswith("{")]
    assert error.startswith("backupd: error: POSTGRES_DB: "), error
    assert not [p for p in backup_dir.glob("*") if ".sql" in p.name]  # nothing was dumped


def test_globals_names_never_parse_as_a_database_backup() -> None:
    when = datetime(2026, 12, 1, 21, 30, 5, tzinfo=UTC)
    assert run_id(when) == "20261201_213005"
    for encrypted in (False, True):
        name = globals_name(when, encrypted)
        assert name == "globals_20261201_213005.globals.sql.gz" + (".age" if encrypted else "")
        parsed = parse_backup_name(name)
        assert parsed is not None and parsed.kind == GLOBALS_KIND and parsed.is_globals
        assert (parsed.database, parsed.taken_at, parsed.encrypted) == (
            GLOBALS_DATABASE, when, encrypted)
    # A database really called "globals" keeps ordinary dump names, of kind "dump".
    dump = parse_backup_name(backup_name("globals", when))
    assert dump is not None and dump.kind == DUMP_KIND and dump.database == "globals"
    for foreign in ("globals_20261201_213005.globals.sql", "app_globals_20261201_213005.globals"
                    ".sql.gz", "globals_20261301_213005.globals.sql.gz"):
        assert parse_backup_name(foreign) is None, foreign


def test_repositories_keep_globals_apart_from_a_database_called_globals(tmp_path: Path) -> None:
    when = datetime(2026, 12, 1, 21, 30, 5, tzinfo=UTC)
    for name in (globals_name(when), backup_name("globals", when)):
        (tmp_path / name).write_bytes(b"x")
    repository = LocalRepository(tmp_path)
    assert [e.name for e in repository.scan("globals")] == [backup_name("globals", when)]
    listed = repository.list_backups(GLOBALS_DATABASE, GLOBALS_KIND)
    assert [(e.name, e.kind) for e in listed] == [(globals_name(when), GLOBALS_KIND)]

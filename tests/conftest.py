"""Shared fixtures: real PostgreSQL databases, a private scram cluster, a webhook receiver and an
S3 endpoint. Every fixture cleans up after itself even when the test fails.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import psycopg
import pytest
from helpers.age import AgeKeys, make_age_keys
from helpers.backups import seed_small_db, take_backup
from helpers.cli import BackupdProcess, kill_group, server_env, start_backupd, stop_backupd
from helpers.clock_daemon import clock_daemon, clock_heard  # noqa: F401  (the clock-step tests')
from helpers.cluster import DEFAULT_CLUSTER_PASSWORD, PrivateCluster
from helpers.faults import small_fs  # noqa: F401  (a fixture: defined there, used everywhere)
from helpers.http_receiver import HttpReceiver
from helpers.leakcheck import RECORD_DIR, session_leaks
from helpers.pg import (
    LOCAL,
    FixtureTemplate,
    ServerAddress,
    connect,
    create_database,
    drop_database,
    fixture_sql_path,
    load_fixture,
    unique_db_name,
)
from helpers.s3server import S3Server
from helpers.tablespaces import source, target  # noqa: F401  (the tablespace tests' clusters)
from helpers.wal import WAL_SERVER_SETTINGS


def _is_xdist_controller(config: pytest.Config) -> bool:
    return (config.pluginmanager.hasplugin("xdist") and not hasattr(config, "workerinput")
            and bool(getattr(config.option, "numprocesses", None)))


def pytest_configure(config: pytest.Config) -> None:
    # Workers are started after this and inherit the environment: they record the secret-leak
    # evidence into the controller's directory (helpers/leakcheck.py).
    os.environ.setdefault("BACKUPD_LEAKCHECK_DIR", str(RECORD_DIR))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under xdist, the secret-leak check once more over every worker's evidence, after the
    last worker has finished (tests/faults/test_zz_secret_leaks.py can only run last on its own
    worker). A leak fails the session."""
    if not _is_xdist_controller(session.config) or session.testscollected == 0:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    searched, leaks = session_leaks()
    lines = [f"secret-leak check over every worker's output: {searched} texts searched, "
             f"{len(leaks)} leak(s)"] + [f"  {secret!r} in {where}" for where, secret in leaks]
    if reporter is not None:
        for line in lines:
            reporter.write_line(line)
    if leaks:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# 2k certificates, 10k verification events, 40 large objects: enough for every code path,
# small enough to load in well under a second.
FIXTURE_SCALE = 0.1


@pytest.fixture(scope="session")
def pg_server() -> ServerAddress:
    try:
        with connect(LOCAL) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {LOCAL.host}:{LOCAL.port} as {LOCAL.user}: {exc}\n"
            "Start it with: pg_ctlcluster --skip-systemctl-redirect 15 main start\n"
            "(or point BACKUPD_TEST_PGHOST/BACKUPD_TEST_PGPORT/BACKUPD_TEST_PGUSER elsewhere)",
            pytrace=False,
        )
    return LOCAL


@pytest.fixture(scope="session")
def fixture_template(pg_server: ServerAddress) -> Iterator[FixtureTemplate]:
    """The certificates fixture loaded once per session, cloned cheaply by ``fixture_db``."""
    sql_file = fixture_sql_path()
    if not sql_file.is_file():
        pytest.fail(f"fixture SQL not found at {sql_file} (BACKUPD_FIXTURE_SQL)", pytrace=False)
    name = unique_db_name("template")
    scale = FIXTURE_SCALE
    try:
        create_database(pg_server, name)
        load_fixture(pg_server, name, scale=scale, sql_file=sql_file)
        with connect(pg_server) as conn:
            conn.execute(
                psycopg.sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE true").format(
                    psycopg.sql.Identifier(name)
                )
            )
        yield FixtureTemplate(name, scale)
    finally:
        drop_database(pg_server, name)


@pytest.fixture
def fixture_db(pg_server: ServerAddress, fixture_template: FixtureTemplate) -> Iterator[str]:
    """A private copy of the loaded fixture; the test may modify or destroy it freely."""
    name = unique_db_name("fixture")
    create_database(pg_server, name, template=fixture_template.name)
    try:
        yield name
    finally:
        drop_database(pg_server, name)


@pytest.fixture
def make_db(pg_server: ServerAddress) -> Iterator[Callable[..., str]]:
    """Factory for empty throwaway databases; ``make_db("we'ird näme/..")`` keeps the name."""
    created: list[str] = []

    def make(name: str | None = None) -> str:
        db = name if name is not None else unique_db_name("empty")
        create_database(pg_server, db)
        created.append(db)
        return db

    yield make
    for db in created:
        drop_database(pg_server, db)


@pytest.fixture
def small_db(pg_server: ServerAddress, make_db: Callable[..., str]) -> str:
    """A throwaway database with a few hundred rows (helpers.backups.seed_small_db): for tests
    that need a real dump but not the whole certificates fixture."""
    db = make_db()
    seed_small_db(pg_server, db)
    return db


@pytest.fixture
def full() -> Iterator[IO[str]]:
    """A file on a full disk: /dev/full, where every write fails with ENOSPC."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    with open("/dev/full", "w") as device:
        yield device


@pytest.fixture
def backup_dir(tmp_path: Path) -> Path:
    # Deliberately not created: backupd must create its own destination directory.
    return tmp_path / "backups"


@pytest.fixture
def keys(tmp_path: Path) -> AgeKeys:
    """A real age key pair: the sidecar gets the public file, a restorer the identity."""
    return make_age_keys(tmp_path / "keys")


@pytest.fixture
def target_db(pg_server: ServerAddress) -> Iterator[str]:
    """A name for a database that does not exist yet (backupd creates it); dropped after."""
    name = unique_db_name("restored")
    yield name
    drop_database(pg_server, name)


@pytest.fixture
def backupd_env(pg_server: ServerAddress, backup_dir: Path) -> Callable[..., dict[str, str]]:
    """``backupd_env(db, **overrides)``: environment for a backupd subprocess backing up ``db``."""

    def make(db: str, **overrides: str) -> dict[str, str]:
        return server_env(pg_server, db, backup_dir, **{"HEALTH_PORT": "0", **overrides})

    return make


@pytest.fixture
def env(small_db: str, backupd_env: Callable[..., dict[str, str]]) -> dict[str, str]:
    """backupd's environment for ``small_db``; modules whose tests need another database
    override this fixture."""
    return backupd_env(small_db)


@pytest.fixture
def backup(env: dict[str, str]) -> Path:
    """A verified backup taken with ``env`` (helpers.backups.take_backup)."""
    return take_backup(env)


@pytest.fixture
def backupd_daemon(tmp_path: Path) -> Iterator[Callable[..., BackupdProcess]]:
    """Factory starting backupd in the background; anything still running is stopped after."""
    procs: list[BackupdProcess] = []

    def start(args: list[str], env: dict[str, str]) -> BackupdProcess:
        proc = start_backupd(args, env, log_dir=tmp_path / f"daemon-{len(procs)}")
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(TimeoutError):
                stop_backupd(proc, timeout=10)
        kill_group(proc)  # stray children of daemons that already exited


@pytest.fixture
def private_cluster() -> Iterator[Callable[..., PrivateCluster]]:
    """Factory: ``private_cluster(password=..., start=True)`` -> a running PrivateCluster."""
    with contextlib.ExitStack() as stack:

        def make(password: str = DEFAULT_CLUSTER_PASSWORD, *, start: bool = True) -> PrivateCluster:
            # Registered before start() so a failed start still removes the directory.
            cluster = stack.enter_context(PrivateCluster(password))
            if start:
                cluster.start()
            return cluster

        yield make


@pytest.fixture
def wal_cluster() -> Iterator[PrivateCluster]:
    """A running private cluster to stream WAL from (helpers.wal.WAL_SERVER_SETTINGS)."""
    with PrivateCluster(DEFAULT_CLUSTER_PASSWORD, server_settings=WAL_SERVER_SETTINGS) as cluster:
        cluster.start()
        yield cluster


@pytest.fixture
def http_receiver() -> Iterator[HttpReceiver]:
    with HttpReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    with S3Server() as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """A fresh bucket. Restarts S3 first in case an earlier test left it stopped."""
    s3_server.start()  # no-op when running
    name = f"bk-{secrets.token_hex(6)}"
    s3_server.client().create_bucket(Bucket=name)
    # Not deleted afterwards: moto state is in memory and unique names keep tests apart.
    return name

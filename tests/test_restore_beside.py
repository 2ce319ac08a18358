"""Plain-SQL restore with DB_RESTORE_JOBS > 1 builds indexes and PRIMARY KEY / UNIQUE /
EXCLUDE constraints on worker sessions beside the load (backupd.pipeline.early_jobs): the
result must be the very database a sequential restore (DB_RESTORE_JOBS=1) gives, a failing
worker must fail the restore and leave nothing, and a worker must never build before its
table's data is committed."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers.backups import (
    flip_byte,
    path_with,
    refresh_manifest,
    sql_of,
    take_backup,
    tool_wrapper_dir,
    write_gzip_sql,
)
from helpers.cli import EnvFactory, kill_group, run_backupd, start_backupd, stop_backupd
from helpers.cluster import DEFAULT_CLUSTER_PASSWORD, PrivateCluster
from helpers.pg import (
    ServerAddress,
    connect,
    database_exists,
    fingerprint,
    pg_binary,
    psql,
    unique_db_name,
)

from backupd.pipeline.psql import BATCH_BYTES
from backupd.pipeline.verification import READ_SIZE

BESIDE = "beside the load"

# Quoted identifiers, a table name with capitals and a space, a matview with an index, a
# partitioned table with indexes, an index with CLUSTER ON, PRIMARY KEY, UNIQUE, EXCLUDE.
SCHEMA = '''
CREATE SCHEMA "Sch""ema";
CREATE TABLE "Sch""ema"."Odd Table" ("Id" int PRIMARY KEY, "Na;me" text UNIQUE,
                                     during tsrange, EXCLUDE USING gist (during WITH &&));
INSERT INTO "Sch""ema"."Odd Table"
  SELECT i, 'n' || i, tsrange('2020-01-01'::timestamp + i * interval '1 day',
                              '2020-01-01'::timestamp + (i + 1) * interval '1 day')
  FROM generate_series(1, 3000) i;
CREATE INDEX "odd ""idx""" ON "Sch""ema"."Odd Table" (lower("Na;me"));
CREATE TABLE plain_t (id bigint NOT NULL, v text, CONSTRAINT plain_pk PRIMARY KEY (id));
INSERT INTO plain_t SELECT i, md5(i::text) FROM generate_series(1, 5000) i;
CREATE INDEX plain_v_idx ON plain_t (v);
ALTER TABLE plain_t CLUSTER ON plain_v_idx;
CREATE INDEX plain_part_idx ON plain_t (id) WHERE id % 2 = 0;
CREATE MATERIALIZED VIEW mv AS SELECT id, v FROM plain_t WHERE id < 100;
CREATE UNIQUE INDEX mv_id ON mv (id);
CREATE TABLE parted (id int NOT NULL, k int, PRIMARY KEY (id, k)) PARTITION BY RANGE (k);
CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (10);
CREATE TABLE parted_2 PARTITION OF parted FOR VALUES FROM (10) TO (20);
CREATE INDEX parted_id ON parted (id);
INSERT INTO parted SELECT i, i % 20 FROM generate_series(1, 4000) i;
CREATE TABLE child (id int REFERENCES plain_t (id), x int);
INSERT INTO child SELECT i, i FROM generate_series(1, 100) i;
CREATE TABLE keys_t ("A b" int, "c""d" int, e int, f int, g int,
  CONSTRAINT "keys ""pk""" PRIMARY KEY ("A b", "c""d"),
  CONSTRAINT keys_def UNIQUE (e) DEFERRABLE INITIALLY DEFERRED,
  CONSTRAINT keys_nnd UNIQUE NULLS NOT DISTINCT (f),
  CONSTRAINT keys_inc UNIQUE (g) INCLUDE (e),
  CONSTRAINT keys_ff UNIQUE (f, g) WITH (fillfactor = 70));
INSERT INTO keys_t SELECT i, -i, i, i, i FROM generate_series(1, 2000) i;
CREATE TABLE child_keys (a int, b int, FOREIGN KEY (a, b) REFERENCES keys_t);
INSERT INTO child_keys VALUES (1, -1);
'''
# How each key constraint and its index are in the catalogue, beyond what pg_dump prints.
KEYS = """
SELECT c.conrelid::regclass::text, c.conname, c.contype, c.condeferrable, c.condeferred,
       c.convalidated, c.conkey::text, i.indexrelid::regclass::text, i.indisprimary,
       i.indisunique, i.indimmediate, i.indnullsnotdistinct, i.indkey::text,
       pg_get_indexdef(i.indexrelid), ic.reloptions::text,
       (SELECT array_agg(d.deptype::text || ' ' || d.refclassid::regclass::text ORDER BY 1)::text
          FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
           AND d.objid = i.indexrelid)
  FROM pg_constraint c JOIN pg_index i ON i.indexrelid = c.conindid
  JOIN pg_class ic ON ic.oid = i.indexrelid
 WHERE c.contype IN ('p', 'u', 'x') ORDER BY 1, 2"""


@pytest.fixture
def schema_db(make_db: Callable[..., str], pg_server: ServerAddress) -> str:
    name = make_db()
    psql(pg_server, name, SCHEMA)
    return name


@pytest.fixture(params=["fixture", "schema"])
def source(request: pytest.FixtureRequest) -> str:
    name = "fixture_db" if request.param == "fixture" else "schema_db"
    return str(request.getfixturevalue(name))


@pytest.fixture
def targets(pg_server: ServerAddress) -> Iterator[Callable[[], str]]:
    made: list[str] = []

    def make() -> str:
        made.append(unique_db_name("beside"))
        return made[-1]

    yield make
    for name in made:
        # With the scratch database a killed backupd leaves (the next restore would drop it).
        for database in [name, *leftovers(pg_server, name)]:
            psql(pg_server, "postgres", f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def restore(env: dict[str, str], backup: Path, target: str, jobs: int,
            **extra: str) -> subprocess.CompletedProcess[str]:
    return run_backupd(["restore", backup.name, "--yes", "--target-db", target],
                       {**env, "DB_RESTORE_JOBS": str(jobs), **extra}, timeout=300)


def schema_only(server: ServerAddress, database: str) -> str:
    out = subprocess.run(
        [pg_binary("pg_dump"), "--schema-only", "-h", server.host, "-p", str(server.port),
         "-U", server.user, database], capture_output=True, text=True, check=True).stdout
    return re.sub(r"^\\(un)?restrict .*$", "", out, flags=re.M)


def leftovers(server: ServerAddress, target: str) -> list[str]:
    """The scratch databases of restores into ``target`` still there."""
    with connect(server) as conn:
        return [str(r[0]) for r in conn.execute(
            "SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (target,))]


def test_parallel_restore_gives_the_sequential_database(
        source: str, backupd_env: EnvFactory, pg_server: ServerAddress,
        targets: Callable[[], str]) -> None:
    env = backupd_env(source)
    backup = take_backup(env)
    sequential, parallel = targets(), targets()

    one = restore(env, backup, sequential, 1)
    two = restore(env, backup, parallel, 2)

    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]
    # DB_RESTORE_JOBS=1 is today's restore: no worker session at all.
    assert BESIDE not in one.stderr
    assert BESIDE in two.stderr
    assert schema_only(pg_server, parallel) == schema_only(pg_server, sequential)
    assert fingerprint(pg_server, parallel) == fingerprint(pg_server, sequential)
    keys = []
    for database in (sequential, parallel):
        with connect(pg_server, database) as conn:
            keys.append(conn.execute(KEYS).fetchall())
    assert keys[0] and keys[1] == keys[0]
    with connect(pg_server, parallel) as conn:
        assert conn.execute("SELECT count(*) FROM pg_index WHERE NOT indisvalid "
                            "OR NOT indisready").fetchone() == (0,)
        # CREATE INDEX records how many rows it indexed (pg_class.reltuples, which the
        # load's COPY does not change): a build before its table's data was committed
        # would have seen none of them.
        built = conn.execute("""
            SELECT i.indexrelid::regclass::text, ic.reltuples, t.oid::regclass::text
              FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
              JOIN pg_class t ON t.oid = i.indrelid JOIN pg_am am ON am.oid = ic.relam
             WHERE am.amname = 'btree' AND i.indpred IS NULL AND t.relkind = 'r'
               AND t.relnamespace::regnamespace::text NOT IN ('pg_catalog',
                                                                'information_schema',
                                                                'pg_toast')""").fetchall()
        assert built
        for index, reltuples, table in built:
            count = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
            assert count is not None
            assert reltuples == count[0], (index, table)


def test_duplicate_key_fails_the_early_primary_key_and_leaves_nothing(
        schema_db: str, backupd_env: EnvFactory, pg_server: ServerAddress,
        targets: Callable[[], str]) -> None:
    env = backupd_env(schema_db)
    backup = take_backup(env)
    sql = sql_of(backup)
    copy = sql.index(b"COPY public.plain_t ")
    row = sql.index(b"\n", copy) + 1
    # The first row again: the load takes it, the PRIMARY KEY built beside it cannot.
    write_gzip_sql(backup, sql[:row] + sql[row:sql.index(b"\n", row) + 1] + sql[row:])
    refresh_manifest(backup)
    target = targets()

    proc = restore(env, backup, target, 2)

    assert proc.returncode == 1, proc.stderr[-3000:]
    assert BESIDE in proc.stderr, proc.stderr
    assert re.search(r"CONSTRAINT plain_t plain_pk \(built beside the load\) failed: "
                     r"could not create unique index \"plain_pk\"", proc.stderr), proc.stderr
    assert not database_exists(pg_server, target)
    assert leftovers(pg_server, target) == []


def test_an_error_in_the_load_ends_the_wait_for_its_tables_data(
        schema_db: str, backupd_env: EnvFactory, pg_server: ServerAddress,
        targets: Callable[[], str]) -> None:
    """psql stops at an error in a table's data, which then never commits: the entries
    waiting for it never become ready, and the stream must stop waiting for them once psql
    is gone (before: until the job timeout) and fail with psql's own error."""
    env = backupd_env(schema_db)
    backup = take_backup(env)
    sql = sql_of(backup)
    row = sql.index(b"\n", sql.index(b"COPY public.plain_t ")) + 1
    write_gzip_sql(backup, sql[:row] + b"not a number\tx\n" + sql[row:])
    refresh_manifest(backup)
    target = targets()

    proc = restore(env, backup, target, 2, DB_BACKUP_JOB_TIMEOUT_SECONDS="60")

    assert proc.returncode == 1, proc.stderr[-3000:]
    assert BESIDE in proc.stderr, proc.stderr
    assert "job timeout" not in proc.stderr, proc.stderr[-3000:]
    assert re.search(r"failed and was rolled back: .*invalid input syntax for type bigint",
                     proc.stderr), proc.stderr[-3000:]
    assert not database_exists(pg_server, target)
    assert leftovers(pg_server, target) == []


def test_file_changed_between_the_passes_fails_and_leaves_nothing(
        make_db: Callable[..., str], backupd_env: EnvFactory, pg_server: ServerAddress,
        targets: Callable[[], str], tmp_path: Path) -> None:
    source = make_db()
    psql(pg_server, source, """
        CREATE TABLE early (id int PRIMARY KEY, v text);
        INSERT INTO early SELECT i, 'v' || i FROM generate_series(1, 1000) i;
        CREATE TABLE big (v text);
        INSERT INTO big SELECT md5(i::text) || md5((i * 7)::text)
          FROM generate_series(1, 200000) i;
        CREATE INDEX big_v ON big (v);""")
    env = backupd_env(source)
    backup = take_backup(env)
    # The second pass reads READ_SIZE at a time and is held up by psql's pipe until psql
    # runs: by then the shim below has changed the bytes it reads next.
    assert backup.stat().st_size > 2 * READ_SIZE
    changed = tmp_path / "changed"
    changed.write_bytes(backup.read_bytes())
    flip_byte(changed, changed.stat().st_size * 3 // 4)
    # psql starts once the first pass has verified the file: the second pass reads another.
    shim = tool_wrapper_dir(tmp_path / "shim", tmp_path / "tools.log", ("psql",),
                            extra_shell=f'case "$1" in --version|-V) ;; '
                                        f"*) cp '{changed}' '{backup}';; esac\n")
    target = targets()

    proc = restore(env, backup, target, 2, PATH=path_with(shim))

    assert proc.returncode == 1, proc.stderr[-3000:]
    assert BESIDE in proc.stderr, proc.stderr
    assert "failed verification" in proc.stderr
    assert not database_exists(pg_server, target)
    assert leftovers(pg_server, target) == []


@pytest.mark.parametrize("how", ["job-timeout", "sigterm"])
def test_a_stopped_restore_stops_its_worker_sessions(
        how: str, make_db: Callable[..., str], backupd_env: EnvFactory,
        pg_server: ServerAddress, targets: Callable[[], str], tmp_path: Path) -> None:
    """The job's cancel (here its timeout) cancels the worker's build, and the restore drops
    its scratch database; backupd killed by SIGTERM (a one-shot command dies at once, like
    kill -9) leaves no worker building on the server either."""
    source = make_db()
    # An index whose build takes minutes (10 ms a row), on the first table loaded. The
    # function is made slow only once the source's own index exists, or taking the backup's
    # source would cost those minutes too.
    psql(pg_server, source, """
        CREATE FUNCTION slow(int) RETURNS int IMMUTABLE LANGUAGE sql AS 'SELECT $1';
        CREATE TABLE a_slow (id int);
        INSERT INTO a_slow SELECT i FROM generate_series(1, 20000) i;
        CREATE INDEX a_slow_idx ON a_slow (slow(id));
        CREATE OR REPLACE FUNCTION slow(int) RETURNS int IMMUTABLE LANGUAGE sql
          AS 'SELECT $1 + 0 FROM pg_catalog.pg_sleep(0.01)';
        CREATE TABLE b_next (id int);
        INSERT INTO b_next SELECT i FROM generate_series(1, 1000) i;
        -- The dump's last entry (it carries the footer) stays psql's.
        CREATE INDEX b_next_idx ON b_next (id);""")
    env = {**backupd_env(source), "DB_RESTORE_JOBS": "2"}
    backup = take_backup(env)
    target = targets()
    sessions = "SELECT count(*) FROM pg_stat_activity WHERE starts_with(datname, %s)"
    building = sessions + " AND query LIKE 'CREATE INDEX a_slow_idx%%' AND state = 'active'"
    if how == "job-timeout":
        proc = run_backupd(["restore", backup.name, "--yes", "--target-db", target],
                           {**env, "DB_BACKUP_JOB_TIMEOUT_SECONDS": "15"}, timeout=150)
        assert proc.returncode == 1, proc.stderr[-3000:]
        assert "job timeout" in proc.stderr
        assert BESIDE in proc.stderr
        assert "dropped the incomplete database" in proc.stderr
        assert not database_exists(pg_server, target)
        assert leftovers(pg_server, target) == []
        return
    running = start_backupd(["restore", backup.name, "--yes", "--target-db", target], env,
                            log_dir=tmp_path / "log")
    try:
        with connect(pg_server) as conn:
            deadline = time.monotonic() + 120
            while conn.execute(building, (target,)).fetchone() != (1,):
                assert running.poll() is None, running.stderr_path.read_text()[-3000:]
                assert time.monotonic() < deadline, "the index build never started"
                time.sleep(0.1)
            stop_backupd(running)
            # The server notices the worker's client is gone (client_connection_check_interval)
            # and ends the build, which would otherwise run for minutes.
            deadline = time.monotonic() + 60
            while conn.execute(sessions, (target,)).fetchone() != (0,):
                assert time.monotonic() < deadline, "a session of the restore is still there"
                time.sleep(0.2)
    finally:
        kill_group(running)
        running.wait()
    assert BESIDE in running.stderr_path.read_text()


def test_the_commits_workers_wait_for_reach_psql_at_once(
        make_db: Callable[..., str], backupd_env: EnvFactory, pg_server: ServerAddress,
        targets: Callable[[], str]) -> None:
    """The SQL goes to psql in batches, but a commit a worker waits for (its NOTIFY) is
    flushed as it is sent. Held back, the stream would wait before post-data for workers
    that wait for that very NOTIFY: here the whole dump is smaller than one batch, so
    nothing else would ever push it out (the job timeout ends the wait as a failure)."""
    source = make_db()
    psql(pg_server, source, """
        CREATE TABLE early (id int PRIMARY KEY, v text);
        INSERT INTO early SELECT i, 'v' || i FROM generate_series(1, 100) i;
        CREATE TABLE later (id int);
        INSERT INTO later SELECT i FROM generate_series(1, 10) i;
        -- The dump's last entry (it carries the footer) stays psql's.
        CREATE INDEX later_idx ON later (id);""")
    env = backupd_env(source)
    backup = take_backup(env)
    assert len(sql_of(backup)) < BATCH_BYTES
    target = targets()

    proc = restore(env, backup, target, 2, DB_BACKUP_JOB_TIMEOUT_SECONDS="60")

    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "building 1 indexes and constraints" in proc.stderr, proc.stderr
    assert fingerprint(pg_server, target) == fingerprint(pg_server, source)



# psql starts 0.5 s late, so the worker sessions' listener always connects before it.
@pytest.mark.parametrize(("max_connections", "failure"), [
    ("2", "failed and was rolled back: psql: error"),  # the admin session and the listener
    ("3", "a worker session could not be opened"),  # and psql: no slot for a worker
])
def test_a_server_at_its_connection_limit_fails_the_restore_naming_the_setting(
        max_connections: str, failure: str, schema_db: str, backupd_env: EnvFactory,
        tmp_path: Path) -> None:
    """The worker sessions are connections beside psql's: a server that refuses one of
    them, or psql itself (the listener connects beside psql), fails the restore in one line
    naming DB_RESTORE_JOBS, and leaves no database behind. (A private cluster: the limit is
    the server's.)"""
    backup = take_backup(backupd_env(schema_db))
    slow_psql = tool_wrapper_dir(tmp_path / "bin", tmp_path / "tools.log", ("psql",),
                                 extra_shell='case "$1" in --version|-V) ;; *) sleep 0.5;; esac\n')
    with PrivateCluster(DEFAULT_CLUSTER_PASSWORD, server_settings={
            "max_connections": max_connections,
            "superuser_reserved_connections": "0"}) as cluster:
        cluster.start()
        done = restore(backupd_env(schema_db, POSTGRES_HOST="127.0.0.1",
                                   POSTGRES_PORT=str(cluster.port),
                                   POSTGRES_PASSWORD=DEFAULT_CLUSTER_PASSWORD),
                       backup, "restored", 2, PATH=path_with(slow_psql))
        with connect(cluster.address) as conn:
            databases = {str(r[0]) for r in conn.execute("SELECT datname FROM pg_database")}
    assert done.returncode == 1
    assert failure in done.stderr
    assert "too many clients" in done.stderr
    assert "DB_RESTORE_JOBS=1 restores through psql alone" in done.stderr
    assert databases == {"postgres", "template0", "template1"}

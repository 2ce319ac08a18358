"""The worker sessions of a plain restore (backupd.pipeline.early_jobs) against the real
server, with a plan written here: what runs when, measured by the server's own clock."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from helpers.cluster import free_port
from helpers.pg import ServerAddress, connect
from psycopg import Connection

from backupd.cancel import CancelToken
from backupd.errors import JobFailed
from backupd.pipeline.commit_chunks import CHANNEL, POST_DATA
from backupd.pipeline.config import ConnectionConfig
from backupd.pipeline.early_entries import EarlyEntry, EarlyPlan
from backupd.pipeline.early_jobs import EarlyJobs, out_of_slots

TABLE = b"public.t"
NAP = 0.3  # seconds each entry runs: long enough that two running together overlap


def entry(number: int, exclusive: bool, table: bytes = TABLE, data_bytes: int = 0,
          nap: float = NAP) -> EarlyEntry:
    # Each entry records when it ran, by the server's clock, in a table of its own.
    sql = (f"INSERT INTO ran SELECT {number}, clock_timestamp(); SELECT pg_sleep({nap}); "
           f"INSERT INTO ran SELECT {number}, clock_timestamp();")
    return EarlyEntry(number, f"e{number}", "CONSTRAINT" if exclusive else "INDEX", table,
                      exclusive, sql, data_bytes)


def run(server: ServerAddress, database: str, entries: tuple[EarlyEntry, ...],
        jobs: int, post_data: bool = True) -> dict[int, tuple[float, float]]:
    """Run ``entries`` as the plan of table t's data (entry 1) with ``jobs`` sessions, the
    main stream already waiting before post-data (``post_data``: its last commit is in, as
    the stream announces it); returns each entry's (start, end) in seconds."""
    return run_tables(server, database, entries, (TABLE,), jobs, post_data)


def run_tables(server: ServerAddress, database: str, entries: tuple[EarlyEntry, ...],
               tables: tuple[bytes, ...], jobs: int,
               post_data: bool = True) -> dict[int, tuple[float, float]]:
    """``run`` over several tables, their data entries numbered 1, 2, ... in order: each
    committed (NOTIFY) once the entries of the one before are running."""
    def announce(main: Connection) -> None:
        for number in range(1, len(tables) + 1):
            main.execute(f"NOTIFY {CHANNEL}, '{number}'")
            if number == 1 and len(tables) > 1:
                wait_until_started(main, entries[0].entry)
        if post_data:
            main.execute(f"NOTIFY {CHANNEL}, '{POST_DATA}'")

    plan = EarlyPlan((), entries, tuple(enumerate(tables, 1)), len(tables) + 1)
    return run_plan(server, database, plan, jobs, announce)


def run_plan(server: ServerAddress, database: str, plan: EarlyPlan, jobs: int,
             announce: Callable[[Connection], object]) -> dict[int, tuple[float, float]]:
    """Run ``plan`` with ``jobs`` sessions, its data announced by ``announce`` on a session
    of its own (the main stream's); returns each entry's (start, end) in seconds."""
    with connect(server, database) as conn:
        conn.execute("CREATE TABLE t (id int); CREATE TABLE ran (entry int, at timestamptz)")
    config = ConnectionConfig(server.host, server.port, server.user, database,
                              connect_timeout=5, password=server.password or "")
    with EarlyJobs(plan, config, jobs, CancelToken(), main_gone=lambda: False) as jobs_:
        with connect(server, database) as main:
            announce(main)
        jobs_.before_post_data()
    with connect(server, database) as conn:
        rows = conn.execute("SELECT entry, array_agg(extract(epoch FROM at) ORDER BY at) "
                            "FROM ran GROUP BY entry").fetchall()
    return {int(n): (float(at[0]), float(at[1])) for n, at in rows}


def wait_until_started(conn: Connection, number: int) -> None:
    # From the server's view of the worker's session: an entry's statements run as one
    # transaction, so its first row in ``ran`` shows only once it has ended.
    running = f"%INSERT INTO ran SELECT {number}, clock_timestamp()%"
    for _ in range(100):
        # This database's sessions only: the tests beside it run the same statements.
        if conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
                        "AND datname = current_database() AND state = 'active' "
                        "AND query LIKE %s", (running,)).fetchone():
            return
        time.sleep(0.05)
    raise AssertionError(f"entry {number} never started")


def overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def test_exclusive_entries_on_one_table_never_run_together(
        pg_server: ServerAddress, make_db: Callable[..., str]) -> None:
    """Each worker connects when it takes its first entry: another worker must not take a
    second exclusive entry on the same table meanwhile (it did, seen in the server's log
    as two ALTER TABLEs on one table started together)."""
    ran = run(pg_server, make_db(), (entry(10, True), entry(11, True)), jobs=2)

    assert set(ran) == {10, 11}
    assert not overlap(ran[10], ran[11]), ran


def test_index_builds_on_one_table_run_together(
        pg_server: ServerAddress, make_db: Callable[..., str]) -> None:
    ran = run(pg_server, make_db(), (entry(10, False), entry(11, False)), jobs=2)

    assert overlap(ran[10], ran[11]), ran


def test_the_last_tables_data_and_post_data_announced_in_one_commit(
        pg_server: ServerAddress, make_db: Callable[..., str]) -> None:
    """As the stream sends them when the last TABLE DATA entry comes right before post-data:
    both NOTIFYs in one transaction. The table's builds become ready, and both workers may
    take them."""
    plan = EarlyPlan((), (entry(10, False), entry(11, False)), ((1, TABLE),), 2)
    ran = run_plan(pg_server, make_db(), plan, 2, lambda main: main.execute(
        f"NOTIFY {CHANNEL}, '1'; NOTIFY {CHANNEL}, '{POST_DATA}'"))

    assert set(ran) == {10, 11}
    assert overlap(ran[10], ran[11]), ran


def test_psqls_session_is_a_workers_only_once_psql_committed_the_last_data(
        pg_server: ServerAddress, make_db: Callable[..., str]) -> None:
    """With DB_RESTORE_JOBS=2, one worker runs beside psql while psql loads; the second only
    once psql's last data commit is in (its NOTIFY), not as soon as the stream reached
    post-data: psql may still be loading the last table then, and the second worker would
    take whatever was ready, not that table's builds, the restore's longest chain."""
    ran = run(pg_server, make_db(), (entry(10, False), entry(11, False)), jobs=2,
              post_data=False)

    assert set(ran) == {10, 11}
    assert not overlap(ran[10], ran[11]), ran


@pytest.mark.timeout(30)
def test_builds_whose_data_never_committed_fail_the_restore_instead_of_waiting(
        pg_server: ServerAddress, make_db: Callable[..., str]) -> None:
    """psql's last data commit is in, but table b's was never announced (the stream and the
    capture disagreeing on the dump): its build would wait forever, and the restore with it."""
    plan = EarlyPlan((), (entry(10, False), entry(11, False, b"public.b")),
                     ((1, TABLE), (2, b"public.b")), 3)

    def announce(main: Connection) -> None:
        main.execute(f"NOTIFY {CHANNEL}, '1'")
        main.execute(f"NOTIFY {CHANNEL}, '{POST_DATA}'")

    with pytest.raises(JobFailed, match=r"public\.b was never reported committed"):
        run_plan(pg_server, make_db(), plan, 2, announce)


@pytest.mark.timeout(30)
def test_a_lost_listener_fails_the_restore_instead_of_waiting(
        pg_server: ServerAddress, make_db: Callable[..., str]) -> None:
    """The session that hears of committed data is killed before the data is announced:
    nothing would ever make the builds ready."""
    plan = EarlyPlan((), (entry(10, False),), ((1, TABLE),), 2)

    def kill_listener(main: Connection) -> None:
        # This database's listener only (channels are per database): a test beside this one
        # listens on the same channel in its own database, and was killed with it.
        killed = main.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              f"WHERE query = 'LISTEN {CHANNEL}' "
                              "AND datname = current_database()").fetchall()
        assert killed == [(True,)]

    with pytest.raises(JobFailed, match="lost the session that follows the load"):
        run_plan(pg_server, make_db(), plan, 2, kill_listener)


def test_the_table_with_the_most_work_left_goes_first(
        pg_server: ServerAddress, make_db: Callable[..., str]) -> None:
    """One worker, busy on table a while b and c are committed. b is first in dump order and
    the larger table, but c has two entries left: 2 x 600 bytes of data to index against
    b's 1 x 1000. c's first entry runs first; then b's (1000 > c's last 600). In dump order,
    or by data size alone (pg_restore -j's order), b's would have run first."""
    a, b, c = b"public.a", b"public.b", b"public.c"
    entries = (entry(10, False, a, 10, nap=0.6), entry(11, False, b, 1000),
               entry(12, True, c, 600), entry(13, False, c, 600))
    ran = run_tables(pg_server, make_db(), entries, (a, b, c), jobs=1)

    assert sorted(ran, key=lambda number: ran[number][0]) == [10, 12, 11, 13], ran



@pytest.mark.parametrize(("error", "refused"), [
    ('psql: error: connection to server at "db" (10.0.0.5), port 5432 failed: FATAL:  sorry, '
     "too many clients already", True),
    ("FATAL:  remaining connection slots are reserved for non-replication superuser "
     "connections", True),  # PostgreSQL 15
    ("FATAL:  remaining connection slots are reserved for roles with the SUPERUSER "
     "attribute", True),  # 16 and later
    ('FATAL:  too many connections for role "app"', True),  # the role's CONNECTION LIMIT
    ('FATAL:  password authentication failed for user "app"', False),
    ('ERROR:  relation "t" already exists', False),
])
def test_psqls_refusals_for_want_of_a_slot_are_told_apart(error: str, refused: bool) -> None:
    """psql's failure names DB_RESTORE_JOBS only when the worker sessions may have taken
    its slot."""
    assert out_of_slots(error) is refused


def test_a_refused_listener_fails_the_restore_as_a_refused_worker_does(
        pg_server: ServerAddress) -> None:
    """The session that follows the load is a connection like the workers': refused (here,
    nothing listens on the port), the restore fails in the same words, naming the setting."""
    nowhere = ConnectionConfig(pg_server.host, free_port(), pg_server.user, "db",
                               connect_timeout=2)
    plan = EarlyPlan((), (entry(10, False),), ((1, TABLE),), 2)
    with pytest.raises(JobFailed) as failed:
        EarlyJobs(plan, nowhere, 2, CancelToken(), main_gone=lambda: False)
    message = str(failed.value)
    assert message.startswith("restore into 'db' failed: a worker session could not be opened: ")
    assert "\n" not in message
    assert message.endswith("DB_RESTORE_JOBS=1 restores through psql alone")

"""Worker sessions that build a plain dump's indexes and constraints beside the load.

The entries of an :class:`~backupd.pipeline.early_entries.EarlyPlan` come from the verify
pass that completed before any SQL reached the server, so they are verified SQL. An entry
becomes ready once its table's data is committed: the main session NOTIFYs ``CHANNEL`` as it
commits each TABLE DATA entry (PostgreSQL delivers a notification only on commit; a second
session could not even see a table whose CREATE is not committed). Up to ``jobs`` sessions
(autocommit, the restore's bulk-load settings, then the dump's preamble settings) run them:
at most ``jobs - 1`` while the main session still loads data (it is a session too), all
``jobs`` once its last data commit is in (the POST_DATA notification). An entry that takes
ACCESS EXCLUSIVE (a constraint, or an index entry carrying CLUSTER ON / REPLICA IDENTITY)
never runs beside another entry on its table; index builds on one table (SHARE locks) may:
pg_restore -j's rule. Of the entries ready together, the one whose table has the most work
left goes first. Each session may use maintenance_work_mem (DB_RESTORE_MAINTENANCE_WORK_MEM)
for its sort.

The first failure cancels the others and is raised in the main stream (the restore fails,
its scratch database is dropped); so does the job's cancel. ``close`` joins every thread.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Callable
from types import TracebackType

import psycopg

from backupd.cancel import CancelToken
from backupd.errors import JobFailed
from backupd.pipeline.commit_chunks import CHANNEL, POST_DATA
from backupd.pipeline.config import APPLICATION_NAME, ConnectionConfig
from backupd.pipeline.early_entries import EarlyEntry, EarlyPlan

Connection = psycopg.Connection[tuple]  # type: ignore[type-arg]
_POLL = 0.2  # seconds: how often waits look at the cancel token and the stop flag


class EarlyJobs:
    """Use as a context manager around the main stream; it is the stream's ``Beside``."""

    def __init__(self, plan: EarlyPlan, connection: ConnectionConfig, jobs: int,
                 cancel: CancelToken, main_gone: Callable[[], bool]) -> None:
        """``main_gone``: whether the main psql stopped (its error fails the restore; its
        data never commits, so nothing waits for it)."""
        self._plan = plan
        self._connection = connection
        self._jobs = jobs
        self._cancel = cancel
        self._lock = threading.Condition()
        self._waiting = list(plan.entries)  # not yet ready, in dump order
        self._ready: dict[bytes, list[EarlyEntry]] = {}  # by table, in dump order
        # Taken by a worker; its session is None while that worker still connects.
        self._running: dict[int, tuple[EarlyEntry, Connection | None]] = {}
        self._finished: set[int] = set()  # entry numbers that ran (or failed)
        self._loaded = False  # psql committed the last of the data (POST_DATA)
        self._failure: str | None = None
        self._stopping = False
        self._committed: dict[str, bytes] = {str(n): t for n, t in plan.data_entries}
        self._listener = self._listening()
        self._threads = [threading.Thread(target=self._listen, name="restore-listen")]
        self._threads += [threading.Thread(target=self._work, name=f"restore-worker-{i}")
                          for i in range(jobs)]
        self._unregister: Callable[[], None] = lambda: None
        self._main_gone = main_gone

    def _listening(self) -> Connection:
        """The session that learns of each table's committed data; one refused fails the
        restore as a refused worker session does."""
        try:
            conn = _connect(self._connection, ())
        except psycopg.Error as exc:
            raise JobFailed(f"restore into {self._connection.database!r} failed: "
                            f"{self._refused(exc)}") from None
        try:
            conn.execute(f"LISTEN {CHANNEL}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _refused(self, exc: psycopg.Error) -> str:
        return (f"a worker session could not be opened: {_describe(exc)}; "
                f"{fewer_sessions_hint(self._jobs)}")

    def __enter__(self) -> EarlyJobs:
        for thread in self._threads:
            thread.start()
        self._unregister = self._cancel.on_cancel(lambda: self._stop(None))
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._unregister()
        self._stop(None)
        for thread in self._threads:
            thread.join()
        self._listener.close()

    # the main stream's side (Beside)

    def check(self) -> None:
        with self._lock:
            if self._failure is not None:
                raise JobFailed(f"restore into {self._connection.database!r} failed: "
                                f"{self._failure}")

    def before_post_data(self) -> None:
        with self._lock:
            while self._left() and self._failure is None and not self._stopping:
                self._lock.wait(_POLL)
                self._cancel.raise_if_cancelled()
                if self._main_gone():
                    return  # psql's error is the restore's
        self._cancel.raise_if_cancelled()
        self.check()

    # threads

    def _left(self) -> int:
        """How many entries have not run yet (under the lock)."""
        return len(self._plan.entries) - len(self._finished)

    def _stop(self, failure: str | None) -> None:
        with self._lock:
            if failure is not None and self._failure is None:
                self._failure = failure
            self._stopping = True
            running = [conn for _, conn in self._running.values() if conn is not None]
            self._lock.notify_all()
        for conn in running:
            # It may have ended meanwhile, or its server be gone: its thread sees that.
            with contextlib.suppress(psycopg.Error):
                conn.cancel_safe()

    def _listen(self) -> None:
        try:
            while True:
                with self._lock:
                    if self._stopping or self._loaded:
                        return  # every table's data is committed: nothing more to hear
                for notify in self._listener.notifies(timeout=_POLL):
                    self._data_committed(notify.payload)
        except psycopg.Error as exc:
            self._stop(f"restore: lost the session that follows the load ({exc})")

    def _data_committed(self, payload: str) -> None:
        if payload == POST_DATA:
            self._all_data_committed()
            return
        table = self._committed.get(payload)
        with self._lock:
            ready = [e for e in self._waiting if e.table == table]
            if table is not None and ready:
                # All of a table's entries at once: a table with ready entries has none
                # waiting (what _work_left counts on).
                self._ready.setdefault(table, []).extend(ready)
                self._waiting = [e for e in self._waiting if e.table != table]
                self._lock.notify_all()

    def _all_data_committed(self) -> None:
        """psql committed the last of the data: its session, idle until every entry ran,
        leaves its core to a worker. (Raised when the stream merely reached post-data, a
        worker started on what was ready while psql still loaded the last table, whose
        builds were not ready yet: the restore's longest chain.)"""
        with self._lock:
            self._loaded = True
            # Builds still waiting for their table's data would wait forever (the stream
            # and the capture disagreed on the dump).
            never = sorted({e.table for e in self._waiting})
            self._lock.notify_all()
        if never:
            self._stop("the data of " + ", ".join(t.decode(errors="replace") for t in never)
                       + " was never reported committed before post-data; the restore "
                       "stopped rather than wait for it")

    def _next(self) -> EarlyEntry | None:
        """The ready entry that may run now with the most work left on its table (under
        the lock); None: stop."""
        while not self._stopping:
            # At most jobs - 1 beside psql while it loads (it is a session too).
            limit = self._jobs if self._loaded else max(self._jobs - 1, 1)
            if len(self._running) < limit:
                entry = self._best_runnable()
                if entry is not None:
                    ready = self._ready[entry.table]
                    ready.remove(entry)
                    if not ready:
                        del self._ready[entry.table]
                    return entry
            if not self._left():
                return None
            self._lock.wait(_POLL)
        return None

    def _best_runnable(self) -> EarlyEntry | None:
        """pg_restore -j's rule on locks: an entry that takes ACCESS EXCLUSIVE never runs
        beside another entry on its table. Of the tables' first entries that may run, the
        one whose table has the most work left: its data size times the entries on it no
        worker took yet, which are its ready ones (then dump order). A table's entries run
        one after another as often as not (an exclusive one blocks the rest), so that table
        is the restore's longest chain. By data size alone (pg_restore -j's order) a large
        table whose builds mostly ran beside the load went first, and the table loaded
        last, with all of its builds still to come, waited behind it."""
        running = [entry for entry, _ in self._running.values()]
        blocked = {e.table for e in running if e.exclusive}
        busy = {e.table for e in running}
        best: EarlyEntry | None = None
        for table, ready in self._ready.items():
            if table in blocked:
                continue
            entry = ready[0] if table not in busy else next(
                (e for e in ready if not e.exclusive), None)
            if entry is not None and (best is None or self._work_left(entry)
                                      > self._work_left(best)):
                best = entry
        return best

    def _work_left(self, entry: EarlyEntry) -> tuple[int, int]:
        return entry.data_bytes * len(self._ready[entry.table]), -entry.entry

    def _work(self) -> None:
        conn: Connection | None = None
        try:
            while True:
                with self._lock:
                    entry = self._next()
                    if entry is None:
                        return
                    # Taken before connecting: the limit and the rule on exclusive entries
                    # count it while the lock is let go.
                    self._running[entry.entry] = (entry, conn)
                    if conn is None:
                        self._lock.release()
                        try:
                            conn = _connect(self._connection, self._plan.preamble)
                        finally:
                            self._lock.acquire()
                        if self._stopping:
                            return  # stopped while connecting: _stop cancelled the others only
                        self._running[entry.entry] = (entry, conn)
                try:
                    conn.execute(entry.sql.encode())
                except psycopg.Error as exc:
                    self._stop(f"{entry.kind} {entry.name} (built beside the load) failed: "
                               f"{_describe(exc)}")
                    return
                finally:
                    with self._lock:
                        self._running.pop(entry.entry, None)
                        self._finished.add(entry.entry)
                        self._lock.notify_all()
        except psycopg.Error as exc:  # connecting (or its session settings)
            self._stop(self._refused(exc))
        finally:
            if conn is not None:
                conn.close()


def fewer_sessions_hint(jobs: int) -> str:
    """A server at its connection limit refuses the sessions beside psql: which setting
    opens them."""
    return (f"DB_RESTORE_JOBS={jobs} opens up to {jobs} sessions beside psql's; "
            "DB_RESTORE_JOBS=1 restores through psql alone")


# The server's refusals for want of a connection slot (max_connections, the superuser
# reserve, a role's or a database's CONNECTION LIMIT).
_OUT_OF_SLOTS = re.compile(r"too many (?:clients|connections)|connection slots are reserved")


def out_of_slots(error: str) -> bool:
    """Whether ``error`` (psql's, say) is a refusal the worker sessions may have caused."""
    return _OUT_OF_SLOTS.search(error) is not None


def _describe(exc: psycopg.Error) -> str:
    """The server's message and detail; libpq's (a refused connection) on one line."""
    diag = exc.diag
    text = diag.message_primary or " ".join(str(exc).split())
    if diag.message_detail:
        text += f" ({diag.message_detail.strip()})"
    return text


def _connect(config: ConnectionConfig, preamble: tuple[str, ...]) -> Connection:
    """An autocommit session like the restore's psql (bulk-load settings, application name
    backupd: the stall watchdog sees its index builds as the job's work)."""
    options = config.options()
    conn = psycopg.connect(host=config.host, port=config.port, user=config.user,
                           password=config.password, dbname=config.database,
                           connect_timeout=config.connect_timeout,
                           application_name=APPLICATION_NAME, options=options,
                           autocommit=True)
    if conn.info.server_version >= 140000:
        # Should backupd die (kill -9, or SIGTERM to a one-shot restore), the server ends an
        # index build of this session within a second instead of finishing it first.
        conn.execute("SET client_connection_check_interval = 1000")
    for setting in preamble:
        conn.execute(setting.encode())
    return conn

"""What the server says a stalled job waits on: the blocking lock and its holder.

Asked by the stall watchdog (``backupd.watchdog``) on a connection of its own, short-lived,
with a statement timeout: the server the job waits on may itself be the problem."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import psycopg
from psycopg import sql

from backupd.pipeline.config import APPLICATION_NAME
from backupd.postgres.connection import as_text, describe_error
from backupd.postgres.databases import MAINTENANCE_DATABASES
from backupd.postgres.not_text import NameNotText
from backupd.progress import Place
from backupd.settings import Settings
from backupd.watchdog import ServerView

# The watchdog's own session is named apart from the job's, so it never describes itself.
PROBE_APPLICATION_NAME = f"{APPLICATION_NAME}-watchdog"
STATEMENT_TIMEOUT_MS = 5000
# A hung server must not hang the watchdog: connecting is bounded as well.
CONNECT_TIMEOUT_SECONDS = 5
QUERY_SHOWN = 80

# Every non-idle session of backupd (pg_dump, psql, pg_restore and backupd's own connections)
# on the server (a restore works in a scratch database), the job's database first; for each,
# the lock it waits for (if any), and each session holding what it waits for, with the modes
# that holder has been granted on the same object.
_WAITS = """
SELECT w.pid, w.datname = current_database(), w.state,
       coalesce(w.wait_event_type || ':' || w.wait_event, ''),
       left(regexp_replace(coalesce(w.query, ''), '\\s+', ' ', 'g'), %(shown)s),
       wl.locktype,
       CASE WHEN wl.relation IS NULL THEN NULL
            WHEN w.datname = current_database() THEN
              (SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname)
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE c.oid = wl.relation)
            ELSE 'with oid ' || wl.relation || ' in database ' || quote_ident(w.datname) END,
       wl.mode,
       b.pid, coalesce(b.application_name, ''), coalesce(b.state, ''),
       (SELECT string_agg(DISTINCT h.mode, '+') FROM pg_locks h
         WHERE h.pid = b.pid AND h.granted AND h.locktype = wl.locktype
           AND h.relation IS NOT DISTINCT FROM wl.relation
           AND h.transactionid IS NOT DISTINCT FROM wl.transactionid
           AND h.objid IS NOT DISTINCT FROM wl.objid)
  FROM pg_stat_activity w
  LEFT JOIN LATERAL (SELECT l.* FROM pg_locks l WHERE l.pid = w.pid AND NOT l.granted
                      LIMIT 1) wl ON true
  LEFT JOIN LATERAL unnest(pg_blocking_pids(w.pid)) AS blocker(pid) ON true
  LEFT JOIN pg_stat_activity b ON b.pid = blocker.pid
 WHERE w.application_name = %(app)s AND w.datname IS NOT NULL
   AND w.pid <> pg_backend_pid() AND w.state IS DISTINCT FROM 'idle'
 ORDER BY (wl.locktype IS NULL), (w.datname <> current_database()), w.pid, b.pid
"""


# Work in progress views, one comparable line per session: an index build and (14+) a COPY;
# only in the job's own databases: another backupd's work on the same server (a sidecar of
# another database) must not keep this job's stall from being seen.
_INDEX_WORK = """
SELECT 'index ' || p.pid || ' ' || p.phase || ' ' || p.blocks_done || ' ' || p.tuples_done
       || ' ' || p.partitions_done
  FROM pg_stat_progress_create_index p JOIN pg_stat_activity a ON a.pid = p.pid
 WHERE a.application_name = %(app)s AND a.datname = ANY(%(databases)s)"""
_COPY_WORK = """
SELECT 'copy ' || p.pid || ' ' || p.bytes_processed || ' ' || p.tuples_processed
  FROM pg_stat_progress_copy p JOIN pg_stat_activity a ON a.pid = p.pid
 WHERE a.application_name = %(app)s AND a.datname = ANY(%(databases)s)"""
_ALL_WORK = "SELECT coalesce(string_agg(work, ',' ORDER BY work), '') FROM ({}) AS progress(work)"


@dataclass(frozen=True)
class Holder:
    pid: int
    application: str
    state: str
    modes: str

    def describe(self) -> str:
        return (f"pid {self.pid} (application {self.application or '(none)'!r}, "
                f"{self.state or 'state unknown'}"
                + (f", holding {self.modes}" if self.modes else "") + ")")


@dataclass(frozen=True)
class SessionWait:
    """One of the job's sessions as pg_stat_activity and pg_locks show it."""

    pid: int
    in_job_database: bool
    state: str
    wait_event: str
    query: str
    lock_type: str | None
    relation: str | None
    mode: str | None
    holders: tuple[Holder, ...]

    def describe(self) -> str:
        if self.lock_type is not None:
            what = (f"table {self.relation}" if self.relation
                    else f"a {self.lock_type} lock")
            held = ", ".join(holder.describe() for holder in self.holders)
            return (f"backend pid {self.pid}" + (f" ({self.query})" if self.query else "")
                    + f" waits for {self.mode} on {what}"
                    + (f", blocked by {held}" if held else ""))
        return (f"backend pid {self.pid} is {self.state or 'in an unknown state'}"
                + (f" (wait event {self.wait_event})" if self.wait_event else "")
                + (f" running {self.query!r}" if self.query else ""))


def _probe_connection(settings: Settings) -> psycopg.Connection[tuple]:  # type: ignore[type-arg]
    """A session in the job's database (where the waits name its tables), else in a
    maintenance database: POSTGRES_DB may be a list or `*`, or not exist yet (a restore onto a
    new server), and the progress views are the whole server's from any database. A server
    that does not answer is not asked again."""
    selection = settings.database_selection
    *first, last = dict.fromkeys(
        [*([selection.names[0]] if not selection.several else []), *MAINTENANCE_DATABASES])
    deadline = time.monotonic() + CONNECT_TIMEOUT_SECONDS
    for database in first:
        try:
            return _probe_session(settings, database)
        except psycopg.OperationalError:
            if time.monotonic() >= deadline:
                raise
    return _probe_session(settings, last)


def _probe_session(settings: Settings, database: str) -> psycopg.Connection[tuple]:  # type: ignore[type-arg]
    return psycopg.connect(
        host=settings.postgres_host, port=settings.postgres_port,
        user=settings.postgres_user, password=settings.password,
        dbname=database, autocommit=True,
        connect_timeout=min(CONNECT_TIMEOUT_SECONDS, settings.postgres_connect_timeout),
        application_name=PROBE_APPLICATION_NAME,
        options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}")


def session_waits(conn: psycopg.Connection[tuple]) -> list[SessionWait]:  # type: ignore[type-arg]
    """backupd's sessions, those waiting for a lock first, the job's database first."""
    with as_text(conn, "the watchdog's look at the sessions"):
        rows = conn.execute(_WAITS, {"app": APPLICATION_NAME, "shown": QUERY_SHOWN}).fetchall()
    sessions: dict[int, SessionWait] = {}
    for (pid, here, state, event, query, lock_type, relation, mode,
         holder_pid, holder_app, holder_state, holder_modes) in rows:
        seen = sessions.get(pid)
        if seen is None:
            seen = SessionWait(pid, bool(here), state or "", event, shown_query(query),
                               lock_type, relation, mode, ())
        if holder_pid is not None:
            seen = replace(seen, holders=(*seen.holders, Holder(
                holder_pid, holder_app, holder_state, holder_modes or "")))
        sessions[pid] = seen
    return list(sessions.values())


def shown_query(query: str) -> str:
    """The query as the verdict quotes it: a statement that mentions a password (a globals
    restore's ALTER ROLE ... PASSWORD) is cut to its first words, never quoted whole."""
    if "password" in query.lower():
        return " ".join(query.split()[:2]) + " ..."
    return query


def server_work(conn: psycopg.Connection[tuple], databases: Sequence[str]) -> str:  # type: ignore[type-arg]
    """The counters of the work backupd's sessions do inside the server in ``databases``,
    where a progress view shows it (an index build, a COPY): movement the job's streams
    cannot see."""
    # pg_stat_progress_copy is new in 14.
    views = [_INDEX_WORK, _COPY_WORK] if conn.info.server_version >= 140000 else [_INDEX_WORK]
    query = sql.SQL(_ALL_WORK).format(sql.SQL(" UNION ALL ").join(map(sql.SQL, views)))
    with as_text(conn):
        row = conn.execute(query, {"app": APPLICATION_NAME,
                                   "databases": list(databases)}).fetchone()
    return str(row[0]) if row else ""


def server_view(settings: Settings, databases: Sequence[str] = ()) -> ServerView:
    """What the server says about a job that moved no data: its work in progress views (in
    POSTGRES_DB and ``databases``, where it also works), and one clause naming the first lock
    wait (with its holders), else what the sessions do."""
    try:
        with _probe_connection(settings) as conn:
            work = server_work(conn, [*settings.database_selection.names, *databases])
            sessions = session_waits(conn)
    except (psycopg.Error, OSError, NameNotText) as exc:
        return ServerView("", "the server could not be asked what the job waits on "
                              f"({describe_error(exc)})")
    # Other jobs' sessions may be on the server too: those in the job's database come first,
    # and only they are counted.
    if not sessions:
        return ServerView(work, None)
    ours = [session for session in sessions if session.in_job_database]
    more = len(ours) - 1
    return ServerView(work, sessions[0].describe()
                      + (f" (and {more} more of backupd's sessions)" if more > 0 else ""))


def job_view(settings: Settings, places: Sequence[Place] = ()) -> ServerView:
    """The server's view of a job that moved no data, on every server it works on: its own
    (POSTGRES_HOST), then each other server a place names (a drill server, whose index builds
    are the drill's work). The work counters of all of them, and every wait they name."""
    servers = {id(p.server): p.server for p in places if p.server is not None}.values()
    views = [server_view(settings, [p.database for p in places if p.server is None])]
    views += [server_view(other, [p.database for p in places if p.server is other])
              for other in servers]
    if len(views) == 1:
        return views[0]
    return ServerView("|".join(view.work for view in views),
                      "; ".join(view.waits for view in views if view.waits) or None)

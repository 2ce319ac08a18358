"""Commit every few hundred of pg_dump's entries while a plain dump streams into psql.

One transaction over a whole restore holds a lock on every table, index and sequence it
creates until the end: a database of a few thousand tables exhausts the server's lock table
("out of shared memory") at the default ``max_locks_per_transaction``. A restore goes into
a new scratch database that is dropped on failure and renamed into place only once complete
(:mod:`backupd.commands.restore_target`), so it need not be one transaction: before every
``ENTRIES_PER_COMMIT``-th entry header pg_dump writes (``--`` / ``-- Name: …`` or
``-- Data for Name: …``), ``COMMIT; BEGIN;`` is inserted. The final COMMIT still comes only
after the last byte, and only if the file verified.

Headers are found by the lexer of :mod:`backupd.pipeline.entry_scan` (never inside COPY data,
strings, quoted identifiers, dollar quotes or comments). As a second line of defence each
boundary also counts itself in a session setting, and a check before the final COMMIT fails
the restore unless every boundary ran as a statement: a wrong guess fails loudly (and the
scratch database is dropped), it never changes the data.

With an :class:`~backupd.pipeline.early_entries.EarlyPlan` (DB_RESTORE_JOBS > 1) the
stream also leaves out the post-data entries that worker sessions build beside the load,
commits right after each TABLE DATA entry those wait for (with a NOTIFY naming the entry,
delivered by the server only once that data is committed), and before the first post-data
entry commits and waits until every one of them ran (``Beside``). Those boundaries are
flushed to psql at once: a worker waits for the commit, and the wait before post-data would
otherwise wait for a NOTIFY still held in backupd's buffer, forever. Other boundaries, and
the SQL, go out in batches (backupd.pipeline.psql).

With :class:`~backupd.pipeline.tablespace_sets.TablespaceSets`, pg_dump's
``SET default_tablespace = x;`` for a tablespace the restore does not keep is sent as
``SET default_tablespace = '';`` (see there).
"""

from __future__ import annotations

from typing import Protocol

from backupd.pipeline.early_entries import EarlyPlan
from backupd.pipeline.entry_scan import EntryScanner
from backupd.pipeline.psql import Feed
from backupd.pipeline.tablespace_sets import TablespaceSets

ENTRIES_PER_COMMIT = 200
COUNTER = "backupd.restore_commits"
# The main session NOTIFYs this channel, naming a TABLE DATA entry, as it commits that data.
CHANNEL = "backupd_restore_data_committed"
# ... and this payload as it commits the last of the data, before post-data.
POST_DATA = "post-data"

_COUNT = f"coalesce(nullif(pg_catalog.current_setting('{COUNTER}', true), ''), '0')"
BOUNDARY = (f"COMMIT;\nBEGIN;\nSELECT pg_catalog.set_config('{COUNTER}', "
            f"({_COUNT}::int + 1)::text, false);\n").encode()
CHECK_FAILED = "backupd: a commit boundary fell inside a statement"


class Beside(Protocol):
    """The worker sessions running an EarlyPlan's entries (backupd.pipeline.early_jobs)."""

    def check(self) -> None:
        """Raise if one of them failed."""

    def before_post_data(self) -> None:
        """Block until every early entry ran (the main session holds no lock meanwhile)."""


class CommitChunks(EntryScanner):
    """Sends the SQL passing through to ``feed``, with commit boundaries inserted."""

    def __init__(self, feed: Feed, entries_per_commit: int = ENTRIES_PER_COMMIT,
                 plan: EarlyPlan | None = None, beside: Beside | None = None,
                 tablespaces: TablespaceSets | None = None) -> None:
        super().__init__()
        self._feed = feed
        self._tablespaces = tablespaces
        self._every = entries_per_commit
        self._entries = 0  # since the last boundary
        self.boundaries = 0
        self._beside = beside if plan is not None else None
        self._skip = frozenset(e.entry for e in plan.entries) if plan is not None else frozenset()
        self._notify = (frozenset(number for number, _ in plan.data_entries)
                        if plan is not None else frozenset())
        self._post_data = plan.post_data if plan is not None else 0
        self._skipping = False

    def _out(self, data: bytes) -> None:
        if not self._skipping:
            self._feed.send(data)

    def _entry(self) -> None:
        self._skipping = False
        self._entries += 1
        number = self.entry
        if self._beside is not None:
            self._beside.check()
        if number - 1 in self._notify or number == self._post_data:
            notify = f"NOTIFY {CHANNEL}, '{number - 1}';\n" if number - 1 in self._notify else ""
            if number == self._post_data:
                notify += f"NOTIFY {CHANNEL}, '{POST_DATA}';\n"
            self._boundary(notify.encode())
            self._feed.flush()  # waited on: by a worker, or by the wait just below
            if number == self._post_data and self._beside is not None:
                self._beside.before_post_data()
        elif self._entries > self._every:
            self._boundary()
        self._skipping = number in self._skip

    def _set_tablespace(self, buffer: bytes, start: int) -> int:
        rewritten = (self._tablespaces.rewrite(buffer, start + 1)
                     if self._tablespaces is not None else None)
        if rewritten is None:
            return super()._set_tablespace(buffer, start)
        statement, end = rewritten
        self._out(buffer[self._sent:start + 1])
        self._out(statement)
        self._sent = end
        return end  # its new line, which may start a header

    def _boundary(self, first: bytes = b"") -> None:
        self._feed.send(first + BOUNDARY)
        self.boundaries += 1
        self._entries = 1

    def final_check(self) -> bytes:
        """SQL to run before the final COMMIT: fails unless every boundary ran."""
        if not self.boundaries:
            return b""
        return (f"\nDO $backupd$BEGIN IF {_COUNT} <> '{self.boundaries}' THEN RAISE "
                f"EXCEPTION '{CHECK_FAILED}'; END IF; END$backupd$;\n").encode()

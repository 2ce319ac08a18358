"""Which post-data entries of a plain dump may be built beside the load (DB_RESTORE_JOBS > 1).

The restore's pre-verify pass (a full verify of the file before any SQL runs) hands the SQL
it checks to :class:`EarlyCapture` as well. It keeps the preamble's settings (``SET …;`` and
``SELECT pg_catalog.set_config(…);`` lines, never a psql meta-command), the tables that have
a TABLE DATA entry, and the text of every ``Type: INDEX`` and ``Type: CONSTRAINT`` entry
(PRIMARY KEY, UNIQUE, EXCLUDE) on such a table. Those "early" entries run on worker sessions
as soon as their table's data is committed, while the main psql session loads the next
tables (backupd.pipeline.early_jobs); the main stream leaves them out.

Anything not recognised (a header or an entry's SQL of another shape, a ``SET`` or a
meta-command among the captured entries, more than ``CAPTURE_LIMIT`` bytes of them) and the
capture gives up: the restore then runs exactly as a sequential one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from backupd.pipeline.entry_scan import EntryScanner

CAPTURE_LIMIT = 16 << 20  # bytes of captured entries
_HEAD_BYTES = 4096  # kept of every other entry: its header and first statement
# What a restore worker runs first: the preamble's session settings.
_PREAMBLE = re.compile(rb"^(?:SET [a-z_]+ = [^\n;]*|SELECT pg_catalog\.set_config\([^\n;]*\));$",
                       re.M)
_HEADER = re.compile(rb"--\n-- (Data for )?Name: ([^\n]*); Type: ([^\n;]*); Schema: [^\n]*\n--\n")
_IDENT = rb'(?:"(?:[^"]|"")+"|[A-Za-z_\x80-\xff][A-Za-z0-9_$\x80-\xff]*)'
_TABLE = rb"(" + _IDENT + rb"\." + _IDENT + rb")"
_COPY = re.compile(rb"\nCOPY " + _TABLE + rb" [(]")
_INDEX = re.compile(rb"CREATE (?:UNIQUE )?INDEX " + _IDENT + rb" ON (?:ONLY )?" + _TABLE
                    + rb" USING .*?;\n", re.S)
_CONSTRAINT = re.compile(rb"ALTER TABLE (?:ONLY )?" + _TABLE + rb"\n    ADD CONSTRAINT " + _IDENT
                         + rb" (?:PRIMARY KEY|UNIQUE|EXCLUDE) .*?;\n", re.S)
# What pg_dump adds to an INDEX or CONSTRAINT entry after its statement (on the same table:
# see _only_more).
_MORE = re.compile(rb"\nALTER TABLE (?:ONLY )?" + _TABLE
                   + rb" (?:CLUSTER ON|REPLICA IDENTITY USING INDEX) " + _IDENT + rb";\n")
# Lines that are never part of an entry this runs on a worker.
_FOREIGN = re.compile(rb"^(?:SET |SELECT |\\)", re.M)
# pg_dump puts an index in its tablespace by this SET before the index's header (in the text
# of the entry before): a worker would not see it. Such dumps restore sequentially.
_TABLESPACE = re.compile(rb"\nSET default_tablespace = (?!'';\n)[^\n]*\n")
# How far before a header that SET is looked for: pg_dump writes at most a few short SETs
# (schema, tablespace, table access method) between an entry's text and the next header.
_TAIL = 1024
# What pg_dump writes in its data section after the TABLE DATA entries.
_DATA_TYPES = frozenset({"TABLE DATA", "SEQUENCE SET", "BLOBS", "BLOB", "LARGE OBJECTS",
                         "BLOB DATA"})


@dataclass(frozen=True)
class EarlyEntry:
    entry: int  # its number among the dump's entry headers (backupd.pipeline.entry_scan)
    name: str  # as its header names it
    kind: str  # INDEX or CONSTRAINT
    table: bytes  # schema.table as pg_dump quoted it
    exclusive: bool  # never beside another entry on its table (pg_restore -j's rule)
    sql: str
    # The size of its table's data in the dump: the measure of its build's work that the
    # workers' order goes by (backupd.pipeline.early_jobs).
    data_bytes: int = 0


@dataclass(frozen=True)
class EarlyPlan:
    preamble: tuple[str, ...]  # the settings each worker session runs first
    entries: tuple[EarlyEntry, ...]  # in dump order
    # (entry number, table) of the TABLE DATA entries early entries wait for.
    data_entries: tuple[tuple[int, bytes], ...]
    post_data: int  # the number of the first post-data entry


class GiveUp(Exception):
    pass


class EarlyCapture(EntryScanner):
    """A forward sink of the verify pass; ``plan()`` once the whole file went through."""

    def __init__(self, limit: int = CAPTURE_LIMIT) -> None:
        super().__init__()
        self._limit = limit
        self._captured = 0
        self._text = bytearray()  # of the current entry (or the preamble)
        self._keep_all: bool | None = True  # the preamble, all of it
        self._preamble: tuple[str, ...] | None = None
        self._data: dict[bytes, int] = {}  # table -> its TABLE DATA entry
        self._data_bytes: dict[bytes, int] = {}  # table -> the size of that entry
        self._entry_bytes = 0  # of the current entry so far
        self._last_data = 0
        self._post_data = 0
        self._entries: list[EarlyEntry] = []
        self.given_up: str | None = None
        # The last bytes passed on: pg_dump writes SET default_tablespace right before the
        # header of the entry it applies to, so it is looked for there (not in every byte).
        self._tail = b"\n"

    def _out(self, data: bytes) -> None:
        if self.given_up is not None:
            return
        self._entry_bytes += len(data)
        self._tail = data[-_TAIL:] if len(data) >= _TAIL else (self._tail + data)[-_TAIL:]
        if self._keep_all is False:
            self._text += data[:max(_HEAD_BYTES - len(self._text), 0)]
            return
        self._text += data
        if self._keep_all is None:  # an entry of a kind not known yet: its header says
            header = _HEADER.match(self._text)
            if header is not None:
                self._keep_all = header.group(3) in (b"INDEX", b"CONSTRAINT")
            elif len(self._text) > _HEAD_BYTES:
                self._keep_all = False  # not a header: the entry's close gives up
            if self._keep_all is False:
                del self._text[_HEAD_BYTES:]
                return
            data = bytes(self._text)
        self._captured += len(data)
        if self._captured > self._limit:
            self._give_up(f"more than {self._limit} bytes of index and constraint entries")

    def _entry(self) -> None:
        if self.given_up is not None:
            return
        if _TABLESPACE.search(self._tail):
            self._give_up("an object in a tablespace of its own (SET default_tablespace)")
            return
        try:
            self._close(self.entry - 1, bytes(self._text))
        except GiveUp as exc:
            self._give_up(str(exc))
            return
        self._text = bytearray()
        self._entry_bytes = 0
        self._keep_all = None

    def _give_up(self, why: str) -> None:
        self.given_up = why
        self._text = bytearray()
        self._entries = []

    def _close(self, number: int, text: bytes, *, last: bool = False) -> None:
        if number == 0:
            self._preamble = tuple(line.decode() for line in _PREAMBLE.findall(text))
            return
        header = _HEADER.match(text)
        if header is None or header.group(0).count(b"; Type: ") != 1:
            raise GiveUp(f"entry {number}: header not recognised")
        kind = header.group(3).decode(errors="replace")
        if kind == "TABLE DATA" and header.group(1):
            if self._post_data:
                raise GiveUp(f"entry {number}: TABLE DATA after post-data")
            copy = _COPY.match(text, header.end())
            if copy is None:
                raise GiveUp(f"entry {number}: TABLE DATA without COPY")
            table = copy.group(1)
            self._data[table] = number
            # Several entries for one table (--load-via-partition-root): their sum.
            self._data_bytes[table] = self._data_bytes.get(table, 0) + self._entry_bytes
            self._last_data = number
        elif self._last_data and not self._post_data and kind not in _DATA_TYPES:
            self._post_data = number
        # The last entry carries pg_dump's footer (and \unrestrict): the main stream's.
        if kind in ("INDEX", "CONSTRAINT") and not last:
            self._early(number, header.group(2).decode(errors="replace"), kind,
                        text[header.end():])

    def _early(self, number: int, name: str, kind: str, body: bytes) -> None:
        sql = body.strip(b"\n") + b"\n"
        found = (_INDEX if kind == "INDEX" else _CONSTRAINT).match(sql)
        if found is None:
            raise GiveUp(f"{kind} {name}: SQL not recognised")
        table = found.group(1)
        rest = sql[found.end():]
        if _FOREIGN.search(sql) or not _only_more(rest, table):
            raise GiveUp(f"{kind} {name}: more than its statement")
        if table not in self._data:
            return  # no data of its own (a partitioned table's, a matview's): main stream
        if not self._post_data or number < self._post_data:
            raise GiveUp(f"{kind} {name}: before the end of the data")
        self._entries.append(EarlyEntry(number, name, kind, table,
                                        kind == "CONSTRAINT" or bool(rest), sql.decode(),
                                        self._data_bytes[table]))

    def plan(self) -> EarlyPlan | None:
        """What may run beside the load, or None (run it all in the main stream)."""
        if self.given_up is None:
            try:
                self._close(self.entry, bytes(self._text), last=True)
            except GiveUp as exc:
                self._give_up(str(exc))
        if self.given_up is not None or not self._entries or self._preamble is None:
            return None
        tables = {e.table for e in self._entries}
        data = tuple(sorted((n, t) for t, n in self._data.items() if t in tables))
        return EarlyPlan(self._preamble, tuple(self._entries), data, self._post_data)


def _only_more(rest: bytes, table: bytes) -> bool:
    """Whether ``rest`` is nothing but _MORE statements on ``table``. One pattern for every
    table, the table compared after the match: a pattern with the table in it, compiled per
    entry, was most of the capture's time on a schema of many tables."""
    position = 0
    while position < len(rest):
        more = _MORE.match(rest, position)
        if more is None or more.group(1) != table:
            return False
        position = more.end()
    return True

"""Commit every few hundred of pg_dump's entries while a plain dump streams into psql.

One transaction over a whole restore holds a lock on every table, index and sequence it
creates until the end: a database of a few thousand tables exhausts the server's lock table
("out of shared memory") at the default ``max_locks_per_transaction``. A restore goes into
a new scratch database that is dropped on failure and renamed into place only once complete
(:mod:`backupd.commands.restore_target`), so it need not be one transaction: before every
``ENTRIES_PER_COMMIT``-th entry header pg_dump writes (``--`` / ``-- Name: …`` or
``-- Data for Name: …``), ``COMMIT; BEGIN;`` is inserted. The final COMMIT still comes only
after the last byte, and only if the file verified.

Headers are looked for only outside COPY data. Text that merely looks like a header inside
a string or a function body would turn the inserted statements into part of that text, so
each boundary also counts itself in a session setting, and a check before the final COMMIT
fails the restore unless every boundary ran as a statement: a wrong guess fails loudly (and
the scratch database is dropped), it never changes the data.
"""

from __future__ import annotations

from collections.abc import Callable

ENTRIES_PER_COMMIT = 200
COUNTER = "backupd.restore_commits"

_HEADER = b"\n--\n-- "
_KINDS = (b"Name: ", b"Data for Name: ")
_COPY_START = b"\nCOPY "
_COPY_END = b"\n\\.\n"
# A match starting this far from the end of what we have is complete, lookahead included.
_HOLD = len(_HEADER) + max(len(kind) for kind in _KINDS)

_COUNT = f"coalesce(nullif(pg_catalog.current_setting('{COUNTER}', true), ''), '0')"
BOUNDARY = (f"COMMIT;\nBEGIN;\nSELECT pg_catalog.set_config('{COUNTER}', "
            f"({_COUNT}::int + 1)::text, false);\n").encode()
CHECK_FAILED = "backupd: a commit boundary fell inside a statement"


class CommitChunks:
    """A ``send`` wrapper that inserts commit boundaries into the SQL passing through."""

    def __init__(self, send: Callable[[bytes], None],
                 entries_per_commit: int = ENTRIES_PER_COMMIT) -> None:
        self._send = send
        self._every = entries_per_commit
        self._held = b""
        self._resume = 0  # where scanning resumes in the held bytes
        self._in_copy = False
        self._entries = 0
        self.boundaries = 0

    def __call__(self, data: bytes) -> None:
        buffer = self._held + data if self._held else data
        limit = len(buffer) - _HOLD
        sent = 0
        position = self._resume
        while position < limit:
            if self._in_copy:
                end = buffer.find(_COPY_END, position, limit + len(_COPY_END))
                if end < 0:
                    position = limit
                    break
                self._in_copy = False
                position = end + len(_COPY_END) - 1  # its last newline may start a header
                continue
            header = buffer.find(_HEADER, position, limit + len(_HEADER))
            copy = buffer.find(_COPY_START, position, limit + len(_COPY_START))
            if copy >= 0 and (header < 0 or copy < header):
                self._in_copy = True
                position = copy + 1
                continue
            if header < 0:
                position = limit
                break
            position = header + 1
            if buffer.startswith(_KINDS, header + len(_HEADER)):
                self._entries += 1
                if self._entries > self._every:
                    self._send(buffer[sent:header + 1])
                    self._send(BOUNDARY)
                    self.boundaries += 1
                    sent = header + 1
                    self._entries = 1
        keep = max(sent, limit, 0)
        if keep > sent:
            self._send(buffer[sent:keep])
        self._held = buffer[keep:]
        self._resume = max(position - keep, 0)

    def finish(self) -> None:
        """Pass on what is still held back (the last bytes of the dump)."""
        if self._held:
            self._send(self._held)
            self._held = b""

    def final_check(self) -> bytes:
        """SQL to run before the final COMMIT: fails unless every boundary ran."""
        if not self.boundaries:
            return b""
        return (f"\nDO $backupd$BEGIN IF {_COUNT} <> '{self.boundaries}' THEN RAISE "
                f"EXCEPTION '{CHECK_FAILED}'; END IF; END$backupd$;\n").encode()

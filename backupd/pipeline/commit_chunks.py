"""Commit every few hundred of pg_dump's entries while a plain dump streams into psql.

One transaction over a whole restore holds a lock on every table, index and sequence it
creates until the end: a database of a few thousand tables exhausts the server's lock table
("out of shared memory") at the default ``max_locks_per_transaction``. A restore goes into
a new scratch database that is dropped on failure and renamed into place only once complete
(:mod:`backupd.commands.restore_target`), so it need not be one transaction: before every
``ENTRIES_PER_COMMIT``-th entry header pg_dump writes (``--`` / ``-- Name: …`` or
``-- Data for Name: …``), ``COMMIT; BEGIN;`` is inserted. The final COMMIT still comes only
after the last byte, and only if the file verified.

Headers are looked for only where pg_dump writes them: outside COPY data, string literals,
quoted identifiers, dollar-quoted bodies and comments (a small lexer, the states of
PostgreSQL's own). Text that merely looks like a header inside a function body or a string
would turn the inserted statements into part of that text. As a second line of defence each
boundary also counts itself in a session setting, and a check before the final COMMIT fails
the restore unless every boundary ran as a statement: a wrong guess fails loudly (and the
scratch database is dropped), it never changes the data.
"""

from __future__ import annotations

import re
from collections.abc import Callable

ENTRIES_PER_COMMIT = 200
COUNTER = "backupd.restore_commits"

_COPY_END = b"\n\\.\n"
# What changes the lexer's state outside COPY data: an entry header, a COPY, a comment, a
# quote. A dollar-quote tag is an identifier (at most 63 bytes) between two dollars.
_TOKENS = re.compile(rb"\n--\n-- (?:Data for )?Name: |\nCOPY |--|/\*|'|\"|"
                     rb"\$(?:[A-Za-z_\x80-\xff][A-Za-z0-9_\x80-\xff]*)?\$")
_BLOCK_COMMENT = re.compile(rb"/\*|\*/")
_IDENTIFIER_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_"
                              + bytes(range(0x80, 0x100)))
# A token starting this far from the end of what we have is complete, lookahead included.
_HOLD = 128

_NORMAL, _COPY, _LINE_COMMENT, _BLOCK, _SINGLE, _DOUBLE, _DOLLAR = range(7)

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
        self._sent = 0  # how much of the buffer being scanned has been sent
        self._resume = 0  # where scanning resumes in the held bytes
        self._state = _NORMAL
        self._depth = 0  # of nested block comments
        self._tag = b""  # the open dollar quote's
        self._entries = 0
        self.boundaries = 0

    def __call__(self, data: bytes) -> None:
        buffer = self._held + data if self._held else data
        limit = len(buffer) - _HOLD
        self._sent = 0
        position = self._resume
        while position < limit:
            position = self._step(buffer, position, limit)
        keep = max(self._sent, limit, 0)
        if keep > self._sent:
            self._send(buffer[self._sent:keep])
        self._held = buffer[keep:]
        self._resume = max(position - keep, 0)

    def _step(self, buffer: bytes, position: int, limit: int) -> int:
        """Scan on from ``position`` in the current state; where to go on (``limit``: wait
        for more bytes)."""
        state = self._state
        if state == _NORMAL:
            return self._normal(buffer, position, limit)
        if state == _COPY:
            end = buffer.find(_COPY_END, position, limit + len(_COPY_END))
            if end < 0:
                return limit
            self._state = _NORMAL
            return end + len(_COPY_END) - 1  # its last newline may start a header
        if state == _LINE_COMMENT:
            end = buffer.find(b"\n", position, limit)
            if end < 0:
                return limit
            self._state = _NORMAL
            return end  # the newline may start a header
        if state == _BLOCK:
            found = _BLOCK_COMMENT.search(buffer, position, limit + 2)
            if found is None or found.start() >= limit:
                return limit
            self._depth += 1 if found.group() == b"/*" else -1
            if self._depth == 0:
                self._state = _NORMAL
            return found.end()
        if state in (_SINGLE, _DOUBLE):
            quote = b"'" if state == _SINGLE else b'"'
            end = buffer.find(quote, position, limit)
            if end < 0:
                return limit
            if buffer[end + 1:end + 2] == quote:
                return end + 2  # a doubled quote stands for itself
            self._state = _NORMAL
            return end + 1
        end = buffer.find(self._tag, position)  # _DOLLAR
        if end < 0 or end >= limit:
            return limit
        self._state = _NORMAL
        return end + len(self._tag)

    def _normal(self, buffer: bytes, position: int, limit: int) -> int:
        found = _TOKENS.search(buffer, position)
        if found is None or found.start() >= limit:
            return limit
        start, token = found.start(), found.group()
        if token.startswith(b"\n--"):
            self._entries += 1
            if self._entries > self._every:
                self._send(buffer[self._sent:start + 1])
                self._send(BOUNDARY)
                self.boundaries += 1
                self._sent = start + 1
                self._entries = 1
            return start + 1  # the header's own lines are comments
        if token == b"\nCOPY ":
            self._state = _COPY
            return start + 1
        if token.startswith(b"$"):
            if start > 0 and buffer[start - 1] in _IDENTIFIER_BYTES:
                return start + 1  # part of an identifier, not a quote
            self._state, self._tag = _DOLLAR, token
        elif token == b"--":
            self._state = _LINE_COMMENT
        elif token == b"/*":
            self._state, self._depth = _BLOCK, 1
        else:
            self._state = _SINGLE if token == b"'" else _DOUBLE
        return found.end()

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

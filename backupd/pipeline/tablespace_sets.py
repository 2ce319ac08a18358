"""pg_dump's ``SET default_tablespace = x;`` in a plain dump, for a restore that may not use ``x``.

pg_dump puts an object in its tablespace by that statement before the object (never by a
TABLESPACE clause), and ``SET default_tablespace = '';`` for the database's default. On a
server without ``x`` the SET itself fails, and the whole restore with it; where the
restoring role may not create in ``x`` (pg_default included, for a database in another
tablespace), the object after it fails. Restoring onto a new server whose disks are laid
out differently is what a disaster often is, so the statement for a tablespace not kept is
sent as ``SET default_tablespace = '';``: those objects go to the database's default
tablespace, as ``pg_restore --no-tablespaces`` puts them (backupd.postgres.tablespaces says
which are kept, why, and how the restore reports it).

Only the statement as pg_dump writes it is changed, at the start of a line, found by the
lexer of backupd.pipeline.entry_scan (never inside COPY data, strings, quoted identifiers,
dollar-quoted bodies or comments); everything else passes through as it is. The file's
bytes were verified before; this changes what is sent to psql, not what is checked.
"""

from __future__ import annotations

import re

PREFIX = b"SET default_tablespace = "
# pg_dump's fmtId: unquoted only when every character is a lower-case letter, a digit or
# an underscore; quoted otherwise, with "" for a quote. Then ';' and a new line.
_STATEMENT = re.compile(rb'SET default_tablespace = ("(?:[^"]|"")+"|[a-z_][a-z0-9_]*);\n')
DEFAULT = b"SET default_tablespace = '';"
# The longest statement recognised, its new line included: what the lexer guarantees to
# have after a token, whatever the pieces the stream comes in. Every name without double
# quotes fits (63 bytes at most); one with more than 35 of them in it does not, and is left
# as it is (on a server without it, the restore then fails on it and is dropped).
LONGEST = 128


def _name(identifier: bytes, codec: str) -> str:
    # As backupd.postgres.tablespaces reads pg_tablespace (in the backed-up database's
    # encoding, the dump's); a name not valid in it is not recognised (its bytes replaced),
    # and its objects go to the default tablespace, reported like the others.
    text = identifier.decode(codec, errors="replace")
    return text[1:-1].replace('""', '"') if text.startswith('"') else text


class TablespaceSets:
    """Rewrites the statements for tablespaces not in ``kept``; ``left_out`` names them.
    ``codec``: the Python codec of the dump's encoding, as the names in ``kept`` were read
    (backupd.postgres.tablespaces.name_codec)."""

    def __init__(self, kept: frozenset[str], codec: str = "utf-8") -> None:
        self._kept = kept
        self._codec = codec
        self.left_out: set[str] = set()

    def rewrite(self, buffer: bytes, start: int) -> tuple[bytes, int] | None:
        """At ``start`` in ``buffer`` (at least LONGEST bytes after it, unless the dump ends
        sooner), a ``SET default_tablespace`` statement: what to send instead of it and
        where it ends (its new line, which stays), or None to leave it as it is. Decided
        on the statement alone, never on where the stream was cut."""
        found = _STATEMENT.match(buffer, start)
        if found is None or found.end() - start > LONGEST:
            return None
        name = _name(found.group(1), self._codec)
        if name in self._kept:
            return None
        self.left_out.add(name)
        return DEFAULT, found.end() - 1

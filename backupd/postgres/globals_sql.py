"""The SQL of a globals file (``pg_dumpall --globals-only``) cut into classified statements:
quotes, identifiers, comments and psql meta-commands respected, each statement tagged with
what it is about (a role, a membership, a tablespace) and the object it names.

Parsing only; :mod:`backupd.postgres.globals` applies the statements.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum


class Kind(Enum):
    SESSION = "session setting"
    CREATE_ROLE = "create role"
    ROLE = "role attribute"
    MEMBERSHIP = "membership"
    CREATE_TABLESPACE = "create tablespace"
    TABLESPACE = "tablespace attribute"
    DROP = "drop"
    META = "psql meta-command"
    OTHER = "statement"


@dataclass(frozen=True)
class Statement:
    text: bytes
    kind: Kind
    # The object named, as the file spells it (byte for byte: the same name is spelled the
    # same way by pg_dumpall every time, so it is the key that ties statements together).
    subject: bytes = b""
    member: bytes = b""  # MEMBERSHIP: the role granted to
    location: str | None = None  # CREATE_TABLESPACE


IDENT = rb'(?:"(?:[^"]|"")*"|[A-Za-z_\x80-\xff][A-Za-z0-9_$\x80-\xff]*)'
_PATTERNS: list[tuple[Kind, re.Pattern[bytes]]] = [
    (Kind.SESSION, re.compile(rb"(?:SET|RESET)\s", re.I)),
    (Kind.CREATE_ROLE, re.compile(rb"CREATE\s+(?:ROLE|USER|GROUP)\s+(?P<s>" + IDENT + rb")",
                                  re.I)),
    (Kind.ROLE, re.compile(rb"ALTER\s+(?:ROLE|USER|GROUP)\s+(?P<s>" + IDENT + rb")", re.I)),
    (Kind.ROLE, re.compile(rb"(?:COMMENT\s+ON|SECURITY\s+LABEL(?:\s+FOR\s+\S+)?\s+ON)\s+ROLE\s+"
                           rb"(?P<s>" + IDENT + rb")", re.I)),
    (Kind.CREATE_TABLESPACE, re.compile(rb"CREATE\s+TABLESPACE\s+(?P<s>" + IDENT + rb")", re.I)),
    (Kind.TABLESPACE, re.compile(rb"(?:ALTER|COMMENT\s+ON|SECURITY\s+LABEL(?:\s+FOR\s+\S+)?\s+ON)"
                                 rb"\s+TABLESPACE\s+(?P<s>" + IDENT + rb")", re.I)),
    (Kind.TABLESPACE, re.compile(rb"(?:GRANT|REVOKE)\s.*?\sON\s+TABLESPACE\s+(?P<s>" + IDENT
                                 + rb")", re.I | re.S)),
    (Kind.MEMBERSHIP, re.compile(rb"GRANT\s+(?P<s>" + IDENT + rb")\s+TO\s+(?P<m>" + IDENT
                                 + rb")", re.I)),
    (Kind.DROP, re.compile(rb"DROP\s", re.I)),
]
_LOCATION = re.compile(rb"\sLOCATION\s+'((?:[^']|'')*)'", re.I)
GRANTED_BY = re.compile(rb"\s+GRANTED\s+BY\s+" + IDENT, re.I)


def name_of(identifier: bytes) -> str:
    """The name an identifier spells: quotes removed, doubled quotes undone, or lower case."""
    text = identifier.decode("utf-8", errors="replace")
    if text.startswith('"'):
        return text[1:-1].replace('""', '"')
    return text.lower()


def split_statements(script: bytes) -> Iterator[bytes]:
    """The statements of ``script``, each with its ``;``, without comments around them.
    Quotes ('…', E'…', "…", $tag$…$tag$) and comments (--, /* */) are respected; a psql
    meta-command line (``\\…``) is one statement of its own."""
    index, length = 0, len(script)
    start: int | None = None
    while index < length:
        char = script[index:index + 1]
        if start is None:
            if char.isspace():
                index += 1
                continue
            if script.startswith(b"--", index):
                index = _line_end(script, index)
                continue
            if char == b"\\":
                end = _line_end(script, index)
                yield script[index:end].rstrip()
                index = end
                continue
            start = index
        if char == b"'":
            escapes = index > 0 and script[index - 1:index] in (b"E", b"e")
            index = _quoted_end(script, index, b"'", backslash=escapes)
        elif char == b'"':
            index = _quoted_end(script, index, b'"', backslash=False)
        elif script.startswith(b"--", index):
            index = _line_end(script, index)
        elif script.startswith(b"/*", index):
            close = script.find(b"*/", index + 2)
            index = length if close < 0 else close + 2
        elif char == b"$":
            tag = re.match(rb"\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$", script[index:index + 64])
            if tag is None:
                index += 1
            else:
                close = script.find(tag.group(), index + len(tag.group()))
                index = length if close < 0 else close + len(tag.group())
        elif char == b";":
            index += 1
            yield script[start:index]
            start = None
        else:
            index += 1
    if start is not None and script[start:].strip():
        yield script[start:].strip()  # no final ';': PostgreSQL says what is wrong with it


def _line_end(script: bytes, index: int) -> int:
    end = script.find(b"\n", index)
    return len(script) if end < 0 else end + 1


def _quoted_end(script: bytes, index: int, quote: bytes, *, backslash: bool) -> int:
    index += 1
    while index < len(script):
        char = script[index:index + 1]
        if backslash and char == b"\\":
            index += 2
        elif char == quote:
            if script[index + 1:index + 2] == quote:
                index += 2
            else:
                return index + 1
        else:
            index += 1
    return index


def classify(text: bytes) -> Statement:
    if text.startswith(b"\\"):
        return Statement(text, Kind.META)
    for kind, pattern in _PATTERNS:
        match = pattern.match(text)
        if match is None:
            continue
        groups = match.groupdict()
        location = None
        if kind is Kind.CREATE_TABLESPACE:
            found = _LOCATION.search(text)
            if found is not None:
                location = found.group(1).replace(b"''", b"'").decode("utf-8", "replace")
        return Statement(text, kind, groups.get("s") or b"", groups.get("m") or b"", location)
    return Statement(text, Kind.OTHER)


def quote_identifier(name: str) -> str:
    """``name`` as an SQL identifier, always quoted: for SQL a message tells people to run."""
    return '"' + name.replace('"', '""') + '"'

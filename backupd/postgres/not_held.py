"""Text a session's encoding cannot hold, said as such.

backupd sends text it did not read on the session it sends it on: a restore's target name,
the backed-up database's locale and tablespace, all sent on the maintenance database's
session. A LATIN1 database cannot hold 日: the server refuses the statement (22P05), or,
for a client encoding lacking the character, psycopg cannot encode it (UnicodeEncodeError,
which was an "internal error"). Neither is a name that is not UTF-8
(backupd.postgres.not_text), and renaming nothing helps: the failure names the text, the
character and the encoding that lacks it, and the way out: send it through a UTF8 database.
"""

from __future__ import annotations

import codecs
import contextlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from psycopg._encodings import pg2pyenc

from backupd.errors import JobFailed

Connection = psycopg.Connection[tuple]  # type: ignore[type-arg]

# The server's 22P05 on a statement it cannot convert into the database's encoding.
_UNTRANSLATABLE = re.compile(r'byte sequence ((?:0x[0-9a-f]{2} ?)+) in encoding "([^"]+)" '
                             r'has no equivalent in encoding "([^"]+)"')


@dataclass(frozen=True)
class Sent:
    """A text a statement sends, named when the session cannot hold it."""

    what: str  # e.g. "ICU locale", "tablespace"
    value: str
    way_out: str | None = None  # another than sending it through a UTF8 database


class NotHeld(JobFailed):
    """A text sent on a session whose encoding cannot hold one of its characters."""


def py_codec(encoding: str | None) -> str | None:
    """Python's codec for the PostgreSQL ``encoding`` (None: none, or no encoding). The one
    use of psycopg's private encoding map (pyproject's psycopg bound)."""
    if encoding is None:
        return None
    with contextlib.suppress(psycopg.NotSupportedError):
        return pg2pyenc(encoding.encode())
    return None


def _lacks(value: str, codec: str | None) -> str | None:
    """The first character of ``value`` that ``codec`` cannot encode (None: none, or no
    codec to tell)."""
    if codec is None:
        return None
    try:
        value.encode(codec)
    except UnicodeEncodeError as exc:
        return exc.object[exc.start]
    return None


def _lacked_by_session(exc: UnicodeEncodeError, encoding: str) -> bool:
    """Whether ``exc`` is the session's client encoding lacking a character. Not on a UTF8
    session, which holds every character, nor for a lone surrogate (how surrogateescape
    decodes bytes that are not UTF-8), which no encoding holds: neither is a character to
    send elsewhere, and unsetting PGCLIENTENCODING would not help. Nor an encoding other
    than the session's (not psycopg's encoding of what the block sends)."""
    codec = py_codec(encoding)
    if encoding == "UTF8" or codec is None:
        return False
    if any(0xD800 <= ord(c) <= 0xDFFF for c in exc.object[exc.start:exc.end]):
        return False
    with contextlib.suppress(LookupError):
        return codecs.lookup(exc.encoding).name == codecs.lookup(codec).name
    return False


def _refused_character(exc: psycopg.Error, server_encoding: str) -> str | None:
    """The character the server said it could not convert into ``server_encoding`` (None:
    its message says otherwise, or is in another language)."""
    found = _UNTRANSLATABLE.search(exc.diag.message_primary or str(exc))
    codec = py_codec(found.group(2)) if found else None
    if found is None or codec is None or found.group(3) != server_encoding:
        return None
    raw = bytes(int(byte, 16) for byte in found.group(1).split())
    return raw.decode(codec, "replace")


def not_held_failure(conn: Connection, exc: BaseException, reading: str,
                     sending: Sequence[Sent]) -> NotHeld | None:
    """The failure to raise for ``exc``, raised by a statement sending ``sending`` for
    ``reading``, when it is a character the session cannot hold; None when it is not."""
    if isinstance(exc, UnicodeEncodeError):
        # psycopg encodes in the client encoding, which may lack what the server holds.
        encoding = conn.info.parameter_status("client_encoding") or "?"
        character: str | None = exc.object[exc.start]
        if not _lacked_by_session(exc, encoding):
            return None
        holder = f"the session's client encoding is {encoding}"
        way_out = ("let the session speak UTF8: unset PGCLIENTENCODING, or RESET "
                   "client_encoding for the role or database that sets it")
    elif isinstance(exc, psycopg.errors.UntranslatableCharacter):
        encoding = conn.info.parameter_status("server_encoding") or "?"
        character = _refused_character(exc, encoding)
        codec = py_codec(encoding)
        if character is None and not any(_lacks(sent.value, codec) for sent in sending):
            return None  # not said of what was sent: not_text's to say
        database = conn.info.dbname
        holder = f"database {database!r} (the session it is sent on) is {encoding}"
        way_out = (f"send it through a UTF8 database: make {database!r} one (rename it away, "
                   f"then CREATE DATABASE {database} ENCODING 'UTF8' TEMPLATE template0, with "
                   "a UTF-8 or C locale)")
    else:
        return None
    codec = py_codec(encoding)
    sent = next((s for s in sending if (character in s.value if character
                                        else _lacks(s.value, codec))), None)
    if sent is not None:
        character = character or _lacks(sent.value, codec)
        what = f"the {sent.what} {sent.value!r}"
        if sent.way_out:
            way_out += f", or {sent.way_out}"
    else:
        what = "a name or text"
    held = (f"its character {character!r} (U+{ord(character):04X})" if character
            and len(character) == 1 else "one of its characters")
    return NotHeld(f"cannot send {what} for {reading}: {holder}, which cannot hold {held}; "
                   f"{way_out}")

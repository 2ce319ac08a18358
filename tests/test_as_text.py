"""backupd.postgres.connection.as_text leaves errors that are not about an encoding as they
are: inside a caller's transaction (where psycopg forbids an explicit rollback), and for
text no encoding holds (a lone surrogate, as a name given in bytes that are not UTF-8 is
decoded), which is not a character the session lacks. On the shared (UTF8) server."""

from __future__ import annotations

import psycopg
import pytest
from helpers.pg import ServerAddress, connect

from backupd.postgres.connection import as_text
from backupd.postgres.not_held import Sent


def client_encoding(conn: psycopg.Connection[tuple[object, ...]]) -> object:
    row = conn.execute("SHOW client_encoding").fetchone()
    return row[0] if row else None


def test_an_error_inside_a_callers_transaction_stands(
        pg_server: ServerAddress, monkeypatch: pytest.MonkeyPatch) -> None:
    """A LATIN1 session is switched to UTF8 for the block; the failed statement's error is
    the one raised (not psycopg's "Explicit rollback() forbidden"), and the transaction's
    own rollback gives the session its encoding back."""
    monkeypatch.setenv("PGCLIENTENCODING", "LATIN1")
    with connect(pg_server) as conn:
        assert client_encoding(conn) == "LATIN1"
        with pytest.raises(psycopg.errors.DivisionByZero), conn.transaction(), as_text(conn):
            conn.execute("select 1/0")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert client_encoding(conn) == "LATIN1"
        assert conn.info.encoding == "iso8859-1"


def test_a_lone_surrogate_on_a_utf8_session_is_not_said_to_be_a_character_it_lacks(
        pg_server: ServerAddress, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGCLIENTENCODING", raising=False)
    name = "caf\udce9"  # b"caf\xe9" decoded with surrogateescape
    with connect(pg_server) as conn:
        assert client_encoding(conn) == "UTF8"
        with pytest.raises(UnicodeEncodeError) as raised, \
                as_text(conn, "the test", sending=[Sent("database name", name)]):
            conn.execute("SELECT %s::text", (name,))
        assert raised.value.object[raised.value.start] == "\udce9"
        assert client_encoding(conn) == "UTF8"  # the session is usable

"""Whether a database holds anything of its own (backupd.postgres.user_objects.holds_nothing,
asked of whole production databases after every ``restore --replace``) is answered without
naming its objects, and always as read_user_objects, the one definition, answers it."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from helpers.pg import ServerAddress, connect, psql
from helpers.template1 import SUBSCRIPTION

from backupd.postgres.user_objects import holds_nothing, read_user_objects

HOLDINGS = {
    "nothing": "",
    "a table": "CREATE TABLE notes (body text);",
    "a large object": "SELECT lo_create(0);",
    "an extension": "CREATE EXTENSION citext;",
    "a schema": "CREATE SCHEMA util;",
    "a changed privilege": "REVOKE USAGE ON LANGUAGE sql FROM PUBLIC;",
    "a column privilege on a catalog table":
        "GRANT SELECT (rolname) ON pg_catalog.pg_authid TO PUBLIC;",
    # pg_dump carries a system column's too: GRANT SELECT(ctid) ON TABLE pg_catalog.pg_authid.
    "a column privilege on a system column":
        "GRANT SELECT (ctid) ON pg_catalog.pg_authid TO PUBLIC;",
    "a changed comment on the public schema": "COMMENT ON SCHEMA public IS 'ours';",
    # No dump carries it (pg_dump dumps no comment on a built-in object but public's).
    "a comment on a built-in function": "COMMENT ON FUNCTION pg_catalog.now() IS 'time';",
    "a subscription": SUBSCRIPTION,
    # Left behind by a session that ended: nothing a dump carries.
    "an empty temporary schema": "CREATE TEMPORARY TABLE gone (x int);",
}


NOTHING_OF_ITS_OWN = ("nothing", "an empty temporary schema", "a comment on a built-in function")


@pytest.mark.parametrize("holding", list(HOLDINGS))
def test_holds_nothing_answers_as_the_one_definition(
        pg_server: ServerAddress, make_db: Callable[..., str], holding: str) -> None:
    database = make_db()
    if HOLDINGS[holding]:
        psql(pg_server, database, HOLDINGS[holding])
    try:
        with connect(pg_server, database) as conn:
            assert holds_nothing(conn) == read_user_objects(conn).empty
            assert holds_nothing(conn) == (holding in NOTHING_OF_ITS_OWN)
    finally:
        if holding == "a subscription":  # DROP DATABASE refuses a database with one
            psql(pg_server, database, "DROP SUBSCRIPTION feed_sub")


@pytest.mark.parametrize(("pg_dump_major", "counted"), [(13, False), (14, False), (15, True),
                                                        (16, True), (17, True)])
def test_the_public_schema_comment_counts_where_the_pg_dump_that_runs_carries_it(
        pg_server: ServerAddress, make_db: Callable[..., str], pg_dump_major: int,
        counted: bool) -> None:
    """pg_dump 15 and later dumps a changed public schema comment whatever the server's
    major (dumpNamespace's initdb_comment; 13 and 14 leave it out, selectDumpableNamespace),
    and backupd runs the server's own major's pg_dump, else the nearest newer one: a 13 or 14
    server's template1 holding only that comment is dumped by pg_dump 16, so the backup side
    asks about the pg_dump major, not the server's. Asked of this server for each major:
    only 15 is installed here."""
    database = make_db()
    psql(pg_server, database, "COMMENT ON SCHEMA public IS 'ours';")
    with connect(pg_server, database) as conn:
        assert read_user_objects(conn, pg_dump_major=pg_dump_major).empty is not counted


def test_holds_nothing_counts_the_public_schema_comment_whatever_pg_dump(
        pg_server: ServerAddress, make_db: Callable[..., str]) -> None:
    """The restore side (may a replaced database be dropped, may template1 be swapped)
    counts the comment whenever a server can hold it: keeping is the cautious side."""
    database = make_db()
    psql(pg_server, database, "COMMENT ON SCHEMA public IS 'ours';")
    with connect(pg_server, database) as conn:
        assert not holds_nothing(conn)
        assert not read_user_objects(conn).empty

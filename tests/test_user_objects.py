"""Whether a database holds anything of its own (backupd.postgres.user_objects.holds_nothing,
asked of whole production databases after every ``restore --replace``) is answered without
naming its objects, and always as read_user_objects, the one definition, answers it."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from helpers.pg import ServerAddress, connect, psql
from helpers.template1 import SUBSCRIPTION
from psycopg import sql

from backupd.postgres.user_objects import holds_nothing, object_rows, read_user_objects

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


@pytest.mark.parametrize(("server_version", "counted"), [(130000, False), (140013, False),
                                                         (150000, True), (170000, True)])
def test_the_public_schema_comment_counts_only_where_pg_dump_carries_it(
        pg_server: ServerAddress, make_db: Callable[..., str], server_version: int,
        counted: bool) -> None:
    """pg_dump dumps the public schema's comment from PostgreSQL 15 on; on 13 and 14 it
    leaves it out (selectDumpableNamespace), so there it is nothing a backup could carry.
    Asked of this server with the rows a 13 or 14 server gets: no such server here."""
    database = make_db()
    psql(pg_server, database, "COMMENT ON SCHEMA public IS 'ours';")
    with connect(pg_server, database) as conn:
        row = conn.execute(sql.SQL("SELECT count(*) FROM ({}) o").format(
            object_rows(False, server_version))).fetchone()
    assert row == ((1,) if counted else (0,))

"""Changes to template1's built-in objects that pg_dump carries (it dumps them when they
differ from initdb's) must make a run of '*' back template1 up: otherwise a whole-system
restore brings back a server whose new databases lack them. Private clusters only: these
tests change template1."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.backups import back_up, sql_of
from helpers.cluster import PrivateCluster
from helpers.pg import ServerAddress, connect
from helpers.template1 import objects_in, put_into_template1, restore_latest

pytestmark = pytest.mark.slow

ClusterFactory = Callable[..., PrivateCluster]
COLUMN_GRANT = "GRANT SELECT (rolname) ON pg_catalog.pg_authid TO PUBLIC"


def column_privileges(server: ServerAddress, database: str = "template1") -> str | None:
    with connect(server, database) as conn:
        row = conn.execute("SELECT attacl::text FROM pg_attribute WHERE attrelid = "
                           "'pg_catalog.pg_authid'::regclass AND attname = 'rolname'"
                           ).fetchone()
    assert row is not None
    return None if row[0] is None else str(row[0])


def test_a_column_privilege_on_a_catalog_table_is_backed_up_and_restored(
        private_cluster: ClusterFactory, tmp_path: Path) -> None:
    source = private_cluster()
    put_into_template1(source.address, COLUMN_GRANT)
    held = objects_in(source.address)
    assert not held.empty
    assert held.describe() == "changed privileges on 1 built-in object"
    assert held.identities == (
        "changed privileges column rolname of table pg_authid: {=r/postgres}",)
    directory = tmp_path / "backups"
    back_up(source.address, "*", directory, HEALTH_PORT="0")
    [dump] = directory.glob("template1_*.sql.gz")
    assert b"GRANT SELECT(rolname) ON TABLE pg_catalog.pg_authid TO PUBLIC;" in sql_of(dump)
    target = private_cluster("t1-column-target-pw")
    assert column_privileges(target.address) is None
    proc = restore_latest(target.address, directory)
    assert "template1: ok" in proc.stdout
    assert column_privileges(target.address) == column_privileges(source.address)


def test_a_changed_comment_on_the_public_schema_is_backed_up_and_restored(
        private_cluster: ClusterFactory, tmp_path: Path) -> None:
    """The one comment on a built-in object pg_dump carries (it leaves the default out);
    on any other (COMMENT ON FUNCTION now()) it carries none, so that is not counted."""
    source = private_cluster()
    put_into_template1(source.address, "COMMENT ON FUNCTION pg_catalog.now() IS 'the time'")
    assert objects_in(source.address).empty
    put_into_template1(source.address, "COMMENT ON SCHEMA public IS 'the app''s'")
    held = objects_in(source.address)
    assert not held.empty
    assert held.describe() == "changed comment on 1 built-in object"
    assert held.identities == ("changed comment schema public: the app's",)
    directory = tmp_path / "backups"
    back_up(source.address, "*", directory, HEALTH_PORT="0")
    [dump] = directory.glob("template1_*.sql.gz")
    assert b"COMMENT ON SCHEMA public IS 'the app''s';" in sql_of(dump)
    target = private_cluster("t1-comment-target-pw")
    proc = restore_latest(target.address, directory)
    assert "template1: ok" in proc.stdout
    assert public_schema_comment(target.address) == "the app's"


def test_a_removed_comment_on_the_public_schema_counts_as_changed(
        private_cluster: ClusterFactory) -> None:
    """pg_dump says so too (COMMENT ON SCHEMA public IS '')."""
    cluster = private_cluster()
    put_into_template1(cluster.address, "COMMENT ON SCHEMA public IS NULL")
    assert objects_in(cluster.address).identities == ("changed comment schema public: none",)


def public_schema_comment(server: ServerAddress) -> str | None:
    with connect(server, "template1") as conn:
        row = conn.execute("SELECT obj_description('public'::regnamespace, 'pg_namespace')"
                           ).fetchone()
    assert row is not None
    return None if row[0] is None else str(row[0])

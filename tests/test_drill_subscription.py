"""A database holding a (disabled) logical-replication subscription: the restored copy holds
it too, and PostgreSQL refuses to drop a database with a subscription. The drill detaches
it from its slot and drops it first, never touching the publisher.
Subscriptions are cluster-wide catalog entries: a private cluster."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.backups import take_backup
from helpers.cli import run_backupd, server_env
from helpers.cluster import PrivateCluster, databases_on
from helpers.logs import jobs_finished
from helpers.pg import connect, psql


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivateCluster]:
    with PrivateCluster("sub-pw") as private:
        private.start()
        psql(private.address, "postgres", "CREATE DATABASE subs")
        # No publisher is needed: connect = false creates it without contacting one.
        psql(private.address, "subs", """
            CREATE TABLE feed (id int PRIMARY KEY);
            INSERT INTO feed VALUES (1), (2);
            CREATE SUBSCRIPTION feed_sub CONNECTION 'host=127.0.0.1 port=1 dbname=nowhere'
                PUBLICATION feed_pub WITH (connect = false, enabled = false,
                                           create_slot = false);""")
        yield private


def job_result(stderr: str) -> dict[str, Any]:
    results = jobs_finished(stderr)
    assert results, stderr
    return dict(results[-1])


def test_drills_of_a_database_with_a_subscription_keep_passing(
        cluster: PrivateCluster, tmp_path: Path) -> None:
    env = server_env(cluster.address, "subs", tmp_path / "b")
    take_backup(env)

    for attempt in (1, 2):
        proc = run_backupd(["drill"], env)
        assert proc.returncode == 0, f"drill {attempt}: {proc.stderr}"
        assert job_result(proc.stderr)["warnings"] == [], proc.stderr
        assert "subs_drill" not in databases_on(cluster)
    # The live database's subscription is untouched.
    with connect(cluster.address) as conn:
        rows = conn.execute("SELECT s.subname, s.subslotname FROM pg_subscription s "
                            "JOIN pg_database d ON d.oid = s.subdbid").fetchall()
    assert rows == [("feed_sub", "feed_sub")]

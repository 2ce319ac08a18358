"""template1 with DB_BACKUP_GLOBALS=off: no globals manifest says which databases a run of '*'
took, so what the run found in template1 must travel with the run's dumps (their manifests,
locally and in S3). Emptied since its last dump, template1 is neither judged by health nor
brought back by a whole-system restore, from the directory or from the bucket alone.
Private clusters only: these tests change template1."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from helpers.backups import read_manifest, redate
from helpers.cli import run_backupd
from helpers.cluster import PrivateCluster
from helpers.logs import log_events
from helpers.offsite import object_keys, s3_env
from helpers.pg import psql
from helpers.s3server import S3Server
from helpers.template1 import (
    EMPTY_TEMPLATE1,
    first_run_with_the_globals_off,
    restore_latest,
    template_objects,
)

pytestmark = pytest.mark.slow

ClusterFactory = Callable[..., PrivateCluster]


def left_out(stderr: str) -> list[str]:
    """What a whole-system restore said of leaving template1's old dumps out."""
    return [str(e["event"]) for e in log_events(stderr)
            if "not restoring template1" in str(e.get("event"))]


def test_an_emptied_template1_is_not_restored_with_the_globals_off(
        private_cluster: ClusterFactory, tmp_path: Path) -> None:
    cluster = private_cluster()
    directory = tmp_path / "backups"
    env = first_run_with_the_globals_off(cluster.address, directory, BACKUP_MAX_AGE_HOURS="24")
    [dump] = directory.glob("template1_*.sql.gz")
    # Two days old: judged, it would make health fail.
    dump = redate(dump, datetime.now(UTC) - timedelta(days=2), keep_source=False)
    psql(cluster.address, "template1", EMPTY_TEMPLATE1)
    proc = run_backupd(["backup", "--no-prune"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert list(directory.glob("globals_*")) == []
    assert list(directory.glob("template1_*.sql.gz")) == [dump]  # the old one, kept
    postgres_dump = sorted(directory.glob("postgres_*.sql.gz"))[-1]
    assert read_manifest(postgres_dump)["template1_look"] == "empty"
    assert read_manifest(dump)["template1_look"] == "dumped"
    # Another config of '*' leaving template1 out, sharing the directory, did not look: its
    # run must not undo what the newest run that looked found.
    excluded = run_backupd(["backup", "--no-prune"], {**env, "DB_BACKUP_EXCLUDE": "template1"})
    assert excluded.returncode == 0, excluded.stdout + excluded.stderr
    healthy = run_backupd(["health"], env)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    target = private_cluster("t1-globals-off-target-pw")
    restored = restore_latest(target.address, directory)
    assert template_objects(target.address) == []
    [line] = left_out(restored.stderr)
    assert "holding nothing of its own" in line and "--database template1" in line, line
    assert "incomplete" not in restored.stdout + restored.stderr


def test_an_emptied_template1_is_not_restored_from_s3_with_the_globals_off(
        private_cluster: ClusterFactory, tmp_path: Path, s3_server: S3Server,
        s3_bucket: str) -> None:
    offsite = s3_env(s3_server, s3_bucket, "prod")
    cluster = private_cluster()
    env = first_run_with_the_globals_off(cluster.address, tmp_path / "backups", **offsite)
    psql(cluster.address, "template1", EMPTY_TEMPLATE1)
    proc = run_backupd(["backup", "--no-prune"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len([k for k in object_keys(s3_server, s3_bucket, "prod/")
                if k.startswith("prod/template1_") and k.endswith(".sql.gz")]) == 1
    # The new machine: nothing local, the bucket alone.
    target = private_cluster("t1-globals-off-s3-target-pw")
    restored = restore_latest(target.address, tmp_path / "new-machine", "--from-s3",
                              **offsite)
    assert template_objects(target.address) == []
    [line] = left_out(restored.stderr)
    assert "holding nothing of its own" in line, line
    assert "incomplete" not in restored.stdout + restored.stderr

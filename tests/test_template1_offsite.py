"""template1 in a whole-system backup that is encrypted (age) and copied offsite (S3): a new
machine with nothing but the bucket's settings and the identity restores it. Private
clusters only: these tests change template1."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.age import make_age_keys
from helpers.backups import back_up
from helpers.cluster import PrivateCluster
from helpers.offsite import object_keys, s3_env
from helpers.s3server import S3Server
from helpers.template1 import (
    a_new_database_gets,
    cluster_holding,
    restore_latest,
    template1_flags,
    template_objects,
)

pytestmark = pytest.mark.slow

IN_TEMPLATE1 = ["extension citext", "function util.shout(text)", "schema util"]


def test_an_encrypted_offsite_template1_restores_from_s3_alone(
        tmp_path: Path, s3_server: S3Server, s3_bucket: str) -> None:
    keys = make_age_keys(tmp_path / "keys")
    offsite = s3_env(s3_server, s3_bucket, "prod")
    directory = tmp_path / "backups"
    with cluster_holding("t1-offsite-source-pw") as source:
        # The sidecar has the public key only.
        back_up(source.address, "*", directory, HEALTH_PORT="0",
                DB_BACKUP_AGE_RECIPIENTS_FILE=str(keys.recipients_file), **offsite)
    stored = object_keys(s3_server, s3_bucket, "prod/")
    [template_dump] = [k for k in stored if k.startswith("prod/template1_")
                       and k.endswith(".sql.gz.age")]
    assert template_dump + ".manifest.json" in stored
    # The new machine: nothing local, the bucket and the identity.
    with PrivateCluster("t1-offsite-target-pw") as target:
        target.start()
        proc = restore_latest(target.address, tmp_path / "new-machine", "--from-s3",
                              DB_BACKUP_AGE_IDENTITY_FILE=str(keys.identity_file), **offsite)
        assert "template1: ok" in proc.stdout, proc.stdout + proc.stderr
        assert template_objects(target.address) == IN_TEMPLATE1
        assert template1_flags(target.address) == (True, True)
        assert a_new_database_gets(target.address) == IN_TEMPLATE1

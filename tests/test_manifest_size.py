"""A manifest is read whole and parsed, and keeps fields this version does not know: without
a cap, a hostile 30 MB manifest cost ~950 MB of memory to read. One over the cap is a
problem to report, locally and in S3 (moto), before it is parsed; the biggest one backupd
writes for a large database still loads.

The worst case measured (manifest sizes, their JSON as backupd writes it): 100,000 tables
with 63-byte schema and table names (PostgreSQL's longest) are 13.9 MiB of table_rows; with
the gzip member sizes of a 1 TiB plain dump (512,000 members) 19.8 MiB."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from helpers.s3server import S3Server

from backupd.manifest import MANIFEST_MAX_BYTES, Manifest
from backupd.naming import backup_name
from backupd.storage.base import Repository
from backupd.storage.local import LocalRepository
from backupd.storage.s3 import S3Config, S3Repository

pytestmark = pytest.mark.slow

WHEN = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture(params=["local", "s3"])
def repository(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Repository]:
    if request.param == "local":
        yield LocalRepository(tmp_path)
        return
    server: S3Server = request.getfixturevalue("s3_server")
    bucket: str = request.getfixturevalue("s3_bucket")
    config = S3Config(bucket=bucket, endpoint_url=server.endpoint_url, region="us-east-1",
                      timeout_seconds=30)
    yield S3Repository(config, client=server.client())


def _manifest(**fields: Any) -> Manifest:
    return Manifest(name=backup_name("db", WHEN), database="db", started_at=WHEN,
                    finished_at=WHEN, raw_bytes=1, stored_bytes=1, sha256="0" * 64, **fields)


def test_a_manifest_over_the_cap_is_a_problem_not_read(repository: Repository) -> None:
    # Valid in every other way: only its size is wrong.
    manifest = _manifest(padding="x" * MANIFEST_MAX_BYTES)
    size = len(manifest.to_json())
    repository.write_manifest(manifest)

    assert repository.load_manifest(manifest.name) == (
        None, f"manifest too large: {size} bytes, more than {MANIFEST_MAX_BYTES}")


def test_the_largest_manifest_backupd_writes_still_loads(repository: Repository) -> None:
    long = "s" * 56
    rows = {f"{long}{i // 1000:07d}.{long}{i:07d}": 123_456_789 for i in range(100_000)}
    manifest = _manifest(table_rows=rows, gzip_members=[412_345] * 512_000)
    assert len(manifest.to_json()) > 19 * 2**20  # the measured worst case
    repository.write_manifest(manifest)

    loaded, problem = repository.load_manifest(manifest.name)
    assert problem is None
    assert loaded is not None and loaded.table_rows == rows

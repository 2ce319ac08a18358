"""The repository contract (backupd.storage.base.Repository), one test body per promise, run
against every implementation: the local directory and S3 (moto in server mode, over HTTP).
A new storage backend passes these before any command may use it. Last, jobs are given their
repositories (injected), never a hard-wired one.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from helpers.s3server import S3Server

from backupd.commands import verify as verify_cmd
from backupd.errors import JobFailed
from backupd.job import run_job
from backupd.manifest import Manifest
from backupd.naming import backup_name
from backupd.notify.base import NotifierChain
from backupd.outcomes import VerifyOutcome
from backupd.settings import load_settings
from backupd.storage.base import BackupEntry, Repository, UnknownBackup, newest_verified
from backupd.storage.local import LocalRepository
from backupd.storage.repositories import Repositories
from backupd.storage.s3 import S3Config, S3Repository

DATABASE = "contract db/ü"
WHEN = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


class CrashBeforeCommit(Exception):
    """Stands for backupd dying between the data and its manifest."""


@pytest.fixture(params=["local", "s3"])
def repository(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Repository]:
    if request.param == "local":
        directory = tmp_path / "repo"
        directory.mkdir(mode=0o700)
        yield LocalRepository(directory)
        return
    server: S3Server = request.getfixturevalue("s3_server")
    bucket: str = request.getfixturevalue("s3_bucket")
    config = S3Config(bucket=bucket, prefix="contract/", endpoint_url=server.endpoint_url,
                      region="us-east-1", timeout_seconds=3)
    yield S3Repository(config, client=server.client())


def artifact(tmp_path: Path, when: datetime = WHEN, size: int = 300_000,
             database: str = DATABASE) -> tuple[Manifest, Path]:
    """A data file and the manifest that vouches for it (verified)."""
    name = backup_name(database, when)
    data = os.urandom(size)
    source = tmp_path / f"source-{secrets.token_hex(4)}"
    source.write_bytes(data)
    manifest = Manifest(name=name, database=database, started_at=when, finished_at=when,
                        raw_bytes=size, stored_bytes=size,
                        sha256=hashlib.sha256(data).hexdigest(), verified=True,
                        verified_at=when)
    return manifest, source


def names(entries: list[BackupEntry]) -> list[str]:
    return [e.name for e in entries]


def test_put_then_list_newest_first_of_this_database_only(
    repository: Repository, tmp_path: Path,
) -> None:
    assert repository.list_backups(DATABASE) == []
    older, older_source = artifact(tmp_path, WHEN - timedelta(days=1))
    newer, newer_source = artifact(tmp_path, WHEN)
    other, other_source = artifact(tmp_path, WHEN, database="another")
    for manifest, source in ((older, older_source), (newer, newer_source),
                             (other, other_source)):
        repository.put(manifest, source)

    listed = repository.list_backups(DATABASE)
    assert names(listed) == [newer.name, older.name]
    assert all(e.committed and e.verified and e.database == DATABASE for e in listed)
    assert [f.sha256 for f in listed[0].files] == [newer.sha256]
    assert listed[0].size == newer.stored_bytes and listed[0].kind == "dump"
    newest = newest_verified(listed)
    assert newest is not None and newest.name == newer.name
    assert names(repository.list_backups("another")) == [other.name]
    assert repository.entry(newer.name).manifest == newer
    # Every database with a dump here (what restore --latest with POSTGRES_DB='*' restores).
    assert repository.databases() == sorted([DATABASE, "another"])


def test_manifest_is_written_last(repository: Repository, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    manifest, source = artifact(tmp_path)
    seen_at_commit: list[bytes] = []
    commit = repository.write_manifest

    def observing_commit(written: Manifest) -> None:
        # When the manifest goes in, the whole data must already be readable.
        with repository.open(written.name) as stream:
            seen_at_commit.append(stream.read())
        commit(written)

    monkeypatch.setattr(repository, "write_manifest", observing_commit)
    repository.put(manifest, source)
    assert seen_at_commit == [source.read_bytes()]


def test_put_interrupted_before_its_manifest_is_never_listed_as_good(
    repository: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    good, good_source = artifact(tmp_path, WHEN - timedelta(hours=1))
    repository.put(good, good_source)
    interrupted, source = artifact(tmp_path, WHEN)

    def crash(_: Manifest) -> None:
        raise CrashBeforeCommit

    monkeypatch.setattr(repository, "write_manifest", crash)
    with pytest.raises(CrashBeforeCommit):
        repository.put(interrupted, source)
    monkeypatch.undo()

    listed = repository.list_backups(DATABASE)
    assert not any(e.verified for e in listed if e.name == interrupted.name)
    newest = newest_verified(listed)
    assert newest is not None and newest.name == good.name
    # Whatever is left of it is never a committed, verified backup.
    leftover = [e for e in repository.scan(DATABASE) if e.name == interrupted.name]
    assert all(e.manifest is None and not e.verified for e in leftover)


def test_put_refuses_data_that_does_not_match_its_manifest(
    repository: Repository, tmp_path: Path,
) -> None:
    manifest, source = artifact(tmp_path)
    source.write_bytes(source.read_bytes()[:-1])  # one byte short of what the manifest says
    with pytest.raises(JobFailed):  # OffsiteError (S3) is a JobFailed too
        repository.put(manifest, source)
    assert repository.list_backups(DATABASE) == []


def test_delete_removes_data_and_manifest(repository: Repository, tmp_path: Path) -> None:
    kept, kept_source = artifact(tmp_path, WHEN - timedelta(days=1))
    gone, gone_source = artifact(tmp_path, WHEN)
    repository.put(kept, kept_source)
    repository.put(gone, gone_source)

    repository.delete(gone.name)

    assert names(repository.list_backups(DATABASE)) == [kept.name]
    assert names(repository.scan(DATABASE)) == [kept.name]
    assert repository.load_manifest(gone.name) == (None, None)
    with pytest.raises(UnknownBackup):
        repository.entry(gone.name)


def test_streaming_read_returns_the_bytes_the_manifest_vouches_for(
    repository: Repository, tmp_path: Path,
) -> None:
    manifest, source = artifact(tmp_path, size=3 * 1024 * 1024 + 17)
    repository.put(manifest, source)
    digest, size = hashlib.sha256(), 0
    with repository.open(manifest.name) as stream:
        while chunk := stream.read(64 * 1024):
            digest.update(chunk)
            size += len(chunk)
    assert (digest.hexdigest(), size) == (manifest.sha256, manifest.stored_bytes)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with repository.local_copy(manifest.name, scratch) as path:
        assert hashlib.sha256(path.read_bytes()).hexdigest() == manifest.sha256
    assert list(scratch.iterdir()) == []  # a download is removed afterwards


def test_a_recorded_verdict_replaces_the_manifest(repository: Repository,
                                                  tmp_path: Path) -> None:
    manifest, source = artifact(tmp_path)
    repository.put(manifest, source)
    failed = manifest.model_copy(update={"verified": False, "verify_error": "sha256: bad"})
    repository.write_manifest(failed)
    (entry,) = repository.list_backups(DATABASE)
    assert entry.manifest == failed and not entry.verified


def test_names_that_are_not_backups_are_refused(repository: Repository) -> None:
    for name in ("notes.txt", "../etc/passwd", backup_name(DATABASE, WHEN) + "\n"):
        with pytest.raises((UnknownBackup, ValueError)):
            repository.entry(name)


def test_jobs_work_on_the_repositories_they_are_given(env: dict[str, str], backup: Path,
                                                      tmp_path: Path) -> None:
    """Injection, not a hard-wired LocalStore: a job verifies the repository it is handed,
    whatever DB_BACKUP_DIR says."""
    elsewhere = tmp_path / "empty"
    settings = load_settings(**{**env, "DB_BACKUP_DIR": str(elsewhere)})
    given = Repositories(LocalRepository(backup.parent))
    result = run_job("verify", settings, lambda ctx: _discard(verify_cmd.run(ctx, [])),
                     NotifierChain([]), repositories=given)
    assert result.ok, result.summary()
    assert isinstance(result.outcome, VerifyOutcome)
    assert [r.name for r in result.outcome.reports] == [backup.name]
    # Without injection the same job looks in DB_BACKUP_DIR, where there is nothing.
    alone = run_job("verify", settings, lambda ctx: _discard(verify_cmd.run(ctx, [])),
                    NotifierChain([]))
    assert not alone.ok and "no backups" in (alone.error or "")


def _discard(_: object) -> None:
    return None


class _PrunedWhileListed(LocalRepository):
    """A prune (the real ``delete``) that lands between scan's listing and its reads of each
    listed backup: the interleaving of a health probe or a scrape beside retention."""

    def load_manifest(self, name: str) -> tuple[Manifest | None, str | None]:
        self.delete(name)
        return super().load_manifest(name)


def test_a_backup_pruned_while_it_is_listed_is_left_out_not_an_error(tmp_path: Path) -> None:
    directory = tmp_path / "repo"
    directory.mkdir(mode=0o700)
    manifest, source = artifact(tmp_path)
    LocalRepository(directory).put(manifest, source)

    assert _PrunedWhileListed(directory).scan(DATABASE) == []

"""WAL streaming (issue 15): the daemon with WAL_ARCHIVE=on supervises pg_receivewal into the
local archive; completed segments are committed compressed and checksummed, the live
.partial holds a commit within seconds, and what the archive gives back is the server's WAL."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.backups import sha256_file
from helpers.cli import BackupdProcess
from helpers.cluster import PrivateCluster
from helpers.wal import (
    STREAM_ONLY,
    archived,
    commit_marker,
    committed_segments,
    gaps,
    holds,
    live_partial,
    local_archive,
    seconds_until,
    switch_wal,
    wait_archived,
    wait_streaming,
    wal_dir,
    wal_env,
)


def test_streams_segments_and_a_current_partial(
    wal_cluster: PrivateCluster, backup_dir: Path,
    backupd_daemon: Callable[..., BackupdProcess], tmp_path: Path,
) -> None:
    daemon = backupd_daemon(["run"], wal_env(wal_cluster, backup_dir, **STREAM_ONLY))
    wait_streaming(backup_dir)

    marker = f"marker-{secrets.token_hex(8)}"
    committed = commit_marker(wal_cluster.address, marker)
    rpo = seconds_until(lambda: holds(live_partial(backup_dir), marker), committed, 30,
                        "the committed row in the spool's .partial")
    print(f"local RPO: COMMIT to durable in the local archive in {rpo:.3f}s")

    last = switch_wal(wal_cluster.address, 3)
    wait_archived(backup_dir, last)
    names = committed_segments(backup_dir)
    assert gaps(names) == []
    assert len(names) >= 3
    # The marker's segment, once complete, comes back byte for byte from the archive.
    first_with_marker = None
    for name in names:
        dest = tmp_path / name
        local_archive(backup_dir).fetch(name, dest)
        server_copy = wal_cluster.data_dir / "pg_wal" / name
        if server_copy.exists():
            assert sha256_file(dest) == sha256_file(server_copy), name
        if first_with_marker is None and holds(dest, marker):
            first_with_marker = name
    assert first_with_marker is not None, "the committed row is in no archived segment"
    # Compressed, checksummed, recorded: a manifest per segment, never the raw 16 MiB.
    for wal in archived(backup_dir):
        if wal.artifact is None:
            continue
        manifest = json.loads((wal_dir(backup_dir) / f"{wal.artifact}.manifest.json").read_text())
        assert manifest["kind"] == "wal" and manifest["verified"] is True
        assert manifest["wal"]["wal_file"] == wal.name
        assert manifest["stored_bytes"] < manifest["raw_bytes"] == 16 * 1024 * 1024
    # Only what pg_receivewal needs stays in the spool: the segment it writes.
    spool = [p.name for p in (wal_dir(backup_dir) / "spool").iterdir()]
    assert all(name.endswith(".partial") for name in spool), spool
    assert daemon.poll() is None, daemon.read_stderr()


def test_the_archive_is_listed_while_the_spool_changes_under_it(tmp_path: Path) -> None:
    """The archiver moves completed segments out of the spool while status, retention and the
    continuity check list the archive: a file gone between the spool's listing and its size
    is skipped (and the repository listed again), never a FileNotFoundError (as in CI:
    test_server_restart_mid_stream_resumes_without_a_gap). Files come and go for a second
    while the listing runs over and over."""
    import threading
    import time

    from backupd.archive.walstore import WalArchive
    from backupd.storage.local import LocalRepository

    spool = tmp_path / "spool"
    spool.mkdir()
    archive = WalArchive(LocalRepository(tmp_path / "wal"), spool=spool)
    stop = threading.Event()

    def churn() -> None:
        number = 0
        while not stop.is_set():
            segment = spool / f"00000001000000000000{number % 200:04X}"
            segment.write_bytes(b"x")
            segment.unlink()
            number += 1

    churning = threading.Thread(target=churn, daemon=True)
    churning.start()
    listings, deadline = 0, time.monotonic() + 1
    try:
        while time.monotonic() < deadline:
            archive.segments()
            listings += 1
    finally:
        stop.set()
        churning.join(10)
    assert listings > 0


_SEGMENT = "000000010000000000000007"


def test_a_segment_committed_between_the_spool_listing_and_its_size_is_listed_once(
        tmp_path: Path) -> None:
    """The archiver commits a segment exactly in that window, every time: it is listed once,
    as the committed artifact (the repository listed again), never a gap or an error."""
    from backupd.archive.walnames import DEFAULT_SEGMENT_SIZE, parse_wal_name
    from backupd.archive.walstore import WalArchive, WalOrigin
    from backupd.storage.local import LocalRepository

    class ArchiverInTheWindow(WalArchive):
        def spool_files(self, segment_size: int = DEFAULT_SEGMENT_SIZE) -> list[Path]:
            listed = super().spool_files(segment_size)
            for path in listed:  # the archiver: commit it, then take it out of the spool
                wal = parse_wal_name(path.name)
                assert wal is not None
                self.store(path, wal, WalOrigin("7716253996312042151"), compression="zstd",
                           level=None, scratch=tmp_path)
                path.unlink()
            return listed

    spool = tmp_path / "wal" / "spool"
    spool.mkdir(parents=True)
    (spool / _SEGMENT).write_bytes(os.urandom(64 * 1024))
    listed = ArchiverInTheWindow(LocalRepository(tmp_path / "wal"), spool=spool).segments()
    assert [(w.name, w.spool_path) for w in listed] == [(_SEGMENT, None)]
    assert listed[0].artifact is not None


@pytest.mark.parametrize("move", ["completed", "committed", "completed-and-committed"])
def test_a_spool_file_that_moves_after_the_listing_is_still_fetched(
        tmp_path: Path, move: str) -> None:
    """The PITR drill copies WAL while the daemon streams: between the listing and the copy,
    pg_receivewal completes the live .partial (renamed in the spool) and the archiver commits
    a completed segment (moved out of the spool). The file is looked up again by segment,
    never a FileNotFoundError, and the bytes arrive (the completed segment's: all the
    partial had, and more)."""
    from backupd.archive.walnames import parse_wal_name
    from backupd.archive.walstore import WalArchive, WalOrigin
    from backupd.storage.local import LocalRepository

    spool = tmp_path / "wal" / "spool"
    spool.mkdir(parents=True)
    archive = WalArchive(LocalRepository(tmp_path / "wal"), spool=spool)
    written = os.urandom(64 * 1024)
    complete = written + os.urandom(64 * 1024)
    listed_name = _SEGMENT if move == "committed" else f"{_SEGMENT}.partial"
    (spool / listed_name).write_bytes(complete if move == "committed" else written)
    [listed] = archive.segments()
    assert listed.spool_path == spool / listed_name

    if move != "committed":  # pg_receivewal completes the segment
        (spool / listed_name).unlink()
        (spool / _SEGMENT).write_bytes(complete)
    if move != "completed":  # the archiver commits it and removes it from the spool
        wal = parse_wal_name(_SEGMENT)
        assert wal is not None
        archive.store(spool / _SEGMENT, wal, WalOrigin("7716253996312042151"),
                      compression="zstd", level=None, scratch=tmp_path)
        (spool / _SEGMENT).unlink()

    dest = tmp_path / "copy" / listed_name
    dest.parent.mkdir()
    archive.fetch_archived(listed, dest)
    assert dest.read_bytes() == complete


@pytest.mark.parametrize("encrypted", [False, True])
def test_a_copy_that_cannot_be_written_is_an_os_error_naming_it_not_damage(
        tmp_path: Path, encrypted: bool) -> None:
    """Writing the copy fails part way (RLIMIT_FSIZE's "File too large", as a full disk's
    ENOSPC): the OSError names the copy, never a WalFetchError calling the archive's file
    damaged (age's decryption reports its sink's failure as the data's own)."""
    import resource

    from helpers.age import make_age_keys

    from backupd.archive.walnames import parse_wal_name
    from backupd.archive.walstore import WalArchive, WalOrigin
    from backupd.pipeline.config import AgeKeyFiles
    from backupd.storage.local import LocalRepository

    keys = make_age_keys(tmp_path)
    crypto = AgeKeyFiles(recipients_file=keys.recipients_file,
                         identity_file=keys.identity_file) if encrypted else None
    (tmp_path / "wal").mkdir()
    source = tmp_path / _SEGMENT
    source.write_bytes(os.urandom(2 * 1024 * 1024))
    wal = parse_wal_name(_SEGMENT)
    assert wal is not None
    archive = WalArchive(LocalRepository(tmp_path / "wal"), crypto)
    archive.store(source, wal, WalOrigin("7716253996312042151"), compression="zstd",
                  level=None, scratch=tmp_path)
    [listed] = archive.segments()
    dest = tmp_path / "copy"
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024 * 1024, limit[1]))
    try:
        with pytest.raises(OSError, match="File too large") as raised:
            archive.fetch_archived(listed, dest)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limit)
    assert raised.value.filename == str(dest)
    assert not dest.exists() and not list(tmp_path.glob(".copy*"))  # nothing half-written


def test_a_segment_stored_again_is_listed_from_the_spool_until_its_manifest_follows(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash after a segment's commit leaves it in the spool: the next start stores it
    again (here at another level, so another size), its data in place before its manifest.
    A listing in that window lists the spool's copy, never damage, and one that catches the
    data replaced and then the spool emptied looks again and lists the new commit; the same
    mismatch with no write going on is damage, and fetching it says so."""
    from backupd.archive.walnames import DEFAULT_SEGMENT_SIZE, parse_wal_name
    from backupd.archive.walstore import WalArchive, WalFetchError, WalOrigin
    from backupd.manifest import Manifest
    from backupd.storage.local import LocalRepository

    spool = tmp_path / "wal" / "spool"
    spool.mkdir(parents=True)
    spooled = spool / _SEGMENT
    spooled.write_bytes(b"".join(os.urandom(16) * 64 for _ in range(1024)))  # compressible
    wal = parse_wal_name(_SEGMENT)
    assert wal is not None
    repository = LocalRepository(tmp_path / "wal")
    archive = WalArchive(repository, spool=spool)
    origin = WalOrigin("7716253996312042151")
    first = archive.store(spooled, wal, origin, compression="zstd", level=1, scratch=tmp_path)

    in_the_window: list[list[object]] = []
    commit = repository.commit
    held: list[Manifest] = []

    def listed_then_committed(manifest: Manifest) -> None:
        in_the_window.append([(w.name, w.spool_path, w.damage) for w in archive.segments()])
        held.append(manifest)

    monkeypatch.setattr(repository, "commit", listed_then_committed)
    second = archive.store(spooled, wal, origin, compression="zstd", level=19, scratch=tmp_path)
    assert first.stored_bytes != second.stored_bytes  # the window holds a mismatch
    assert in_the_window == [[(_SEGMENT, spooled, None)]]

    class CommittedWhileListing(WalArchive):
        def spool_files(self, segment_size: int = DEFAULT_SEGMENT_SIZE) -> list[Path]:
            commit(held[0])  # the store finishes, then leaves the spool
            spooled.unlink()
            return super().spool_files(segment_size)

    [settled] = CommittedWhileListing(repository, spool=spool).segments()
    assert (settled.spool_path, settled.damage) == (None, None)
    assert settled.stored_size == second.stored_bytes

    stored = tmp_path / "wal" / second.name
    with stored.open("r+b") as handle:  # damage: no write going on, no spool copy
        handle.truncate(10)
    [damaged] = archive.segments()
    assert damaged.damage == (f"{stored} is 10 bytes, its manifest records "
                              f"{second.stored_bytes}")
    with pytest.raises(WalFetchError, match=f"WAL file {_SEGMENT} is damaged: {stored} is 10"):
        archive.fetch_archived(damaged, tmp_path / "copy")

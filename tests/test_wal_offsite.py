"""WAL offsite (issue 15): completed segments reach S3 through the repository as soon as they
are archived, the live partial every WAL_S3_PARTIAL_SECONDS, and while S3 is down segments
queue locally and go up later, in order."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.cli import BackupdProcess, as_a_user_sees_it, run_backupd, server_env
from helpers.cluster import PrivateCluster
from helpers.faults import wait_until
from helpers.offsite import s3_env
from helpers.pg import ServerAddress
from helpers.s3server import S3Server
from helpers.wal import (
    STREAM_ONLY,
    commit_marker,
    committed_segments,
    gaps,
    holds,
    local_archive,
    local_manifests,
    offsite_archive,
    offsite_repository,
    put_base_backup_record,
    seconds_until,
    store_wal_files,
    switch_wal,
    wait_archived,
    wait_streaming,
    wal_env,
)

from backupd.archive.status import read_status
from backupd.archive.walstore import WalArchive


def offsite_names(archive: WalArchive) -> list[str]:
    return [w.name for w in archive.segments()]


def partial_holds(archive: WalArchive, marker: str, scratch: Path) -> bool:
    partials = [w for w in archive.segments() if w.partial]
    if not partials:
        return False
    dest = scratch / f"check-{secrets.token_hex(4)}"
    archive.fetch(partials[-1].name, dest)  # checks its SHA-256 on the way
    try:
        return holds(dest, marker)
    finally:
        dest.unlink()


@pytest.mark.slow
def test_segments_and_the_partial_reach_s3_and_queue_while_it_is_down(
    wal_cluster: PrivateCluster, backup_dir: Path, s3_server: S3Server, s3_bucket: str,
    backupd_daemon: Callable[..., BackupdProcess], tmp_path: Path,
) -> None:
    env = wal_env(wal_cluster, backup_dir, **STREAM_ONLY, WAL_S3_PARTIAL_SECONDS="1",
                  **s3_env(s3_server, s3_bucket, prefix="prod"))
    daemon = backupd_daemon(["run"], env)
    wait_streaming(backup_dir)
    remote = offsite_archive(s3_server.endpoint_url, s3_bucket, s3_server.client(), "prod/")

    marker = f"offsite-{secrets.token_hex(6)}"
    committed = commit_marker(wal_cluster.address, marker)
    rpo = seconds_until(lambda: partial_holds(remote, marker, tmp_path), committed, 60,
                        "the committed row in the partial on S3")
    print(f"offsite RPO (WAL_S3_PARTIAL_SECONDS=1): COMMIT to S3 in {rpo:.2f}s")

    last = switch_wal(wal_cluster.address, 2)
    wait_until(lambda: last in offsite_names(remote), 60, f"{last} on S3")
    # The partial of a segment now complete on S3 is gone from there.
    assert f"{last}.partial" not in offsite_names(remote)
    # What S3 gives back is what the local archive has, byte for byte.
    local_copy, remote_copy = tmp_path / "local", tmp_path / "remote"
    local_archive(backup_dir).fetch(last, local_copy)
    remote.fetch(last, remote_copy)
    assert local_copy.read_bytes() == remote_copy.read_bytes()

    # S3 goes down: segments are archived locally and queue, in order.
    s3_server.stop()
    try:
        queued = [switch_wal(wal_cluster.address) for _ in range(3)]
        wait_archived(backup_dir, queued[-1])
        wait_until(lambda: pending_uploads(backup_dir) >= 3, 30, "three segments queued")
        status = read_status(backup_dir / "wal")
        assert status is not None and status.offsite_error
    finally:
        s3_server.start()
    wait_until(lambda: set(queued) <= set(offsite_names(remote)), 90,
               "the queued segments on S3 once it is back")
    manifests = local_manifests(backup_dir)
    uploaded = [str(manifests[name]["uploaded_at"]) for name in queued]
    assert uploaded == sorted(uploaded), f"uploaded out of order: {list(zip(queued, uploaded))}"
    on_s3 = [n for n in offsite_names(remote) if not n.endswith(".partial")]
    assert gaps(on_s3) == []
    assert set(committed_segments(backup_dir)) <= set(on_s3)
    assert daemon.poll() is None, daemon.read_stderr()



def pending_uploads(backup_dir: Path) -> int:
    status = read_status(backup_dir / "wal")
    return status.pending_uploads if status is not None else 0


def test_an_offsite_archive_of_another_cluster_is_refused(
    wal_cluster: PrivateCluster, backup_dir: Path, s3_server: S3Server, s3_bucket: str,
    backupd_daemon: Callable[..., BackupdProcess],
) -> None:
    from datetime import UTC, datetime

    from helpers.offsite import object_keys, put_bytes, sha256

    from backupd.manifest import Manifest, WalRecord

    # Another cluster's segment already under the prefix.
    name, data = "000000010000000000000001.wal.zst", b"their WAL"
    now = datetime.now(UTC)
    theirs = Manifest(kind="wal", name=name, database="wal", started_at=now, finished_at=now,
                      compression="zstd", raw_bytes=9, stored_bytes=len(data),
                      sha256=sha256(data), verified=True,
                      wal=WalRecord(wal_file=name.split(".")[0], timeline=1, start_lsn="0/1000000",
                                    segment_size=16 * 1024 * 1024, system_identifier="1",
                                    raw_sha256=sha256(data)))
    put_bytes(s3_server, s3_bucket, f"wal/{name}", data)
    put_bytes(s3_server, s3_bucket, f"wal/{name}.manifest.json", theirs.to_json())
    before = object_keys(s3_server, s3_bucket)

    env = wal_env(wal_cluster, backup_dir, **STREAM_ONLY, WAL_S3_PARTIAL_SECONDS="1",
                  **s3_env(s3_server, s3_bucket))
    daemon = backupd_daemon(["run"], env)
    wait_archived(backup_dir, switch_wal(wal_cluster.address))

    def refused() -> bool:
        status = read_status(backup_dir / "wal")
        return status is not None and "belongs to cluster 1" in (status.offsite_error or "")

    wait_until(refused, 30, "the foreign offsite archive refused")
    assert "DB_BACKUP_S3_PREFIX" in daemon.read_stderr()
    assert object_keys(s3_server, s3_bucket) == before  # nothing of ours mixed into theirs


def test_the_partial_uploaded_again_is_left_out_until_its_manifest_follows_and_damage_is_not(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The daemon uploads the live partial again every WAL_S3_PARTIAL_SECONDS under the same
    name: the new data replaces the old, then its manifest follows. A listing in between
    sees a size its manifest does not record: that partial is left out (said in
    ``left_out``; the archive ends before it), never called damaged. A segment whose object
    no longer matches its manifest (uploaded once, never again) is damage, and fetching it
    says so."""
    from helpers.offsite import put_bytes

    from backupd.archive.walnames import parse_wal_name
    from backupd.archive.walstore import WalFetchError, WalOrigin
    from backupd.manifest import Manifest

    remote = offsite_archive(s3_server.endpoint_url, s3_bucket, s3_server.client())
    origin = WalOrigin("7716253996312042151")
    segment, partial = "000000010000000000000006", "000000010000000000000007.partial"
    for name, size in ((segment, 64), (partial, 64)):
        path = tmp_path / name
        path.write_bytes(os.urandom(size * 1024))
        wal = parse_wal_name(name)
        assert wal is not None
        remote.store(path, wal, origin, compression="zstd", level=None, scratch=tmp_path)
    assert offsite_names(remote) == [segment, partial]

    in_the_window: list[tuple[list[str], list[str]]] = []
    write_manifest = remote.repository.write_manifest

    def listed_then_written(manifest: Manifest) -> None:
        in_the_window.append((offsite_names(remote), list(remote.left_out)))
        write_manifest(manifest)

    monkeypatch.setattr(remote.repository, "write_manifest", listed_then_written)
    grown = tmp_path / partial
    grown.write_bytes(grown.read_bytes() + os.urandom(64 * 1024))  # more WAL since
    wal = parse_wal_name(partial)
    assert wal is not None
    remote.store(grown, wal, origin, compression="zstd", level=None, scratch=tmp_path)
    [(names, left_out)] = in_the_window
    assert names == [segment]
    [note] = left_out
    assert note.startswith(f"WAL file {partial} left out: ") and "manifest" in note, note
    listed = remote.segments()
    assert [(w.name, w.damage) for w in listed] == [(segment, None), (partial, None)]
    assert remote.left_out == []

    artifact = listed[0].artifact
    assert artifact is not None
    put_bytes(s3_server, s3_bucket, f"wal/{artifact}", b"not what was uploaded")
    [damaged, _] = remote.segments()
    assert damaged.damage is not None and "is 21 bytes, its manifest records" in damaged.damage
    assert remote.left_out == []
    with pytest.raises(WalFetchError, match=f"WAL file {segment} is damaged: s3://"):
        remote.fetch_archived(damaged, tmp_path / "copy")


def test_only_the_newest_partial_can_be_the_live_one_an_older_one_that_does_not_match_is_damage(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path, pg_server: ServerAddress,
) -> None:
    """A ``.partial`` before the archive's newest file is never the one the daemon uploads
    again (it uploads only the newest, after every completed segment): one whose object does
    not match its manifest is damage, listed and named by `verify --wal` (exit 1), never left
    out as a write in progress. The newest is left out with a note true whether or not the
    daemon still runs (after a disaster no manifest follows)."""
    from helpers.offsite import put_bytes

    remote = offsite_archive(s3_server.endpoint_url, s3_bucket, s3_server.client())
    older, newest = "000000010000000000000006.partial", "000000010000000000000008.partial"
    store_wal_files(remote, ["000000010000000000000005", older, "000000010000000000000007",
                             newest], tmp_path)
    put_base_backup_record(offsite_repository(s3_server.endpoint_url, s3_bucket,
                                              s3_server.client()),
                           tmp_path, timeline=1, segno=5)
    for name in (older, newest):
        [artifact] = [w.artifact for w in remote.segments() if w.name == name]
        put_bytes(s3_server, s3_bucket, f"wal/{artifact}", b"not what was uploaded")

    listed = remote.segments()
    assert [(w.name, w.damage is not None) for w in listed] == [
        ("000000010000000000000005", False), (older, True), ("000000010000000000000007", False)]
    [note] = remote.left_out
    assert note.startswith(f"WAL file {newest} left out: "), note
    # What the mismatch means either way, and what to do in each case.
    assert "WAL_S3_PARTIAL_SECONDS" in note and "if the daemon is not running" in note, note

    env = server_env(pg_server, "postgres", tmp_path / "backups", **s3_env(s3_server, s3_bucket))
    proc = run_backupd(["verify", "--wal", "--remote", "--json"], as_a_user_sees_it(env))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    [verdict] = json.loads(proc.stdout)
    [damaged] = verdict["damaged"]
    assert damaged.startswith(f"{older} (") and "is 21 bytes, its manifest records" in damaged
    lines = proc.stderr.strip().splitlines()
    assert f"damaged {older} (" in lines[-1], lines
    assert not any(f"WAL file {older} left out" in line for line in lines), lines
    assert any(f"WAL file {newest} left out" in line for line in lines), lines


def test_a_damaged_partial_beside_its_complete_segment_is_not_left_out_as_the_live_one(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path, pg_server: ServerAddress,
) -> None:
    """A daemon killed between uploading segment N and deleting N.partial leaves both on
    S3; N.partial is superseded by N (never listed, never read). Its object not matching
    its manifest is no write in progress to warn about: the newest file is N, not the
    partial that sorts after it. Found in review: it was "left out" with a warning to run
    again, by recover --from-s3 and verify --wal alike."""
    from helpers.offsite import put_bytes

    remote = offsite_archive(s3_server.endpoint_url, s3_bucket, s3_server.client())
    segment = "000000010000000000000006"
    store_wal_files(remote, ["000000010000000000000005", segment, f"{segment}.partial"],
                    tmp_path)
    put_base_backup_record(offsite_repository(s3_server.endpoint_url, s3_bucket,
                                              s3_server.client()),
                           tmp_path, timeline=1, segno=5)
    [artifact] = [e.name for e in remote.entries() if e.name.startswith(f"{segment}.partial")]
    put_bytes(s3_server, s3_bucket, f"wal/{artifact}", b"not what was uploaded")

    listed = remote.segments()
    assert [(w.name, w.damage) for w in listed] == [
        ("000000010000000000000005", None), (segment, None)]
    assert remote.left_out == []

    env = server_env(pg_server, "postgres", tmp_path / "backups", **s3_env(s3_server, s3_bucket))
    proc = run_backupd(["verify", "--wal", "--remote", "--json"], as_a_user_sees_it(env))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "left out" not in proc.stderr, proc.stderr


def test_archive_retention_reads_the_identity_file_once_for_both_archives(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path, pg_server: ServerAddress,
) -> None:
    """A prune with S3 follows the newest timeline's history file in the local archive and
    again in the bucket's, both encrypted: DB_BACKUP_AGE_IDENTITY_FILE was read for each
    (once per encrypted WAL file read); now once, on the first, for both."""
    from helpers import leakcheck
    from helpers.age import make_age_keys
    from helpers.file_opens import OpenCounter

    from backupd.pipeline.config import AgeKeyFiles
    from backupd.storage.local import LocalRepository

    keys = make_age_keys(tmp_path / "age")
    crypto = AgeKeyFiles(recipients_file=keys.recipients_file)
    backup_dir = tmp_path / "backups"
    wal_dir_path = backup_dir / "wal"
    wal_dir_path.mkdir(parents=True)
    names = ["000000010000000000000005", "00000002.history", "000000020000000000000006"]
    histories = {"00000002.history": "1\t0/6000000\tno recovery target specified\n"}
    client = s3_server.client()
    for archive, repository in (
            (WalArchive(LocalRepository(wal_dir_path), crypto), LocalRepository(backup_dir)),
            (WalArchive(offsite_archive(s3_server.endpoint_url, s3_bucket, client).repository,
                        crypto),
             offsite_repository(s3_server.endpoint_url, s3_bucket, client))):
        store_wal_files(archive, names, tmp_path, histories)
        put_base_backup_record(repository, tmp_path, timeline=2, segno=6)
    assert all(w.artifact is not None and w.artifact.endswith(".age")
               for w in local_archive(backup_dir).segments())
    env = server_env(pg_server, "postgres", backup_dir, **s3_env(s3_server, s3_bucket),
                     DB_BACKUP_AGE_RECIPIENTS_FILE=str(keys.recipients_file),
                     DB_BACKUP_AGE_IDENTITY_FILE=str(keys.identity_file))
    with OpenCounter(keys.identity_file) as opens:
        proc = run_backupd(["prune"], as_a_user_sees_it(env))
        during = opens.count()
        # The harness reads every run's secret files too (the leak check): taken off.
        leakcheck.record_run(["prune"], env)
        harness = opens.count() - during
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "retention on" not in proc.stderr, proc.stderr
    assert harness == 1
    assert during - harness == 1

"""The archive as a whole (issue 15): the daemon streams WAL and takes a base backup at start,
`verify --wal` proves continuity from every base backup to the archive's end and names a
missing segment, and retention keeps exactly the WAL a kept base backup needs, locally and
on S3."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.backups import read_manifest
from helpers.basebackups import base_backups, take_base_backup
from helpers.cli import (
    BackupdProcess,
    as_a_user_sees_it,
    run_backupd,
    server_env,
    stop_backupd,
)
from helpers.cluster import PrivateCluster
from helpers.faults import wait_until
from helpers.offsite import object_keys, s3_env
from helpers.pg import ServerAddress, psql
from helpers.recovered import recover
from helpers.s3server import S3Server
from helpers.wal import (
    committed_segments,
    gaps,
    local_archive,
    put_base_backup_record,
    store_wal_files,
    switch_wal,
    wait_archived,
    wal_dir,
    wal_env,
)

from backupd.archive.walnames import lsn_to_segno, parse_lsn, parse_wal_name
from backupd.storage.local import LocalRepository


def verified_base_backups(directory: Path) -> list[str]:
    return [name for name in base_backups(directory)
            if (directory / f"{name}.manifest.json").exists()
            and read_manifest(directory / name).get("verified")]


def daemon_with_a_base_backup(wal_cluster: PrivateCluster, backup_dir: Path,
                              backupd_daemon: Callable[..., BackupdProcess],
                              ) -> tuple[dict[str, str], BackupdProcess]:
    """The daemon archiving WAL, once the base backup it takes at start is verified."""
    env = wal_env(wal_cluster, backup_dir)
    daemon = backupd_daemon(["run"], env)
    wait_until(lambda: verified_base_backups(backup_dir), 120, "the base backup at start")
    return env, daemon


def start_segno(directory: Path, name: str) -> int:
    facts = read_manifest(directory / name)["base_backup"]
    return lsn_to_segno(parse_lsn(facts["start_lsn"]), facts["wal_segment_size"])


def segno(name: str) -> int:
    wal = parse_wal_name(name)
    assert wal is not None
    return wal.segno


@pytest.mark.slow
def test_continuity_gap_and_retention_locally_and_on_s3(
    wal_cluster: PrivateCluster, backup_dir: Path,
    backupd_daemon: Callable[..., BackupdProcess], s3_server: S3Server, s3_bucket: str,
) -> None:
    env = wal_env(wal_cluster, backup_dir, **s3_env(s3_server, s3_bucket, "site"),
                  WAL_S3_PARTIAL_SECONDS="1")
    daemon = backupd_daemon(["run"], env)
    # WAL_ARCHIVE=on and no base backup: the daemon takes one at start.
    wait_until(lambda: verified_base_backups(backup_dir), 120, "the base backup at start")
    [first] = verified_base_backups(backup_dir)
    wait_archived(backup_dir, switch_wal(wal_cluster.address, 3))
    proc = run_backupd(["verify", "--wal"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"OK     {first}: valid yes, consistent yes, pitr yes" in proc.stdout

    # A segment in the middle of the archive disappears: verify --wal names it.
    segments = committed_segments(backup_dir)
    middle = segments[len(segments) // 2]
    assert segno(middle) > start_segno(backup_dir, first)
    [artifact] = [p for p in wal_dir(backup_dir).glob(f"{middle}.wal.*")
                  if not p.name.endswith(".manifest.json")]
    artifact.unlink()
    proc = run_backupd(["verify", "--wal", "--json"], env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert middle in proc.stderr.splitlines()[-1]
    [verdict] = json.loads(proc.stdout)
    assert verdict["missing"] == [middle] and not verdict["pitr"] and verdict["consistent"]

    # A second base backup after the gap; more WAL; everything reaches S3.
    second = take_base_backup(env, "--no-prune").name
    wait_archived(backup_dir, switch_wal(wal_cluster.address, 2))
    newest = committed_segments(backup_dir)[-1]
    wait_until(lambda: f"site/wal/{newest}.wal.zst.manifest.json"
               in object_keys(s3_server, s3_bucket), 60, "the newest segment in S3")
    remote_before = object_keys(s3_server, s3_bucket, "site/wal/")
    assert any(middle in key for key in remote_before)

    # Keep one base backup: the first goes, and every WAL segment before the second's
    # start, and not one segment after it: locally and in S3.
    proc = run_backupd(["prune"], {**env, "BASEBACKUP_KEEP": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert base_backups(backup_dir) == [second]
    keep_from = start_segno(backup_dir, second)
    left = committed_segments(backup_dir)
    assert left and segno(left[0]) == keep_from and gaps(left) == [], left
    assert newest in left
    remote = object_keys(s3_server, s3_bucket, "site/")
    assert not any(first in key for key in remote)
    assert any(second in key for key in remote)
    remote_wal = [key.split("/")[-1].split(".")[0] for key in remote
                  if key.startswith("site/wal/") and key.endswith(".manifest.json")]
    remote_segments = [name for name in remote_wal if parse_wal_name(name) is not None
                       and parse_wal_name(name).kind == "segment"]  # type: ignore[union-attr]
    assert min(segno(n) for n in remote_segments) == keep_from, remote_segments
    assert newest in remote_segments and gaps(remote_segments) == []
    # What is left is recoverable from the kept base backup to the end, on both sides.
    for args in (["verify", "--wal"], ["verify", "--wal", "--remote"]):
        proc = run_backupd(args, env)
        assert proc.returncode == 0, [*args, proc.stdout + proc.stderr]
    status = json.loads(run_backupd(["status", "--json"], env).stdout)
    assert status["newest_base_backup"]["name"] == second
    assert daemon.poll() is None, daemon.read_stderr()


@pytest.mark.slow
def test_a_lost_slot_makes_the_daemon_take_a_new_base_backup(
    wal_cluster: PrivateCluster, backup_dir: Path,
    backupd_daemon: Callable[..., BackupdProcess],
) -> None:
    env, daemon = daemon_with_a_base_backup(wal_cluster, backup_dir, backupd_daemon)
    wait_archived(backup_dir, switch_wal(wal_cluster.address, 2))
    stop_backupd(daemon, timeout=60)
    # While the sidecar is away its slot goes (dropped, or the server was replaced): nothing
    # kept the WAL written meanwhile for the archive any more.
    psql(wal_cluster.address, "postgres",
         "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots")
    switch_wal(wal_cluster.address, 2)
    daemon = backupd_daemon(["run"], env)
    # The streamer reports the lost slot and asks for a base backup; the daemon takes it.
    wait_until(lambda: len(verified_base_backups(backup_dir)) == 2, 120,
               "a second base backup after the slot was lost")
    assert daemon.poll() is None, daemon.read_stderr()
    proc = run_backupd(["verify", "--wal", "--json"], env)
    verdicts = {v["base_backup"]: v for v in json.loads(proc.stdout)}
    newest = verified_base_backups(backup_dir)[-1]
    # The new base backup starts a new unbroken run. (Here the server still had the WAL of
    # the time without a slot, and pg_receivewal resumed from its spool: the archive has no
    # gap after all, and verify --wal says so for the older base backup too.)
    assert verdicts[newest]["pitr"] and len(verdicts) == 2, verdicts
    assert proc.returncode == 0 and all(v["pitr"] for v in verdicts.values()), verdicts


def test_verify_wal_and_recover_follow_a_new_timeline(
    wal_cluster: PrivateCluster, backup_dir: Path,
    backupd_daemon: Callable[..., BackupdProcess], tmp_path: Path,
) -> None:
    env, daemon = daemon_with_a_base_backup(wal_cluster, backup_dir, backupd_daemon)
    wait_archived(backup_dir, switch_wal(wal_cluster.address))
    # A failover, as the archive sees it: the same cluster goes on as timeline 2.
    wal_cluster.restart_on_a_new_timeline()
    last = switch_wal(wal_cluster.address, 3)
    assert last.startswith("00000002")
    wait_archived(backup_dir, last, 90)
    proc = run_backupd(["verify", "--wal", "--json"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [verdict] = json.loads(proc.stdout)
    # From a base backup on timeline 1 across the switch (the history file) to the end.
    assert verdict["pitr"] and verdict["reaches"].startswith("00000002"), verdict
    # recover reads the same history file (fetched from the archive): the base backup on
    # timeline 1, before the switch, is on the path to timeline 2 and is chosen.
    out = recover(env, tmp_path / "recovered")
    assert re.search(r"^WAL: 00000001\S+ \.\. 00000002", out, re.MULTILINE), out
    on_two = [n for n in committed_segments(backup_dir) if n.startswith("00000002")]
    middle = on_two[len(on_two) // 2 - 1] if len(on_two) > 2 else on_two[0]
    [artifact] = [p for p in wal_dir(backup_dir).glob(f"{middle}.wal.*")
                  if not p.name.endswith(".manifest.json")]
    artifact.unlink()
    proc = run_backupd(["verify", "--wal", "--json"], env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)[0]["missing"] == [middle]
    assert daemon.poll() is None, daemon.read_stderr()


def test_a_damaged_older_history_file_is_named_by_verify_wal_as_recover_refuses_it(
    pg_server: ServerAddress, backup_dir: Path, tmp_path: Path,
) -> None:
    """Recover copies every history file and refuses a damaged one, the newest timeline's or
    an older one's: verify --wal names it the same (exit 1), never `pitr yes`."""
    histories = {"00000002.history": "1\t0/6800000\tno recovery target specified\n",
                 "00000003.history": "1\t0/6800000\tno recovery target specified\n"
                                     "2\t0/8800000\tno recovery target specified\n"}
    wal_dir(backup_dir).mkdir(parents=True)
    archive = local_archive(backup_dir)
    store_wal_files(archive, ["000000010000000000000005", "00000002.history",
                              "000000020000000000000006", "000000020000000000000007",
                              "00000003.history", "000000030000000000000008",
                              "000000030000000000000009"], tmp_path, histories)
    put_base_backup_record(LocalRepository(backup_dir), tmp_path, timeline=1, segno=5)
    env = as_a_user_sees_it(server_env(pg_server, "postgres", backup_dir))
    proc = run_backupd(["verify", "--wal", "--json"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)[0]["reaches"] == "000000030000000000000009"

    [older] = [w for w in archive.segments() if w.name == "00000002.history"]
    assert older.artifact is not None
    (wal_dir(backup_dir) / older.artifact).write_bytes(b"not what was stored")
    proc = run_backupd(["verify", "--wal", "--json"], env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    [verdict] = json.loads(proc.stdout)
    assert not verdict["pitr"], verdict
    [damaged] = verdict["damaged"]
    assert damaged.startswith("00000002.history (") and "is 19 bytes" in damaged, damaged
    assert "damaged 00000002.history (" in proc.stderr.strip().splitlines()[-1], proc.stderr

    target = tmp_path / "recovered"
    proc = run_backupd(["recover", "--target-dir", str(target)], env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "WAL file 00000002.history is damaged: " in proc.stderr.strip().splitlines()[-1]
    assert not target.exists()


def test_a_damaged_partial_inside_the_archive_is_named_once_as_damaged_not_also_missing(
    pg_server: ServerAddress, backup_dir: Path, tmp_path: Path,
) -> None:
    """A ``.partial`` later WAL follows, whose stored bytes no longer match its manifest: one
    thing went wrong, so verify --wal names it once, under damaged (exit 1), not also as
    "(only partial)" under missing; recover refuses it naming the same file."""
    partial = "000000010000000000000006.partial"
    wal_dir(backup_dir).mkdir(parents=True)
    archive = local_archive(backup_dir)
    store_wal_files(archive, ["000000010000000000000005", partial,
                              "000000010000000000000007"], tmp_path)
    put_base_backup_record(LocalRepository(backup_dir), tmp_path, timeline=1, segno=5)
    [stored] = [w for w in archive.segments() if w.name == partial]
    assert stored.artifact is not None
    (wal_dir(backup_dir) / stored.artifact).write_bytes(b"not what was stored")
    env = as_a_user_sees_it(server_env(pg_server, "postgres", backup_dir))

    proc = run_backupd(["verify", "--wal", "--json"], env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    [verdict] = json.loads(proc.stdout)
    assert not verdict["pitr"], verdict
    [damaged] = verdict["damaged"]
    assert damaged.startswith(f"{partial} (") and "is 19 bytes" in damaged, damaged
    assert verdict["missing"] == [], verdict
    assert "1 WAL file damaged" in verdict["problem"] and "missing" not in verdict["problem"]
    last = proc.stderr.strip().splitlines()[-1]
    assert f"damaged {partial} (" in last and "missing" not in last, last

    target = tmp_path / "recovered"
    proc = run_backupd(["recover", "--target-dir", str(target)], env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"WAL file {partial} is damaged: " in proc.stderr.strip().splitlines()[-1]
    assert not target.exists()

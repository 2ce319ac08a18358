"""WAL archiving when the archive's disk fills up (issue 15): streaming stops and health goes
red, the slot keeps the WAL on the server, and once space returns nothing is missing."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.cli import BackupdProcess
from helpers.cluster import PrivateCluster, free_port
from helpers.faults import wait_until
from helpers.wal import (
    STREAM_ONLY,
    archive_holds,
    archived,
    commit_marker,
    gaps,
    healthz,
    slot_retained,
    switch_wal,
    wait_archived,
    wait_streaming,
    wal_env,
    write_wal,
)

MiB = 1024 * 1024


def fill(directory: Path, leave: int) -> Path:
    """A file taking all the free space of ``directory``'s filesystem but ``leave`` bytes."""
    filler = directory / "filler"
    size = shutil.disk_usage(directory).free - leave
    with open(filler, "wb") as out:
        chunk = b"\0" * MiB
        while size > 0:
            out.write(chunk[: min(size, MiB)])
            size -= MiB
        out.flush()
        os.fsync(out.fileno())
    return filler


def test_full_archive_disk_loses_nothing_once_space_returns(
    wal_cluster: PrivateCluster, backupd_daemon: Callable[..., BackupdProcess],
    small_fs: Callable[..., Path], tmp_path: Path,
) -> None:
    backup_dir = small_fs("64m")
    port = free_port()
    env = wal_env(wal_cluster, backup_dir, **STREAM_ONLY, HEALTH_PORT=str(port),
                  DB_BACKUP_COMPRESSION="gzip")
    daemon = backupd_daemon(["run"], env)
    wait_streaming(backup_dir)
    wait_archived(backup_dir, switch_wal(wal_cluster.address))
    filler = fill(backup_dir, leave=2 * MiB)

    # About a segment of WAL: the next .partial cannot be written, streaming stops.
    for _ in range(2):
        write_wal(wal_cluster.address, 12 * 1024)
    wait_until(lambda: healthz(port)[0] == 503 and "WAL archiving" in healthz(port)[1], 120,
               "health red on the full archive disk")
    body = healthz(port)[1]
    assert "not streaming" in body or "No space left" in body, body
    # However slow the machine, more WAL until the slot keeps over a segment the archive
    # could not take (a slot that moved on without the archive would not keep it).
    def more_wal_kept() -> bool:
        write_wal(wal_cluster.address, 1024)
        return slot_retained(wal_cluster.address) > 16 * MiB

    wait_until(more_wal_kept, 300,
               "the slot keeping more than a segment of WAL while the archive disk is full")
    marker = "written-while-the-disk-was-full"
    commit_marker(wal_cluster.address, marker)
    assert slot_retained(wal_cluster.address) > 16 * MiB, \
        "the slot must keep the WAL the archive could not take"

    filler.unlink()  # space returns
    try:
        wait_until(lambda: archive_holds(backup_dir, marker, tmp_path / "check"), 120,
                   "the row written while the disk was full, in the archive")
    except TimeoutError:
        pytest.fail(daemon.read_stderr()[-3000:])
    last = switch_wal(wal_cluster.address)
    wait_archived(backup_dir, last, 120)
    assert gaps([w.name for w in archived(backup_dir)]) == []
    wait_until(lambda: "WAL archiving" not in healthz(port)[1], 60, "health back to green")
    assert daemon.poll() is None

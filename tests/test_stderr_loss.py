"""Standard error that cannot be written: a full disk behind ``2>>file``, a log collector
that went away. A log line is then lost, never the job: the backup is taken and verified,
the daemon keeps its schedule, and bad input still exits 2. The next job's result says
that lines were lost (backupd.log.StderrLoss), so the notifiers tell people."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
from helpers.backups import backup_files
from helpers.cli import EnvFactory, kill_group, run_backupd, start_backupd, stop_backupd
from helpers.http_receiver import HttpReceiver

LOST = "standard error could not be written ({}) since "


@pytest.fixture
def dead_pipe() -> Iterator[int]:
    """The write end of a pipe whose reader has gone: every write fails with EPIPE."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        yield write_end
    finally:
        os.close(write_end)


def test_a_backup_with_a_full_disk_behind_stderr_is_taken_and_says_so_in_its_log(
        small_db: str, backupd_env: EnvFactory, backup_dir: Path, full: IO[str]) -> None:
    proc = run_backupd(["backup"], backupd_env(small_db), stderr=full)

    assert proc.returncode == 0, proc.stdout
    assert len(backup_files(backup_dir)) == 1
    log = (backup_dir / "backup_log.txt").read_text()
    assert "Backup completed and verified" in log
    assert "WARNING: " + LOST.format("No space left on device") in log


@pytest.mark.parametrize("args", [["backup"], ["no-such-command"]], ids=["setting", "usage"])
def test_bad_input_with_stderr_broken_still_exits_2(
        small_db: str, backupd_env: EnvFactory, backup_dir: Path, full: IO[str],
        args: list[str]) -> None:
    proc = run_backupd(args, backupd_env(small_db, DB_BACKUP_RETENTION_DAYS="many"),
                       stderr=full)
    assert proc.returncode == 2, proc.stdout
    assert backup_files(backup_dir) == []


def test_the_daemon_runs_its_start_up_backup_when_its_log_collector_is_gone(
        small_db: str, backupd_env: EnvFactory, backup_dir: Path, dead_pipe: int,
        http_receiver: HttpReceiver, tmp_path: Path) -> None:
    """Its first log line fails with EPIPE: the start-up backup is still taken, and its
    result (through the webhook) says the lines are lost."""
    env = backupd_env(small_db, BACKUP_ON_START="true", HEALTH_PORT="0",
                      WEBHOOK_URL=f"{http_receiver.url}/hook")
    daemon = start_backupd(["run"], env, log_dir=tmp_path / "daemon", stderr=dead_pipe)
    try:
        (request,) = http_receiver.wait_for(1, timeout=60)
        assert daemon.poll() is None
        assert stop_backupd(daemon) == 0
    finally:
        kill_group(daemon)
        daemon.wait()
    body = json.loads(request.body)
    assert body["job"] == "backup" and body["status"] == "success", body
    assert any(w.startswith(LOST.format("Broken pipe")) for w in body["warnings"]), body
    assert len(backup_files(backup_dir)) == 1

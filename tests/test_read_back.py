"""The backup's read-back (backupd.pipeline.run.dump_to_file) runs in a thread of its own,
which the OS may start late: on a busy machine a small dump can be written, fsynced and
renamed into place before that thread does anything. It must still read back the file
written. (A custom archive's read-back first starts two pg_restore processes: a few-KiB
dump of a small database was renamed before it looked for the file, and the backup
failed its verification with "readable: No such file or directory".)
"""

from __future__ import annotations

import os
import subprocess
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from helpers.faults import wait_until

from backupd.cancel import CancelToken
from backupd.manifest import Manifest
from backupd.naming import parse_backup_name
from backupd.pipeline.config import ConnectionConfig, DumpConfig
from backupd.pipeline.growing import GrowingFile
from backupd.pipeline.run import dump_to_file
from backupd.pipeline.supervisor import Child
from backupd.pipeline.verification import FileScan, follow_growing_file, verify_file

NAME = "db_20260101_000000.sql.gz"
SQL = (b"--\n-- PostgreSQL database dump\n--\n\n"
       + b"".join(b"INSERT INTO t VALUES (%d);\n" % i for i in range(2000))
       + b"\n--\n-- PostgreSQL database dump complete\n--\n\n")
# The source is a file fed by cat: no server is needed to produce pg_dump's output.
NOWHERE = ConnectionConfig("127.0.0.1", 1, "postgres", "nothing", connect_timeout=1)


def test_a_read_back_that_starts_after_the_rename_still_reads_the_file_written(
        tmp_path: Path) -> None:
    sql = tmp_path / "dump.sql"
    sql.write_bytes(SQL)
    destination = tmp_path / "backups" / NAME
    destination.parent.mkdir()
    results: list[FileScan] = []

    def late_read_back(fd: int, growing: GrowingFile, identity: tuple[int, int]) -> None:
        # The thread is scheduled only once the dump is complete and renamed into place.
        wait_until(destination.exists, 30, "the dump renamed into place")
        results.append(follow_growing_file(fd, growing, "gzip", identity))

    outcome = dump_to_file(DumpConfig(NOWHERE), destination, CancelToken(),
                           read_back=late_read_back,
                           source=Child(["cat", str(sql)], stdout=subprocess.PIPE))

    now = datetime.now(UTC)
    manifest = Manifest(name=NAME, database="db", started_at=now, finished_at=now,
                        raw_bytes=outcome.raw_bytes, stored_bytes=outcome.stored_bytes,
                        sha256=outcome.sha256, gzip_members=outcome.gzip_members)
    parsed = parse_backup_name(NAME)
    assert parsed is not None
    report = verify_file(destination, parsed, manifest, read_back=results[0])
    assert [(c.name, c.detail) for c in report.checks if not c.ok] == []
    assert report.ok
    assert results[0].size == outcome.stored_bytes == destination.stat().st_size


def test_a_read_back_thread_that_cannot_start_fails_the_dump_with_its_own_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Out of threads (a long-lived daemon): the error said is the thread's, the descriptor
    # opened for the read-back is closed, and nothing is left in the directory.
    sql = tmp_path / "dump.sql"
    sql.write_bytes(SQL)
    destination = tmp_path / "backups" / NAME
    destination.parent.mkdir()

    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(RuntimeError, match="can't start new thread"):
        dump_to_file(DumpConfig(NOWHERE), destination, CancelToken(),
                     read_back=lambda fd, growing, identity: None,
                     source=Child(["cat", str(sql)], stdout=subprocess.PIPE))
    monkeypatch.undo()
    wait_until(lambda: set(os.listdir("/proc/self/fd")) <= before, 10,
               "the read-back's descriptor closed")
    assert list(destination.parent.iterdir()) == []

"""A WAL archive made by PostgreSQL's own tools, for recovery tests: ``pg_receivewal`` into a
directory and ``pg_basebackup -Ft -X none`` base backups, read through recovery's
``RecoverySource`` protocol. It proves recover's planning and directory writing against real
WAL independently of backupd's own archive."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from backupd.archive.recovery import BaseBackupLike, WalLike
from backupd.archive.walnames import parse_lsn, parse_wal_name
from backupd.cancel import CancelToken

from .cluster import PrivateCluster
from .pg import pg_binary

SEGMENT_SIZE = 16 * 1024 * 1024


@dataclass(frozen=True)
class PlainBase:
    name: str
    timeline: int
    start_lsn: int
    stop_lsn: int
    stop_time: datetime
    wal_segment_size: int
    directory: Path


@dataclass(frozen=True)
class PlainWal:
    name: str
    timeline: int
    segno: int
    partial: bool
    history: bool


class PlainArchive:
    """``root/wal`` (pg_receivewal's directory) and ``root/base/<name>`` (tar base backups)."""

    def __init__(self, root: Path, cluster: PrivateCluster) -> None:
        self.root = root
        self.cluster = cluster
        self.wal_dir = root / "wal"
        self.base_dir = root / "base"
        self.wal_dir.mkdir(parents=True, exist_ok=True)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.description = str(root)
        self._receiver: subprocess.Popen[bytes] | None = None

    def _env(self) -> dict[str, str]:
        return {"PATH": os.environ["PATH"], "PGPASSWORD": self.cluster.password}

    def _conn_args(self) -> list[str]:
        return ["-h", "127.0.0.1", "-p", str(self.cluster.port), "-U", "postgres"]

    def start_streaming(self) -> None:
        subprocess.run([pg_binary("pg_receivewal"), *self._conn_args(), "--slot=plain_test",
                        "--create-slot", "--if-not-exists"], env=self._env(), check=True)
        self._receiver = subprocess.Popen(
            [pg_binary("pg_receivewal"), *self._conn_args(), "-D", str(self.wal_dir),
             "--slot=plain_test", "--synchronous", "--no-loop"], env=self._env())

    def stop_streaming(self) -> None:
        if self._receiver is not None:
            self._receiver.terminate()
            self._receiver.wait(30)
            self._receiver = None

    def take_base_backup(self, name: str) -> PlainBase:
        target = self.base_dir / name
        subprocess.run([pg_binary("pg_basebackup"), *self._conn_args(), "-D", str(target),
                        "-Ft", "-X", "none", "-c", "fast", "--no-sync"],
                       env=self._env(), check=True)
        return self._read_base(target)

    def _read_base(self, target: Path) -> PlainBase:
        manifest = json.loads((target / "backup_manifest").read_text())
        wal_range = manifest["WAL-Ranges"][0]
        stop = datetime.fromtimestamp((target / "backup_manifest").stat().st_mtime, UTC)
        return PlainBase(target.name, int(wal_range["Timeline"]), parse_lsn(wal_range["Start-LSN"]),
                         parse_lsn(wal_range["End-LSN"]), stop, SEGMENT_SIZE, target)

    def wait_for_durable(self, lsn: str, timeout: float = 60) -> None:
        """Until pg_receivewal has flushed ``lsn`` (synchronous: it reports its flush)."""
        deadline = time.monotonic() + timeout
        from .pg import connect

        while time.monotonic() < deadline:
            with connect(self.cluster.address) as conn:
                row = conn.execute("SELECT flush_lsn >= %s::pg_lsn FROM pg_stat_replication "
                                   "WHERE application_name = 'pg_receivewal'",
                                   (lsn,)).fetchone()
            if row and row[0]:
                return
            time.sleep(0.2)
        raise AssertionError(f"pg_receivewal did not flush {lsn} in {timeout}s")

    # --- RecoverySource ---------------------------------------------------------------------

    def base_backups(self) -> list[PlainBase]:
        return [self._read_base(d) for d in sorted(self.base_dir.iterdir())
                if (d / "backup_manifest").exists()]

    def extract(self, backup: BaseBackupLike, target: Path, cancel: CancelToken) -> None:
        with tarfile.open(self.base_dir / backup.name / "base.tar") as tar:
            tar.extractall(target, filter="fully_trusted")

    def wal(self) -> list[PlainWal]:
        found = []
        for path in sorted(self.wal_dir.iterdir()):
            if (wal := parse_wal_name(path.name)) is not None:
                found.append(PlainWal(path.name, wal.timeline, wal.segno, wal.kind == "partial",
                                      wal.kind == "history"))
        return found

    def fetch(self, wal: WalLike, dest: Path) -> None:
        shutil.copyfile(self.wal_dir / wal.name, dest)

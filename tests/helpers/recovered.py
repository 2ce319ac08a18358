"""Start a recovered data directory the way a user would: plain ``pg_ctl`` as the postgres
user, nothing from backupd, on a port of its own; wait for promotion."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from backupd.archive.basebackups import list_base_backups
from backupd.archive.continuity import path_to_newest
from backupd.archive.recovery import RecoveryPlan, RecoveryTarget, plan
from backupd.archive.recovery_source import ArchiveSource
from backupd.storage.local import LocalRepository

from .cli import run_backupd
from .cluster import AS_ROOT, SERVER_OS_USER, PrivateCluster, free_port
from .faults import wait_until
from .pg import ServerAddress, connect, pg_binary
from .wal import WAL_SERVER_SETTINGS, local_archive, wait_streaming, wal_env


def as_postgres(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"}
    return subprocess.run(["runuser", "-u", SERVER_OS_USER, "--", *args] if AS_ROOT else args,
                          cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, check=False)


def pg_ctl_start(data_dir: Path, port: int, log: Path) -> subprocess.CompletedProcess[str]:
    options = f"-p {port} -k {data_dir.parent} -c listen_addresses=127.0.0.1"
    return as_postgres([pg_binary("pg_ctl"), "start", "-D", str(data_dir), "-l", str(log),
                        "-w", "-t", "120", "-o", options], data_dir.parent)


def wait_promoted(server: ServerAddress, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with connect(server) as conn:
                row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            if row is not None and not row[0]:
                return
        except Exception:
            pass
        time.sleep(0.3)
    raise AssertionError(f"the recovered server on port {server.port} never promoted")


@contextmanager
def started(data_dir: Path, password: str) -> Iterator[ServerAddress]:
    """The recovered server, promoted; stopped (immediate) on leaving."""
    port = free_port()
    log = data_dir.parent / f"{data_dir.name}.log"
    proc = pg_ctl_start(data_dir, port, log)
    try:
        assert proc.returncode == 0, proc.stdout + proc.stderr + (
            log.read_text() if log.exists() else "")
        server = ServerAddress("127.0.0.1", port, "postgres", password)
        wait_promoted(server)
        yield server
    finally:
        as_postgres([pg_binary("pg_ctl"), "stop", "-D", str(data_dir), "-m", "immediate",
                     "-w"], data_dir.parent)


def postgres_owner() -> str:
    import pwd

    entry = pwd.getpwnam(SERVER_OS_USER)
    return f"{entry.pw_uid}:{entry.pw_gid}"


def recover(env: dict[str, str], target_dir: Path, *args: str) -> str:
    """``backupd recover --target-dir target_dir *args`` (owned by postgres when run as
    root), which must succeed; its standard output."""
    owner = ["--owner", postgres_owner()] if AS_ROOT else []
    proc = run_backupd(["recover", "--target-dir", str(target_dir), *owner, *args], env,
                       timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


# The PITR tests' table: rows come in named batches of 40, committed one after another, and a
# recovered server is judged by which batches it holds.
BATCH_TABLE = "CREATE TABLE t (batch text, n int, note text)"


def insert_batch(server: ServerAddress, batch: str, note: str = "") -> str:
    """Commit batch ``batch`` (40 rows, each with ``note``); the WAL position after it."""
    with connect(server) as conn:
        conn.execute("INSERT INTO t SELECT %s, g, %s FROM generate_series(1, 40) g",
                     (batch, note))
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    return str(row[0])


def batch_counts(server: ServerAddress) -> dict[str, int]:
    """Rows per batch on ``server`` (a recovered one)."""
    with connect(server) as conn:
        rows = conn.execute("SELECT batch, count(*) FROM t GROUP BY batch").fetchall()
    return {str(batch): int(count) for batch, count in rows}


def recovered_batches(data_dir: Path, password: str) -> dict[str, int]:
    """Start the recovered ``data_dir``, and its rows per batch."""
    with started(data_dir, password) as server:
        return batch_counts(server)


@dataclass
class PitrCluster:
    """A private primary to stream WAL from, holding the batch table; where its archive
    goes and the daemon's environment for it."""

    cluster: PrivateCluster
    work: Path
    backup_dir: Path
    env: dict[str, str]


@contextmanager
def pitr_cluster(password: str, *, encoding: str = "UTF8") -> Iterator[PitrCluster]:
    """``encoding``: initdb's (``SQL_ASCII``: a legacy cluster, see PrivateCluster)."""
    with PrivateCluster(password, server_settings=WAL_SERVER_SETTINGS,
                        encoding=encoding) as cluster:
        cluster.start()
        work = cluster.work_directory()
        backup_dir = work / "backups"
        with connect(cluster.address) as conn:
            conn.execute(BATCH_TABLE)
        yield PitrCluster(cluster, work, backup_dir, wal_env(cluster, backup_dir))


def wait_first_base_backup(backup_dir: Path) -> None:
    """A daemon just started with WAL_ARCHIVE=on streams, and takes the first base backup
    itself (there is none yet): wait for both."""
    wait_streaming(backup_dir)
    wait_until(lambda: any(b.verified for b in list_base_backups(LocalRepository(backup_dir))),
               300, "the daemon's first base backup")


def recovery_plan(backup_dir: Path, target: RecoveryTarget) -> tuple[ArchiveSource, RecoveryPlan]:
    """The local archive in ``backup_dir`` and recover's plan for ``target`` (for a name,
    the WAL from the oldest base backup on: what `backupd mark` reads)."""
    source = ArchiveSource(LocalRepository(backup_dir), local_archive(backup_dir), None)
    wal = source.wal()
    return source, plan(wal, source.base_backups(), target,
                        spans=path_to_newest(wal, source.fetch))


def copy_archive(backup_dir: Path, to: Path) -> Path:
    """A copy of DB_BACKUP_DIR ``backup_dir`` (base backups, WAL archive, spool; symlinks as
    symlinks, modes kept) at ``to``, for a test to damage or point backupd at without
    touching the module's archive; ``to``. Put it where the server's OS user can reach it
    when a server runs from it (the cluster's work directory, not a root-only tmp_path)."""
    shutil.copytree(backup_dir, to, symlinks=True)
    return to

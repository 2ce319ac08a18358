"""Base backups in tests: a private cluster to take them from, backupd's settings for it, a
real `backupd basebackup`, and rewriting one member of a stored tar stream (damage that the
stored checksum still vouches for, so only the backup_manifest check can catch it)."""

from __future__ import annotations

import gzip
import io
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

from .backups import refresh_manifest
from .cli import run_backupd, server_env
from .cluster import PrivateCluster
from .wal import WAL_SERVER_SETTINGS


def archive_cluster(password: str = "base-pw") -> PrivateCluster:
    """A private cluster set up for WAL archiving and base backups (not started)."""
    return PrivateCluster(password, server_settings=WAL_SERVER_SETTINGS)


def basebackup_env(cluster: PrivateCluster, directory: Path, **extra: str) -> dict[str, str]:
    return server_env(cluster.address, "postgres", directory, **extra)


def base_backups(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("base_*.tar.*")
                  if not p.name.endswith(".manifest.json"))


def take_base_backup(env: dict[str, str], *args: str) -> Path:
    """Run a real ``backupd basebackup``; the new base backup's path."""
    directory = Path(env["DB_BACKUP_DIR"])
    before = set(base_backups(directory))
    proc = run_backupd(["basebackup", *args], env, timeout=300)
    assert proc.returncode == 0, f"basebackup failed ({proc.returncode}):\n{proc.stderr}"
    new = set(base_backups(directory)) - before
    assert len(new) == 1, f"expected one new base backup, got {sorted(new)}"
    return directory / new.pop()


def rewrite_member(path: Path, member: str, change: Callable[[bytes], bytes]) -> None:
    """Replace ``member``'s content in a stored .tar.gz base backup (same size or not) and
    make backupd's manifest vouch for the new file (size, SHA-256)."""
    out = io.BytesIO()
    with (tarfile.open(fileobj=io.BytesIO(gzip.decompress(path.read_bytes()))) as source,
          tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as target):
        for info in source.getmembers():
            data = source.extractfile(info).read() if info.isfile() else None  # type: ignore[union-attr]
            if info.name == member:
                assert data is not None
                data = change(data)
                info.size = len(data)
            target.addfile(info, io.BytesIO(data) if data is not None else None)
    path.write_bytes(gzip.compress(out.getvalue(), compresslevel=1))
    refresh_manifest(path)


def pg_verifybackup(directory: Path) -> subprocess.CompletedProcess[str]:
    """PostgreSQL's own check of an extracted base backup (WAL parsed with pg_waldump)."""
    from .pg import pg_binary

    return subprocess.run([pg_binary("pg_verifybackup"), str(directory)], capture_output=True,
                          text=True, check=False)

"""What the tests of a whole-system restore of POSTGRES_DB='*' read back: the restore's
warnings as the job's result has them (every notifier's), and a new server's rows."""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path

from .cli import run_backupd, server_env
from .cluster import PrivateCluster
from .logs import jobs_finished
from .pg import connect


def warnings_of(proc: subprocess.CompletedProcess[str]) -> list[str]:
    """The restore's warnings, as the job's result (every notifier) has them."""
    [result] = jobs_finished(proc.stderr, job="restore")
    return [str(w) for w in result["warnings"]]


def naming(database: str, lines: list[str]) -> list[str]:
    return [line for line in lines if database in line]


def rows_of(cluster: PrivateCluster, database: str, table: str) -> list[tuple[int, ...]]:
    with connect(cluster.address, database) as conn:
        return [tuple(r) for r in conn.execute(f"SELECT x FROM {table} ORDER BY x")]


def restore_refused(private_cluster: Callable[..., PrivateCluster], backups: Path
                    ) -> tuple[PrivateCluster, str]:
    """A new private cluster and the whole-system restore of ``backups`` onto it, which must
    fail (exit 1); the new server and all the restore said."""
    target = private_cluster("target-pw")
    proc = run_backupd(["restore", "--latest", "--yes"],
                       server_env(target.address, "*", backups), timeout=300)
    said = proc.stdout + proc.stderr
    assert proc.returncode == 1, said
    return target, said


def the_way_through(said: str) -> str:
    """The one command a stopped whole-system restore prints to restore the others, as
    printed (between backticks)."""
    start = said.index("`backupd restore --latest")
    return said[start + 1:said.index("`", start + 1)]


def run_as_printed(target: PrivateCluster, backups: Path, command: str
                   ) -> subprocess.CompletedProcess[str]:
    """``command`` (a printed ``backupd restore ...``) split as a shell would, run onto
    ``target`` with --yes; it must succeed."""
    argv = shlex.split(command)
    assert argv[0] == "backupd", command
    proc = run_backupd([*argv[1:], "--yes"], server_env(target.address, "*", backups),
                       timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc

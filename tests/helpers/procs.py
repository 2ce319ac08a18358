"""Finding the processes backupd started, wherever they were reparented: by a variable in
their environment (every child of backupd gets PGDATABASE, and the tests use unique names)."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

PLAINTEXT_MAGIC = b"PGDMP"  # the first bytes of every pg_dump custom-format archive


def processes_with_env(key: str, value: str) -> list[int]:
    """Live processes (zombies have no environment) whose environment holds key=value."""
    needle = f"{key}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def processes_in(directory: Path) -> list[int]:
    """Live processes whose working directory is ``directory``: a PostgreSQL server's
    every process (the postmaster changes into its data directory; its children, whose
    command lines it rewrites, inherit it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z" and cwd == str(directory):
            found.append(int(entry.name))
    return found


def kill_processes(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def files_starting_with(root: Path, magic: bytes) -> list[Path]:
    """Every regular file under ``root`` whose content starts with ``magic``."""
    found = []
    for path in root.rglob("*"):
        with contextlib.suppress(OSError):
            if path.is_file() and not path.is_symlink():
                with path.open("rb") as handle:
                    if handle.read(len(magic)) == magic:
                        found.append(path)
    return found

"""Scratch directories that hold plaintext (a PITR drill's recovered cluster, the WAL `backupd
mark` reads), and the removal of those a killed backupd left.

The owner holds an exclusive ``flock`` on a file inside the directory for as long as it works
there; the kernel drops it when the process dies, however it dies. Whoever finds the
directory (the daemon's start-up, the next drill or mark) removes it only when it can take
that lock: a live owner's directory is left alone, whatever PID namespace (another container
on the same volume) the owner runs in.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

OWNER_LOCK = ".owner"
# A directory without its lock file was made an instant ago (its owner is about to take the
# lock) or by a backupd that took none: the former is left alone for this long.
UNLOCKED_GRACE_SECONDS = 60.0

Found = Literal["absent", "live", "removed"]


@contextmanager
def owned(path: Path) -> Iterator[Path]:
    """Make ``path`` (0700; it must not exist) and hold it for the block, then remove it."""
    path.mkdir(mode=0o700, parents=True)
    lock = os.open(path / OWNER_LOCK, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        os.close(lock)


def remove_abandoned(path: Path) -> Found:
    """Remove ``path`` unless a live process owns it; what was found. OSError when it cannot
    be removed (it holds plaintext: the caller says so)."""
    try:
        lock = os.open(path / OWNER_LOCK, os.O_RDWR)
    except FileNotFoundError:
        if not path.is_dir():
            return "absent"
        if time.time() - path.stat().st_mtime < UNLOCKED_GRACE_SECONDS:
            return "live"
        shutil.rmtree(path)
        return "removed"
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return "live"
        shutil.rmtree(path)
        return "removed"
    finally:
        os.close(lock)

"""Where the PITR drill recovers the cluster, and how a killed drill's copy is removed.

The scratch directory holds a decrypted copy of the whole cluster, so it must never outlive
its drill for long: the drill removes it in a ``finally``, and a drill killed with backupd
(SIGKILL, OOM) leaves it for the daemon's next start-up sweep (``backupd run``) and the next
drill, whichever comes first. Removing it stops nothing: the drill's server ran under the
supervisor, whose reaper kills its process group when backupd dies (the postmaster's own
children exit on its death).

Kept apart from :mod:`backupd.commands.pitr_drill` so the daemon's start-up does not import
the drill's recovery and comparison code to find one directory.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

SCRATCH_NAME = ".pitr-drill"


def scratch_directory(backup_dir: Path) -> Path:
    """``DB_BACKUP_DIR/.pitr-drill``; as root (the server then runs as postgres, who cannot
    enter the 0700 backup directory) a fixed directory of its own under the temp dir."""
    if os.geteuid() != 0:
        return backup_dir / SCRATCH_NAME
    key = hashlib.sha256(str(backup_dir.absolute()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"backupd{SCRATCH_NAME}-{key}"


def remove_leftover_scratch(backup_dir: Path) -> Path | None:
    """Remove the scratch directory an interrupted drill left; the path removed, or None
    when there was none. OSError when it cannot be removed (it must not stay unnoticed)."""
    scratch = scratch_directory(backup_dir)
    if not scratch.exists():
        return None
    shutil.rmtree(scratch)
    return scratch

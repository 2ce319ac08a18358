"""Where the PITR drill recovers the cluster.

The scratch directory holds a decrypted copy of the whole cluster, so it must never outlive
its drill for long: the drill owns it (:func:`backupd.scratch.owned`) and removes it when it
ends, and a drill killed with backupd (SIGKILL, OOM) leaves it for the daemon's next start-up
sweep (``backupd run``) and the next drill, whichever comes first
(:func:`backupd.scratch.remove_abandoned`). Removing it stops nothing: the drill's server ran
under the supervisor, whose reaper kills its process group when backupd dies (the
postmaster's own children exit on its death).

Kept apart from :mod:`backupd.commands.pitr_drill` so the daemon's start-up does not import
the drill's recovery and comparison code to find one directory.
"""

from __future__ import annotations

import hashlib
import os
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

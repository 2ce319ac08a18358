"""Scratch directories that hold plaintext (backupd.scratch): a live owner's is never removed,
whatever process finds it; a killed owner's is, and so is an old one without a lock file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from backupd.scratch import OWNER_LOCK, UNLOCKED_GRACE_SECONDS, owned, remove_abandoned

HOLD = """
import sys, time
from pathlib import Path
from backupd.scratch import owned
with owned(Path(sys.argv[1])) as path:
    (path / "plaintext").write_text("decrypted")
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_live_owners_directory_is_left_and_a_killed_owners_removed(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    owner = subprocess.Popen([sys.executable, "-c", HOLD, str(scratch)], stdout=subprocess.PIPE,
                             text=True)
    try:
        assert owner.stdout is not None and owner.stdout.readline() == "held\n"
        assert remove_abandoned(scratch) == "live"
        assert (scratch / "plaintext").exists()
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    assert (scratch / "plaintext").exists()  # killed: nothing of its own cleaned up
    assert remove_abandoned(scratch) == "removed"
    assert not scratch.exists()
    assert remove_abandoned(scratch) == "absent"


def test_an_owner_in_this_process_holds_it_and_removes_it_at_the_end(tmp_path: Path) -> None:
    with owned(tmp_path / "mine") as path:
        assert remove_abandoned(path) == "live"  # another open file, as another process has
    assert not path.exists()


def test_a_directory_without_its_lock_file_is_removed_only_once_it_is_old(tmp_path: Path) -> None:
    """Just made (its owner about to take the lock) it stays; an old one (a backupd from
    before the lock file) goes."""
    scratch = tmp_path / "old"
    scratch.mkdir()
    assert not (scratch / OWNER_LOCK).exists()
    assert remove_abandoned(scratch) == "live"
    long_ago = time.time() - UNLOCKED_GRACE_SECONDS - 5
    os.utime(scratch, (long_ago, long_ago))
    assert remove_abandoned(scratch) == "removed"

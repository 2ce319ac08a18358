"""What the newest backup run of ``*`` found in template1, beside the dumps.

The globals manifest records it too (``template1_empty``), but with DB_BACKUP_GLOBALS=off a
run writes none: health, metrics and the schedule's cover would judge an emptied template1's
last dump forever. This record is written by every run of ``*`` whatever the globals, and
read without the server. A dot-name: no listing, retention or upload takes it for a backup.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from backupd.storage.atomic import write_bytes_atomically

RECORD_NAME = ".backupd-template1.json"


@dataclass(frozen=True)
class Template1Look:
    """``run_id``: the run that looked; ``empty``: True when it found template1 holding
    nothing, False when it held objects, None when it was not looked into."""

    run_id: str
    empty: bool | None


def write_template1_look(directory: Path, look: Template1Look) -> None:
    """Replace the record, atomically (a crash leaves the old one or the new one)."""
    data = {"run_id": look.run_id, "template1_empty": look.empty}
    write_bytes_atomically(directory / RECORD_NAME, json.dumps(data).encode() + b"\n")


def read_template1_look(directory: Path) -> Template1Look | None:
    """The record, or None when there is none or it cannot be read (an older backupd wrote
    none; anything unreadable counts as "not looked into", so template1 stays judged)."""
    path = directory / RECORD_NAME
    try:
        if path.is_symlink():
            return None
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    run_id, empty = data.get("run_id"), data.get("template1_empty")
    if not isinstance(run_id, str) or not (empty is None or isinstance(empty, bool)):
        return None
    return Template1Look(run_id, empty)

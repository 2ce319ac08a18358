"""Replication: copy a verified artifact from one repository to another (offsite copies).

The source stays the primary copy. Replication never changes or removes it: the outcome is
recorded in the source's manifest (``uploaded_at`` once the target has committed its copy,
``upload_error`` while it is pending), and pending artifacts are retried by later runs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from backupd.cancel import CancelToken
from backupd.errors import OffsiteError
from backupd.progress import Progress
from backupd.storage.base import BackupEntry, Repository

READ_SIZE = 4 * 1024 * 1024


def pending(entries: Iterable[BackupEntry]) -> list[BackupEntry]:
    """Verified artifacts not yet committed to the target, oldest first.

    Artifacts from before replication was enabled count as pending too, and go next run.
    """
    return [e for e in reversed(list(entries)) if e.awaiting_upload]


def sha256_of(repository: Repository, name: str, progress: Progress | None = None) -> str:
    digest = hashlib.sha256()
    with repository.open(name) as data, \
            (progress or Progress()).stream(f"checksum read of {name}") as stream:
        while chunk := data.read(READ_SIZE):
            digest.update(chunk)
            stream.moved(len(chunk))
    return digest.hexdigest()


def replicate(source: Repository, target: Repository, entry: BackupEntry, *, recheck: bool,
              scratch: Path, cancel: CancelToken | None = None) -> None:
    """Copy ``entry`` from ``source`` to ``target`` (data, then manifest) and record the
    outcome in the source's manifest. Raises OffsiteError when the copy is still owed.

    ``recheck``: hash the source first. An artifact pending for days is never shipped when
    its bytes no longer match what was verified; one just read back needs no second read.
    """
    manifest = entry.manifest
    if manifest is None:
        raise OffsiteError(f"{entry.name} has no manifest; only verified backups are copied")
    if recheck and sha256_of(source, entry.name,
                             cancel.progress if cancel is not None else None) != manifest.sha256:
        raise OffsiteError(f"{entry.name} no longer matches its checksum on disk; "
                           "not uploaded (run `backupd verify`)")
    committed = manifest.model_copy(update={"uploaded_at": datetime.now(UTC),
                                            "upload_error": None})
    try:
        with source.local_copy(entry.name, scratch, cancel) as path:
            target.put(committed, path, cancel)
    except OffsiteError as exc:
        manifest.upload_error = str(exc)
        source.write_manifest(manifest)
        raise
    source.write_manifest(committed)

"""The WAL archive's files as its listing gives them (:class:`ArchivedWal`): the committed
artifacts read from their manifests, with what is known wrong with each (``damage``).
:mod:`backupd.archive.walstore` lists, fetches and stores them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from backupd.archive.walnames import DEFAULT_SEGMENT_SIZE, WalFileName, parse_wal_name
from backupd.naming import ENCRYPTED_SUFFIX
from backupd.storage.base import BackupEntry


@dataclass(frozen=True)
class ArchivedWal:
    """One WAL file of the archive: a stored artifact, or (locally) a file of the spool."""

    wal: WalFileName
    artifact: str | None  # the repository's name; None for a spool file
    stored_size: int
    sha256: str | None  # of the raw WAL; None for a spool file (not yet archived)
    spool_path: Path | None = None
    uploaded: bool = False  # committed offsite (recorded in the local manifest)
    system_identifier: str | None = None
    # Why the stored file cannot be what its manifest records (its size differs, or the
    # manifest cannot be read), naming it; fetching it fails so. None: nothing known wrong.
    damage: str | None = None

    @property
    def name(self) -> str:
        return self.wal.name

    @property
    def timeline(self) -> int:
        return self.wal.timeline

    @property
    def segno(self) -> int:
        return self.wal.segno

    @property
    def partial(self) -> bool:
        return self.wal.partial

    @property
    def history(self) -> bool:
        return self.wal.history

    @property
    def encrypted(self) -> bool:
        return self.artifact is not None and self.artifact.endswith(ENCRYPTED_SUFFIX)


def committed(entries: list[BackupEntry],
               location: Callable[[str], str]) -> dict[str, ArchivedWal]:
    """The archive's committed WAL files among ``entries``, by name: with ``damage`` set where
    the stored file's size is not its manifest's, or its manifest cannot be read. A file
    without a manifest is not committed (a write in progress: the manifest comes last)."""
    found: dict[str, ArchivedWal] = {}
    unusable: list[BackupEntry] = []
    for entry in entries:
        manifest = entry.manifest
        if manifest is None and entry.manifest_error is not None and entry.committed:
            unusable.append(entry)
        if manifest is None or manifest.wal is None or not entry.committed \
                or not manifest.verified:
            continue  # not committed, or not ours: never part of the archive
        record = manifest.wal
        wal = parse_wal_name(record.wal_file, record.segment_size)
        if wal is None:
            continue
        damage = None if entry.size == manifest.stored_bytes else (
            f"{location(entry.name)} is {entry.size} bytes, its manifest records "
            f"{manifest.stored_bytes}")
        found[wal.name] = ArchivedWal(wal, entry.name, entry.size, record.raw_sha256,
                                      uploaded=manifest.uploaded_at is not None,
                                      system_identifier=record.system_identifier,
                                      damage=damage)
    size = next((w.wal.segment_size for w in found.values()), DEFAULT_SEGMENT_SIZE)
    for entry in unusable:
        wal = parse_wal_name(entry.parsed.wal_file or "", size)
        if wal is not None and wal.name not in found:
            found[wal.name] = ArchivedWal(wal, entry.name, entry.size, None, damage=(
                f"the manifest of {location(entry.name)} cannot be used: "
                f"{entry.manifest_error}"))
    return found


def current(found: dict[str, ArchivedWal]) -> list[ArchivedWal]:
    """``found`` without the ``.partial``s superseded by their complete segment."""
    complete = {w.wal.segment for w in found.values() if w.wal.kind == "segment"}
    return [w for w in found.values() if not (w.partial and w.wal.segment in complete)]

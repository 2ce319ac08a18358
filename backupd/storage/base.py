"""One storage interface, with the providers behind it (local directory, S3).

Listing a store yields only this tool's own, committed backups of one database:
a name that parses as ours, with the manifest as the commit marker where the
store requires one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from backupd.manifest import Manifest
from backupd.naming import ParsedName


@dataclass
class BackupEntry:
    """A backup as a store sees it, before anyone has read its content."""

    parsed: ParsedName
    size: int
    manifest: Manifest | None
    manifest_error: str | None = None

    @property
    def name(self) -> str:
        return self.parsed.name

    @property
    def awaiting_upload(self) -> bool:
        """Verified here but not committed offsite yet (the S3 copy is still owed)."""
        return self.verified and self.manifest is not None and self.manifest.uploaded_at is None

    @property
    def verified(self) -> bool:
        """Verified, and the file still has the size the manifest promised."""
        return (
            self.manifest is not None
            and self.manifest.verified
            and self.manifest.stored_bytes == self.size
        )


def latest_upload(entries: Iterable[BackupEntry]) -> datetime | None:
    """When the most recent offsite upload among ``entries`` was committed."""
    return max((e.manifest.uploaded_at for e in entries
                if e.manifest is not None and e.manifest.uploaded_at is not None), default=None)


class BackupStore(Protocol):
    """What every storage provider offers; the jobs never know which one they hold."""

    @property
    def description(self) -> str:
        """Where this store is, for messages (never including credentials)."""
        ...

    def list_backups(self, database: str) -> list[BackupEntry]:
        """This database's backups, newest first."""
        ...

    def load_manifest(self, name: str) -> tuple[Manifest | None, str | None]:
        """(manifest, None); (None, None) when there is none; (None, why) when it cannot
        be trusted (not JSON, wrong shape, describes another file)."""
        ...

    def write_manifest(self, manifest: Manifest) -> None: ...

    def delete(self, name: str) -> None:
        """Delete a backup and its manifest."""
        ...

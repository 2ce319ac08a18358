"""The archive of one place (the local directory, or S3 alone) as recovery reads it: the base
backups (``archive.basebackups``, in the repository itself) and the WAL
(``archive.walstore``, under ``wal/`` beside them; locally with pg_receivewal's spool, whose
``.partial`` is the newest WAL there is)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pyrage import x25519

from backupd.archive.basebackups import extract_base_backup, list_base_backups
from backupd.archive.recovery import BaseBackupLike, WalLike
from backupd.archive.walstore import (
    ArchivedWal,
    WalArchive,
    local_wal_repository,
    offsite_wal_repository,
    spool_directory,
)
from backupd.cancel import CancelToken
from backupd.pipeline.config import AgeKeyFiles
from backupd.pipeline.encrypt import load_identities
from backupd.storage.base import Repository
from backupd.storage.repositories import Repositories


class ArchiveSource:
    def __init__(self, repository: Repository, wal: WalArchive,
                 identities: list[x25519.Identity] | None) -> None:
        self.repository = repository
        self.identities = identities
        self.description = repository.description
        self._wal = wal

    def base_backups(self) -> Sequence[BaseBackupLike]:
        return [b for b in list_base_backups(self.repository) if b.verified]

    def extract(self, backup: BaseBackupLike, target: Path, cancel: CancelToken,
                beside: frozenset[str] = frozenset()) -> frozenset[str]:
        # Made durable by recovery_dir.complete's one sync of the filesystem.
        return extract_base_backup(self.repository, backup.name, target, self.identities,
                                   cancel, sync_each_file=False, beside=beside).left_out

    def wal(self) -> Sequence[WalLike]:
        return self._wal.segments()

    @property
    def left_out(self) -> Sequence[str]:
        return self._wal.left_out

    def fetch(self, wal: WalLike, dest: Path) -> None:
        if isinstance(wal, ArchivedWal):
            self._wal.fetch_archived(wal, dest)  # as listed: no listing per file
        else:
            self._wal.fetch(wal.name, dest)

    def fetch_segment(self, wal: WalLike, dest: Path, segment_size: int) -> None:
        self.fetch(wal, dest)
        if wal.partial and dest.stat().st_size < segment_size:
            # A partial uploaded compressed may be cut at its last record; replay reads
            # only whole-size segment files, and zeros read as the end of the WAL.
            with dest.open("r+b") as padded:
                padded.truncate(segment_size)


def archive_source(repos: Repositories, crypto: AgeKeyFiles | None, *,
                   from_s3: bool = False) -> ArchiveSource:
    """``crypto``: the age keys (``configs.age_key_files``, read at the edge). The identity
    file is read here, once: every WAL file and base backup the source decrypts, and the
    identity checks of its reader (recover, mark), use what was loaded. A set file without a
    usable identity is ConfigError here."""
    offsite = repos.require_offsite("--from-s3") if from_s3 else None
    identities = load_identities(crypto) if crypto is not None else None
    if offsite is not None:
        return ArchiveSource(offsite, WalArchive(offsite_wal_repository(offsite), crypto,
                                                 identities=identities), identities)
    local_wal = local_wal_repository(repos.local)
    return ArchiveSource(repos.local,
                         WalArchive(local_wal, crypto, spool=spool_directory(local_wal),
                                    identities=identities), identities)

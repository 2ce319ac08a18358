"""The archive of one repository (local or S3) as recovery reads it: the base backups
(``archive.basebackups``) and the WAL (``archive.walstore``)."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from backupd.archive.recovery import BaseBackupLike, RecoverySource, WalLike
from backupd.cancel import CancelToken
from backupd.configs import age_key_files
from backupd.errors import JobFailed
from backupd.pipeline.config import AgeKeyFiles
from backupd.settings import Settings
from backupd.storage.base import Repository


class ArchiveSource:
    def __init__(self, repository: Repository, crypto: AgeKeyFiles | None) -> None:
        try:
            self._bases: Any = importlib.import_module("backupd.archive.basebackups")
            walstore: Any = importlib.import_module("backupd.archive.walstore")
        except ImportError:
            raise JobFailed("this build has no WAL archive yet (base backups and WAL "
                            "streaming); recover needs one") from None
        self.repository = repository
        self.crypto = crypto
        self.description = repository.description
        self._wal = walstore.WalArchive(repository, crypto)

    def base_backups(self) -> Sequence[BaseBackupLike]:
        return [b for b in self._bases.list_base_backups(self.repository) if b.verified]

    def extract(self, backup: BaseBackupLike, target: Path, cancel: CancelToken) -> None:
        self._bases.extract_base_backup(self.repository, backup.name, target, self.crypto,
                                        cancel)

    def wal(self) -> Sequence[WalLike]:
        return list(self._wal.segments())

    def fetch(self, wal: WalLike, dest: Path) -> None:
        self._wal.fetch(wal.name, dest)


def archive_source(settings: Settings, repository: Repository) -> RecoverySource:
    return ArchiveSource(repository, age_key_files(settings))

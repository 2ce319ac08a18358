"""The repositories a job is given: the local directory, and the offsite one when configured."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from backupd.errors import ConfigError
from backupd.storage.base import Repository
from backupd.storage.local import LocalRepository


@dataclass
class Repositories:
    """``local`` always exists; ``offsite`` is made on first use (S3 clients cost start-up
    time, and bad S3 settings raise ConfigError when it is made)."""

    local: LocalRepository
    make_offsite: Callable[[], Repository] | None = None
    _offsite: Repository | None = field(default=None, init=False, repr=False)

    @property
    def has_offsite(self) -> bool:
        return self.make_offsite is not None

    def offsite(self) -> Repository | None:
        if self.make_offsite is None:
            return None
        if self._offsite is None:
            self._offsite = self.make_offsite()
        return self._offsite

    def require_offsite(self, option: str) -> Repository:
        offsite = self.offsite()
        if offsite is None:
            raise ConfigError(f"DB_BACKUP_S3_BUCKET: not set; {option} needs the bucket's "
                              "settings (DB_BACKUP_S3_BUCKET, DB_BACKUP_S3_PREFIX, S3_* and AWS "
                              "credentials)")
        return offsite

    def choose(self, remote: bool, option: str) -> Repository:
        """The repository a command works on: ``--remote``/``--from-s3`` pick the offsite one."""
        return self.require_offsite(option) if remote else self.local

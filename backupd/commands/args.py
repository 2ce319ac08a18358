"""Command-line arguments turned into things, with the one-line error naming the argument."""

from __future__ import annotations

from backupd.errors import ConfigError
from backupd.storage.base import BackupEntry
from backupd.storage.local import LocalStore, UnknownBackup, UnsafePathError


def named_backup(store: LocalStore, name: str) -> BackupEntry:
    """The local backup a user named as NAME, or ConfigError (exit 2) saying why not."""
    try:
        return store.entry(name)
    except (UnsafePathError, UnknownBackup) as exc:
        raise ConfigError(f"NAME: {exc}") from None

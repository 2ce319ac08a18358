"""The backup directory: the primary store, and the only one the pipeline writes into."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from backupd.errors import ConfigError
from backupd.manifest import Manifest, manifest_for
from backupd.naming import is_partial, manifest_name, parse_backup_name
from backupd.storage.atomic import DIR_MODE, FILE_MODE, write_bytes_atomically
from backupd.storage.base import BackupEntry


class UnsafePathError(ValueError):
    """A name that would make backupd read or write outside DB_BACKUP_DIR."""


class UnknownBackup(ValueError):
    """A name inside DB_BACKUP_DIR that is not one of backupd's backup files."""


class LocalStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @property
    def description(self) -> str:
        return str(self.directory)

    # --- preparing the directory -------------------------------------------------
    def prepare(self) -> None:
        """Create the directory (0700) and prove it is writable, or raise ConfigError."""
        try:
            self.directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"DB_BACKUP_DIR: cannot create {self.directory}: {exc.strerror}; "
                "create it or mount a writable volume there"
            ) from None
        if not self.directory.is_dir():
            raise ConfigError(f"DB_BACKUP_DIR: {self.directory} is not a directory")
        probe = self.directory / f".backupd-write-test-{os.getpid()}.partial"
        try:
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
            probe.unlink()
        except OSError as exc:
            raise ConfigError(
                f"DB_BACKUP_DIR: {self.directory} is not writable ({exc.strerror}); "
                "fix its owner or permissions"
            ) from None
        with contextlib.suppress(OSError):
            if self.directory.stat().st_uid == os.geteuid():
                self.directory.chmod(DIR_MODE)

    def remove_leftovers(self) -> list[str]:
        """Delete temporary files an interrupted run left behind; return their names."""
        removed: list[str] = []
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.directory):
                if is_partial(entry.name) and entry.is_file(follow_symlinks=False):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                        removed.append(entry.name)
        return sorted(removed)

    # --- names -> paths, safely ----------------------------------------------------
    def resolve(self, name: str) -> Path:
        """The path of backup ``name``; refuses anything that points outside the directory."""
        candidate = Path(name)
        if candidate.is_absolute() or len(candidate.parts) > 1:
            # An absolute path is accepted only when it is a file directly inside the dir.
            if candidate.parent.resolve() != self.directory.resolve():
                raise UnsafePathError(f"{name} is outside DB_BACKUP_DIR ({self.directory})")
            candidate = Path(candidate.name)
        if candidate.name in ("", ".", "..") or candidate.name.startswith("."):
            raise UnsafePathError(f"{name!r} is not a backup file name")
        path = self.directory / candidate.name
        if path.is_symlink():
            raise UnsafePathError(
                f"{candidate.name} is a symbolic link; backupd only reads regular files "
                f"inside DB_BACKUP_DIR"
            )
        return path

    def entry(self, name: str) -> BackupEntry:
        """The backup called ``name`` (a file name, or a path to a file in the directory),
        of whichever database; UnsafePathError or UnknownBackup when it is not one."""
        path = self.resolve(name)
        parsed = parse_backup_name(path.name)
        if parsed is None:
            raise UnknownBackup(f"{path.name!r} is not a backupd backup file name "
                                "(expected <db>_<YYYYmmdd_HHMMSS>.sql.gz); see `backupd list`")
        if not path.is_file():
            raise UnknownBackup(f"no backup {path.name!r} in {self.description}; "
                                "see `backupd list`")
        manifest, problem = self.load_manifest(path.name)
        return BackupEntry(parsed, path.stat().st_size, manifest, problem)

    # --- the BackupStore interface -------------------------------------------------
    def list_backups(self, database: str) -> list[BackupEntry]:
        entries: list[BackupEntry] = []
        try:
            scan = list(os.scandir(self.directory))
        except FileNotFoundError:
            return []
        for item in scan:
            parsed = parse_backup_name(item.name)
            if parsed is None or parsed.database != database:
                continue
            if not item.is_file(follow_symlinks=False):
                continue  # a symlink is never one of our backups
            manifest, problem = self.load_manifest(item.name)
            entries.append(BackupEntry(parsed, item.stat().st_size, manifest, problem))
        entries.sort(key=lambda e: (e.parsed.taken_at, e.name), reverse=True)
        return entries

    def load_manifest(self, name: str) -> tuple[Manifest | None, str | None]:
        path = self.directory / manifest_name(name)
        if path.is_symlink():
            return None, "manifest is a symbolic link"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None, None
        except OSError as exc:
            return None, f"manifest unreadable: {exc.strerror}"
        return manifest_for(name, data)

    def write_manifest(self, manifest: Manifest) -> None:
        write_bytes_atomically(self.directory / manifest_name(manifest.name), manifest.to_json())

    def delete(self, name: str) -> None:
        # Data first: a crash in between leaves an orphan manifest, never a backup
        # that looks complete but is not.
        for target in (self.resolve(name), self.directory / manifest_name(name)):
            with contextlib.suppress(FileNotFoundError):
                target.unlink()

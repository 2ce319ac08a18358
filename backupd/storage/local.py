"""The backup directory (DB_BACKUP_DIR): the primary repository, and the only one the
pipeline writes into.

Every data file here is complete (written under a temporary name, fsynced, renamed), so
every file whose name parses is listed; a file without a manifest is an old-script backup
(listed "no manifest", good only once its content verifies in full).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from backupd.cancel import CancelToken
from backupd.errors import ConfigError, JobFailed
from backupd.log import get_logger
from backupd.manifest import Manifest, manifest_for
from backupd.naming import (
    DUMP_KIND,
    GLOBALS_DATABASE,
    GLOBALS_KIND,
    TEMPLATE_DATABASE,
    ParsedName,
    is_partial,
    manifest_name,
    parse_backup_name,
    partial_name,
)
from backupd.progress import Progress
from backupd.settings.selection import DatabaseSelection
from backupd.storage import run_reservation
from backupd.storage.atomic import DIR_MODE, FILE_MODE, atomic_write, write_bytes_atomically
from backupd.storage.base import (
    BackupEntry,
    UnknownBackup,
    UnsafePathError,
    no_copy_needed,
    sort_newest_first,
)
from backupd.storage.template1_runs import template1_in_newest_run

COPY_SIZE = 1024 * 1024
# Errors that mean "this directory cannot be written" rather than "this write failed".
READ_ONLY_ERRORS = (errno.EROFS, errno.EACCES, errno.EPERM)


@dataclass(frozen=True)
class WatchedDumps:
    """LocalRepository.watched_dumps: each watched database (in order) -> its committed
    dumps, newest first, as listed to choose them; and the globals' backups, listed once
    when asked for or when judging template1 read them (else empty)."""

    backups: dict[str, list[BackupEntry]]
    globals: list[BackupEntry]


class ManifestNotWritten(JobFailed):
    """The data file is in place but its manifest (the commit) could not be written."""


class LocalRepository:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @property
    def description(self) -> str:
        return str(self.directory)

    def location(self, name: str) -> str:
        return str(self.directory / name)

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
            if not is_read_only_error(exc):
                # A full disk or a failing one is the environment's, not a setting to fix.
                raise JobFailed(
                    f"DB_BACKUP_DIR: {self.directory} cannot take a new file "
                    f"({exc.strerror or exc}); free space (or inodes) there, or check the "
                    "filesystem") from None
            raise ConfigError(
                f"DB_BACKUP_DIR: {self.directory} is not writable ({exc.strerror}); "
                "fix its owner or permissions"
            ) from None
        with contextlib.suppress(OSError):
            if self.directory.stat().st_uid == os.geteuid():
                self.directory.chmod(DIR_MODE)

    def unique_start(self, names: Callable[[datetime], Iterable[str]]) -> datetime:
        """The current second, or the next one whose ``names`` are all free. Names have
        one-second resolution; a name is in use by a finished file, and by the temporary
        file of a run that was killed mid-write (atomic_write's O_EXCL refuses to share it:
        the next run in the same second failed with "File exists")."""
        return run_reservation.free_second(lambda at: self._names_free(names(at)))

    def reserved_run_start(self, names: Callable[[datetime], Iterable[str]]
                           ) -> contextlib.AbstractContextManager[datetime]:
        """A backup run's start (its id, naming.run_id), reserved while the ``with`` lasts: as
        ``unique_start``, and a second no manifest here records as its run id either, nor
        another run holds (storage.run_reservation)."""
        return run_reservation.reserved_run_start(
            self.directory, lambda at: self._names_free(names(at)), self._run_ids_by_backup)

    def _names_free(self, names: Iterable[str]) -> bool:
        return not any((self.directory / name).exists()
                       or (self.directory / partial_name(name)).exists() for name in names)

    def _run_ids_by_backup(self, known: Mapping[str, str | None]) -> dict[str, str | None]:
        """The run id each backup's manifest here records (None: none), by backup name, read
        anew (another backupd may have written since), except the backups in ``known``.
        Raises JobFailed naming DB_BACKUP_DIR when the directory cannot be listed."""
        try:
            found = self._backup_files(lambda parsed: parsed.name not in known)
        except OSError as exc:
            raise JobFailed(
                f"DB_BACKUP_DIR: cannot list {self.directory} to choose the run id "
                f"({exc.strerror or exc}); fix the directory's owner or permissions") from None
        recorded: dict[str, str | None] = {}
        for parsed, _item in found:
            manifest, _problem = self.load_manifest(parsed.name)
            if manifest is not None:
                # A backup without its manifest yet is read again next time.
                recorded[parsed.name] = manifest.run_id
        return recorded

    def remove_leftovers(self) -> list[str]:
        """Delete temporary files an interrupted run left behind; return their names."""
        removed: list[str] = []
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.directory):
                if is_partial(entry.name) and entry.is_file(follow_symlinks=False):
                    if _unlink_leftover(entry):
                        removed.append(entry.name)
                elif is_partial(entry.name) and entry.is_dir(follow_symlinks=False):
                    # A directory-format dump or restore's scratch (pipeline/directory.py).
                    shutil.rmtree(entry.path, ignore_errors=True)
                    removed.append(entry.name)
                # A killed run's reservation of its id (a live one is left).
                elif run_reservation.is_stale_reservation(entry) and _unlink_leftover(entry):
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

    # --- the Repository protocol ---------------------------------------------------
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

    def scan(self, database: str, kind: str = DUMP_KIND) -> list[BackupEntry]:
        entries: list[BackupEntry] = []
        for parsed, item in self._backup_files(
                lambda parsed: parsed.database == database and parsed.kind == kind):
            manifest, problem = self.load_manifest(item.name)
            try:
                size = item.stat().st_size
            except FileNotFoundError:
                continue  # deleted since it was listed (retention beside a health probe)
            entries.append(BackupEntry(parsed, size, manifest, problem))
        return sort_newest_first(entries)

    def _backup_files(self, wanted: Callable[[ParsedName], bool]
                      ) -> list[tuple[ParsedName, os.DirEntry[str]]]:
        """The files here named as backups that ``wanted`` keeps (asked before anything
        else is read); none when the directory is not there, OSError when it cannot be
        listed. What every reading of the manifests lists by (scan, the run ids): a
        symbolic link is never one of our backups, nor does the manifest beside one count."""
        try:
            found = list(os.scandir(self.directory))
        except FileNotFoundError:
            return []
        return [(parsed, item) for item in found
                if (parsed := parse_backup_name(item.name)) is not None and wanted(parsed)
                and item.is_file(follow_symlinks=False)]

    def dump_databases(self) -> list[str]:
        """Every database with a dump here, sorted (for POSTGRES_DB='*' without a server)."""
        try:
            found = list(os.scandir(self.directory))
        except FileNotFoundError:
            return []
        names = {parsed.database for item in found
                 if (parsed := parse_backup_name(item.name)) is not None
                 and parsed.kind == DUMP_KIND and item.is_file(follow_symlinks=False)}
        return sorted(names)

    def databases(self) -> list[str]:
        return self.dump_databases()

    def watched_dumps(self, selection: DatabaseSelection, *,
                      with_globals: bool = False) -> WatchedDumps:
        """The databases health, metrics and the schedule's cover judge, without asking the
        server, with their backups: the listed ones; for ``*``, those with dumps here but
        the excluded, and template1 only while the newest run took it: a run that found it
        holding nothing took no dump of it, and its older dumps, kept by retention, are no
        longer due (what every run of ``*`` says in its manifests: storage.template1_runs).
        A failed look proves nothing: still judged. Each database listed once: judging
        template1 reads them all, and the callers judge what was read; the globals too
        (``with_globals``: health and metrics judge them when DB_BACKUP_GLOBALS is on)."""
        backups = {name: self.list_backups(name)
                   for name in selection.watched(self.dump_databases())}
        judge_template1 = selection.every and TEMPLATE_DATABASE in backups
        cluster_globals = (self.list_backups(GLOBALS_DATABASE, GLOBALS_KIND)
                           if with_globals or judge_template1 else [])
        if judge_template1:
            said = template1_in_newest_run(backups, backups.__getitem__, cluster_globals)
            if said is not None and said.empty:
                del backups[TEMPLATE_DATABASE]
        return WatchedDumps(backups, cluster_globals)

    def list_backups(self, database: str, kind: str = DUMP_KIND) -> list[BackupEntry]:
        return self.scan(database, kind)  # every file here is complete (renamed into place)

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

    def commit(self, manifest: Manifest) -> None:
        """Write the manifest of a data file just put in place. If it cannot be written (a
        full disk), the data file goes too: a backup of ours without its manifest would
        pass for an old-script one. Raises ManifestNotWritten naming DB_BACKUP_DIR."""
        try:
            self.write_manifest(manifest)
        except OSError as exc:
            for target in (self.directory / manifest.name,
                           self.directory / manifest_name(manifest.name)):
                with contextlib.suppress(FileNotFoundError):
                    target.unlink()
            raise ManifestNotWritten(
                f"writing the manifest of {manifest.name} to DB_BACKUP_DIR ({self.directory}) "
                f"failed: {exc.strerror or exc}; the backup was removed (it was never "
                "committed)") from None

    @contextlib.contextmanager
    def open(self, name: str) -> Iterator[BinaryIO]:
        fd = os.open(self.resolve(name), os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb", buffering=0) as handle:
            yield handle

    def local_copy(self, name: str, scratch: Path,
                   cancel: CancelToken | None = None) -> contextlib.AbstractContextManager[Path]:
        return no_copy_needed(self.resolve(name))

    def put(self, manifest: Manifest, source: Path, cancel: CancelToken | None = None) -> None:
        digest = hashlib.sha256()
        size = 0
        progress = cancel.progress if cancel is not None else Progress()
        with open(source, "rb") as data, atomic_write(self.directory / manifest.name) as out, \
                progress.stream(f"copy of {manifest.name} into {self.directory}",
                                total=manifest.stored_bytes) as stream:
            while chunk := data.read(COPY_SIZE):
                if cancel is not None:
                    cancel.raise_if_cancelled()
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
                stream.moved(len(chunk))
            if size != manifest.stored_bytes or digest.hexdigest() != manifest.sha256:
                # Raised inside atomic_write: the copy is discarded, never renamed into place.
                raise JobFailed(f"{manifest.name}: the copy does not match its manifest "
                                f"({size} bytes read, {manifest.stored_bytes} recorded); "
                                "not stored")
        self.commit(manifest)

    def delete(self, name: str) -> None:
        # Data first: a crash in between leaves an orphan manifest, never a backup
        # that looks complete but is not.
        for target in (self.resolve(name), self.directory / manifest_name(name)):
            with contextlib.suppress(FileNotFoundError):
                target.unlink()

    # --- room ----------------------------------------------------------------------
    def free_bytes(self) -> int:
        return shutil.disk_usage(self.directory).free


def _unlink_leftover(entry: os.DirEntry[str]) -> bool:
    """Delete one leftover; whether it was. One that cannot be deleted (a directory by that
    name, permissions) is left with a warning: raised, it stopped the daemon's start-up
    with an internal error, on every start."""
    try:
        os.unlink(entry.path)
    except FileNotFoundError:
        return False  # gone meanwhile (another process's cleanup)
    except OSError as exc:
        get_logger().warning("cannot delete a leftover temporary file; left in place",
                             path=entry.path, error=exc.strerror or str(exc))
        return False
    return True


def is_read_only_error(exc: OSError) -> bool:
    return exc.errno in READ_ONLY_ERRORS


# The name the daemon and health modules know this class by.
LocalStore = LocalRepository

"""The repository protocol and the artifact model every command is written against.

A *repository* holds *artifacts*: one data file each today (a database dump), described
by a JSON manifest stored beside it. The manifest is written last and is the commit
marker: an artifact is listed as good only once its manifest says so. The jobs never know
which repository they hold (a local directory, an S3 prefix); ``--remote``/``--from-s3``
only choose one. See docs/architecture.md for how to add a kind of artifact or a backend.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO, Protocol

from backupd.cancel import CancelToken
from backupd.manifest import Manifest
from backupd.naming import DUMP_KIND, ParsedName

# Clocks of replicas and of the database server disagree by a little; more than this ahead
# of now, a backup's time cannot be true (a bad RTC, an NTP glitch when it was taken).
CLOCK_TOLERANCE = timedelta(minutes=5)


class UnsafePathError(ValueError):
    """A name that would make backupd read or write outside its repository."""


class UnknownBackup(ValueError):
    """A name that is not one of this repository's artifacts."""


@dataclass(frozen=True)
class StoredFile:
    """One file of an artifact as its manifest records it."""

    name: str
    size: int
    sha256: str | None


@dataclass
class BackupEntry:
    """An artifact as a repository lists it, before anyone has read its content.

    ``committed``: the repository vouches that the data is complete (a local file is, once
    renamed into place; an S3 object only once its manifest is there too).
    """

    parsed: ParsedName
    size: int
    manifest: Manifest | None
    manifest_error: str | None = None
    committed: bool = True

    @property
    def name(self) -> str:
        return self.parsed.name

    @property
    def kind(self) -> str:
        return self.parsed.kind  # the name says it; a manifest cannot make a dump globals

    @property
    def database(self) -> str:
        return self.parsed.database

    @property
    def taken_at(self) -> datetime:
        """When the backup was taken (the name's timestamp: backupd's clock at dump start).
        What orders backups; see :meth:`from_the_future` for when it cannot be true."""
        return self.parsed.taken_at

    @property
    def latest_recorded_time(self) -> datetime:
        """The latest time the name or the manifest records for this backup."""
        times = [self.parsed.taken_at]
        if self.manifest is not None:
            times += [t.astimezone(UTC) for t in (self.manifest.started_at,
                                                   self.manifest.finished_at)
                      if t.tzinfo is not None]
        return max(times)

    @property
    def files(self) -> list[StoredFile]:
        return [StoredFile(self.name, self.size,
                           self.manifest.sha256 if self.manifest is not None else None)]

    @property
    def awaiting_upload(self) -> bool:
        """Verified here but not committed offsite yet (the S3 copy is still owed)."""
        return self.verified and self.manifest is not None and self.manifest.uploaded_at is None

    @property
    def verified(self) -> bool:
        """Verified, and the file still has the size the manifest promised."""
        return (
            self.committed
            and self.manifest is not None
            and self.manifest.verified
            and self.manifest.stored_bytes == self.size
        )

    def from_the_future(self, now: datetime | None = None) -> bool:
        """Dated later than now (beyond the clock tolerance): its time cannot be true."""
        return self.latest_recorded_time > (now or datetime.now(UTC)) + CLOCK_TOLERANCE

    def proven_good(self, now: datetime | None = None) -> bool:
        """Verified, and dated no later than now: what counts as a good backup in time."""
        return self.verified and not self.from_the_future(now)


def newest_verified(entries: Iterable[BackupEntry],
                    now: datetime | None = None) -> BackupEntry | None:
    """The newest verified backup among ``entries`` (newest first), never one from the future.

    The one definition of "the latest backup": restore --latest, drills, the schedule's
    cover, health, status, metrics and the shrink warning all use it.
    """
    return next((e for e in entries if e.proven_good(now)), None)


def future_entries(entries: Iterable[BackupEntry],
                   now: datetime | None = None) -> list[BackupEntry]:
    """Backups dated later than now: reported, never counted as newest, cover or keep-min."""
    return [e for e in entries if e.from_the_future(now)]


def describe_future(entry: BackupEntry, now: datetime | None = None) -> str:
    """One line for the log, the health reasons and Slack."""
    when = entry.latest_recorded_time
    hours = (when - (now or datetime.now(UTC))).total_seconds() / 3600
    return (f"backup {entry.name} is dated {when:%Y-%m-%d %H:%M:%S} UTC, "
            f"{hours:.1f} h in the future (was the clock wrong when it was taken?); "
            "it never counts as the newest backup or as one of DB_BACKUP_KEEP_MIN")


def latest_upload(entries: Iterable[BackupEntry]) -> datetime | None:
    """When the most recent offsite upload among ``entries`` was committed."""
    return max((e.manifest.uploaded_at for e in entries
                if e.manifest is not None and e.manifest.uploaded_at is not None), default=None)


def newest_drilled(entries: Iterable[BackupEntry], *,
                   passed: bool = False) -> BackupEntry | None:
    """The entry whose restore drill was recorded last (with ``passed``: the last that
    passed); the drill's time, result and restore seconds are in its manifest."""
    drilled = [e for e in entries if e.manifest is not None and e.manifest.drilled_at is not None
               and (e.manifest.drill_ok or not passed)]
    return max(drilled, key=lambda e: e.manifest.drilled_at,  # type: ignore[union-attr, arg-type, return-value]
               default=None)


def sort_newest_first(entries: list[BackupEntry]) -> list[BackupEntry]:
    entries.sort(key=lambda e: (e.parsed.taken_at, e.name), reverse=True)
    return entries


class Repository(Protocol):
    """What every storage backend implements; see docs/architecture.md."""

    @property
    def description(self) -> str:
        """Where this repository is, for messages (never including credentials)."""
        ...

    def location(self, name: str) -> str:
        """Where artifact ``name`` is, for messages (a path, an s3:// URI)."""
        ...

    def scan(self, database: str, kind: str = DUMP_KIND) -> list[BackupEntry]:
        """Every artifact of ``database`` and ``kind``, committed or not, newest first (the
        globals: ``scan(GLOBALS_DATABASE, GLOBALS_KIND)``)."""
        ...

    def databases(self) -> list[str]:
        """Every database with at least one dump here, committed or not, sorted (what
        ``restore --latest`` with POSTGRES_DB='*' chooses from on a new server)."""
        ...

    def list_backups(self, database: str, kind: str = DUMP_KIND) -> list[BackupEntry]:
        """This database's committed artifacts of ``kind``, newest first."""
        ...

    def entry(self, name: str) -> BackupEntry:
        """The artifact ``name`` (committed or not); UnknownBackup or UnsafePathError."""
        ...

    def load_manifest(self, name: str) -> tuple[Manifest | None, str | None]:
        """(manifest, None); (None, None) when there is none; (None, why) when it cannot
        be trusted (not JSON, wrong shape, describes another file)."""
        ...

    def write_manifest(self, manifest: Manifest) -> None:
        """Replace the manifest of an artifact whose data is in place (the commit)."""
        ...

    def open(self, name: str) -> contextlib.AbstractContextManager[BinaryIO]:
        """The stored bytes of ``name``, for one sequential read."""
        ...

    def local_copy(self, name: str, scratch: Path,
                   cancel: CancelToken | None = None) -> contextlib.AbstractContextManager[Path]:
        """A local file holding ``name``'s bytes for tools that need a path (pg_restore):
        the file itself where it is local, else a download into ``scratch``, removed after."""
        ...

    def put(self, manifest: Manifest, source: Path, cancel: CancelToken | None = None) -> None:
        """Store ``source`` as artifact ``manifest.name``: data first, size (and where it
        can, checksum) checked against the manifest, then the manifest, last."""
        ...

    def delete(self, name: str) -> None:
        """Delete an artifact and its manifest; a crash between leaves nothing listed as good."""
        ...


@contextlib.contextmanager
def no_copy_needed(path: Path) -> Iterator[Path]:
    yield path

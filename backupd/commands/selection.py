"""Choosing backups in a repository, written once for every repository: by NAME, the newest
verified one, and a local file to read it from. ``--remote``/``--from-s3`` only choose which
repository these run on."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from backupd.errors import ConfigError, JobFailed, OffsiteError
from backupd.job import JobContext
from backupd.manifest import Manifest
from backupd.naming import BASE_DATABASE, BASE_KIND, DUMP_KIND, GLOBALS_DATABASE, GLOBALS_KIND
from backupd.result import human_bytes
from backupd.settings import Settings
from backupd.storage.base import (
    BackupEntry,
    Repository,
    UnknownBackup,
    UnsafePathError,
    describe_future,
    future_entries,
    newest_verified,
)
from backupd.storage.local import LocalRepository, is_read_only_error

# Room left on DB_BACKUP_DIR's disk after a download, so a restore never fills it.
DOWNLOAD_HEADROOM_BYTES = 64 * 1024 * 1024


def artifact_sets(settings: Settings, local: LocalRepository) -> list[tuple[str, str]]:
    """(database, kind) of every set of artifacts that verify, prune, upload and list work
    on: POSTGRES_DB's dumps alone for one database (today); with several, each database's
    (for `*`, those with backups in DB_BACKUP_DIR), plus the globals when they are taken or
    any are left (turning DB_BACKUP_GLOBALS off must not keep old ones forever); plus the
    base backups (kind "base") when they are scheduled or any are there."""
    selection = settings.database_selection
    if not selection.several and not settings.globals_enabled:
        sets = [(settings.postgres_db, DUMP_KIND)]
    else:
        sets = [(name, DUMP_KIND) for name in selection.watched(local.dump_databases())]
        if settings.globals_enabled or local.list_backups(GLOBALS_DATABASE, GLOBALS_KIND):
            sets.append((GLOBALS_DATABASE, GLOBALS_KIND))
    # The base backups, once there are any (retention has rules of its own for them).
    if settings.basebackup_schedule is not None or local.list_backups(BASE_DATABASE, BASE_KIND):
        sets.append((BASE_DATABASE, BASE_KIND))
    return sets


def is_local(repository: Repository) -> bool:
    return isinstance(repository, LocalRepository)


def list_hint(repository: Repository) -> str:
    return "see `backupd list`" if is_local(repository) else "see `backupd list --remote`"


def warn_future(ctx: JobContext, entries: Iterable[BackupEntry]) -> None:
    """Report every backup dated in the future (once per job): its clock was wrong."""
    for entry in future_entries(entries):
        message = describe_future(entry)
        if not any(w.startswith(f"backup {entry.name} is dated") for w in ctx.result.warnings):
            ctx.warn(message)


def named(repository: Repository, name: str) -> BackupEntry:
    """The backup a user named as NAME, or ConfigError (exit 2) saying why not."""
    try:
        return repository.entry(name)
    except (UnsafePathError, UnknownBackup) as exc:
        raise ConfigError(f"NAME: {exc}") from None


def newest(ctx: JobContext, repository: Repository) -> BackupEntry:
    """The newest verified backup of POSTGRES_DB in ``repository``, or JobFailed."""
    database = ctx.settings.postgres_db
    entries = repository.list_backups(database)
    warn_future(ctx, entries)
    entry = newest_verified(entries)
    if entry is None:
        raise JobFailed(f"no verified backup of {database!r} in {repository.description}; "
                        f"{list_hint(repository)}")
    return entry


def pick(ctx: JobContext, repository: Repository, name: str | None,
         latest: bool) -> BackupEntry:
    """The backup to restore or drill: by name, or the newest verified one. Refuses a
    backup whose upload never completed (no manifest where the manifest is the commit)."""
    if latest:
        return newest(ctx, repository)
    if not name:
        raise ConfigError(f"NAME: give a backup file name or --latest; {list_hint(repository)}")
    entry = named(repository, name)
    if not entry.committed:
        raise JobFailed(f"refusing to restore {entry.name}: it has no manifest in "
                        f"{repository.description}, so its upload never completed")
    return entry


@contextlib.contextmanager
def local_file(ctx: JobContext, repository: Repository, entry: BackupEntry) -> Iterator[Path]:
    """A file holding ``entry``'s bytes: the backup itself in DB_BACKUP_DIR, or a download
    into DB_BACKUP_DIR (a dot-name ending in ``.partial``, removed afterwards)."""
    if is_local(repository):
        with repository.local_copy(entry.name, ctx.store.directory, ctx.cancel) as path:
            yield path
        return
    store = ctx.store
    store.prepare()
    free = store.free_bytes()
    if free < entry.size + DOWNLOAD_HEADROOM_BYTES:
        raise JobFailed(f"not enough space in {store.directory} to download {entry.name}: "
                        f"needs {human_bytes(entry.size)}, {human_bytes(free)} free")
    ctx.say(f"downloading {repository.location(entry.name)} ({human_bytes(entry.size)})")
    with repository.local_copy(entry.name, store.directory, ctx.cancel) as path:
        yield path


def record(ctx: JobContext, repository: Repository, manifest: Manifest, what: str) -> bool:
    """Write an updated manifest back. Reading never needs a write: a repository that cannot
    be written (a read-only mount, read-only credentials, a full disk) only loses the
    record, with a note, never the verify or drill that produced it."""
    try:
        repository.write_manifest(manifest)
    except OffsiteError as exc:
        ctx.warn(f"could not record {what} in {repository.description}: {exc}")
        return False
    except OSError as exc:
        if is_read_only_error(exc):
            ctx.say(f"{what} of {manifest.name} not recorded: {repository.description} is "
                    f"read-only ({exc.strerror})")
        else:
            ctx.warn(f"could not record {what} of {manifest.name} in {repository.description}: "
                     f"{exc.strerror or exc}")
        return False
    return True

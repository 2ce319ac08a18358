"""``backupd mark NAME``: a named restore point in the WAL (``pg_create_restore_point``), for
``backupd recover --to-name NAME``: "before-migration", "before-the-big-delete".

A name already in the WAL archive is refused (exit 2): recovery stops at the first restore
point of a name, so a second one could never be recovered to by name (``recover
--to-name`` refuses such a name too). Checking reads the local archive's WAL from its oldest
base backup on with pg_waldump, a window of segments at a time, once the server has
answered (a stopped one fails at once, not after the scan). When the check cannot run (no
pg_waldump, no base backup, a gap; encrypted WAL without DB_BACKUP_AGE_IDENTITY_FILE, as in
the sidecar) mark warns and makes the restore point.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator, Sequence
from pathlib import Path

import psycopg

from backupd.archive import restore_points
from backupd.archive.recovery import (
    RecoveryPlan,
    RecoverySource,
    RecoveryTarget,
    WalDamaged,
    WalLike,
    first_encrypted,
    plan,
)
from backupd.configs import age_key_files
from backupd.errors import ConfigError, JobFailed, os_error_text
from backupd.job import JobContext
from backupd.outcomes import MarkOutcome
from backupd.pipeline.config import AgeKeyFiles
from backupd.postgres.connection import as_text, connect, describe_pg_error
from backupd.scratch import owned, remove_abandoned
from backupd.storage.local import is_read_only_error

# The server keeps restore point names in a fixed 64-byte field (MAXFNAMELEN), NUL included.
MAX_NAME_BYTES = 63
# The scan's scratch directories in DB_BACKUP_DIR hold fetched, decrypted WAL: owned while a
# mark works in one (backupd.scratch), removed once their mark was killed (remove_leftovers).
SCRATCH_PREFIX = ".backupd-mark-"


def run(ctx: JobContext, name: str) -> None:
    if not name or len(name.encode()) > MAX_NAME_BYTES or "\x00" in name:
        raise ConfigError(f"NAME: {name!r} must be 1 to {MAX_NAME_BYTES} bytes (PostgreSQL's "
                          "limit for restore point names)")
    # Before the archive is read, which for a large one takes long: a server that does not
    # answer is found at once, not after the whole scan.
    _require_a_server(ctx, name)
    _refuse_a_name_in_the_archive(ctx, name)
    try:
        with connect(ctx.settings) as conn:
            with as_text(conn):  # the LSN, not b'0/...', on a SQL_ASCII session
                row = conn.execute("SELECT pg_create_restore_point(%s)::text, now()",
                                   (name,)).fetchone()
            # The restore point is a WAL record the server does not flush by itself; a
            # committed transaction with an xid flushes it, so the archive has it at once.
            with conn.transaction():
                conn.execute("SELECT pg_current_xact_id()")
    except psycopg.errors.InsufficientPrivilege:
        raise JobFailed(f"POSTGRES_USER {ctx.settings.postgres_user!r} may not create restore "
                        "points: run `GRANT EXECUTE ON FUNCTION pg_create_restore_point(text) "
                        "TO ...` as a superuser, or mark as one") from None
    except psycopg.Error as exc:
        raise JobFailed(f"could not create restore point {name!r}: "
                        f"{describe_pg_error(exc)}") from None
    except JobFailed as exc:  # connect's: the server went away during the scan
        raise JobFailed(f"restore point {name!r} not made: {exc}") from None
    assert row is not None
    ctx.result.outcome = MarkOutcome(name=name, lsn=str(row[0]), server_time=row[1])
    ctx.say(f"restore point {name!r} at {row[0]} ({row[1].isoformat()}); recover to it with "
            f"`backupd recover --target-dir DIR --to-name {name}`")


def _require_a_server(ctx: JobContext, name: str) -> None:
    """JobFailed, saying no restore point was made, when no server answers (stopped,
    unreachable). The connection is not kept for after the scan: a long one could outlast
    an idle session timeout, so the restore point is made on a connection of its own."""
    try:
        with connect(ctx.settings):
            pass
    except JobFailed as exc:
        raise JobFailed(f"restore point {name!r} not made: {exc}") from None


def _refuse_a_name_in_the_archive(ctx: JobContext, name: str) -> None:
    if not ctx.settings.wal_archive:
        return  # no archive of backupd's to recover from by name
    from backupd.archive.continuity import history_to_read, path_to_newest
    from backupd.archive.recovery_source import archive_source
    from backupd.archive.walstore import WalFetchError

    keys = age_key_files(ctx.settings)
    # Reads the identity file once, for every WAL file fetched: a set one that cannot be
    # read is a setting to fix (exit 2, no point made).
    source = archive_source(ctx.repos, keys)
    wal, backups = source.wal(), source.base_backups()
    if _without_the_identity(ctx, name, keys, history_to_read(wal)):
        return
    try:
        chosen = plan(wal, backups, RecoveryTarget(name=name),
                      spans=path_to_newest(wal, source.fetch))
    except (WalDamaged, WalFetchError) as exc:  # damage, not a check that cannot run
        raise JobFailed(f"restore point {name!r} not made: reading the WAL archive for the "
                        f"name failed: {exc}") from None
    except (ConfigError, JobFailed) as exc:
        ctx.warn(f"restore point {name!r} not looked for in the archive: {exc}")
        return
    # Only the WAL it reads counts: base backups are never unpacked here.
    if _without_the_identity(ctx, name, keys, chosen.wal_files):
        return
    for removed in remove_leftovers(ctx.settings.backup_dir):
        ctx.warn(f"removed {removed.name}, the WAL a killed `backupd mark` had fetched")
    with _scratch_directory(ctx.settings.backup_dir, name) as wal_dir:
        try:
            points = _points_named(ctx, source, chosen, wal_dir, name)
        except JobFailed as exc:  # a WAL file that cannot be read, or pg_waldump stopped
            raise JobFailed(f"restore point {name!r} not made: reading the WAL archive for "
                            f"the name failed: {exc}") from None
        except OSError as exc:  # reading raises WalFetchError: this is writing the copy
            raise JobFailed(f"restore point {name!r} not made: copying the archive's WAL "
                            f"into {wal_dir} failed: {os_error_text(exc)}") from None
    if points:
        raise ConfigError(
            f"NAME: restore point {name!r} is already in the WAL archive, at "
            + ", ".join(p.describe() for p in points) + "; recovery stops at the first of a "
            f"name, so give this one another name (e.g. {name}-2)")


def _without_the_identity(ctx: JobContext, name: str, keys: AgeKeyFiles,
                          wal: Sequence[WalLike]) -> bool:
    """Whether the name check cannot run: ``wal`` (about to be read) holds encrypted files
    and DB_BACKUP_AGE_IDENTITY_FILE is not set, as in the sidecar, which holds public keys
    only (warned: the restore point is made unchecked; recover --to-name, run with the
    identity, still refuses a name found twice)."""
    encrypted = first_encrypted(wal) if keys.identity_file is None else None
    if encrypted is None:
        return False
    ctx.warn(f"restore point {name!r} not looked for in the archive: its WAL is encrypted "
             f"({encrypted}) and DB_BACKUP_AGE_IDENTITY_FILE not set (the sidecar holds "
             "public keys only); `recover --to-name` still refuses a name found twice")
    return True


@contextlib.contextmanager
def _scratch_directory(backup_dir: Path, name: str) -> Iterator[Path]:
    """The scan's own scratch directory in DB_BACKUP_DIR, removed after it (owned: a mark
    killed meanwhile leaves it to the next one). Made before any WAL is copied: ConfigError
    when DB_BACKUP_DIR cannot be written, JobFailed naming another OSError."""
    with contextlib.ExitStack() as stack:
        try:
            wal_dir = stack.enter_context(
                owned(backup_dir / f"{SCRATCH_PREFIX}{secrets.token_hex(6)}"))
        except OSError as exc:
            if is_read_only_error(exc):
                raise ConfigError(
                    f"DB_BACKUP_DIR: {backup_dir} is not writable for backupd (uid "
                    f"{os.geteuid()}): {os_error_text(exc)}; `backupd mark` reads the "
                    "archive's WAL into a scratch directory there: fix its owner or "
                    "permissions") from None
            raise JobFailed(f"restore point {name!r} not made: no scratch directory for the "
                            f"archive's WAL in DB_BACKUP_DIR: {os_error_text(exc)}") from None
        yield wal_dir


def _points_named(ctx: JobContext, source: RecoverySource, chosen: RecoveryPlan, wal_dir: Path,
                  name: str) -> list[restore_points.RestorePoint] | None:
    """The restore points called ``name`` in ``chosen``'s WAL, fetched into ``wal_dir`` a
    window at a time; None (warned) without a pg_waldump that reads it."""
    first = wal_dir / chosen.file_name(chosen.segments[0])
    source.fetch_segment(chosen.segments[0], first, chosen.segment_size)
    waldump = restore_points.waldump_reading(first, ctx.settings.pg_server_root)
    if waldump is None:
        ctx.warn(f"restore point {name!r} not looked for in the archive's WAL: "
                 + restore_points.missing_waldump(first, ctx.settings.pg_server_root))
        return None
    return restore_points.find(chosen, wal_dir, waldump, name,
                               fetch=lambda wal, dest: source.fetch_segment(
                                   wal, dest, chosen.segment_size))


def remove_leftovers(backup_dir: Path) -> list[Path]:
    """Remove the scratch directories of marks that were killed (a live mark owns its own):
    they hold decrypted WAL. The directories removed."""
    try:
        entries = [e for e in backup_dir.iterdir() if e.name.startswith(SCRATCH_PREFIX)]
    except OSError:
        return []
    return [entry for entry in entries
            if entry.is_dir() and remove_abandoned(entry) == "removed"]

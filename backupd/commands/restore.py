"""``backupd restore``: verify first, then restore, and never leave a half-restored database.

* The file is fully verified before the database is touched.
* A target that does not exist is created, restored in one transaction with
  psql stopping at the first error, and dropped again if the restore fails.
* A target that already holds tables is refused unless ``--replace``: then the
  backup is restored into a scratch database and swapped in only once complete;
  the old database is kept, renamed, so nothing is lost.
"""

from __future__ import annotations

import collections
import shutil
import subprocess
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import psycopg
from psycopg import sql
from pyrage import x25519

from backupd import offsite
from backupd.errors import ConfigError, JobFailed
from backupd.job import JobContext
from backupd.naming import ParsedName, parse_backup_name
from backupd.pg import (
    child_env,
    connect,
    create_database,
    database_exists,
    drop_database,
    tool_path,
)
from backupd.pipeline.compress import open_decompressed
from backupd.pipeline.custom import restore_archive
from backupd.pipeline.encrypt import DecryptedReader, load_identities
from backupd.settings import Settings
from backupd.storage.base import BackupEntry
from backupd.storage.local import UnsafePathError
from backupd.verification import check_other_content, verify_file

MAINTENANCE_DB = "postgres"
# psql prints this (\echo, to stdout) only after it has executed backupd's COMMIT.
COMMIT_CONFIRMATION = b"backupd: restore committed"
Confirm = Callable[[str], bool]


def derived_name(base: str, suffix: str) -> str:
    """``base + suffix`` cut to PostgreSQL's 63-byte identifier limit, on a character boundary."""
    room = 63 - len(suffix.encode())
    cut = base.encode()[:room].decode("utf-8", errors="ignore")
    return cut + suffix


def pick(ctx: JobContext, name: str | None, latest: bool) -> tuple[Path, BackupEntry]:
    store = ctx.store
    entries = store.list_backups(ctx.settings.postgres_db)
    if latest:
        entry = next((e for e in entries if e.verified), None)
        if entry is None:
            raise JobFailed(f"no verified backup of {ctx.settings.postgres_db!r} in "
                            f"{store.description}; see `backupd list`")
        return store.resolve(entry.name), entry
    if not name:
        raise ConfigError("NAME: give a backup file name or --latest; see `backupd list`")
    try:
        path = store.resolve(name)
    except UnsafePathError as exc:
        raise ConfigError(f"NAME: {exc}") from None
    parsed = parse_backup_name(path.name)
    if parsed is None:
        raise ConfigError(f"NAME: {path.name!r} is not a backupd backup file name "
                          "(expected <db>_<YYYYmmdd_HHMMSS>.sql.gz); see `backupd list`")
    if not path.is_file():
        raise ConfigError(f"NAME: no backup {path.name!r} in {store.description}; "
                          "see `backupd list`")
    manifest, problem = store.load_manifest(path.name)
    return path, BackupEntry(parsed, path.stat().st_size, manifest, problem)


def run(
    ctx: JobContext,
    name: str | None,
    *,
    latest: bool = False,
    target_db: str | None = None,
    replace: bool = False,
    confirm: Confirm | None = None,
    from_s3: bool = False,
) -> None:
    if from_s3:
        # Disaster recovery: download into DB_BACKUP_DIR, then the very same verify + restore.
        s3 = offsite.require_store(ctx.settings, "--from-s3")
        entry = offsite.pick_remote(ctx, s3, name, latest)
        with offsite.downloaded(ctx, s3, entry) as downloaded:
            restore_file(ctx, downloaded, entry, target_db=target_db, replace=replace,
                         confirm=confirm)
        return
    path, entry = pick(ctx, name, latest)
    restore_file(ctx, path, entry, target_db=target_db, replace=replace, confirm=confirm)


def restore_file(
    ctx: JobContext,
    path: Path,
    entry: BackupEntry,
    *,
    target_db: str | None = None,
    replace: bool = False,
    confirm: Confirm | None = None,
) -> None:
    """Verify ``path`` and restore it into the target database (shared with S3 and drills)."""
    settings = ctx.settings
    target = target_db or settings.postgres_db
    ctx.result.backup_name = entry.name
    ctx.result.details["target_database"] = target
    identities = load_identities(settings)
    if entry.parsed.encrypted and identities is None:
        raise ConfigError(f"DB_BACKUP_AGE_IDENTITY_FILE: {entry.name} is encrypted; set it to "
                          "the age identity file whose key it was encrypted to; nothing was "
                          "changed")
    report = verify_file(path, entry.parsed, entry.manifest, entry.manifest_error,
                         lambda p, parsed, r: check_other_content(p, parsed, r, identities))
    ctx.result.details["verify"] = report.to_dict()
    if not report.ok:
        raise JobFailed(f"refusing to restore {entry.name}: it failed verification: "
                        f"{report.problem}")
    ctx.say(f"{entry.name} verified; restoring into database {target!r}")
    if confirm is not None and not confirm(target):
        raise ConfigError("restore: not confirmed; nothing was changed")

    with connect(settings, MAINTENANCE_DB) as admin:
        exists = database_exists(admin, target)
        if exists and not replace and not _is_empty(settings, target):
            raise ConfigError(
                f"--target-db: database {target!r} already holds tables; pass --replace to "
                "restore into a fresh database and swap it in (the current one is kept, renamed)"
            )
        stamp = datetime.now(UTC).strftime("%Y%m%d_%H%M%S")
        scratch = derived_name(target, f"__restoring_{stamp}") if exists and replace else target
        created = not exists or scratch != target
        if created:
            create_database(admin, scratch)
        started = datetime.now(UTC)
        try:
            if entry.parsed.backup_format == "custom":
                _pg_restore(ctx, path, entry.parsed, scratch, identities, atomic=not created)
            else:
                stream_into_psql(ctx, path, entry.parsed, scratch, identities)
        except BaseException:
            if created:
                drop_database(admin, scratch)
                ctx.say(f"restore failed; dropped the incomplete database {scratch!r}")
            raise
        ctx.result.details["restore_seconds"] = (datetime.now(UTC) - started).total_seconds()
        if scratch != target:
            kept = derived_name(target, f"_before_restore_{stamp}")
            _swap(admin, target, scratch, kept)
            ctx.result.details["previous_database_kept_as"] = kept
            ctx.say(f"the previous database was kept as {kept!r}; drop it when satisfied")
    ctx.say(f"restore of {entry.name} into {target!r} completed")


def _is_empty(settings: Settings, database: str) -> bool:
    with connect(settings, database) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') "
            "AND n.nspname NOT LIKE 'pg_toast%%' AND c.relkind IN ('r','p','v','m','S','f')"
        ).fetchone()
    return row is not None and row[0] == 0


def _swap(admin: psycopg.Connection[tuple], target: str, scratch: str, kept: str) -> None:  # type: ignore[type-arg]
    admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = %s AND pid <> pg_backend_pid()", (target,))
    admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
        sql.Identifier(target), sql.Identifier(kept)))
    admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
        sql.Identifier(scratch), sql.Identifier(target)))


def _pg_restore(ctx: JobContext, path: Path, parsed: ParsedName, database: str,
                identities: list[x25519.Identity] | None, *, atomic: bool) -> None:
    """Custom format: pg_restore with DB_RESTORE_JOBS parallel jobs into a database we created
    (dropped on failure); one transaction when restoring into an existing empty database."""
    problem, stderr = restore_archive(
        ctx.settings, path, database, ctx.cancel,
        identities=identities if parsed.encrypted else None, single_transaction=atomic)
    if problem is not None:
        ctx.result.stderr_tail = "\n".join(stderr) or None
        raise JobFailed(f"restore into {database!r} failed: {problem}")


def stream_into_psql(ctx: JobContext, path: Path, parsed: ParsedName, database: str,
                     identities: list[x25519.Identity] | None = None) -> None:
    """Feed the decompressed dump to psql: one transaction, stop at the first error.

    backupd writes BEGIN itself and COMMIT only after the last byte of the dump, rather
    than using psql's --single-transaction: that option commits at end of input, so a
    backupd killed mid-stream would leave a half-restored database. Here psql sees end
    of input inside an open transaction and PostgreSQL rolls it back.
    """
    argv = [tool_path("psql"), "--no-psqlrc", "--quiet", "--no-password",
            "--set", "ON_ERROR_STOP=1", "--output", "/dev/null"]
    process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=child_env(ctx.settings, database),
                               start_new_session=True)
    assert process.stdin is not None and process.stderr is not None
    errors: collections.deque[str] = collections.deque(maxlen=20)
    reader = threading.Thread(target=lambda: errors.extend(
        line.decode("utf-8", "replace").rstrip() for line in process.stderr  # type: ignore[union-attr]
    ), daemon=True)
    reader.start()
    confirmations: list[bytes] = []
    confirmer = threading.Thread(target=lambda: confirmations.append(
        process.stdout.read()), daemon=True)  # type: ignore[union-attr]
    confirmer.start()
    unregister = ctx.cancel.on_cancel(process.terminate)
    broken_pipe = False
    try:
        raw: str | BinaryIO = str(path)
        if parsed.encrypted:
            assert identities is not None
            raw = DecryptedReader(path, identities)  # type: ignore[assignment]
        with open_decompressed(raw, parsed.compression) as source:
            try:
                process.stdin.write(b"BEGIN;\n")
                shutil.copyfileobj(source, process.stdin, 1024 * 1024)
                process.stdin.write(b"\nCOMMIT;\n\\echo " + COMMIT_CONFIRMATION + b"\n")
                process.stdin.close()
            except BrokenPipeError:
                broken_pipe = True  # psql stopped at an error; its stderr says which
        code = process.wait()
    except BaseException:
        process.kill()
        process.wait()
        raise
    finally:
        unregister()
        reader.join(5)
        confirmer.join(5)
    ctx.cancel.raise_if_cancelled()
    if code == 0 and COMMIT_CONFIRMATION not in b"".join(confirmations):
        # psql ended without an error but never got as far as the COMMIT: nothing was restored.
        raise JobFailed(f"restore into {database!r} failed: psql did not confirm the COMMIT "
                        "(it stopped reading early); the transaction was rolled back")
    if code != 0 or broken_pipe:
        detail = next((line for line in errors if "ERROR" in line or "FATAL" in line),
                      errors[-1] if errors else f"psql exit code {code}")
        ctx.result.stderr_tail = "\n".join(errors) or None
        raise JobFailed(f"restore into {database!r} failed and was rolled back: {detail}")

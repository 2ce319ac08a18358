"""The cluster's globals as an artifact of every backup run (issue 14).

``pg_dumpall --globals-only`` holds what no pg_dump carries: roles with their attributes,
password hashes and memberships, ``ALTER ROLE ... SET``, and tablespaces. Without them a
restore onto a new server stops at the first ``OWNER TO app``. The artifact goes through
the same pipeline as a dump (gzip, age when encryption is on, temporary name, fsync,
rename, manifest last), is read back and verified (gzip integrity, SHA-256, pg_dumpall's
first and last lines), replicated offsite and kept under retention like any backup, under
the listing key ``naming.GLOBALS_DATABASE`` with kind ``naming.GLOBALS_KIND``.

Password hashes are secrets: encryption (DB_BACKUP_AGE_RECIPIENTS) is the recommended
setting. A role that is not a superuser cannot read them: the globals are then taken with
``--no-role-passwords``, the run warns once, and the manifest says ``role_passwords: false``.
"""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg

from backupd.commands import prune, upload
from backupd.commands.backup import _skip_if_slot_taken
from backupd.commands.verify import with_outcome
from backupd.configs import age_key_files, connection_config
from backupd.errors import JobFailed, JobSkipped
from backupd.job import JobContext
from backupd.manifest import Manifest
from backupd.naming import GLOBALS_DATABASE, GLOBALS_KIND, globals_name, parse_backup_name
from backupd.outcomes import FileReport, GlobalsBackup
from backupd.pipeline.config import DumpConfig
from backupd.pipeline.dumpall import pg_dumpall_globals
from backupd.pipeline.encrypt import encryptor_for, load_identities, recipient_strings
from backupd.pipeline.run import DumpFailed, dump_to_file
from backupd.pipeline.supervisor import tool_version
from backupd.pipeline.verification import FileScan, follow_growing_file, verify_file
from backupd.postgres.connection import describe_error, is_superuser, server_version
from backupd.postgres.databases import Connection
from backupd.postgres.not_text import NOT_TEXT_MESSAGES, not_text_failure
from backupd.result import human_bytes
from backupd.storage.base import Repository

NO_ROLE_PASSWORDS = (
    "globals taken without the roles' password hashes: role {user!r} is not a superuser, so "
    "pg_dumpall ran with --no-role-passwords (pg_authid is unreadable). Roles, attributes, "
    "memberships, ALTER ROLE ... SET and tablespaces are in the backup; after a restore onto "
    "a new server set each login role's password again (ALTER ROLE ... PASSWORD). Run the "
    "backups as a superuser to carry the hashes")


def backup_globals(ctx: JobContext, conn: Connection, started: datetime, run_id: str, *,
                   offsite: Repository | None, apply_retention: bool,
                   not_before: datetime | None = None,
                   databases: list[str] | None = None,
                   template1_empty: bool | None = None,
                   run_of_every: bool | None = None) -> GlobalsBackup:
    """Take, verify, replicate and retain the globals of this run (``databases``: the ones
    it backs up, ``template1_empty`` and ``run_of_every``, recorded in the manifest); never
    raises for a failure of the globals themselves (the run reports it), only for a
    cancel."""
    outcome = GlobalsBackup()
    try:
        _take(ctx, conn, started, run_id, outcome, not_before, databases, template1_empty,
              run_of_every)
    except JobSkipped as exc:
        outcome.skipped, outcome.error = True, str(exc)
        return outcome
    except (JobFailed, psycopg.Error) as exc:
        outcome.error = describe_error(exc)
        return outcome
    except OSError as exc:
        outcome.error = (f"writing the globals to DB_BACKUP_DIR failed: "
                         f"{exc.strerror or exc}; the partial file was removed")
        return outcome
    if offsite is not None and outcome.name is not None:
        outcome.upload = upload.upload_pending(ctx, offsite, first=outcome.name,
                                               database=GLOBALS_DATABASE, kind=GLOBALS_KIND)
    if apply_retention and ctx.settings.retention_schedule is None:
        ctx.result.deleted += prune.sweep(ctx, ctx.store, already_proven={outcome.name or ""},
                                          database=GLOBALS_DATABASE, kind=GLOBALS_KIND)
        ctx.result.deleted += prune.sweep_offsite(ctx, offsite, database=GLOBALS_DATABASE,
                                                  kind=GLOBALS_KIND)
    return outcome


def _take(ctx: JobContext, conn: Connection, started: datetime, run_id: str,
          outcome: GlobalsBackup, not_before: datetime | None,
          databases: list[str] | None, template1_empty: bool | None,
          run_of_every: bool | None) -> None:
    settings, store = ctx.settings, ctx.store
    if not_before is not None:
        _skip_if_slot_taken(store.list_backups(GLOBALS_DATABASE, GLOBALS_KIND), not_before)
    outcome.role_passwords = is_superuser(conn)
    if not outcome.role_passwords:
        ctx.warn(NO_ROLE_PASSWORDS.format(user=settings.postgres_user))
    keys = age_key_files(settings)
    recipients = recipient_strings(keys)
    identities = load_identities(keys)
    name = globals_name(started, encrypted=bool(recipients))
    parsed = parse_backup_name(name)
    assert parsed is not None
    connection = connection_config(settings, conn.info.dbname)
    ctx.say(f"Starting backup of the cluster's globals (roles, tablespaces) to {name}")
    read_back: list[FileScan] = []
    try:
        dumped = dump_to_file(
            DumpConfig(connection, "plain", "gzip", settings.compression_level
                       if settings.compression == "gzip" else None),
            store.directory / name, ctx.cancel, encryptor=encryptor_for(keys),
            read_back=lambda fd, growing, identity: read_back.append(follow_growing_file(
                fd, growing, None if parsed.encrypted else "gzip", identity,
                progress=ctx.progress)),
            source=pg_dumpall_globals(connection, ctx.cancel,
                                      role_passwords=outcome.role_passwords),
            kind=GLOBALS_KIND)
    except DumpFailed as exc:
        if any(said in str(exc) for said in NOT_TEXT_MESSAGES):
            # pg_dumpall names no role, only the bytes: look the names up as bytes, so the
            # failure says which role (or tablespace) to rename.
            raise not_text_failure(conn, "pg_dumpall --globals-only", exc,
                                   "globals") from None
        raise JobFailed(f"globals: {exc}") from None
    manifest = Manifest(
        kind=GLOBALS_KIND, name=name, database=GLOBALS_DATABASE,
        server_version=server_version(conn), pg_dump_version=tool_version("pg_dumpall")[0],
        started_at=started, finished_at=datetime.now(UTC), format="plain", compression="gzip",
        compression_level=settings.compression_level if settings.compression == "gzip" else None,
        raw_bytes=dumped.raw_bytes, stored_bytes=dumped.stored_bytes, sha256=dumped.sha256,
        encrypted=bool(recipients), age_recipients=recipients,
        gzip_members=dumped.gzip_members, run_id=run_id, role_passwords=outcome.role_passwords,
        run_databases=databases, template1_empty=template1_empty, run_of_every=run_of_every)
    store.commit(manifest)
    outcome.name = name
    report = verify_file(store.directory / name, parsed, manifest, identities=identities,
                         read_back=read_back[0], progress=ctx.progress)
    store.commit(with_outcome(manifest, report))
    outcome.verify = FileReport.of(report)
    if not report.ok:
        raise JobFailed(f"the new globals backup {name} failed verification: {report.problem}")
    outcome.ok = True
    ctx.say(f"Globals completed and verified: {name} ({human_bytes(dumped.stored_bytes)})")

"""Point-in-time recovery from the WAL archive: recover, and mark (named restore points)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from backupd.cli.app import app, bootstrap, execute, fail, finish
from backupd.errors import ConfigError
from backupd.outcomes import RecoverOutcome


@app.command()
def recover(
    target_dir: Annotated[Path, typer.Option(
        "--target-dir", help="Write the recovered data directory here: missing or empty (a "
        "live server's data directory is refused). A PostgreSQL server of the same major "
        "starts on it with `pg_ctl -D DIR start` without backupd, the archive or S3: the WAL "
        "it needs is copied in (pg_wal_archive/).")],
    to_time: Annotated[str | None, typer.Option(
        "--to-time", help="Recover to this time: ISO 8601 with its offset, e.g. "
        "2026-12-05T14:06:00+01:00. Default: the end of the archive, the in-progress partial "
        "segment included. A time after the archive's newest commit is refused (read with "
        "the archive's major's pg_waldump; without it, a warning says what to install and "
        "what to do if the server then refuses to start).")] = None,
    to_lsn: Annotated[str | None, typer.Option(
        "--to-lsn", help="Recover to this WAL position, e.g. 0/3000028.")] = None,
    to_name: Annotated[str | None, typer.Option(
        "--to-name", help="Recover to the restore point made with `backupd mark NAME`. "
        "Refused when the archive's WAL holds no restore point of that name, or more than "
        "one (PostgreSQL would stop at the first): the refusal lists each one's LSN for "
        "--to-lsn.")]
    = None,
    from_s3: Annotated[bool, typer.Option(
        "--from-s3", help="Read the archive (base backups and WAL) from S3 alone.")] = False,
    owner: Annotated[str | None, typer.Option(
        "--owner", help="UID:GID to own the directory, the server's user (999:999 for the "
        "official postgres image), when recovering as another user; needs root and a "
        "filesystem that keeps ownership (checked before the archive is read). Ids: 0 to "
        "4294967294.")] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Clean up what an interrupted recover left in --target-dir first "
        "(only that: any other content is still refused).")] = False,
) -> None:
    """Recover a data directory to a point in time from the WAL archive: the newest base
    backup that ends before the target, and the WAL after it, checked complete before
    anything is written. Prints what it chose: base backup, WAL range, target."""
    from backupd.archive.recovery import RecoveryTarget, parse_target_lsn
    from backupd.archive.recovery_dir import parse_owner
    from backupd.commands import recover as recover_cmd

    try:
        target = RecoveryTarget(time=_parse_time(to_time) if to_time else None,
                                lsn=parse_target_lsn(to_lsn) if to_lsn else None, name=to_name)
        options = recover_cmd.RecoverOptions(owner=parse_owner(owner) if owner else None,
                                             force=force)
    except ConfigError as exc:
        fail(str(exc))
    settings = bootstrap()
    result = execute("recover", settings, lambda ctx: recover_cmd.run(
        ctx, target_dir, target, from_s3=from_s3, options=options))
    outcome = result.outcome
    if isinstance(outcome, RecoverOutcome) and outcome.base_backup is not None:
        print(f"base backup: {outcome.base_backup}")
        print(f"WAL: {outcome.wal_first} .. {outcome.wal_last} ({outcome.wal_segments} "
              "segments)")
        print(f"target: {outcome.target}")
    finish(result)


def _parse_time(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"--to-time: {text!r} is not an ISO 8601 time; give it with its "
                          "offset, e.g. 2026-12-05T14:06:00+01:00") from None
    if value.tzinfo is None:
        raise ConfigError(f"--to-time: {text!r} has no offset; add one, e.g. "
                          f"{text}+00:00 for UTC")
    return value


@app.command()
def mark(
    name: Annotated[str, typer.Argument(help="The restore point's name, e.g. before-migration.")],
) -> None:
    """Create a named restore point in the WAL (pg_create_restore_point) before a risky
    change; `backupd recover --to-name NAME` recovers to it. A name already in the WAL
    archive is refused (recovery stops at the first of a name): give each mark its own. Over
    encrypted WAL without DB_BACKUP_AGE_IDENTITY_FILE (the sidecar's usual setup) the name
    is not looked for: a warning says so, and the restore point is made."""
    from backupd.commands import mark as mark_cmd

    settings = bootstrap()
    finish(execute("mark", settings, lambda ctx: mark_cmd.run(ctx, name)))

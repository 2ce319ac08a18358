"""Commands over the WAL archive's base backups: basebackup."""

from __future__ import annotations

from typing import Annotated

import typer

from backupd.cli.app import app, bootstrap, discard, execute, finish


@app.command()
def basebackup(
    no_prune: Annotated[bool, typer.Option(
        "--no-prune", help="Skip the archive's retention (BASEBACKUP_KEEP, "
        "BASEBACKUP_MAX_AGE_DAYS) afterwards.")] = False,
) -> None:
    """Take a base backup of the whole cluster (pg_basebackup, WAL included), verify every
    file against PostgreSQL's backup_manifest, copy it to S3 (if DB_BACKUP_S3_BUCKET is set),
    then apply the archive's retention. Needs a role with REPLICATION and a `replication`
    line in pg_hba.conf."""
    from backupd.commands import basebackup as basebackup_cmd

    settings = bootstrap()
    finish(execute("basebackup", settings,
                   lambda ctx: discard(basebackup_cmd.take(ctx, apply_retention=not no_prune))))

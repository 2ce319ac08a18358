"""Commands that put data back: restore (one database or a whole server) and drill."""

from __future__ import annotations

import sys
from pathlib import PurePath
from typing import Annotated

import typer

from backupd.cli.app import (
    NAME_NOT_UTF8_FIX,
    app,
    bootstrap,
    check_utf8,
    execute,
    fail,
    finish,
    paused_progress,
)
from backupd.cli.signals import interrupting
from backupd.errors import Cancelled
from backupd.outcomes import ClusterRestoreOutcome, DrillOutcome


@app.command()
def restore(
    name: Annotated[str | None, typer.Argument(
        help="Backup file name in DB_BACKUP_DIR (in S3 with --from-s3).")] = None,
    latest: Annotated[bool, typer.Option("--latest", help=(
        "Restore the newest verified backups. Onto a new server this is the whole "
        "disaster recovery: the roles (globals) first, existing ones kept; then every "
        "database POSTGRES_DB names (`*`: every database with a backup but DB_BACKUP_EXCLUDE's; "
        "one that looks dropped, not in the newest backup run of `*`, is restored and warned "
        "of), each from its newest "
        "verified backup (an incomplete newest run is said so), and template1 when the run "
        "took it, into the server's template1 only while that holds nothing of its own and "
        "can be swapped out; "
        "timings per database. "
        "With --replace and one POSTGRES_DB (no --database): that database alone, over the "
        "live one, and no role is touched."))]
    = False,
    database: Annotated[str | None, typer.Option(
        "--database", help="With --latest: just this database (one with a backup, see "
        "`backupd list`), with the roles.")] = None,
    skip: Annotated[list[str] | None, typer.Option(
        "--skip", metavar="NAME", help="With --latest and POSTGRES_DB `*`: leave this "
        "database out (one name per --skip, taken whole: commas and spaces are part of it; "
        "one with no backup is refused). A restore that stops for databases it cannot "
        "bring back prints the one command with a --skip for each.")] = None,
    from_s3: Annotated[bool, typer.Option(
        "--from-s3", help="Take the backups from S3 (DB_BACKUP_S3_BUCKET) alone: downloaded "
        "into DB_BACKUP_DIR, verified against their manifests, restored, then removed.")]
    = False,
    target_db: Annotated[str | None, typer.Option(
        "--target-db", help="Restore into this database (created if missing); never a "
        "template, and `postgres` only with --replace. One database, no roles; with "
        "several databases in POSTGRES_DB, give the backup's NAME.")] = None,
    replace: Annotated[bool, typer.Option(
        "--replace", help="Target holds data: restore into a new database and swap it in, "
        "keeping the old one renamed. `--latest --replace` with one POSTGRES_DB restores "
        "that database alone, without the roles (--database DB for the roles too).")]
    = False,
    no_owner: Annotated[bool, typer.Option(
        "--no-owner", help="Objects belong to the restoring role; no role is created. "
        "Custom-format (.dump) backups only; refused for plain SQL.")] = False,
    no_privileges: Annotated[bool, typer.Option(
        "--no-privileges", help="Leave out GRANT/REVOKE; no role is created. Custom-format "
        "(.dump) backups only; refused for plain SQL.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Verify a backup, then restore it into POSTGRES_DB (or --target-db); with --latest,
    the roles and every database POSTGRES_DB names, onto POSTGRES_HOST:POSTGRES_PORT
    (--latest --replace of one POSTGRES_DB: that database alone, no roles)."""
    if name and latest:
        fail("NAME and --latest: give one of them, not both")
    if not name and not latest:
        fail("NAME: give a backup file name or --latest; see `backupd list`")
    check_utf8("NAME", name and PurePath(name).name, fix=NAME_NOT_UTF8_FIX)
    check_utf8("--target-db", target_db)
    check_utf8("--database", database)
    check_utf8("--skip", *(skip or []))
    if not yes and not sys.stdin.isatty():
        fail("--yes: no terminal to confirm on; pass --yes to restore without asking")
    from backupd.commands import cluster_restore
    from backupd.commands.restore_options import Without

    settings = bootstrap()
    result = execute("restore", settings, lambda ctx: cluster_restore.run(
        ctx, name, latest=latest, target_db=target_db, database=database, replace=replace,
        from_s3=from_s3, without=Without(owner=no_owner, privileges=no_privileges),
        confirm_database=None if yes else _confirm_by_typing,
        confirm_cluster=None if yes else _confirm_cluster,
        skip=tuple(dict.fromkeys(skip or []))))
    outcome = result.outcome
    if isinstance(outcome, ClusterRestoreOutcome):
        if outcome.globals is not None:
            kept = ", ".join(outcome.globals.roles_kept) or "none"
            print(f"roles: {len(outcome.globals.roles_created)} created, kept as they were: "
                  f"{kept}")
        for done in outcome.databases:
            took = f"{done.restore_seconds:.1f}s" if done.restore_seconds is not None else "-"
            state = "FAILED" if not done.ok else "skipped" if done.skipped else "ok"
            print(f"  {done.database}: {state} {took} "
                  f"({done.backup_name})" + (f"; {done.note}" if done.note else ""))
        if outcome.total_seconds is not None:
            print(f"total: {outcome.total_seconds:.1f}s")
    finish(result)


def _confirm_cluster(what: str) -> bool:
    return _ask(f"This restores {what}.", "Type 'restore' to continue") == "restore"


def _confirm_by_typing(target: str) -> bool:
    return _ask(f"This restores into database {target!r}.",
                "Type the database name to continue") == target


def _ask(what: str, question: str) -> str:
    """A restore's confirmation. Asked before anything is changed, so Ctrl-C, Ctrl-D or a
    stopping signal there cancels the job at once, saying that nothing was."""
    with paused_progress(), interrupting() as interruption:
        try:
            typer.echo(what, err=True)
            answer: str = typer.prompt(question, err=True, default="", show_default=False)
        except (typer.Abort, KeyboardInterrupt):
            raise Cancelled(f"restore: {interruption.describe()} at the confirmation "
                            "prompt; nothing was changed") from None
    return answer


@app.command()
def drill(
    name: Annotated[str | None, typer.Argument(
        help="Backup file name in DB_BACKUP_DIR, or in S3 with --from-s3 "
        "(default: the newest verified backup).")] = None,
    from_s3: Annotated[bool, typer.Option(
        "--from-s3", help="Drill the copy in S3 (DB_BACKUP_S3_BUCKET): downloaded into "
        "DB_BACKUP_DIR, verified, restored; removed afterwards.")] = False,
) -> None:
    """Restore a backup into a scratch database (DRILL_DATABASE), compare it with the live
    database, record the restore time in its manifest, then drop the scratch database.

    With DRILL_POSTGRES_HOST: restore the newest run (roles, then every database) onto that
    empty scratch server, compare with the live cluster, report the whole-cluster restore
    time (RTO), and leave the server as it was found. NAME is then a globals artifact.

    With WAL_ARCHIVE=on and no NAME: also a PITR drill (the newest base backup plus its WAL
    recovered into a scratch server, compared with the live cluster); the drill fails if
    either part does."""
    from backupd.commands import drill as drill_cmd

    check_utf8("NAME", name and PurePath(name).name, fix=NAME_NOT_UTF8_FIX)
    settings = bootstrap()
    result = execute("drill", settings, lambda ctx: drill_cmd.run(ctx, name, from_s3=from_s3))
    outcome = result.outcome
    if isinstance(outcome, DrillOutcome) and outcome.comparison_summary:
        if outcome.cluster_restore_seconds is not None:
            print(f"whole-cluster restore time (RTO): {outcome.cluster_restore_seconds:.1f}s")
            for database in outcome.databases:
                without = (f" (without tablespace(s) "
                           f"{', '.join(database.tablespaces_unusable)}: into the default one)"
                           if database.tablespaces_unusable else "")
                print(f"  {database.database}: {database.backup_name}, restored in "
                      f"{database.restore_seconds or 0:.1f}s{without}")
        elif outcome.restore_seconds is not None:
            print(f"restore time: {outcome.restore_seconds:.1f}s")
        print(f"comparison: {outcome.comparison_summary}")
        for line in outcome.differences:
            print(f"  difference: {line}")
        for line in outcome.drift:
            print(f"  drift: {line}")
    finish(result)



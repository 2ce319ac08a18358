"""Commands over the backups themselves: backup, verify, list, upload, prune."""

from __future__ import annotations

import json
from pathlib import PurePath
from typing import Annotated

import typer

from backupd.cli.app import (
    NAME_NOT_UTF8_FIX,
    app,
    bootstrap,
    check_utf8,
    discard,
    execute,
    fail,
    finish,
)
from backupd.errors import BackupdError
from backupd.outcomes import ContinuityOutcome, PruneOutcome, VerifyOutcome


@app.command()
def backup(
    no_prune: Annotated[bool, typer.Option("--no-prune", help="Skip the retention sweep.")] = False,
) -> None:
    """Dump POSTGRES_DB, verify the new backup, copy it to S3 (if DB_BACKUP_S3_BUCKET is set),
    then apply retention (locally and in S3). With POSTGRES_DB a list or `*`: one run backs up
    each database (one result each, a failure never stops the others) and the cluster's
    globals (roles, tablespaces; DB_BACKUP_GLOBALS), and fails naming any database that
    failed. With `*`, template1 too when it holds objects of its own (extensions, schemas,
    functions put there for every new database): each run connects to template1 to see,
    and meanwhile another session's CREATE DATABASE waits (5 s, then fails);
    DB_BACKUP_EXCLUDE=template1 leaves it out."""
    from backupd.commands import backup_run

    settings = bootstrap()
    finish(execute("backup", settings,
                   lambda ctx: backup_run.run(ctx, apply_retention=not no_prune)))


@app.command()
def verify(
    names: Annotated[list[str] | None, typer.Argument(
        metavar="[NAME]...", help="Backup file names (default: the newest DB_BACKUP_KEEP_MIN).")]
    = None,
    verify_all: Annotated[bool, typer.Option("--all", help="Verify every backup.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    remote: Annotated[bool, typer.Option(
        "--remote", help="Verify the copies in S3 (downloaded to DB_BACKUP_DIR, then removed); "
        "also reports incomplete uploads.")] = False,
    wal: Annotated[bool, typer.Option(
        "--wal", help="Check the WAL archive's continuity instead: for every base backup, "
        "valid (verified), consistent (its WAL from start to stop is there) and PITR (no "
        "gap to the archive's end, following timelines); exit 1 naming missing segments "
        "and damaged WAL or history files. "
        "With --remote, the archive in S3.")] = False,
) -> None:
    """Check backups: gzip integrity, SQL completeness, size and SHA-256 (base backups:
    every file against PostgreSQL's backup_manifest). --wal: the WAL archive's continuity."""
    from backupd.commands import verify as verify_cmd

    check_utf8("NAME", *(PurePath(name).name for name in names or []), fix=NAME_NOT_UTF8_FIX)
    settings = bootstrap()
    if wal:
        from backupd.commands import wal_verify

        if names:
            fail("NAME: verify --wal checks every base backup; give no NAME")
        result = execute("verify-wal", settings, lambda ctx: discard(
            wal_verify.run(ctx, remote=remote)))
        _print_continuity(result.outcome, as_json)
        finish(result, quiet=as_json and result.ok)
    result = execute("verify", settings, lambda ctx: discard(
        verify_cmd.run(ctx, names or [], verify_all, remote=remote)))
    reports = result.outcome.reports if isinstance(result.outcome, VerifyOutcome) else []
    if as_json:
        print(json.dumps([report.model_dump(mode="json") for report in reports], indent=2))
    else:
        for report in reports:
            print(f"{'OK    ' if report.ok else 'FAILED'} {report.name}")
            for check in report.checks:
                mark = "ok" if check.ok else "FAIL"
                detail = f": {check.detail}" if check.detail else ""
                print(f"    {mark:<4} {check.check}{detail}")
            if not report.content_checked:
                print("    note content not checked: "
                      + (report.content_note or "see the report's details"))
    finish(result, quiet=bool(reports) and result.ok)


def _print_continuity(outcome: object, as_json: bool) -> None:
    if not isinstance(outcome, ContinuityOutcome):
        return
    if as_json:
        print(json.dumps([verdict.model_dump() for verdict in outcome.reports], indent=2))
        return
    for verdict in outcome.reports:
        levels = {"valid": verdict.valid, "consistent": verdict.consistent, "pitr": verdict.pitr}
        print(f"{'OK    ' if all(levels.values()) else 'FAILED'} {verdict.base_backup}: "
              + ", ".join(f"{level} {'yes' if ok else 'NO'}" for level, ok in levels.items())
              + (f"; recovers up to {verdict.reaches}" if verdict.reaches else "")
              + (f"; {verdict.problem}" if verdict.problem else ""))


@app.command(name="list")
def list_backups(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    remote: Annotated[bool, typer.Option(
        "--remote", help="List the committed backups in S3 instead of DB_BACKUP_DIR.")] = False,
) -> None:
    """List backups, newest first: name, size, age, verified or not."""
    from backupd.commands import listing, selection
    from backupd.job import repositories_for

    settings = bootstrap(runs_job=False)
    try:
        repository = repositories_for(settings).choose(remote, "--remote")
        local = repositories_for(settings).local
        data = [row for database, kind in selection.artifact_sets(settings, local)
                for row in listing.rows(repository.list_backups(database, kind))]
    except BackupdError as exc:  # ConfigError: exit 2; S3 unreachable: exit 1
        fail(str(exc), exc.exit_code)
    print(json.dumps([row.model_dump() for row in data], indent=2) if as_json
          else listing.render_table(data))


@app.command()
def upload() -> None:
    """Upload verified backups that are not in S3 yet (pending uploads) now."""
    from backupd.commands import upload as upload_cmd

    settings = bootstrap()
    finish(execute("upload", settings, upload_cmd.run))


@app.command()
def prune(
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Delete nothing: list what would go ('would delete NAME') and, per "
        "backup kept, every rule that keeps it ('keep NAME (where): rule; rule'); the "
        "summary, log, Slack and metrics say would_delete, never deleted.")] = False,
) -> None:
    """Delete backups older than DB_BACKUP_RETENTION_DAYS, keeping DB_BACKUP_KEEP_MIN good ones
    and those the calendar tiers keep (DB_BACKUP_KEEP_DAILY, _WEEKLY, _MONTHLY); base backups
    beyond BASEBACKUP_KEEP (and BASEBACKUP_MAX_AGE_DAYS), and the WAL before the oldest kept
    one's start."""
    from backupd.commands import prune as prune_cmd

    settings = bootstrap()
    result = execute("prune", settings, lambda ctx: prune_cmd.run(ctx, dry_run=dry_run))
    for name in result.deleted:
        print(f"deleted {name}")
    if isinstance(result.outcome, PruneOutcome):
        for name in result.outcome.would_delete:
            print(f"would delete {name}")
        if result.outcome.dry_run:
            for decision in result.outcome.decisions:
                if decision.kept:
                    print(f"keep {decision.name} ({decision.repository}): "
                          + "; ".join(decision.reasons))
    finish(result)



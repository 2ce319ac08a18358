"""The ``backupd`` command line: parses arguments, then hands each command to its module.

Exit codes: 0 success, 1 the job failed, 2 bad usage or configuration (one line
on stderr naming the setting or argument).
"""

from __future__ import annotations

import gc
import json
import os
import sys
from collections.abc import Callable
from enum import StrEnum
from typing import Annotated, NoReturn

import typer

# typer >= 0.2x vendors click: its usage errors are typer's own classes.
from typer._click.exceptions import NoArgsIsHelpError, UsageError

# Each command imports its own module when it runs: a `backupd list` should not pay for
# boto3, slack_sdk or prometheus_client (start-up time and memory are per invocation).
from backupd import __version__
from backupd.daemon.state import ResultRecorder
from backupd.errors import BackupdError, ConfigError
from backupd.job import JobContext, run_job
from backupd.log import configure_logging, logs_are_json, redact
from backupd.notify import build_chain
from backupd.outcomes import ClusterRestoreOutcome, DrillOutcome, PruneOutcome, VerifyOutcome
from backupd.result import JobResult
from backupd.settings import Settings, load_settings

app = typer.Typer(
    name="backupd",
    help="PostgreSQL backup sidecar: scheduled, verified dumps; retention; offsite copies to S3; "
    "restores; restore drills. `backupd run` is the daemon; every other command is a one-off."
    "\n\nSettings come from environment variables (and ./.env); see docs/configuration.md. "
    "Exit codes: 0 success, 1 the job failed, 2 bad usage or configuration.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"backupd: error: {redact(message)}", err=True)
    raise typer.Exit(code)


class LogFormat(StrEnum):
    AUTO = "auto"
    JSON = "json"
    CONSOLE = "console"


@app.callback()
def _options(
    log_format: Annotated[LogFormat | None, typer.Option(
        "--log-format", case_sensitive=False,
        help="Logs on stderr: json (one JSON record per event, with a \"job finished\" record "
        "holding the whole result), console (readable lines) or auto (the daemon: JSON when "
        "stderr is not a terminal; other commands: readable lines and their one-line "
        "summary). Overrides BACKUPD_LOG_FORMAT.")] = None,
) -> None:
    if log_format is not None:
        os.environ["BACKUPD_LOG_FORMAT"] = log_format.value


def bootstrap(*, daemon: bool = False) -> Settings:
    """Settings and logging for every command; a bad setting ends here with exit 2."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        configure_logging()
        fail(str(exc))
    configure_logging(settings.log_format, daemon=daemon)
    redact.add(*settings.secret_values())
    return settings


def finish(result: JobResult, *, quiet: bool = False) -> NoReturn:
    if result.exit_code == 2:
        fail(result.error or "bad usage")
    if not quiet:
        stream = sys.stdout if result.ok else sys.stderr
        print(redact(result.summary()), file=stream)
    raise typer.Exit(result.exit_code)


def execute(job: str, settings: Settings, body: Callable[[JobContext], None]) -> JobResult:
    # The CLI's own summary (or error) line reports the result; with JSON logs
    # (--log-format json) machines get the structured "job finished" record as well.
    chain = build_chain(settings, log_results=logs_are_json(settings.log_format),
                        recorder=ResultRecorder(settings.backup_dir))
    return run_job(job, settings, body, chain)


@app.command()
def backup(
    no_prune: Annotated[bool, typer.Option("--no-prune", help="Skip the retention sweep.")] = False,
) -> None:
    """Dump POSTGRES_DB, verify the new backup, copy it to S3 (if DB_BACKUP_S3_BUCKET is set),
    then apply retention (locally and in S3). With POSTGRES_DB a list or `*`: one run backs up
    each database (one result each, a failure never stops the others) and the cluster's
    globals (roles, tablespaces; DB_BACKUP_GLOBALS), and fails naming any database that
    failed."""
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
) -> None:
    """Check backups: gzip integrity, SQL completeness, size and SHA-256."""
    from backupd.commands import verify as verify_cmd

    settings = bootstrap()
    result = execute("verify", settings, lambda ctx: _discard(
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


@app.command()
def restore(
    name: Annotated[str | None, typer.Argument(
        help="Backup file name in DB_BACKUP_DIR (in S3 with --from-s3).")] = None,
    latest: Annotated[bool, typer.Option("--latest", help=(
        "Restore the newest verified backups. Onto a new server this is the whole "
        "disaster recovery: the roles (globals) first, existing ones kept; then every "
        "database POSTGRES_DB names (`*`: every database backed up), each from its newest "
        "verified backup (an incomplete newest run is said so); timings per database."))]
    = False,
    database: Annotated[str | None, typer.Option(
        "--database", help="With --latest: just this database, with the roles.")] = None,
    from_s3: Annotated[bool, typer.Option(
        "--from-s3", help="Take the backups from S3 (DB_BACKUP_S3_BUCKET) alone: downloaded "
        "into DB_BACKUP_DIR, verified against their manifests, restored, then removed.")]
    = False,
    target_db: Annotated[str | None, typer.Option(
        "--target-db", help="Restore into this database (created if missing); never a "
        "template, and `postgres` only with --replace. One database, no roles.")] = None,
    replace: Annotated[bool, typer.Option(
        "--replace", help="Target holds data: restore into a new database and swap it in, "
        "keeping the old one renamed.")] = False,
    no_owner: Annotated[bool, typer.Option(
        "--no-owner", help="Objects belong to the restoring role; no role is created. "
        "Custom-format (.dump) backups only; refused for plain SQL.")] = False,
    no_privileges: Annotated[bool, typer.Option(
        "--no-privileges", help="Leave out GRANT/REVOKE; no role is created. Custom-format "
        "(.dump) backups only; refused for plain SQL.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Verify a backup, then restore it into POSTGRES_DB (or --target-db); with --latest,
    the roles and every database POSTGRES_DB names, onto POSTGRES_HOST:POSTGRES_PORT."""
    if name and latest:
        fail("NAME and --latest: give one of them, not both")
    if not name and not latest:
        fail("NAME: give a backup file name or --latest; see `backupd list`")
    if not yes and not sys.stdin.isatty():
        fail("--yes: no terminal to confirm on; pass --yes to restore without asking")
    from backupd.commands import cluster_restore
    from backupd.commands.restore_options import Without

    settings = bootstrap()
    result = execute("restore", settings, lambda ctx: cluster_restore.run(
        ctx, name, latest=latest, target_db=target_db, database=database, replace=replace,
        from_s3=from_s3, without=Without(owner=no_owner, privileges=no_privileges),
        confirm_database=None if yes else _confirm_by_typing,
        confirm_cluster=None if yes else _confirm_cluster))
    outcome = result.outcome
    if isinstance(outcome, ClusterRestoreOutcome):
        if outcome.globals is not None:
            kept = ", ".join(outcome.globals.roles_kept) or "none"
            print(f"roles: {len(outcome.globals.roles_created)} created, kept as they were: "
                  f"{kept}")
        for done in outcome.databases:
            took = f"{done.restore_seconds:.1f}s" if done.restore_seconds is not None else "-"
            print(f"  {done.database}: {'ok' if done.ok else 'FAILED'} {took} "
                  f"({done.backup_name})" + (f"; {done.note}" if done.note else ""))
        if outcome.total_seconds is not None:
            print(f"total: {outcome.total_seconds:.1f}s")
    finish(result)


def _confirm_cluster(what: str) -> bool:
    typer.echo(f"This restores {what}.", err=True)
    answer: str = typer.prompt("Type 'restore' to continue", err=True, default="",
                               show_default=False)
    return answer == "restore"


def _confirm_by_typing(target: str) -> bool:
    typer.echo(f"This restores into database {target!r}.", err=True)
    answer: str = typer.prompt("Type the database name to continue", err=True, default="",
                               show_default=False)
    return answer == target


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
    time (RTO), and leave the server as it was found. NAME is then a globals artifact."""
    from backupd.commands import drill as drill_cmd

    settings = bootstrap()
    result = execute("drill", settings, lambda ctx: drill_cmd.run(ctx, name, from_s3=from_s3))
    outcome = result.outcome
    if isinstance(outcome, DrillOutcome) and outcome.comparison_summary:
        if outcome.cluster_restore_seconds is not None:
            print(f"whole-cluster restore time (RTO): {outcome.cluster_restore_seconds:.1f}s")
            for database in outcome.databases:
                print(f"  {database.database}: {database.backup_name}, restored in "
                      f"{database.restore_seconds or 0:.1f}s")
        elif outcome.restore_seconds is not None:
            print(f"restore time: {outcome.restore_seconds:.1f}s")
        print(f"comparison: {outcome.comparison_summary}")
        for line in outcome.differences:
            print(f"  difference: {line}")
        for line in outcome.drift:
            print(f"  drift: {line}")
    finish(result)


@app.command(name="list")
def list_backups(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    remote: Annotated[bool, typer.Option(
        "--remote", help="List the committed backups in S3 instead of DB_BACKUP_DIR.")] = False,
) -> None:
    """List backups, newest first: name, size, age, verified or not."""
    from backupd.commands import listing, selection
    from backupd.job import repositories_for

    settings = bootstrap()
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
        "--dry-run", help="Delete nothing: list what would go ('would delete NAME'); the "
        "summary, log, Slack and metrics say would_delete, never deleted.")] = False,
) -> None:
    """Delete backups older than DB_BACKUP_RETENTION_DAYS, keeping DB_BACKUP_KEEP_MIN good ones."""
    from backupd.commands import prune as prune_cmd

    settings = bootstrap()
    result = execute("prune", settings, lambda ctx: prune_cmd.run(ctx, dry_run=dry_run))
    for name in result.deleted:
        print(f"deleted {name}")
    if isinstance(result.outcome, PruneOutcome):
        for name in result.outcome.would_delete:
            print(f"would delete {name}")
    finish(result)


@app.command(name="run")
def run_daemon() -> None:
    """Run as a daemon: back up on BACKUP_SCHEDULE (cron, in TZ), plus VERIFY_SCHEDULE,
    RETENTION_SCHEDULE and DRILL_SCHEDULE; SIGTERM cancels a running dump and exits 0."""
    from backupd.commands import run as run_cmd

    settings = bootstrap(daemon=True)
    raise typer.Exit(run_cmd.run(settings))


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show the daemon: next run times, the last result of every job kind (one-off runs too),
    how retention runs, newest verified backup, offsite state, health."""
    from backupd.commands import status as status_cmd

    settings = bootstrap()
    raise typer.Exit(status_cmd.run(settings, as_json=as_json))


@app.command()
def health(
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Exit 0 if the newest verified backup is recent enough (BACKUP_MAX_AGE_HOURS), else 1.

    Also requires a recent successful drill when DRILL_MAX_AGE_DAYS is set, and a fresh
    daemon state file when one exists. Meant for a Docker HEALTHCHECK.
    """
    from backupd.commands import health as health_cmd

    settings = bootstrap()
    raise typer.Exit(health_cmd.run(settings, as_json=as_json))


@app.command()
def version() -> None:
    """Print backupd's version."""
    print(__version__)


def _discard(_: object) -> None:
    return None


def main(argv: list[str] | None = None) -> int:
    """Entry point; click's multi-line usage errors become one line and exit 2."""
    try:
        result = app(args=argv, standalone_mode=False)
    except NoArgsIsHelpError as exc:
        typer.echo(exc.ctx.get_help() if exc.ctx else "see backupd --help", err=True)
        return 2
    except UsageError as exc:
        hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx else ""
        typer.echo(f"backupd: error: {exc.format_message()}{hint}", err=True)
        return 2
    except BackupdError as exc:
        typer.echo(f"backupd: error: {redact(str(exc))}", err=True)
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt, EOFError):
        typer.echo("backupd: aborted; nothing was changed", err=True)
        return 1
    except Exception as exc:
        code = getattr(exc, "exit_code", None)  # typer.Exit and click's Exit
        if isinstance(code, int):
            return code
        raise
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())


def run() -> None:
    """Console-script entry point."""
    code = main()
    # Nothing is left to collect: skip the interpreter's final garbage collection over
    # every imported module's objects (~0.1 s of each command's run time).
    gc.freeze()
    sys.exit(code)

"""The daemon and what reports on it: run, status, health, version."""

from __future__ import annotations

from typing import Annotated

import typer

from backupd import __version__
from backupd.cli.app import app, bootstrap


@app.command(name="run")
def run_daemon() -> None:
    """Run as a daemon: back up on BACKUP_SCHEDULE (cron, in TZ), plus VERIFY_SCHEDULE,
    RETENTION_SCHEDULE and DRILL_SCHEDULE; SIGTERM (or SIGINT, SIGHUP: there is no reload)
    cancels a running dump and exits 0.

    With WAL_ARCHIVE=on it also streams WAL (pg_receivewal) into the archive and takes base
    backups on BASEBACKUP_SCHEDULE (weekly by default; at once when there is none). /healthz,
    /metrics and, with STATUS_PAGE=on, the status page are served on HEALTH_PORT."""
    from backupd.commands import run as run_cmd

    settings = bootstrap(daemon=True)
    raise typer.Exit(run_cmd.run(settings))


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show the daemon: next run times, the last result of every job kind (one-off runs too),
    how retention runs, newest verified backup, offsite state, health; with WAL_ARCHIVE=on,
    the WAL archive's streaming and lag and the newest verified base backup."""
    from backupd.commands import status as status_cmd

    settings = bootstrap(runs_job=False)
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

    settings = bootstrap(runs_job=False)
    raise typer.Exit(health_cmd.run(settings, as_json=as_json))


@app.command()
def version() -> None:
    """Print backupd's version."""
    print(__version__)



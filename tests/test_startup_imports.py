"""What a one-off command imports before its job starts (issue 18: the backup's gap to the
``pg_dump > /dev/null`` floor is mostly start-up). Not timed: a module that comes back into
the start-up path fails here by name, whatever the machine's speed."""

from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

# Imported by nothing a one-off backup needs before pg_dump starts: rich (and pygments,
# attrs) came in only through structlog's optional rich tracebacks; prometheus_client only
# through a metrics registry that nothing scrapes in a one-off process; the network clients
# are imported by the notifiers and S3 repository that use them.
HEAVY = ("rich", "pygments", "attr", "prometheus_client", "boto3", "botocore", "slack_sdk",
         "apscheduler")

PROBE = """
import sys
from backupd.cli import app  # every command registered, as `backupd backup` starts
from backupd.commands import backup_run  # the backup job's own modules
from backupd.notify import build_chain
from backupd.settings import Settings
chain = build_chain(Settings(HEALTH_PORT=8080), metrics=False)
print(" ".join(sorted({m.split(".")[0] for m in sys.modules})))
"""


def test_a_one_off_backup_starts_without_the_heavy_optional_modules() -> None:
    loaded = set(subprocess.run([sys.executable, "-c", PROBE], check=True, capture_output=True,
                                text=True).stdout.split())
    assert "structlog" in loaded and "typer" in loaded  # the probe did import the CLI
    assert sorted(loaded.intersection(HEAVY)) == []


def test_structlog_still_renders_exceptions_and_rich_stays_importable() -> None:
    probe = """
import sys
from backupd.log import configure_logging, get_logger
configure_logging()
try:
    raise ValueError("boom")
except ValueError:
    get_logger().exception("failed")
import rich.console  # the progress display still can
print("rich" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True,
                          text=True)
    assert "ValueError: boom" in done.stderr
    assert done.stdout.strip() == "True"


def test_the_daemons_chain_keeps_its_metrics() -> None:
    from backupd.notify import build_chain
    from backupd.settings import Settings

    settings = Settings(HEALTH_PORT=8080)  # type: ignore[call-arg]
    assert "metrics" in [n.name for n in build_chain(settings).notifiers]
    assert "metrics" not in [n.name for n in build_chain(settings, metrics=False).notifiers]


def test_one_off_commands_build_their_chain_without_metrics(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the CLI itself asks for (the probe above calls build_chain directly)."""
    import importlib

    from backupd.notify import build_chain

    # The module, not the Typer object that backupd.cli exports under the same name.
    cli_app = importlib.import_module("backupd.cli.app")
    from backupd.settings import Settings

    asked: list[bool] = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        asked.append(kwargs.get("metrics", True))
        return build_chain(*args, **kwargs)

    monkeypatch.setattr(cli_app, "build_chain", spy)
    monkeypatch.setattr(cli_app, "progress_wanted", lambda: False)
    settings = Settings(HEALTH_PORT=8080, DB_BACKUP_DIR=str(tmp_path))  # type: ignore[call-arg]
    result = cli_app.execute("verify", settings, lambda ctx: None)
    assert result.ok, result.summary()
    assert asked == [False]


@pytest.mark.parametrize("command", [["version"], ["list"]])
def test_every_command_runs_with_the_garbage_collector_on(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The console script starts with the collector off (backupd.__main__); the CLI's
    callback, which every command passes through (even `version`, which reads no settings),
    turns it back on: the daemon must not run for months without it. It first freezes the
    start-up heap, so that no collection ever scans the imported modules' objects again."""
    from backupd.cli import main

    monkeypatch.setenv("POSTGRES_DB", "startup_probe")
    monkeypatch.setenv("DB_BACKUP_DIR", str(tmp_path))
    monkeypatch.setenv("HEALTH_PORT", "0")
    gc.disable()
    gc.unfreeze()
    try:
        assert main(command) == 0
        assert gc.isenabled()
        assert gc.get_freeze_count() > 10_000, "the start-up heap was left to the collector"
    finally:
        gc.unfreeze()  # the rest of the test session's garbage stays collectable
        gc.enable()


def test_the_console_script_starts_with_the_collector_off() -> None:
    probe = """
import gc, sys
import backupd.cli
seen = []
backupd.cli.run = lambda: seen.append(gc.isenabled())
from backupd.__main__ import main
main()
print(seen)
"""
    assert subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True,
                          text=True).stdout.strip() == "[False]"


def test_commands_that_never_connect_do_not_import_psycopg() -> None:
    """verify and list read files only: psycopg (~0.1 s of start-up) is imported by the
    stall watchdog's server probe only when a job has stalled (backupd.job)."""
    probe = """
import sys
from backupd.cli import app
from backupd.commands import listing, verify
from backupd.job import run_job
print("psycopg" in sys.modules)
"""
    assert subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True,
                          text=True).stdout.strip() == "False"


def test_a_stall_probe_that_cannot_import_psycopg_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """psycopg is imported when a job has stalled, not at start-up: should that import fail
    (a broken libpq, say), the stall's verdict names the failure instead of the probe
    silently not answering."""
    from backupd.job import _server_view
    from backupd.settings import Settings

    monkeypatch.setitem(sys.modules, "backupd.postgres.waits", None)
    settings = Settings(_env_file=None, POSTGRES_DB="probe",  # type: ignore[call-arg]
                        DB_BACKUP_DIR=str(tmp_path))
    view = _server_view(settings)
    assert view.work == ""
    assert view.waits is not None
    assert view.waits.startswith("the server could not be asked what the job waits on (")
    assert "backupd.postgres.waits" in view.waits

"""Ctrl-C at a restore's confirmation prompt aborts at once, with nothing changed, and the
job's 'cancelled' result delivered to every notifier.

Real backupd subprocesses, a real PostgreSQL, a local webhook receiver."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from helpers.backups import take_backup
from helpers.http_receiver import HttpReceiver
from helpers.pg import (
    ServerAddress,
    connect,
    create_database,
    drop_database,
    psql,
    unique_db_name,
)
from helpers.terminal import CTRL_C, plain, run_in_terminal

PROMPT = "Type the database name to continue"


def _results(receiver: HttpReceiver) -> list[dict[str, Any]]:
    return [request.payload for request in receiver.requests]


def _databases_named(server: ServerAddress, prefix: str) -> list[str]:
    with connect(server) as conn:
        return [row[0] for row in conn.execute(
            "SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (prefix,))]


@pytest.fixture
def live_target(pg_server: ServerAddress) -> Iterator[str]:
    """A database holding data of its own, the restore's --replace target."""
    name = unique_db_name("sig_target")
    create_database(pg_server, name)
    psql(pg_server, name, "CREATE TABLE kept AS SELECT 'live data' AS marker")
    try:
        yield name
    finally:
        for left in _databases_named(pg_server, name):
            drop_database(pg_server, left)


def test_ctrl_c_at_the_restore_prompt_aborts_at_once_with_nothing_changed(
    pg_server: ServerAddress, fixture_db: str, live_target: str, http_receiver: HttpReceiver,
    backupd_env: Callable[..., dict[str, str]],
) -> None:
    env = backupd_env(fixture_db, WEBHOOK_URL=http_receiver.url, DB_BACKUP_GLOBALS="off",
                      BACKUPD_LOG_FORMAT="auto")
    backup = take_backup(env)
    http_receiver.requests.clear()
    began = time.monotonic()
    code, transcript = run_in_terminal(
        ["restore", "--replace", "--target-db", live_target, backup.name], env,
        answers={PROMPT: CTRL_C}, timeout=60)
    screen = plain(transcript)
    assert code == 1, screen
    assert time.monotonic() - began < 30, screen
    assert PROMPT in screen
    assert "nothing was changed" in screen, screen
    assert "Traceback" not in screen and "internal error" not in screen, screen
    [result] = _results(http_receiver)
    assert (result["job"], result["status"]) == ("restore", "cancelled"), result
    assert "nothing was changed" in result["error"], result
    assert _databases_named(pg_server, live_target) == [live_target]
    assert psql(pg_server, live_target, "SELECT marker FROM kept").strip() == "live data"

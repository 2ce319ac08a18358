"""A one-off command stopped by a signal (``docker stop``, ``timeout``, a closed terminal,
Ctrl-C) ends like a cancelled daemon job: children stopped, nothing half-done left behind, a
'cancelled' result delivered to every notifier, exit code 1. Ctrl-C at a restore's
confirmation prompt still aborts at once, with nothing changed.

Real backupd subprocesses, a real PostgreSQL, a local webhook receiver."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.backups import path_with, take_backup
from helpers.cli import BackupdProcess, run_patched, run_probe, stop_backupd
from helpers.faults import (
    SlowDump,
    SlowVersionDump,
    StubbornDump,
    dump_partials,
    partial_files,
    wait_until,
)
from helpers.http_receiver import HttpReceiver
from helpers.logs import human_lines
from helpers.pg import (
    ServerAddress,
    connect,
    create_database,
    drop_database,
    psql,
    unique_db_name,
)
from helpers.procs import processes_with_env
from helpers.slow_restore import PAUSE_QUERY, pausing_psql
from helpers.terminal import CTRL_C, plain, run_in_terminal

from backupd.naming import RUN_RESERVATION
from backupd.pipeline.supervisor import STOP_GRACE_SECONDS

SIGNALS = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP]
PROMPT = "Type the database name to continue"


def _results(receiver: HttpReceiver) -> list[dict[str, Any]]:
    return [request.payload for request in receiver.requests]


def _stopped(proc: BackupdProcess, sig: int) -> int:
    began = time.monotonic()
    code = stop_backupd(proc, sig=sig, timeout=30, reap_group=False)
    assert time.monotonic() - began < 20, "the cancel took too long"
    return code


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_a_signalled_one_off_backup_is_cancelled_reported_and_cleaned_up(
    fixture_db: str, backup_dir: Path, tmp_path: Path, http_receiver: HttpReceiver,
    backupd_env: Callable[..., dict[str, str]],
    backupd_daemon: Callable[..., BackupdProcess], sig: int,
) -> None:
    env = backupd_env(fixture_db, WEBHOOK_URL=http_receiver.url, DB_BACKUP_GLOBALS="off")
    # ~100 KiB/s: the dump is still running when the signal comes.
    env["PATH"] = SlowDump(tmp_path / "shim", chunk=4096, delay=0.04).path()
    proc = backupd_daemon(["backup", "--no-prune"], env)
    wait_until(lambda: dump_partials(backup_dir), 30, "the dump to start")
    time.sleep(1)

    code = _stopped(proc, sig)

    said = proc.read_stdout() + proc.read_stderr()
    assert code == 1, said
    assert f"cancelled by {signal.Signals(sig).name}" in said, said
    assert "Traceback" not in said and "internal error" not in said, said
    results = _results(http_receiver)
    assert results, "no result reached the webhook"
    assert {r["status"] for r in results} == {"cancelled"}, results
    assert any(r["job"] == "backup" and r["database"] == fixture_db for r in results), results
    assert partial_files(backup_dir) == []
    assert [p.name for p in backup_dir.iterdir() if p.name.startswith(RUN_RESERVATION)] == []
    wait_until(lambda: not processes_with_env("PGDATABASE", fixture_db), 10,
               "pg_dump to be gone")


def _paused_restores(server: ServerAddress, prefix: str) -> int:
    with connect(server) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE starts_with(datname, %s) "
            "AND query LIKE %s", (prefix, f"{PAUSE_QUERY}%")).fetchone()
    return int(row[0]) if row else 0


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


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT],
                         ids=lambda s: signal.Signals(s).name)
def test_a_signalled_one_off_restore_drops_its_scratch_and_leaves_the_target(
    pg_server: ServerAddress, fixture_db: str, live_target: str, tmp_path: Path,
    http_receiver: HttpReceiver, backupd_env: Callable[..., dict[str, str]],
    backupd_daemon: Callable[..., BackupdProcess], sig: int,
) -> None:
    env = backupd_env(fixture_db, WEBHOOK_URL=http_receiver.url, DB_BACKUP_GLOBALS="off")
    backup = take_backup(env)
    http_receiver.requests.clear()
    pid_file = tmp_path / "psql.pid"
    slow = {**env, "PATH": path_with(pausing_psql(tmp_path / "shim", pid_file,
                                                  pause_seconds=120))}
    proc = backupd_daemon(["restore", "--yes", "--replace", "--target-db", live_target,
                           backup.name], slow)
    wait_until(lambda: _paused_restores(pg_server, live_target) == 1 or proc.poll() is not None,
               60, "the restore to be loading")
    assert proc.poll() is None, proc.read_stderr()

    code = _stopped(proc, sig)

    said = proc.read_stdout() + proc.read_stderr()
    assert code == 1, said
    assert "Traceback" not in said and "internal error" not in said, said
    [result] = _results(http_receiver)
    assert (result["job"], result["status"]) == ("restore", "cancelled"), result
    assert f"cancelled by {signal.Signals(sig).name}" in result["error"], result
    # The scratch database is gone, the target is the one it was, no renamed copy of it.
    wait_until(lambda: _databases_named(pg_server, live_target) == [live_target], 30,
               "the scratch database to be dropped")
    assert psql(pg_server, live_target, "SELECT marker FROM kept").strip() == "live data"
    shim = int(pid_file.read_text())
    wait_until(lambda: not _alive(shim), 10, "psql to be stopped")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


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


def _stubborn_backup(
    fixture_db: str, tmp_path: Path, http_receiver: HttpReceiver,
    backupd_env: Callable[..., dict[str, str]],
    backupd_daemon: Callable[..., BackupdProcess],
) -> BackupdProcess:
    """A one-off backup whose pg_dump is passing its output on, deaf to SIGTERM."""
    env = backupd_env(fixture_db, WEBHOOK_URL=http_receiver.url, DB_BACKUP_GLOBALS="off")
    shim = StubbornDump(tmp_path / "shim")
    env["PATH"] = shim.path()
    proc = backupd_daemon(["backup", "--no-prune"], env)
    wait_until(lambda: shim.writing.exists() or proc.poll() is not None, 60,
               "the shim to pass the dump on")
    assert proc.poll() is None, proc.read_stderr()
    return proc


def test_a_one_off_whose_pg_dump_ignores_sigterm_ends_after_the_stop_grace(
    fixture_db: str, backup_dir: Path, tmp_path: Path, http_receiver: HttpReceiver,
    backupd_env: Callable[..., dict[str, str]],
    backupd_daemon: Callable[..., BackupdProcess],
) -> None:
    proc = _stubborn_backup(fixture_db, tmp_path, http_receiver, backupd_env, backupd_daemon)

    began = time.monotonic()
    code = stop_backupd(proc, sig=signal.SIGTERM, timeout=STOP_GRACE_SECONDS + 20,
                        reap_group=False)
    took = time.monotonic() - began

    said = proc.read_stdout() + proc.read_stderr()
    assert took < STOP_GRACE_SECONDS + 8, f"took {took:.1f} s"
    # Not sooner than the grace: the shim really was deaf, and the SIGKILL timer ended it.
    assert took >= STOP_GRACE_SECONDS - 1, f"took {took:.1f} s: not the SIGKILL timer"
    assert code == 1, said
    assert "cancelled by SIGTERM" in said, said
    assert "Traceback" not in said and "internal error" not in said, said
    assert {r["status"] for r in _results(http_receiver)} == {"cancelled"}
    assert partial_files(backup_dir) == []
    wait_until(lambda: not processes_with_env("PGDATABASE", fixture_db), 10,
               "pg_dump to be gone")


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT],
                         ids=lambda s: signal.Signals(s).name)
def test_a_second_signal_ends_a_cancelling_one_off_at_once(
    fixture_db: str, tmp_path: Path, http_receiver: HttpReceiver,
    backupd_env: Callable[..., dict[str, str]],
    backupd_daemon: Callable[..., BackupdProcess], second: int,
) -> None:
    proc = _stubborn_backup(fixture_db, tmp_path, http_receiver, backupd_env, backupd_daemon)
    proc.send_signal(signal.SIGTERM)
    time.sleep(1)
    assert proc.poll() is None, "the first signal should have left the cancel running"

    began = time.monotonic()
    code = stop_backupd(proc, sig=second, timeout=30, reap_group=False)
    took = time.monotonic() - began

    said = proc.read_stderr()
    # Well inside the stop grace: the exit is the second signal's doing, not the SIGKILL's.
    assert took < STOP_GRACE_SECONDS / 2, f"took {took:.1f} s"
    assert code == -second, said  # killed by it, as a shell expects (130, 143)
    assert f"second signal ({signal.Signals(second).name})" in said, said
    wait_until(lambda: not processes_with_env("PGDATABASE", fixture_db), 10,
               "pg_dump to be killed (the reaper)")


def test_a_repeated_sighup_still_cancels_and_cleans_up(
    fixture_db: str, backup_dir: Path, tmp_path: Path, http_receiver: HttpReceiver,
    backupd_env: Callable[..., dict[str, str]],
    backupd_daemon: Callable[..., BackupdProcess],
) -> None:
    """A closed terminal's hangup often comes twice (the kernel's, then the shell's): unlike
    a second SIGTERM or Ctrl-C, it must not give up the cleanup. (A pg_dump deaf to SIGTERM
    keeps the cancel going long enough for the second one.)"""
    proc = _stubborn_backup(fixture_db, tmp_path, http_receiver, backupd_env, backupd_daemon)
    proc.send_signal(signal.SIGHUP)
    time.sleep(1)
    assert proc.poll() is None, "the cancel ended before the second hangup"

    code = stop_backupd(proc, sig=signal.SIGHUP, timeout=STOP_GRACE_SECONDS + 20,
                        reap_group=False)

    said = proc.read_stdout() + proc.read_stderr()
    assert code == 1, said
    assert "second signal" not in said, said
    assert {r["status"] for r in _results(http_receiver)} == {"cancelled"}
    assert partial_files(backup_dir) == []


def test_a_signal_while_a_backup_prepares_is_a_cancel_not_a_failure(
    small_db: str, tmp_path: Path, http_receiver: HttpReceiver,
    backupd_env: Callable[..., dict[str, str]],
    backupd_daemon: Callable[..., BackupdProcess],
) -> None:
    """Before pg_dump starts, the job holds a connection (lock, properties, tablespaces) that
    the cancel severs; the query that then fails is the cancel's doing, not a failure."""
    env = backupd_env(small_db, WEBHOOK_URL=http_receiver.url, DB_BACKUP_GLOBALS="off")
    shim = SlowVersionDump(tmp_path / "shim", delay=3)
    env["PATH"] = shim.path()
    proc = backupd_daemon(["backup", "--no-prune"], env)
    wait_until(lambda: shim.asked.exists() or proc.poll() is not None, 30,
               "pg_dump --version to be asked")
    assert proc.poll() is None, proc.read_stderr()

    code = _stopped(proc, signal.SIGTERM)

    said = proc.read_stdout() + proc.read_stderr()
    assert code == 1, said
    assert "cancelled by SIGTERM" in said, said
    # What the stage hit is logged with its traceback (a warning), never as a failure.
    assert "internal error" not in said and "unexpected error" not in said, said
    [result] = _results(http_receiver)
    assert (result["status"], result["error"]) == ("cancelled", "cancelled by SIGTERM"), result


def _probe_env(tmp_path: Path) -> dict[str, str]:
    return {"DB_BACKUP_DIR": str(tmp_path / "backups"), "POSTGRES_DB": "db"}


def test_ctrl_c_before_the_job_says_nothing_was_changed(tmp_path: Path) -> None:
    proc = run_probe("settings = bootstrap()\nos.kill(os.getpid(), signal.SIGINT)\n"
                     "time.sleep(30)\nfinish(execute('prune', settings, lambda ctx: None))",
                     _probe_env(tmp_path), capture_output=True)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines() == ["backupd: aborted; nothing was changed"], proc.stderr
    assert not (tmp_path / "backups").exists()  # no job ran


def test_ctrl_c_while_the_daemon_starts_says_interrupted_not_nothing_was_changed(
        tmp_path: Path) -> None:
    """The daemon runs no job through execute: a Ctrl-C in its start-up, before its own
    handlers, may come after it changed things (its directory made here), or days in."""
    prelude = ("import backupd.commands.run as daemon\n"
               "def interrupted(_settings: object) -> None:\n"
               "    os.kill(os.getpid(), signal.SIGINT)\n"
               "    time.sleep(30)\n"
               "daemon._check_server = interrupted  # the start-up step after store.prepare")
    proc = run_patched(prelude, ["run"], _probe_env(tmp_path), capture_output=True)
    assert proc.returncode == 130, proc.stderr
    assert human_lines(proc.stderr) == ["backupd: interrupted"], proc.stderr
    assert (tmp_path / "backups").is_dir()  # start-up had begun: not "nothing was changed"


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_a_signal_after_the_job_changes_nothing(tmp_path: Path, sig: int) -> None:
    """The job's result stands: its lines and summary are all printed, its exit code kept."""
    proc = run_probe("result = execute('prune', bootstrap(), lambda ctx: None)\n"
                     f"os.kill(os.getpid(), {int(sig)})\n"
                     "print('printed after the signal')\n"
                     "finish(result)", _probe_env(tmp_path), capture_output=True)
    name = signal.Signals(sig).name
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "printed after the signal", proc.stdout
    assert lines[1].startswith("prune success"), proc.stdout
    assert proc.stderr.splitlines()[-1] == (
        f"backupd: {name} came after the job ended; ignored, its result stands"), proc.stderr

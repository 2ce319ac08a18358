"""Daemon entries in the state file after the wall clock was stepped back (it had been
ahead): a heartbeat stamped on the fast clock is no sign of life now (docs/reliability.md,
T12). The real state file in a temporary directory; health's own evaluation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from backupd.daemon.health import evaluate, read_daemon_state
from backupd.daemon.state import DaemonRecord, DaemonState, StateFile, read_state, update_state
from backupd.settings import Settings
from backupd.storage.base import CLOCK_TOLERANCE
from backupd.storage.local import LocalStore

AHEAD = timedelta(hours=2)


def _entry(name: str, heartbeat: datetime, *, stopped: bool = False) -> DaemonRecord:
    return DaemonRecord(instance=name, host="h", pid=1, started_at=heartbeat - AHEAD,
                        updated_at=heartbeat, stopped_at=heartbeat if stopped else None)


def _with(tmp_path: Path, *entries: DaemonRecord) -> None:
    def change(state: StateFile) -> None:
        state.daemons.update({entry.instance: entry for entry in entries})
    update_state(tmp_path, change)


def test_a_daemon_last_heard_on_the_fast_clock_is_not_alive(tmp_path: Path) -> None:
    """It crashed before the clock was stepped back 2 h: its last heartbeat reads 2 h from
    now, which made it alive for 2 h more (now - updated_at was negative)."""
    _with(tmp_path, _entry("crashed", datetime.now(UTC) + AHEAD))

    assert read_state(tmp_path).alive_daemons() == []


def test_health_does_not_call_a_heartbeat_ahead_of_the_clock_fresh(tmp_path: Path) -> None:
    _with(tmp_path, _entry("crashed", datetime.now(UTC) + AHEAD))
    seen = read_daemon_state(tmp_path)
    assert seen is not None
    settings = Settings(_env_file=None, POSTGRES_DB="clock_probe",  # type: ignore[call-arg]
                        DB_BACKUP_DIR=str(tmp_path))

    report = evaluate(settings, LocalStore(tmp_path), None, daemon_updated_at=seen.updated_at)

    assert any("has not updated its state since the clock" in r for r in report.reasons), \
        report.reasons


def test_the_flat_heartbeat_is_the_live_daemons_not_the_fast_clocks(tmp_path: Path) -> None:
    """An old daemon stamped on the fast clock, a live one on the clock as it now reads:
    `updated_at` (what `backupd health` reads) is the live one's, even before that daemon
    rewrites the file (a one-off command's write)."""
    now = datetime.now(UTC)
    _with(tmp_path, _entry("old", now + AHEAD, stopped=True), _entry("live", now))

    assert read_state(tmp_path).updated_at == now


def test_a_daemon_writing_its_entry_clamps_entries_ahead_of_the_clock(tmp_path: Path) -> None:
    """The live daemon's heartbeat brings the fast clock's stamps back to now: the old
    entry then ages, goes stale and is forgotten, like any other."""
    _with(tmp_path, _entry("crashed", datetime.now(UTC) + AHEAD),
          _entry("stopped", datetime.now(UTC) + AHEAD, stopped=True))

    DaemonState(tmp_path).persist()

    limit = datetime.now(UTC) + CLOCK_TOLERANCE
    daemons = read_state(tmp_path).daemons
    assert daemons["crashed"].updated_at <= limit
    assert daemons["stopped"].updated_at <= limit
    assert daemons["stopped"].stopped_at is not None and daemons["stopped"].stopped_at <= limit
    assert read_state(tmp_path).updated_at is not None
    assert read_state(tmp_path).updated_at <= limit  # type: ignore[operator]

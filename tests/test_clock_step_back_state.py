"""Daemon entries in the state file after the wall clock was stepped back (it had been
ahead): a heartbeat stamped on the fast clock is no sign of life now (docs/reliability.md,
T12). The real state file in a temporary directory; health's own evaluation."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from helpers.boot import run_in_time_namespace, this_boot
from helpers.faketime import clock_at

from backupd.daemon.health import evaluate, read_daemon_state
from backupd.daemon.state import (
    FORGET_AFTER,
    DaemonRecord,
    DaemonState,
    StateFile,
    read_state,
    update_state,
)
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

    assert any("clock reads ahead of this host" in r for r in report.reasons), \
        report.reasons
    assert not report.ok


def test_the_flat_heartbeat_is_the_live_daemons_not_the_fast_clocks(tmp_path: Path) -> None:
    """An old daemon stamped on the fast clock, a live one on the clock as it now reads:
    `updated_at` (what `backupd health` reads) is the live one's, even before that daemon
    rewrites the file (a one-off command's write)."""
    now = datetime.now(UTC)
    _with(tmp_path, _entry("old", now + AHEAD, stopped=True), _entry("live", now))

    assert read_state(tmp_path).updated_at == now


def test_a_daemon_writing_its_entry_keeps_other_entries_stamps(tmp_path: Path) -> None:
    """Another daemon's stamps ahead of the clock are left as written: they are the
    evidence a restart measures the step from (restart_step.step_since_slot). They are no sign of
    life, and the flat heartbeat is the writer's."""
    ahead = datetime.now(UTC) + AHEAD
    _with(tmp_path, _entry("crashed", ahead), _entry("stopped", ahead, stopped=True))

    DaemonState(tmp_path).persist()

    state = read_state(tmp_path)
    assert state.daemons["crashed"].updated_at == ahead
    assert state.daemons["stopped"].stopped_at == ahead
    assert [d.instance for d in state.alive_daemons()] == [
        i for i in state.daemons if i not in ("crashed", "stopped")]
    assert state.updated_at is not None
    assert state.updated_at <= datetime.now(UTC) + CLOCK_TOLERANCE


def test_an_entry_ahead_is_forgotten_a_week_after_a_writer_first_saw_it(
        tmp_path: Path) -> None:
    """Its own stamps would keep it until the clock passes them by FORGET_AFTER (a clock
    a year ahead: a year): the writers' clock counts from when one first saw it ahead."""
    ahead = datetime.now(UTC) + timedelta(days=365)
    _with(tmp_path, _entry("new", ahead),
          _entry("old", ahead).model_copy(update={"seen_ahead_at": datetime.now(UTC)
                                                  - FORGET_AFTER - timedelta(hours=1)}))

    DaemonState(tmp_path).persist()

    daemons = read_state(tmp_path).daemons
    assert "old" not in daemons
    assert daemons["new"].updated_at == ahead
    assert daemons["new"].seen_ahead_at is not None


def _write_as_another_host(directory: Path, clock_ahead: timedelta) -> None:
    """A replica on a host whose clock reads ``clock_ahead`` of this one writes its entry:
    a real process under libfaketime (the test skips without it)."""
    env = {**os.environ, **clock_at(datetime.now(UTC) + clock_ahead)}
    subprocess.run([sys.executable, "-c",
                    "import sys, pathlib; from backupd.daemon.state import DaemonState; "
                    "DaemonState(pathlib.Path(sys.argv[1])).persist()", str(directory)],
                   env=env, check=True, timeout=60)


def test_replicas_whose_clocks_differ_give_health_a_stable_verdict(tmp_path: Path) -> None:
    """Two daemons share the state file; the other host's clock reads 6 min ahead (more
    than CLOCK_TOLERANCE). Written alternately, the flat heartbeat was each writer's view,
    so health here said "not updated since the clock was stepped back" after every other
    write. Judged per entry on this host's clock, the verdict is the same after each."""
    here = DaemonState(tmp_path)
    settings = Settings(_env_file=None, POSTGRES_DB="clock_probe",  # type: ignore[call-arg]
                        DB_BACKUP_DIR=str(tmp_path))
    verdicts = []
    for writer in ("here", "there", "here", "there"):
        if writer == "here":
            here.persist()
        else:
            _write_as_another_host(tmp_path, timedelta(minutes=6))
        now = datetime.now(UTC)
        seen = read_daemon_state(tmp_path, now)
        assert seen is not None
        report = evaluate(settings, LocalStore(tmp_path), None, now,
                          daemon_updated_at=seen.updated_at)
        verdicts.append([r for r in report.reasons if "daemon" in r])

    assert verdicts == [[]] * 4, verdicts


def test_an_entry_holds_the_since_boot_clock_only_when_it_is_the_kernels(
        tmp_path: Path) -> None:
    """Each write of a daemon's entry notes this boot and its since-boot clock beside the wall
    clock: a restart on the same boot measures a step back from them exactly. Under
    libfaketime that clock is faked with the wall clock (its values mean nothing on the
    real one, and a restart would take a step of years): such an entry holds none."""
    before = this_boot()
    DaemonState(tmp_path).persist()
    after = this_boot()
    _write_as_another_host(tmp_path, timedelta(0))

    entries = {entry.pid == os.getpid(): entry for entry in read_state(tmp_path).daemons.values()}
    here, faked = entries[True], entries[False]
    assert here.boot_id == before.boot_id
    assert here.since_boot is not None and before.since_boot <= here.since_boot <= after.since_boot
    assert (faked.boot_id, faked.since_boot) == (None, None)


def test_an_entry_written_in_a_time_namespace_notes_its_offset(tmp_path: Path) -> None:
    """In a time namespace (unshare --time, CRIU, some container runtimes) the since-boot
    clock, and /proc/uptime with it, read the host's plus the namespace's offset, under the
    host's boot id. The entry notes that offset, so that a restart in another namespace (or
    none) compares the two on the host's clock rather than taking the offset for time."""
    before = this_boot()
    run_in_time_namespace(1_000_000, "import sys, pathlib; from backupd.daemon.state import "
                          "DaemonState; DaemonState(pathlib.Path(sys.argv[1])).persist()",
                          str(tmp_path))
    after = this_boot()

    (entry,) = read_state(tmp_path).daemons.values()
    assert entry.boot_id == before.boot_id
    assert entry.boottime_offset == 1_000_000
    assert entry.since_boot is not None
    assert before.since_boot <= entry.since_boot - 1_000_000 <= after.since_boot

"""The real daemon restarted after its wall clock was stepped back (it had been ahead), each
start under libfaketime at a chosen clock reading (docs/reliability.md, T12). The state file
is judged by the clock of the process writing it, so this needs real processes: in-process
tests (tests/test_clock_step_back.py) write it on the real clock."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from helpers.cli import BackupdProcess, stop_backupd
from helpers.daemon import finished, started
from helpers.faketime import movable_clock, move_clock
from helpers.faults import wait_until

from backupd.daemon.state import DaemonRecord, JobRecord, StateFile, read_state, update_state
from backupd.result import JobResult

# Tomorrow at 10:00: both starts' clocks read after the real one.
TEN = (datetime.now(UTC) + timedelta(days=1)).replace(hour=10, minute=0, second=0,
                                                      microsecond=0)


def test_a_slot_reported_after_a_step_replaces_the_stale_one_for_the_next_restart(
    small_db: str, backup_dir: Path, tmp_path: Path,
    backupd_env: Callable[..., dict[str, str]],
    backupd_daemon: Callable[..., BackupdProcess],
) -> None:
    """An hourly job ran its 10:00 slot on a clock ahead; its daemon's last word read 10:10.
    The clock was corrected and the daemon restarted at 09:58: a step of 12 min at least,
    so 09:00 is reported MISSED (grace 60 s). The file's 10:00, only 2 min ahead of the
    clock, must give way to it: kept, a second restart at 10:05 took 10:00 for dealt with,
    and the 10:00 slot by the corrected clock was neither run nor reported."""
    def ran_ahead(state: StateFile) -> None:
        ran = JobResult(job="backup", database=small_db, started_at=TEN, scheduled_for=TEN)
        state.jobs["backup"] = JobRecord(last_slot=TEN, last_result=ran)
        last_word = TEN + timedelta(minutes=10)
        state.daemons["old"] = DaemonRecord(instance="old", host="h", pid=1, started_at=TEN,
                                            updated_at=last_word, stopped_at=last_word)
    backup_dir.mkdir(parents=True, exist_ok=True)
    update_state(backup_dir, ran_ahead)
    clock = tmp_path / "clock"
    env = backupd_env(small_db, **movable_clock(clock), TZ="UTC", BACKUP_ON_START="false",
                      BACKUP_SCHEDULE="0 * * * *", DRILL_SCHEDULE="off",
                      SCHEDULE_MISFIRE_GRACE_SECONDS="60")

    def restart_at(moment: datetime) -> tuple[list[tuple[str, datetime]], StateFile]:
        """The results the daemon started at ``moment`` reported, and the file it left."""
        move_clock(clock, round((moment - datetime.now(UTC)).total_seconds()))
        daemon = backupd_daemon(["run"], env)
        wait_until(lambda: started(daemon), 30, "the daemon to start")
        assert stop_backupd(daemon, timeout=15) == 0
        return ([(r["status"], datetime.fromisoformat(r["scheduled_for"]))
                 for r in finished(daemon)], read_state(backup_dir))

    first, after_first = restart_at(TEN - timedelta(minutes=2))
    second, _ = restart_at(TEN + timedelta(minutes=5))

    assert first == [("missed", TEN - timedelta(hours=1))]
    assert second == [("missed", TEN)]
    assert after_first.jobs["backup"].last_slot == TEN - timedelta(hours=1)

"""A daemon restarted after its wall clock was stepped back (it had been ahead) measures the
step exactly from the state file's readings of this boot's since-boot clock
(docs/reliability.md, T12): also with other daemons' entries beside the one it measures
from, and in a time namespace; otherwise it takes the lower bound the clock readings give.
In process, on the real scheduler and state file (helpers.clock_daemon); the time
namespaces are real ones (unshare --time)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from helpers.boot import boot_in_time_namespace, earlier, this_boot
from helpers.clock_daemon import DAILY, H, at

from backupd.daemon import clock
from backupd.daemon.clock import BootReading
from backupd.daemon.scheduler import Daemon
from backupd.daemon.state import DaemonRecord, JobRecord, StateFile, update_state
from backupd.result import JobResult


def _daily_ran_ahead_then_went_down(tmp_path: Path, boot: BootReading) -> None:
    """Daily at 02:00, run on a clock ahead; its daemon stopped at 02:30 by that clock, its
    boot then read ``boot``."""
    def change(state: StateFile) -> None:
        ran = JobResult(job="backup", database="clock_probe", started_at=at(2),
                        scheduled_for=at(2))
        state.jobs["backup"] = JobRecord(last_slot=at(2), last_result=ran)
        state.daemons["old"] = DaemonRecord.model_validate(
            {"instance": "old", "host": "h", "pid": 1, "started_at": at(1),
             "updated_at": at(2.5), "stopped_at": at(2.5), **dataclasses.asdict(boot)})
    update_state(tmp_path, change)


def test_a_restart_on_the_same_boot_measures_the_step_exactly(
        clock_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    """The daemon was down 4 h, and meanwhile the clock was corrected: it reads 00:30. The
    file's clock readings alone say 2 h back at least, under 3 h, so 02:00 waited for the
    next day (30 h after the last backup). On the same boot the since-boot clock shows the
    4 h down: a step of 6 h, a correction, and 02:00 runs today by the corrected clock."""
    _daily_ran_ahead_then_went_down(tmp_path, earlier(this_boot(), 4 * 3600))

    started = clock_daemon(DAILY, at(0.5))

    assert started.next_runs()["backup"] == at(2)


def _entry_on(tmp_path: Path, name: str, wall: datetime, boot: BootReading, *,
              stopped: bool = False) -> None:
    """Another daemon's entry: its last write read ``wall``, and its boot then ``boot``."""
    def change(state: StateFile) -> None:
        state.daemons[name] = DaemonRecord.model_validate(
            {"instance": name, "host": "h", "pid": 2, "started_at": wall - H(1),
             "updated_at": wall, "stopped_at": wall if stopped else None,
             **dataclasses.asdict(boot)})
    update_state(tmp_path, change)


def test_a_replica_heartbeat_after_the_correction_does_not_hide_the_step(
        clock_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    """As the same-boot case, but another daemon on this host sharing the state file (a
    replica, another configuration's) wrote a heartbeat 10 s before the restart, on the
    corrected clock. Its entry is this boot's newest: the step since it is nothing, and
    measured from it alone, 02:00 waited for the next day. The step since the dead daemon's
    last write is still 6 h."""
    boot = this_boot()
    _daily_ran_ahead_then_went_down(tmp_path, earlier(boot, 4 * 3600))
    _entry_on(tmp_path, "replica", at(0.5) - timedelta(seconds=10), earlier(boot, 10))

    started = clock_daemon(DAILY, at(0.5))

    assert started.next_runs()["backup"] == at(2)


def test_an_entry_older_than_the_slot_does_not_lend_its_step(
        clock_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    """Daily at 02:00, run on a clock 1.5 h ahead; its daemon stopped at 02:30 by it and was
    down 30 min while the clock was corrected: a step of 1.5 h, so 02:00 is not run again.
    A stopped entry of the same boot from the day before, written before an earlier 6 h
    correction, is kept a week: the step since its write is 6 h, but that step came before
    the slot, and taken, 02:00 ran again 1.5 h after it had."""
    boot = this_boot()

    def ran_ahead(state: StateFile) -> None:
        ran = JobResult(job="backup", database="clock_probe", started_at=at(2),
                        scheduled_for=at(2))
        state.jobs["backup"] = JobRecord(last_slot=at(2), last_result=ran)
    update_state(tmp_path, ran_ahead)
    _entry_on(tmp_path, "old", at(2.5), earlier(boot, 1800), stopped=True)
    _entry_on(tmp_path, "older", at(10, day=-1), earlier(boot, 21.5 * 3600), stopped=True)

    started = clock_daemon(DAILY, at(1.5))

    assert started.next_runs()["backup"] == at(2, day=1)


def test_a_restart_in_a_time_namespace_does_not_take_its_offset_for_time_down(
        clock_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    """Daily at 02:00, run on a clock 2.5 h ahead; its daemon stopped at 02:30 and was down
    30 min while the clock was corrected to 00:30: a step of 2.5 h, not again. The restart
    runs in a time namespace (unshare --time, CRIU, some container runtimes) whose
    since-boot clock is 1,000,000 s ahead of the host's: the boot id is the host's, and
    /proc/uptime is shifted with that clock, so they agree. Compared as they read, the
    restart took 11.6 days for the time down, so a step that large, a correction, and ran
    02:00 again."""
    host = this_boot()
    _daily_ran_ahead_then_went_down(tmp_path, earlier(host, 1800))
    inside = boot_in_time_namespace(1_000_000)
    assert inside.boot_id == host.boot_id  # what made the readings look comparable

    started = clock_daemon(DAILY, at(0.5), boot=inside)

    assert started.next_runs()["backup"] == at(2, day=1)


def test_a_restart_in_a_time_namespace_still_measures_the_step_exactly(
        clock_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    """The same-boot case (a 6 h correction while down 4 h: 02:00 runs today), restarted in
    a time namespace 1,000,000 s ahead: each reading notes its namespace's offset, and the
    two compare on the host's since-boot clock. (Taken for not comparable, the lower bound
    of 2 h would make 02:00 wait for the next day.)"""
    _daily_ran_ahead_then_went_down(tmp_path, earlier(this_boot(), 4 * 3600))

    started = clock_daemon(DAILY, at(0.5), boot=boot_in_time_namespace(1_000_000))

    assert started.next_runs()["backup"] == at(2)


def test_an_entry_without_its_namespace_offset_gives_only_the_lower_bound(
        clock_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    """The same-boot case, but the entry holds no time namespace offset (an older version
    wrote it, or its namespace's offsets could not be read): its since-boot clock may be any
    namespace's, so the step is the lower bound (2 h: not again), as from another boot."""
    unknown = dataclasses.replace(earlier(this_boot(), 4 * 3600), boottime_offset=None)
    _daily_ran_ahead_then_went_down(tmp_path, unknown)

    started = clock_daemon(DAILY, at(0.5))

    assert started.next_runs()["backup"] == at(2, day=1)


def test_a_restart_on_another_boot_still_takes_the_step_as_a_lower_bound(
        clock_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    """As above, but the reading is of another boot: it says nothing of the real time passed
    since, and the step is the lower bound the clock readings give (2 h: not again)."""
    since_boot = time.clock_gettime(time.CLOCK_BOOTTIME)
    _daily_ran_ahead_then_went_down(tmp_path,
                                    BootReading("another boot", since_boot - 4 * 3600, 0.0))

    started = clock_daemon(DAILY, at(0.5))

    assert started.next_runs()["backup"] == at(2, day=1)


def _kernel_without(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *,
                    time_namespaces: bool) -> None:
    """This process as on a kernel before 5.6, which has no /proc/self/timens_offsets: the
    paths backupd reads stand in for that kernel's /proc (a missing file), and
    ``time_namespaces`` keeps the real /proc/self/ns/time (one namespace is there, its
    offsets unreadable) or points at a missing one too (no time namespaces at all)."""
    monkeypatch.setattr(clock, "TIMENS_OFFSETS_FILE", tmp_path / "no-timens_offsets")
    if not time_namespaces:
        monkeypatch.setattr(clock, "TIME_NAMESPACE_FILE", tmp_path / "no-ns-time")
    elif not clock.TIME_NAMESPACE_FILE.is_symlink():
        pytest.skip("this kernel has no /proc/self/ns/time to keep")


def test_a_kernel_without_time_namespaces_measures_the_step_exactly(
        clock_daemon: Callable[..., Daemon], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Before Linux 5.6 there are no time namespaces: the offset is 0, not unknown, so a
    restart on the same boot measures the 6 h step there too (the lower bound, 2 h, made
    02:00 wait for the next day)."""
    _kernel_without(monkeypatch, tmp_path, time_namespaces=False)
    boot = this_boot()
    assert boot.boottime_offset == 0.0
    _daily_ran_ahead_then_went_down(tmp_path, earlier(boot, 4 * 3600))

    started = clock_daemon(DAILY, at(0.5))

    assert started.next_runs()["backup"] == at(2)


def test_a_time_namespace_whose_offsets_cannot_be_read_is_not_taken_for_none(
        clock_daemon: Callable[..., Daemon], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """/proc/self/ns/time is there but its offsets cannot be read: the process may be in a
    namespace of any offset, so it stays unknown and the step is the lower bound."""
    _kernel_without(monkeypatch, tmp_path, time_namespaces=True)
    boot = this_boot()
    assert boot.boottime_offset is None
    _daily_ran_ahead_then_went_down(tmp_path, earlier(boot, 4 * 3600))

    started = clock_daemon(DAILY, at(0.5))

    assert started.next_runs()["backup"] == at(2, day=1)

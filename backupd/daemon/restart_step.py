"""How far the wall clock went back since a job's last slot was dealt with, as a daemon
starting sees it from the state file (docs/reliability.md, T12): the scheduler's start
decides by it whether a slot dealt with before the step is run again (scheduler.not_again).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from backupd.daemon.clock import BootReading, step_back_since
from backupd.daemon.state import StateFile


def step_since_slot(persisted: StateFile, job: str, now: datetime,
                    boot: BootReading | None) -> timedelta:
    """How far the clock went back since the job's last slot was dealt with, at a start.
    Measured exactly since each daemon entry written on this boot after the slot (its wall
    clock and since-boot clock against now's), and the largest taken: each is the step since
    that entry's write, and the newest may be a live replica's heartbeat on the corrected
    clock (no step since it; taken alone, a daily job corrected by 6 h waited for the next
    day). Otherwise (another boot, an older version's file) no reading of real time
    survives: a lower bound, the newest clock reading the state file holds against now: the
    job's last run's start, its last slot (which the clock had passed), and every daemon's
    last heartbeat or clean exit (within HEARTBEAT_SECONDS of its end; without them a
    restart at 09:58 after a 10:00 slot run 2 h early saw a step of 2 min and waited for
    11:00). The larger of the two: a step before an entry's write (seen then by that daemon)
    still counts."""
    record = persisted.jobs.get(job)
    readings = [moment for moment in (record.last_slot if record else None,
                                      record.last_result.started_at
                                      if record and record.last_result else None)
                if moment is not None]
    for daemon in persisted.daemons.values():
        readings += [daemon.updated_at] + ([daemon.stopped_at] if daemon.stopped_at else [])
    step = max(readings) - now if readings else timedelta(0)
    if boot is None:
        return step
    # On one boot every entry's wall clock is this host's, so one stamped before the slot was
    # written before the slot was dealt with (at a clock reading the slot at least), and the
    # step since it may have come before the slot: an earlier correction, seen by a daemon
    # that stopped then (a stopped entry is kept a week). Counted, that step ran the slot
    # again. Entries after it give lower bounds of the step since it; the largest is taken.
    since = record.last_slot if record else None
    for daemon in persisted.daemons.values():
        reading = daemon.boot()
        if reading is None or (since is not None and daemon.updated_at < since):
            continue
        exact = step_back_since(daemon.updated_at, reading, now, boot)
        if exact is not None:
            step = max(step, exact)
    return step

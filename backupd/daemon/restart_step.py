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
    Measured exactly from the newest daemon entry written on this boot (its wall clock and
    since-boot clock against now's). Otherwise (another boot, an older version's file) no
    reading of real time survives: a lower bound, the newest clock reading the state file
    holds against now: the job's last run's start, its last slot (which the clock had
    passed), and every daemon's last heartbeat or clean exit (within HEARTBEAT_SECONDS of
    its end; without them a restart at 09:58 after a 10:00 slot run 2 h early saw a step
    of 2 min and waited for 11:00). The larger of the two: the exact one is since that
    entry's write only, and a step before it (seen then by that daemon) still counts."""
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
    same_boot = [(reading, daemon.updated_at) for daemon in persisted.daemons.values()
                 if (reading := daemon.boot()) is not None and reading.boot_id == boot.boot_id]
    if same_boot:
        reading, wall = max(same_boot, key=lambda pair: pair[0].since_boot)
        exact = step_back_since(wall, reading, now, boot)
        if exact is not None:
            step = max(step, exact)
    return step

"""The daemon's scheduler: the jobs it is given, APScheduler 3 to fire them, every run reported.

Every run, whether scheduled, caught up after a restart or started at boot, goes
through :func:`backupd.job.run_job`, so it ends in one JobResult delivered to the
notifier chain. Runs that never start (missed beyond the grace period, skipped
because the previous run is still going) get a result too: nothing is silent.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    JobExecutionEvent,
    JobSubmissionEvent,
)
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from backupd import malloc_tuning
from backupd.cancel import CancelToken
from backupd.daemon.clock import BootReading, ClockStep, read_boot
from backupd.daemon.cron import CronSchedule, parse_cron, parse_zone
from backupd.daemon.restart_step import step_since_slot
from backupd.daemon.state import DaemonState
from backupd.job import JobContext, run_job, skipped_result
from backupd.log import get_logger, shown_utc
from backupd.naming import BASE_DATABASE, BASE_KIND
from backupd.notify.base import NotifierChain
from backupd.result import JobResult, Status
from backupd.settings import ENV_NAMES, Settings
from backupd.storage.base import CLOCK_TOLERANCE, BackupEntry, newest_verified
from backupd.storage.local import LocalStore

# A job body gets the schedule slot the run stands for (None when there is none).
SlotBody = Callable[[JobContext, datetime | None], None]
# cron(8): after the clock is stepped back by less than this, a fixed-time job does not run
# again a slot it already ran; a larger step is a correction, and the new time is used.
REPEAT_WINDOW = timedelta(hours=3)
_SECOND = timedelta(seconds=1)


@dataclass(frozen=True)
class JobSpec:
    name: str
    field: str  # the Settings field holding the cron expression
    body: SlotBody

    @property
    def setting(self) -> str:
        return ENV_NAMES[self.field]


@dataclass(frozen=True)
class ScheduledJob:
    spec: JobSpec
    schedule: CronSchedule


def load_schedules(settings: Settings, specs: list[JobSpec]) -> list[ScheduledJob]:
    """Parse every enabled job's schedule; a bad expression or zone is a ConfigError."""
    zone = parse_zone(settings.timezone, "TZ")
    jobs = []
    for spec in specs:
        expression = getattr(settings, spec.field)
        if expression:
            schedule = parse_cron(expression, spec.setting, zone,
                                  allow_seconds=settings.schedule_seconds_field)
            jobs.append(ScheduledJob(spec, schedule))
    return jobs


class Daemon:
    """Owns the APScheduler instance, the running jobs' cancel tokens and the shutdown."""

    def __init__(self, settings: Settings, jobs: list[ScheduledJob], chain: NotifierChain,
                 state: DaemonState) -> None:
        self.settings = settings
        self.jobs = {job.spec.name: job for job in jobs}
        self.chain = chain
        self.state = state
        self.log = get_logger()
        self.scheduler = BackgroundScheduler(
            timezone=UTC,  # internal arithmetic in UTC; each trigger carries TZ itself
            executors={"default": ThreadPoolExecutor(max_workers=max(1, len(jobs)))},
            job_defaults={
                "coalesce": True,  # runs missed while busy or down become one
                "max_instances": 1,
                "misfire_grace_time": settings.misfire_grace_seconds,
            },
        )
        self.scheduler.add_listener(self._on_event,
                                    EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES | EVENT_JOB_ERROR)
        self._cond = threading.Condition()
        self._active: dict[str, CancelToken] = {}
        self._reporters: list[threading.Thread] = []
        self._stopping = False
        # Jobs whose next run follows a slot already run before the clock was stepped back.
        self._resume_after: dict[str, datetime] = {}
        # job -> the monotonic clock when it last fired (follow_clock's lower bound).
        self._fired: dict[str, float] = {}
        state.bind_scheduler(self.alive, self.next_runs)

    # --- state for status / health ---------------------------------------------------
    def alive(self) -> bool:
        thread = getattr(self.scheduler, "_thread", None)
        return bool(self.scheduler.running and thread is not None and thread.is_alive())

    def next_runs(self) -> dict[str, datetime | None]:
        runs: dict[str, datetime | None] = {}
        for name in self.jobs:
            job = self.scheduler.get_job(name)
            runs[name] = job.next_run_time if job is not None else None
        return runs

    # --- starting ------------------------------------------------------------------------
    def start(self, now: datetime | None = None, boot: BootReading | None = None) -> None:
        """``boot``: this boot's reading taken with ``now`` (read here when not given)."""
        now = now or datetime.now(UTC)
        run_now = self._startup_runs(now, boot or read_boot())
        for name, job in self.jobs.items():
            options: dict[str, Any] = {}
            if name in run_now:
                options["next_run_time"] = now
            elif name in self._resume_after:
                options["next_run_time"] = job.schedule.next_at_or_after(
                    self._resume_after[name] + _SECOND)
            self.scheduler.add_job(self._fire, trigger=job.schedule.trigger(), args=[name],
                                   id=name, name=name, **options)
        self.scheduler.start()
        for name, when in self.next_runs().items():
            self.log.info("job scheduled", job=name, schedule=self.jobs[name].schedule.expression,
                          timezone=self.settings.timezone,
                          next_run=when.isoformat() if when else None,
                          reason=run_now.get(name))

    def _startup_runs(self, now: datetime, boot: BootReading | None) -> dict[str, str]:
        """Jobs to run at once: slots missed while down (within grace), BACKUP_ON_START."""
        grace = timedelta(seconds=self.settings.misfire_grace_seconds)
        run_now: dict[str, str] = {}
        persisted = self.state.persisted()
        for name, job in self.jobs.items():
            due = job.schedule.previous_at_or_before(now)
            if due is None:
                continue
            record = persisted.jobs.get(name)
            handled = record.last_slot if record else None
            # A slot ahead of the clock was dealt with before it was stepped back.
            ahead = handled if handled is not None and handled > now else None
            if ahead is not None and not_again(job.schedule,
                                               step_since_slot(persisted, name, now, boot)):
                self._resume_after[name] = ahead
                continue
            if handled is None or (handled >= due and ahead is None):
                # First start ever, or nothing missed: from now on this slot counts as seen.
                # Not after a step not_again lets through: the slot dealt with before it says
                # nothing about the slots by the clock as it now reads (`due` came due while
                # down), so `due` is caught up or reported MISSED like any other.
                self.state.mark_slot_handled(name, due)
                continue
            if ahead is not None:
                # The slot reported or caught up next replaces `ahead` only when `ahead` is
                # more than CLOCK_TOLERANCE in front of the clock (state._advances): within
                # it, `ahead` stayed, and a second restart after it took it for dealt with.
                # The slot before `due` in its place claims nothing at or after `due`.
                before = job.schedule.previous_at_or_before(due - _SECOND)
                self.state.supersede_slot(name, ahead, before or due - _SECOND)
            if now - due <= grace:
                run_now[name] = f"catching up the run due at {shown_utc(due)}, missed while down"
            else:
                self._report(name, due, Status.MISSED,
                             f"the run due at {shown_utc(due)} was missed while backupd was not "
                             f"running, more than SCHEDULE_MISFIRE_GRACE_SECONDS "
                             f"({self.settings.misfire_grace_seconds}s) ago; skipped")
        if ("basebackup" in self.jobs and "basebackup" not in run_now
                and self.settings.wal_archive and newest_verified(
                    LocalStore(self.settings.backup_dir).list_backups(BASE_DATABASE,
                                                                      BASE_KIND)) is None):
            run_now["basebackup"] = "WAL_ARCHIVE=on and no verified base backup yet"
        backup = self.jobs.get("backup")
        if backup is not None and "backup" not in run_now and self.settings.backup_on_start:
            reason = self._backup_on_start_reason(backup.schedule, now)
            if reason is not None:
                run_now["backup"] = reason
        return run_now

    def _backup_on_start_reason(self, schedule: CronSchedule, now: datetime) -> str | None:
        store = LocalStore(self.settings.backup_dir)
        selection = self.settings.database_selection
        newest: BackupEntry | None
        if selection.several:
            # Several databases: the run is due when any of them lacks a recent backup.
            watched = store.watched_dumps(selection).backups
            newest_each = [newest_verified(entries) for entries in watched.values()]
            if not watched or any(entry is None for entry in newest_each):
                return "BACKUP_ON_START: a database has no verified backup yet"
            newest = min((e for e in newest_each if e is not None),
                         key=lambda e: e.parsed.taken_at)
        else:
            newest = newest_verified(store.list_backups(self.settings.postgres_db))
        if newest is None:
            return "BACKUP_ON_START: no verified backup yet"
        interval = schedule.interval_around(now)
        age = now - newest.parsed.taken_at
        if interval is not None and age > interval:
            return (f"BACKUP_ON_START: newest verified backup {newest.name} is older than "
                    f"one schedule interval ({interval})")
        return None

    def follow_clock(self, step: ClockStep) -> None:
        """After the clock was stepped back (it had been ahead: NTP, a host's RTC), the runs
        go by the clock as it now reads. APScheduler keeps the next run it computed before
        the step: an hourly job would wait for it, the step's length past its next slot.
        Re-timed, it runs at the next slot; a fixed-time job does not run again a slot it
        already ran (see :func:`not_again`). Called with every heartbeat, with the step
        measured since the previous one (backupd.daemon.clock)."""
        for name, job in self.jobs.items():
            planned = self.scheduler.get_job(name)
            if planned is None or planned.next_run_time is None:
                continue
            if not_again(job.schedule, step.back):
                continue  # no step back, or one too small to run a slot again
            # The first slot since the previous heartbeat, by the clock as it now reads: one
            # that came due between the step and now (APScheduler, still waiting for its
            # planned run, fired nothing) is due, run within the misfire grace or reported
            # MISSED, not passed over for the one after.
            due = job.schedule.next_at_or_after(self._since(name, step))
            if due is None or planned.next_run_time <= due:
                continue  # no step back across a slot: what APScheduler holds is right
            self.log.warning("the clock was stepped back: the next run goes by it as it now "
                             "reads", job=name, planned=planned.next_run_time.isoformat(),
                             next_run=due.isoformat(),
                             step_seconds=round(step.back.total_seconds()))
            with contextlib.suppress(Exception):  # shutting down
                self.scheduler.modify_job(name, next_run_time=due)

    def _since(self, name: str, step: ClockStep) -> datetime:
        """From when follow_clock looks for a slot come due: the previous heartbeat, by the
        clock as it now reads, or the job's last run, if later. A heartbeat held up long
        (the state file's lock on NFS) puts the previous one far back, over slots
        APScheduler fired meanwhile (before the step, by their labels then): taken for due,
        they would run again or be reported MISSED falsely. Bounded by the last run, not
        by now less a heartbeat: that would pass over, unreported, a slot come due between
        the step and a late heartbeat. (A monotonic clock that went back, libfaketime's,
        says nothing of when the run was: no bound then.)"""
        fired = self._fired.get(name)
        if fired is None or step.mono < fired:
            return step.since
        last_run = step.now - timedelta(seconds=step.mono - fired)
        return max(step.since, last_run + _SECOND)

    def run_soon(self, name: str, reason: str) -> None:
        """Run job ``name`` now, out of its schedule (the WAL archive asks for a base backup
        after its slot was lost). A job already running is not started twice."""
        if name not in self.jobs:
            self.log.warning("job not scheduled; cannot run it now", job=name, reason=reason)
            return
        self.log.info("job requested", job=name, reason=reason)
        with contextlib.suppress(Exception):  # not started yet, or shutting down
            self.scheduler.modify_job(name, next_run_time=datetime.now(UTC))

    # --- running ------------------------------------------------------------------------
    def _fire(self, name: str) -> None:
        job = self.jobs[name]
        token = CancelToken()
        with self._cond:
            if self._stopping:
                return
            self._active[name] = token
            self._fired[name] = time.monotonic()
        try:
            # The slot this run stands for: the schedule's last firing at or before now
            # (for a catch-up run, the missed one).
            slot = job.schedule.previous_at_or_before(datetime.now(UTC))
            self.log.info("job starting", job=name, slot=slot.isoformat() if slot else None)
            self.state.mark_running(name)
            # The chain's recorder (DaemonState) writes the result and the slot it handled.
            run_job(name, self.settings, lambda ctx: job.spec.body(ctx, slot), self.chain,
                    token, scheduled_for=slot)
        finally:
            with self._cond:
                self._active.pop(name, None)
                self._cond.notify_all()
            # The job's buffers, kept in the heap while it ran (backupd.malloc_tuning), go
            # back to the kernel: the daemon idles between jobs.
            malloc_tuning.release_free_memory()

    def _on_event(self, event: JobExecutionEvent | JobSubmissionEvent) -> None:
        name = str(event.job_id)
        if event.code == EVENT_JOB_MISSED:
            assert isinstance(event, JobExecutionEvent)
            due = event.scheduled_run_time
            late = (datetime.now(UTC) - due).total_seconds()
            self._report_async(name, due, Status.MISSED,
                               f"the run due at {shown_utc(due)} started {late:.0f}s late, "
                               f"more than SCHEDULE_MISFIRE_GRACE_SECONDS "
                               f"({self.settings.misfire_grace_seconds}s); skipped")
        elif event.code == EVENT_JOB_MAX_INSTANCES:
            assert isinstance(event, JobSubmissionEvent)
            due = max(event.scheduled_run_times)
            self._report_async(name, due, Status.SKIPPED,
                               f"the run due at {shown_utc(due)} was skipped: the previous {name} "
                               "run was still in progress")
        else:  # EVENT_JOB_ERROR: _fire itself failed (run_job never raises)
            self.log.error("job wrapper failed", job=name,
                           error=repr(getattr(event, "exception", None)))

    def _report_async(self, name: str, due: datetime, status: Status, reason: str) -> None:
        # Listeners run on the scheduler's threads: never make them wait for notifiers.
        worker = threading.Thread(target=self._report, args=(name, due, status, reason),
                                  name=f"report-{name}", daemon=True)
        with self._cond:
            self._reporters.append(worker)
        worker.start()

    def _report(self, name: str, due: datetime, status: Status, reason: str) -> JobResult:
        result = skipped_result(name, self.settings, status, reason)
        result.scheduled_for = due
        self.log.warning("job run not started", job=name, status=status.value, reason=reason)
        self.chain.deliver(result)  # its recorder (DaemonState) records the slot as handled
        return result

    # --- stopping -------------------------------------------------------------------------
    def shutdown(self, timeout: float) -> bool:
        """Stop scheduling, cancel running jobs, wait for their results; True if all done."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._stopping = True
            tokens = dict(self._active)
        with contextlib.suppress(Exception):  # already stopped is fine
            self.scheduler.shutdown(wait=False)
        for name, token in tokens.items():
            self.log.info("cancelling running job", job=name)
            token.cancel()
        with self._cond:
            finished = self._cond.wait_for(lambda: not self._active,
                                           max(0.0, deadline - time.monotonic()))
            reporters = list(self._reporters)
        for worker in reporters:
            worker.join(max(0.0, deadline - time.monotonic()))
        return finished and not any(worker.is_alive() for worker in reporters)

    def running_jobs(self) -> list[str]:
        with self._cond:
            return sorted(self._active)


def not_again(schedule: CronSchedule, back: timedelta) -> bool:
    """Whether, after the clock was stepped back by ``back``, the slots already run that now
    lie ahead of it are not to be run again when the clock reaches them once more: cron(8)'s
    rule, a fixed-time job (no '*' in minute or hour) after a step of less than
    REPEAT_WINDOW (a larger one is a correction: the new time is used). Any other job runs
    its slots by the clock as it reads (an hourly one goes on hourly), unless the step is
    only as large as clocks may disagree (an NTP step of seconds repeats nothing)."""
    return back < (REPEAT_WINDOW if schedule.fixed_time else CLOCK_TOLERANCE)

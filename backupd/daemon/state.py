"""What the daemon knows about itself, in memory and in DB_BACKUP_DIR/.backupd-state.json.

The file lets other processes (``backupd status``, ``backupd health``, a restarted
daemon) see the last result of every job, when each job's schedule last fired, and
which daemons are alive. Several daemons may share one backup directory (replicas),
so every write is read-merge-write under an flock, each daemon owns only its own
entry in ``daemons``, and per-job records keep the newest result of whichever daemon.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, WrapValidator

from backupd.daemon.clock import BootReading, read_boot
from backupd.daemon.history import RunRecord, add_run
from backupd.log import get_logger
from backupd.result import JobResult, Status, UtcDateTime
from backupd.storage.atomic import write_bytes_atomically
from backupd.storage.base import CLOCK_TOLERANCE

STATE_FILE = ".backupd-state.json"
LOCK_FILE = ".backupd-state.lock"
FORMAT_VERSION = 1
# A running daemon rewrites its entry this often; one silent for STALE_AFTER is gone.
HEARTBEAT_SECONDS = 30.0
STALE_AFTER = timedelta(seconds=3 * HEARTBEAT_SECONDS)
# Entries of daemons that stopped (or vanished) longer ago than this are dropped.
FORGET_AFTER = timedelta(days=7)


def _unreadable_as_none(value: Any, handler: Callable[[Any], Any]) -> Any:
    # One record from an older or damaged version must not cost the rest of the file.
    try:
        return handler(value)
    except ValidationError:
        return None


StoredResult = Annotated[JobResult | None, WrapValidator(_unreadable_as_none)]


def _unreadable_as_empty(value: Any, handler: Callable[[Any], Any]) -> Any:
    return _unreadable_as_none(value, handler) or []


# The charts' history: a damaged one starts again rather than costing the file.
StoredHistory = Annotated[list[RunRecord], WrapValidator(_unreadable_as_empty)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class JobRecord(_Model):
    """One job's history, across every daemon (and one-off command) sharing the directory."""

    last_result: StoredResult = None  # the newest run
    last_outcome: StoredResult = None  # the newest that was not "skipped"
    last_slot: UtcDateTime | None = None  # the newest schedule slot a daemon dealt with


class DaemonRecord(_Model):
    instance: str
    host: str
    pid: int
    started_at: UtcDateTime
    updated_at: UtcDateTime
    stopped_at: UtcDateTime | None = None
    next_runs: dict[str, UtcDateTime | None] = Field(default_factory=dict)
    running: dict[str, UtcDateTime] = Field(default_factory=dict)  # job -> started at
    # Another writer's clock when it first found this entry's stamps ahead of it: the
    # stamps themselves stay as written (a restart measures a step back from them), so
    # forgetting the entry counts from here instead.
    seen_ahead_at: UtcDateTime | None = None
    # This boot and its since-boot clock when `updated_at` was read (None from an older
    # version, or when that clock is not the kernel's), with its time namespace's offset:
    # a restart on the same boot measures a step back since this write exactly, not only
    # as the lower bound the stamps give (clock.BootReading).
    boot_id: str | None = None
    since_boot: float | None = None
    boottime_offset: float | None = None

    def boot(self) -> BootReading | None:
        if self.boot_id is None or self.since_boot is None:
            return None
        return BootReading(self.boot_id, self.since_boot, self.boottime_offset)

    def alive(self, now: datetime) -> bool:
        # A heartbeat ahead of the clock was written before it was stepped back (it had been
        # ahead): a live daemon rewrites its entry on the new clock within a heartbeat, so
        # such a stamp says nothing of life now. (Within CLOCK_TOLERANCE: clocks differ.)
        return (self.stopped_at is None and now - self.updated_at <= STALE_AFTER
                and not _ahead(self.updated_at, now))


class StateFile(_Model):
    """The file's whole content; read and written only through this model."""

    version: int = FORMAT_VERSION
    # Flat summaries for simple readers: the newest heartbeat of any daemon, and the newest
    # result per job. Refreshed from the rest on every write. This version's health reads
    # `updated_at` only from a file without daemon entries (it judges entries on its own
    # clock), but the previous version's `backupd health` judged by it, and people read it.
    updated_at: UtcDateTime | None = None
    last_results: dict[str, JobResult] = Field(default_factory=dict)
    daemons: dict[str, DaemonRecord] = Field(default_factory=dict)
    jobs: dict[str, JobRecord] = Field(default_factory=dict)
    # The last backup and drill runs, for the status page's charts (daemon/history.py).
    history: StoredHistory = Field(default_factory=list)

    def alive_daemons(self, now: datetime | None = None) -> list[DaemonRecord]:
        now = now or datetime.now(UTC)
        return [d for d in self.daemons.values() if d.alive(now)]

    def to_json(self) -> bytes:
        # The newest heartbeat on the clock as it reads: one ahead of it (an entry written
        # before the clock was stepped back) would make health see a dead daemon fresh. Only
        # when every entry is ahead is it kept: health then says no heartbeat came since.
        # This is the writer's view; health judges the entries on its own clock at read time
        # (replicas' clocks may differ by more than CLOCK_TOLERANCE).
        self.updated_at = newest_heartbeat(self.daemons.values(), datetime.now(UTC))
        self.last_results = {job: r.last_result for job, r in self.jobs.items()
                             if r.last_result is not None}
        self.version = FORMAT_VERSION
        return self.model_dump_json(indent=2).encode() + b"\n"


def newest_heartbeat(daemons: Iterable[DaemonRecord], now: datetime) -> datetime | None:
    """The newest heartbeat of any entry on the clock as ``now`` reads; one ahead of it
    (stamped before the clock was stepped back, or on a host whose clock is ahead) only
    when every entry is ahead, so that a dead daemon's fast stamp never reads fresh."""
    updated = [d.updated_at for d in daemons]
    current = [moment for moment in updated if not _ahead(moment, now)]
    return max(current or updated) if updated else None


def read_state(directory: Path) -> StateFile:
    """The state file's content; an absent or damaged file reads as empty (never raises)."""
    try:
        return StateFile.model_validate_json((directory / STATE_FILE).read_bytes())
    except FileNotFoundError:
        return StateFile()
    except (OSError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        get_logger().warning("state file unreadable; starting from empty state",
                             path=str(directory / STATE_FILE), error=str(exc).splitlines()[0])
        return StateFile()


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def update_state(directory: Path, change: Callable[[StateFile], None]) -> StateFile:
    """Read, change and atomically rewrite the state file, excluding other writers."""
    with _locked(directory):
        state = read_state(directory)
        change(state)
        write_bytes_atomically(directory / STATE_FILE, state.to_json())
        return state


def remember(state: StateFile, result: JobResult) -> JobRecord:
    """The one way a result enters the state file: the job's record and the history."""
    record = state.jobs.setdefault(result.job, JobRecord())
    merge_result(record, result)
    add_run(state.history, result)
    return record


def merge_result(record: JobRecord, result: JobResult) -> None:
    """Keep the newest result (and the newest non-skipped one) of any daemon or command."""
    stored = result.model_copy(deep=True)
    if _newer(stored, record.last_result):
        record.last_result = stored
    if result.status != Status.SKIPPED and _newer(stored, record.last_outcome):
        record.last_outcome = stored


# One-off commands whose result `backupd status` shows. Not restore: it is a person's act
# on a database, not the health of the backups.
RECORDED_JOBS = frozenset({"backup", "verify", "prune", "drill", "upload"})
# Only a backup starts a state file; the others add to one that exists, so a restore or a
# drill from S3 on a fresh disaster-recovery machine leaves nothing but its log behind.
STARTS_STATE_FILE = frozenset({"backup"})


class ResultRecorder:
    """A notifier: a one-off command's result into the state file, as the daemon's are."""

    name = "state"
    remote: ClassVar[bool] = False

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def notify(self, result: JobResult) -> None:
        # Bad input (exit 2) did not run the job: it must not become its "last result".
        if result.job not in RECORDED_JOBS or result.exit_code == 2:
            return
        if not self.directory.is_dir():
            return  # refused before the directory existed: create nothing for it
        if result.job not in STARTS_STATE_FILE and not (self.directory / STATE_FILE).is_file():
            return

        def change(state: StateFile) -> None:
            remember(state, result)

        try:
            update_state(self.directory, change)
        except OSError as exc:
            get_logger().warning("cannot write the state file", path=str(self.directory),
                                 error=exc.strerror or str(exc))


class DaemonState:
    """The running daemon's state, shared by the scheduler, the jobs and the HTTP server.

    Also the notifier that records each result (first in the chain, after the log file:
    whoever hears "job finished" finds the result in the state file). Thread-safe.
    ``last_results`` holds this daemon's own last result per job; the scheduler hooks
    are bound by the daemon once the scheduler exists.
    """

    name = "state"
    remote: ClassVar[bool] = False

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started_at = datetime.now(UTC)
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.instance = f"{self.host}:{self.pid}:{int(self.started_at.timestamp())}"
        # Seeded from the file: after a restart, status and metrics still know the
        # last result of every job (whichever daemon produced it).
        self.last_results: dict[str, JobResult] = {
            job: record.last_result for job, record in read_state(directory).jobs.items()
            if record.last_result is not None
        }
        self._running: dict[str, datetime] = {}
        self._lock = threading.Lock()
        self._alive: Callable[[], bool] = lambda: False
        self._next_runs: Callable[[], dict[str, datetime | None]] = dict
        self._log = get_logger()

    # --- the scheduler's view ---------------------------------------------------------
    def bind_scheduler(self, alive: Callable[[], bool],
                       next_runs: Callable[[], dict[str, datetime | None]]) -> None:
        self._alive, self._next_runs = alive, next_runs

    def scheduler_alive(self) -> bool:
        return self._alive()

    def next_runs(self) -> dict[str, datetime | None]:
        """job -> the next time it will run (UTC), or None when it is not scheduled."""
        return self._next_runs()

    def running_jobs(self) -> dict[str, datetime]:
        """job -> when its current run started, for jobs running now."""
        with self._lock:
            return dict(self._running)

    # --- recording ------------------------------------------------------------------------
    def mark_running(self, job: str) -> None:
        # Not "job_started": that name would make this a StartListener of the chain.
        with self._lock:
            self._running[job] = datetime.now(UTC)
        self.persist()

    def record(self, result: JobResult, slot: datetime | None = None) -> None:
        """Remember a finished (or missed/skipped) run and persist it.

        ``slot``: the schedule slot this result deals with; a cancelled run does not
        count as dealt with, so a restart within the grace period runs it again.
        """
        with self._lock:
            self.last_results[result.job] = result
            self._running.pop(result.job, None)
        handled = slot if result.status != Status.CANCELLED else None

        def change(state: StateFile) -> None:
            record = remember(state, result)
            if handled is not None and _advances(record.last_slot, handled):
                record.last_slot = handled
            self._write_own_entry(state)

        self._update(change)

    def notify(self, result: JobResult) -> None:
        self.record(result, result.scheduled_for)

    def mark_slot_handled(self, job: str, slot: datetime) -> None:
        def change(state: StateFile) -> None:
            record = state.jobs.setdefault(job, JobRecord())
            if _advances(record.last_slot, slot):
                record.last_slot = slot

        self._update(change)

    def supersede_slot(self, job: str, stale: datetime, by: datetime) -> None:
        """Put ``by`` in place of the job's last slot ``stale``, one dealt with before the
        clock was stepped back, if the file still holds it (a replica may have moved on)."""
        def change(state: StateFile) -> None:
            record = state.jobs.get(job)
            if record is not None and record.last_slot == stale:
                record.last_slot = by

        self._update(change)

    def persisted(self) -> StateFile:
        return read_state(self.directory)

    def persist(self, *, stopped: bool = False) -> None:
        """Rewrite this daemon's entry (heartbeat); ``stopped`` marks a clean exit."""
        def change(state: StateFile) -> None:
            self._write_own_entry(state, stopped=stopped)

        self._update(change)

    def _write_own_entry(self, state: StateFile, stopped: bool = False) -> None:
        now, boot = datetime.now(UTC), read_boot()
        try:
            next_runs = self.next_runs()
        except Exception:  # a scheduler already shut down has no next runs
            next_runs = {}
        state.daemons[self.instance] = DaemonRecord(
            instance=self.instance, host=self.host, pid=self.pid, started_at=self.started_at,
            updated_at=now, stopped_at=now if stopped else None, next_runs=next_runs,
            running=self.running_jobs(), **(dataclasses.asdict(boot) if boot else {}),
        )
        for key, daemon in list(state.daemons.items()):
            last = daemon.stopped_at or daemon.updated_at
            if key != self.instance and _ahead(last, now):
                # Written before the clock was stepped back, or on a host whose clock is
                # ahead: left as written, since a restart measures the step from it and
                # alive() and newest_heartbeat() already pass over it. Only when it is
                # forgotten is counted on this clock, from when a writer first saw it.
                if daemon.seen_ahead_at is None or _ahead(daemon.seen_ahead_at, now):
                    daemon.seen_ahead_at = now
                last = daemon.seen_ahead_at
            if now - last > FORGET_AFTER:
                del state.daemons[key]

    def _update(self, change: Callable[[StateFile], None]) -> None:
        try:
            update_state(self.directory, change)
        except OSError as exc:
            # The state file serves status and health; failing to write it must not
            # stop backups. The log line makes the problem visible.
            self._log.warning("cannot write the state file", path=str(self.directory),
                              error=exc.strerror or str(exc))


def _ahead(moment: datetime, now: datetime) -> bool:
    """Whether a stored clock reading lies ahead of ``now`` by more than clocks may differ:
    it was taken before the clock was stepped back."""
    return moment > now + CLOCK_TOLERANCE


def _advances(last_slot: datetime | None, slot: datetime) -> bool:
    """Whether ``slot``, just dealt with, is the job's last one now: a later one than the
    file's, or the file's lies ahead of the clock. That one was dealt with before the clock
    was stepped back (it had been ahead): kept, it would hide the slots missed while down
    from a restart until the clock caught up with it. (Only ever moving forward keeps a
    replica that reports a slot late from moving it back.)"""
    return (last_slot is None or slot > last_slot
            or _ahead(last_slot, datetime.now(UTC)))


def _newer(result: JobResult, stored: JobResult | None) -> bool:
    """Whether ``result``, being recorded now, replaces ``stored`` as the job's newest: it
    ended later, or ``stored`` is stamped ahead of the clock. That one ended before the
    clock was stepped back (it had been ahead), as in :func:`_advances`: kept, an old
    SUCCESS would hide a newer FAILED from status and health for the step's length.
    (Within CLOCK_TOLERANCE it is a replica's clock a little ahead, not a step.)"""
    if stored is None:
        return True
    stored_at = stored.finished_at or stored.started_at
    return ((result.finished_at or result.started_at) >= stored_at
            or _ahead(stored_at, datetime.now(UTC)))


def iso_utc(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat() if moment is not None else None

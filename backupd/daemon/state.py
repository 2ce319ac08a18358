"""What the daemon knows about itself, in memory and in DB_BACKUP_DIR/.backupd-state.json.

The file lets other processes (``backupd status``, ``backupd health``, a restarted
daemon) see the last result of every job, when each job's schedule last fired, and
which daemons are alive. Several daemons may share one backup directory (replicas),
so every write is read-merge-write under an flock, each daemon owns only its own
entry in ``daemons``, and per-job records keep the newest result of whichever daemon.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from backupd.log import get_logger
from backupd.result import JobResult, Status
from backupd.storage.atomic import write_bytes_atomically

STATE_FILE = ".backupd-state.json"
LOCK_FILE = ".backupd-state.lock"
FORMAT_VERSION = 1
# A running daemon rewrites its entry this often; one silent for STALE_AFTER is gone.
HEARTBEAT_SECONDS = 30.0
STALE_AFTER = timedelta(seconds=3 * HEARTBEAT_SECONDS)
# Entries of daemons that stopped (or vanished) longer ago than this are dropped.
FORGET_AFTER = timedelta(days=7)


@dataclass
class JobRecord:
    """One job's history, across every daemon sharing the directory."""

    last_result: dict[str, Any] | None = None  # JobResult.to_dict() of the newest run
    last_outcome: dict[str, Any] | None = None  # the newest that was not "skipped"
    last_slot: datetime | None = None  # the newest schedule slot a daemon dealt with


@dataclass
class DaemonRecord:
    instance: str
    host: str
    pid: int
    started_at: datetime
    updated_at: datetime
    stopped_at: datetime | None = None
    next_runs: dict[str, datetime | None] = field(default_factory=dict)
    running: dict[str, datetime] = field(default_factory=dict)  # job -> started at

    def alive(self, now: datetime) -> bool:
        return self.stopped_at is None and now - self.updated_at <= STALE_AFTER


@dataclass
class StateFile:
    daemons: dict[str, DaemonRecord] = field(default_factory=dict)
    jobs: dict[str, JobRecord] = field(default_factory=dict)

    def alive_daemons(self, now: datetime | None = None) -> list[DaemonRecord]:
        now = now or datetime.now(UTC)
        return [d for d in self.daemons.values() if d.alive(now)]

    def to_json(self) -> bytes:
        updated = [d.updated_at for d in self.daemons.values()]
        data = {
            "version": FORMAT_VERSION,
            # Flat summaries for simple readers (backupd.health): the newest heartbeat
            # of any daemon, and the newest result per job.
            "updated_at": iso_utc(max(updated)) if updated else None,
            "last_results": {job: r.last_result for job, r in self.jobs.items()
                             if r.last_result is not None},
            "daemons": {key: _daemon_to_dict(d) for key, d in self.daemons.items()},
            "jobs": {
                job: {"last_result": r.last_result, "last_outcome": r.last_outcome,
                      "last_slot": iso_utc(r.last_slot)}
                for job, r in self.jobs.items()
            },
        }
        return json.dumps(data, indent=2, sort_keys=True).encode() + b"\n"


def read_state(directory: Path) -> StateFile:
    """The state file's content; an absent or damaged file reads as empty (never raises)."""
    try:
        raw = json.loads((directory / STATE_FILE).read_bytes())
        daemons = {key: _daemon_from_dict(value) for key, value in raw["daemons"].items()}
        jobs = {
            job: JobRecord(value.get("last_result"), value.get("last_outcome"),
                           _parse(value.get("last_slot")))
            for job, value in raw["jobs"].items()
        }
        return StateFile(daemons, jobs)
    except FileNotFoundError:
        return StateFile()
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        get_logger().warning("state file unreadable; starting from empty state",
                             path=str(directory / STATE_FILE), error=str(exc))
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


def merge_result(record: JobRecord, result: JobResult) -> None:
    """Keep the newest result (and the newest non-skipped one) of any daemon."""
    data = result.to_dict()
    if _newer(data, record.last_result):
        record.last_result = data
    if result.status != Status.SKIPPED and _newer(data, record.last_outcome):
        record.last_outcome = data


class DaemonState:
    """The running daemon's state, shared by the scheduler, the jobs and the HTTP server.

    Thread-safe. ``last_results`` holds this daemon's own last result per job; the
    scheduler hooks are bound by the daemon once the scheduler exists.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started_at = datetime.now(UTC)
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.instance = f"{self.host}:{self.pid}:{int(self.started_at.timestamp())}"
        # Seeded from the file: after a restart, status and metrics still know the
        # last result of every job (whichever daemon produced it).
        self.last_results: dict[str, JobResult] = {
            job: result for job, record in read_state(directory).jobs.items()
            if record.last_result is not None
            and (result := result_from_dict(record.last_result)) is not None
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
    def job_started(self, job: str) -> None:
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
            record = state.jobs.setdefault(result.job, JobRecord())
            merge_result(record, result)
            if handled is not None and (record.last_slot is None or handled > record.last_slot):
                record.last_slot = handled
            self._write_own_entry(state)

        self._update(change)

    def mark_slot_handled(self, job: str, slot: datetime) -> None:
        def change(state: StateFile) -> None:
            record = state.jobs.setdefault(job, JobRecord())
            if record.last_slot is None or slot > record.last_slot:
                record.last_slot = slot

        self._update(change)

    def persisted_last_slot(self, job: str) -> datetime | None:
        record = read_state(self.directory).jobs.get(job)
        return record.last_slot if record else None

    def persist(self, *, stopped: bool = False) -> None:
        """Rewrite this daemon's entry (heartbeat); ``stopped`` marks a clean exit."""
        def change(state: StateFile) -> None:
            self._write_own_entry(state, stopped=stopped)

        self._update(change)

    def _write_own_entry(self, state: StateFile, stopped: bool = False) -> None:
        now = datetime.now(UTC)
        try:
            next_runs = self.next_runs()
        except Exception:  # a scheduler already shut down has no next runs
            next_runs = {}
        state.daemons[self.instance] = DaemonRecord(
            instance=self.instance, host=self.host, pid=self.pid, started_at=self.started_at,
            updated_at=now, stopped_at=now if stopped else None, next_runs=next_runs,
            running=self.running_jobs(),
        )
        for key, daemon in list(state.daemons.items()):
            if now - (daemon.stopped_at or daemon.updated_at) > FORGET_AFTER:
                del state.daemons[key]

    def _update(self, change: Callable[[StateFile], None]) -> None:
        try:
            update_state(self.directory, change)
        except OSError as exc:
            # The state file serves status and health; failing to write it must not
            # stop backups. The log line makes the problem visible.
            self._log.warning("cannot write the state file", path=str(self.directory),
                              error=exc.strerror or str(exc))


def result_from_dict(data: dict[str, Any]) -> JobResult | None:
    """The inverse of JobResult.to_dict(); None for a record it cannot read."""
    try:
        return JobResult.model_validate(data)
    except ValueError:  # pydantic's ValidationError is a ValueError
        return None


def _newer(data: dict[str, Any], stored: dict[str, Any] | None) -> bool:
    if stored is None:
        return True
    ours = data.get("finished_at") or data.get("started_at") or ""
    theirs = stored.get("finished_at") or stored.get("started_at") or ""
    return bool(ours >= theirs)


def iso_utc(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat() if moment is not None else None


def _parse(text: Any) -> datetime | None:
    if not text:
        return None
    moment = datetime.fromisoformat(str(text))
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _daemon_to_dict(daemon: DaemonRecord) -> dict[str, Any]:
    return {
        "instance": daemon.instance, "host": daemon.host, "pid": daemon.pid,
        "started_at": iso_utc(daemon.started_at), "updated_at": iso_utc(daemon.updated_at),
        "stopped_at": iso_utc(daemon.stopped_at),
        "next_runs": {job: iso_utc(when) for job, when in daemon.next_runs.items()},
        "running": {job: iso_utc(when) for job, when in daemon.running.items()},
    }


def _daemon_from_dict(data: dict[str, Any]) -> DaemonRecord:
    started, updated = _parse(data["started_at"]), _parse(data["updated_at"])
    if started is None or updated is None:
        raise ValueError("daemon entry without started_at/updated_at")
    return DaemonRecord(
        instance=str(data["instance"]), host=str(data["host"]), pid=int(data["pid"]),
        started_at=started, updated_at=updated, stopped_at=_parse(data.get("stopped_at")),
        next_runs={job: _parse(when) for job, when in (data.get("next_runs") or {}).items()},
        running={job: when for job, text in (data.get("running") or {}).items()
                 if (when := _parse(text)) is not None},
    )

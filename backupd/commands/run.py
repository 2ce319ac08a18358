"""``backupd run``: the long-running sidecar that replaces cron.

Start-up validates everything first (schedules, zone, directory, pg_dump against the
server) so a bad setting is one line and exit 2, not a failure at 2 a.m. Then it
removes what an interrupted run left behind (temporary files of dumps, the scratch directory
of a killed PITR drill: a decrypted copy of the cluster), schedules the jobs and waits.

SIGTERM/SIGINT: the handler only sets a flag. The main thread stops the scheduler,
cancels running jobs (pg_dump is terminated and its temporary file removed by the
pipeline), waits up to SHUTDOWN_TIMEOUT_SECONDS for their results to reach the
notifiers, and exits 0 (1 if a job could not be stopped in time).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from types import FrameType
from typing import Any

from backupd.archive.status import WalStatus
from backupd.commands.jobs import scheduled_jobs
from backupd.commands.mark import remove_leftovers as remove_mark_leftovers
from backupd.commands.pitr_scratch import scratch_directory
from backupd.daemon.clock import ClockWatch, read_boot
from backupd.daemon.scheduler import Daemon
from backupd.daemon.state import HEARTBEAT_SECONDS, DaemonState
from backupd.daemon.wal import check_wal_server, wal_streamer
from backupd.errors import JobFailed, JobSkipped
from backupd.log import get_logger
from backupd.notify import build_chain
from backupd.postgres.connection import advisory_lock, check_pg_dump_not_older, connect
from backupd.scratch import remove_abandoned
from backupd.settings import Settings
from backupd.storage.local import LocalStore

POLL_SECONDS = 0.2


class _StopFlag:
    """Set from a signal handler: a plain attribute, no locks (a handler that takes a
    lock the interrupted main thread already holds would deadlock)."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def handler(self, signum: int, _frame: FrameType | None) -> None:
        if self.signal is None:
            self.signal = signum


def run(settings: Settings) -> int:
    log = get_logger()
    jobs = scheduled_jobs(settings)  # ConfigError: one line, exit 2
    store = LocalStore(settings.backup_dir)
    store.prepare()
    _check_server(settings)
    if settings.wal_archive:
        check_wal_server(settings)  # wal_level=minimal, no REPLICATION: exit 2
    _remove_leftovers(settings, store)

    state = DaemonState(settings.backup_dir)
    daemon = Daemon(settings, jobs, build_chain(settings, recorder=state), state)
    # None unless WAL_ARCHIVE=on. After the slot is lost the archive has a gap: the streamer
    # asks for a new base backup, which starts a new unbroken run.
    streamer = wal_streamer(settings, daemon.chain,
                            lambda reason: daemon.run_soon("basebackup", reason))
    stop_http = _start_http(settings, state, streamer.status if streamer else None)
    # (a taken HEALTH_PORT is exit 2, here)
    stop = _StopFlag()
    # SIGHUP: the terminal it ran in closed. There is no reload: it stops as for SIGTERM.
    previous = {sig: signal.signal(sig, stop.handler)
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        # One reading of both clocks, for the scheduler's plan and the first heartbeat's step:
        # a step while starting (a boot-time NTP correction, the state file's lock held up)
        # comes after the plan, so the step is measured from it. Read after the start, it
        # was seen by neither. The since-boot clock, read with them, measures the step since
        # the previous daemon's last write on this boot (clock.read_boot: None under
        # libfaketime, which fakes it too).
        now, tick, boot = datetime.now(UTC), time.monotonic(), read_boot()
        clock = ClockWatch(wall=now, mono=tick)  # the step of the wall clock between heartbeats
        daemon.start(now, boot)
        if streamer is not None:
            streamer.start()
        state.persist()
        log.info("backupd daemon started", pid=os.getpid(), jobs=sorted(daemon.jobs),
                 timezone=settings.timezone)
        next_heartbeat = tick + HEARTBEAT_SECONDS
        # time.sleep returns early on a signal (its handler runs first), so the flag is
        # seen within POLL_SECONDS without any lock shared with the handler.
        while stop.signal is None:
            time.sleep(POLL_SECONDS)
            last, tick = tick, time.monotonic()
            # `tick < last` is for one test only and never true in production: the monotonic
            # clock does not go back on a real system. libfaketime, which the clock-step test
            # in tests/test_daemon.py (test_a_clock_stepped_back_keeps_the_schedule_and_...)
            # uses to step the daemon's clock, steps it with the wall clock (leaving it alone,
            # FAKETIME_DONT_FAKE_MONOTONIC, makes time.sleep fail: tests/helpers/faketime.py),
            # and waiting for it would hold that test's heartbeat back for the whole step.
            # follow_clock itself is proven in-process by tests/test_clock_step_back.py. Such
            # a heartbeat's step is the wall clock's whole move: ClockWatch takes a monotonic
            # clock that went back as no real time passed.
            if tick >= next_heartbeat or tick < last:
                state.persist()
                # APScheduler sleeps for the span it computed from the wall clock: a clock
                # stepped forward meanwhile (NTP, a resumed VM) would fire the next run that
                # much late, or miss it. Woken, it computes again from the clock as it is.
                daemon.scheduler.wakeup()
                daemon.follow_clock(clock.measure())  # and one stepped back: see there
                next_heartbeat = time.monotonic() + HEARTBEAT_SECONDS
                if not daemon.alive():
                    log.error("scheduler thread died; exiting so the container restarts")
                    stop.signal = -1
        log.info("shutdown requested", signal=_signal_name(stop.signal),
                 running=daemon.running_jobs(),
                 timeout_seconds=settings.shutdown_timeout_seconds)
        # Keep a margin for the last state write and the exit itself.
        budget = max(0.5, settings.shutdown_timeout_seconds - 1.0)
        if streamer is not None:
            # pg_receivewal first: it flushes what it received and the slot keeps the rest.
            started = time.monotonic()
            streamer.stop(budget / 2)
            budget = max(0.5, budget - (time.monotonic() - started))
        clean = daemon.shutdown(budget)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if stop_http is not None:
            _call_quietly(stop_http)
    state.persist(stopped=True)
    if not clean:
        log.error("jobs still running at the shutdown deadline; exiting anyway (the next "
                  "start removes their temporary files)", running=daemon.running_jobs())
        _hard_exit(1)
    if stop.signal == -1:
        return 1
    log.info("backupd daemon stopped")
    return 0


def _check_server(settings: Settings) -> None:
    """Refuse a pg_dump older than the server; an unreachable server is not fatal."""
    log = get_logger()
    try:
        with connect(settings) as conn:
            server, dump = check_pg_dump_not_older(conn)
    except JobFailed as exc:
        # The database may start after us (compose); the backup job fails, reports
        # and succeeds once it is up.
        log.warning("database not reachable at start-up; continuing", error=str(exc))
        return
    log.info("database reachable", server_version=server, pg_dump_version=dump)


def _remove_leftovers(settings: Settings, store: LocalStore) -> None:
    """Delete temporary files of interrupted runs, unless another backupd is dumping now
    (a replica sharing the directory: its temporary file is live)."""
    log = get_logger()
    try:
        with advisory_lock(settings, "dump"):
            removed = store.remove_leftovers()
    except JobSkipped:
        log.info("another backupd is dumping; leaving temporary files alone")
        return
    except JobFailed:
        removed = store.remove_leftovers()  # no database: nobody can be dumping from it
    for name in removed:
        log.warning("removed leftover of an interrupted run", file=name,
                    directory=str(store.directory))
    for scratch in remove_mark_leftovers(settings.backup_dir):
        log.warning("removed the scratch directory of a killed `backupd mark`",
                    directory=str(scratch), detail="the WAL it had fetched, decrypted")
    _remove_drill_scratch(settings)


def _remove_drill_scratch(settings: Settings) -> None:
    """Delete the scratch directory of a PITR drill killed with backupd: its server died
    with it (the supervisor's reaper), so nothing is stopped, only the plaintext copy of the
    cluster removed. A live drill's (another backupd's) is left alone: it owns it."""
    log = get_logger()
    scratch = scratch_directory(settings.backup_dir)
    try:
        found = remove_abandoned(scratch)
    except OSError as exc:
        # Not fatal to the daemon: the next drill removes it before anything else.
        log.error("cannot remove the scratch directory of an interrupted PITR drill; it "
                  "holds a decrypted copy of the cluster", directory=str(scratch),
                  error=str(exc))
        return
    if found == "live":
        log.info("another backupd is running a drill; leaving its PITR drill scratch "
                 "directory alone", directory=str(scratch))
    elif found == "removed":
        log.warning("removed the scratch directory of an interrupted PITR drill",
                    directory=str(scratch),
                    detail="a decrypted copy of the cluster the killed drill recovered")


def _start_http(settings: Settings, state: DaemonState,
                wal_status: Callable[[], WalStatus | None] | None
                ) -> Callable[[], Any] | None:
    if settings.health_port == 0:
        if settings.status_page:
            get_logger().warning("STATUS_PAGE=on but HEALTH_PORT=0: the status page is served "
                                 "on HEALTH_PORT; set a port to publish it")
        return None
    # Imported only when asked for: it loads prometheus_client.
    from backupd.daemon.http import start_http_server

    page = None
    if settings.status_page:
        from backupd.commands import status_page

        def page() -> str:
            return status_page.page(settings)
    return start_http_server(settings, state, page=page, wal_status=wal_status)


def _call_quietly(function: Callable[[], Any]) -> None:
    try:
        function()
    except Exception as exc:
        get_logger().warning("stopping the health server failed", error=repr(exc))


def _signal_name(signum: int | None) -> str:
    if signum is None or signum < 0:
        return "internal"
    return signal.Signals(signum).name


def _hard_exit(code: int) -> None:
    # Worker threads stuck in a job would keep the interpreter alive past the
    # orchestrator's kill timeout; leave now, after flushing what was logged.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


"""The stall watchdog and the job timeout (issue 17).

One thread per job watches the job's :class:`~backupd.progress.Progress`. When no data has
moved for ``stall_seconds``, or the job has run for ``job_timeout_seconds``, it asks what the
job waits on (the server's view: ``probe``), then cancels the job's token *as a failure*:
the usual cancel path stops the children and removes partial files, and ``job.run_job``
reports the watchdog's one line as the job's failure.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from backupd.cancel import CancelToken
from backupd.log import get_logger
from backupd.progress import ProgressSnapshot
from backupd.result import human_bytes


@dataclass(frozen=True)
class ServerView:
    """What the server says about a job that moved no data."""

    # Counters of work done inside the server for the job (an index build, a COPY), as one
    # comparable string ("" when none shows): a change is movement the streams cannot see.
    work: str
    # What the job waits on, as one clause (the blocking lock and its holder); None: nothing.
    waits: str | None


Probe = Callable[[], ServerView]
# A server that does not answer must not hold back the verdict for long.
PROBE_BUDGET_SECONDS = 15.0


@dataclass(frozen=True)
class WatchdogConfig:
    stall_seconds: float = 0.0  # 0: off
    job_timeout_seconds: float = 0.0  # 0: off

    @property
    def enabled(self) -> bool:
        return self.stall_seconds > 0 or self.job_timeout_seconds > 0

    @property
    def poll_seconds(self) -> float:
        limits = [s for s in (self.stall_seconds, self.job_timeout_seconds) if s > 0]
        return max(0.05, min(1.0, min(limits) / 10)) if limits else 1.0


class Watchdog:
    """``with Watchdog(token, config, diagnose):`` around a job's body."""

    def __init__(self, token: CancelToken, config: WatchdogConfig, probe: Probe) -> None:
        self.token = token
        self.config = config
        self.probe = probe
        self.verdict: str | None = None
        self._server_work = ""
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = time.monotonic()

    def __enter__(self) -> Watchdog:
        if self.config.enabled:
            self._started = time.monotonic()
            self._thread = threading.Thread(target=self._watch, name="watchdog", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()

    def _watch(self) -> None:
        config = self.config
        while not self._done.wait(config.poll_seconds):
            if self.token.cancelled:
                return
            ran = time.monotonic() - self._started
            snapshot = self.token.progress.snapshot()
            if config.job_timeout_seconds and ran >= config.job_timeout_seconds:
                self._stop(f"job timeout: the job ran for {ran:.0f} s, longer than "
                           f"DB_BACKUP_JOB_TIMEOUT_SECONDS={config.job_timeout_seconds:g}",
                           snapshot, self._ask_server())
                return
            # A job run inside this one (a database of a backup run) has its own watchdog.
            if (config.stall_seconds and not self.token.progress.delegated
                    and snapshot.idle_seconds >= config.stall_seconds):
                view = self._ask_server()
                if view.work and view.work != self._server_work:
                    # The server is building an index or copying for the job: not a stall.
                    self._server_work = view.work
                    self.token.progress.touch()
                    continue
                self._stop(f"stalled: no data moved for {snapshot.idle_seconds:.0f} s "
                           f"(DB_BACKUP_STALL_SECONDS={config.stall_seconds:g})", snapshot,
                           view)
                return

    def _stop(self, why: str, snapshot: ProgressSnapshot, view: ServerView) -> None:
        self.verdict = (f"{why} while waiting on {waiting_on(snapshot)}"
                        + (f"; {view.waits}" if view.waits else "")
                        + "; the job was stopped, nothing partial kept")
        # Said at once: the stage it stops may take a while to notice (a read blocked in the
        # kernel returns only when the kernel lets it).
        get_logger().warning("watchdog stopping the job", reason=self.verdict)
        self.token.cancel(self.verdict, failure=True)

    def _ask_server(self) -> ServerView:
        answer: list[ServerView] = []
        asking = threading.Thread(target=lambda: answer.append(self.probe()),
                                  name="watchdog-probe", daemon=True)
        asking.start()
        asking.join(PROBE_BUDGET_SECONDS)
        if not answer:
            return ServerView("", "the server did not say what the job waits on within "
                                  f"{PROBE_BUDGET_SECONDS:.0f} s")
        return answer[0]


def waiting_on(snapshot: ProgressSnapshot) -> str:
    """The open streams, each with what it has moved so far."""
    streams = snapshot.open_streams
    if not streams:
        return "no data stream (between steps)"
    return ", ".join(f"{stream.name} ({human_bytes(stream.bytes)} so far)" for stream in streams)


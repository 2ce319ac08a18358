"""The notifier protocol and the chain that delivers every result to every notifier.

A notifier that raises or hangs is logged and skipped: the job's outcome never
depends on its notifiers. Local notifiers (files, the structured log, metrics) are told in
order, each bounded by the timeout; network notifiers (``Notifier.remote`` True: heartbeat,
Slack, the webhook) are all told at once and waited for against one deadline, so a hanging
one never holds back the others, and a result is delivered within about one timeout
whatever number of endpoints hang (a shutdown's deadline counts on it).

A notifier may also hear that a job started (``StartListener``: the heartbeat's ``/start``).
That is sent in the background, never delaying the job; the same notifier hears the job's
end only after its start signal was delivered (or gave up), so the two never cross.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

from backupd.log import get_logger
from backupd.result import JobResult


class Notifier(Protocol):
    name: str
    # A network notifier (heartbeat, Slack, the webhook), told at the same time as the other
    # network ones; False: a local one, told in order. Declared by every notifier, so mypy
    # finds one that forgot to say which it is.
    remote: ClassVar[bool]

    def notify(self, result: JobResult) -> None: ...


@runtime_checkable
class StartListener(Protocol):
    """A notifier that also wants to hear when a job starts (before it has a result)."""

    name: str

    def job_started(self, result: JobResult) -> None: ...


class NotifierChain:
    def __init__(self, notifiers: Sequence[Notifier], timeout_seconds: float = 10.0) -> None:
        self.notifiers = list(notifiers)
        self.timeout_seconds = timeout_seconds
        # Start signals still in flight, by (result, notifier name): deliver() waits for them.
        self._starting: dict[tuple[int, str], threading.Thread] = {}
        self._lock = threading.Lock()

    def started(self, result: JobResult) -> None:
        """Tell the notifiers that listen for it that ``result``'s job started; returns at once."""
        for notifier in self.notifiers:
            if not isinstance(notifier, StartListener):
                continue

            def send(target: StartListener = notifier) -> None:
                try:
                    target.job_started(result)
                except BaseException as exc:  # never the job's problem
                    get_logger(job=result.job).warning(
                        "notifier failed at job start", notifier=target.name,
                        error=f"{type(exc).__name__}: {exc}")

            worker = threading.Thread(target=send, name=f"notify-start-{notifier.name}",
                                      daemon=True)
            with self._lock:
                self._starting[(id(result), notifier.name)] = worker
            worker.start()

    def deliver(self, result: JobResult) -> None:
        log = get_logger(job=result.job, status=result.status.value)
        remote: list[tuple[Notifier, threading.Thread, list[BaseException]]] = []
        deadline = 0.0  # of the network notifiers, from the first one's start
        for notifier in self.notifiers:
            worker, failure = self._send(notifier, result)
            if notifier.remote:
                deadline = deadline or time.monotonic() + self.timeout_seconds
                remote.append((notifier, worker, failure))
                continue
            worker.join(self.timeout_seconds)
            _report(log, notifier, worker, failure, self.timeout_seconds)
        for notifier, worker, failure in remote:
            worker.join(max(0.0, deadline - time.monotonic()))
            _report(log, notifier, worker, failure, self.timeout_seconds)

    def _send(self, notifier: Notifier,
              result: JobResult) -> tuple[threading.Thread, list[BaseException]]:
        failure: list[BaseException] = []
        with self._lock:
            starting = self._starting.pop((id(result), notifier.name), None)

        def send() -> None:
            try:
                if starting is not None:  # the end never overtakes the start signal
                    starting.join(self.timeout_seconds)
                notifier.notify(result)
            except BaseException as exc:  # a notifier must never break the chain
                failure.append(exc)

        # A daemon thread: a notifier stuck in a network call cannot keep the process alive
        # at shutdown or delay the next notifier past the timeout.
        worker = threading.Thread(target=send, name=f"notify-{notifier.name}", daemon=True)
        worker.start()
        return worker, failure


def _report(log: Any, notifier: Notifier, worker: threading.Thread,
            failure: list[BaseException], timeout_seconds: float) -> None:
    if worker.is_alive():
        log.warning("notifier timed out", notifier=notifier.name,
                    timeout_seconds=timeout_seconds)
    elif failure:
        log.warning("notifier failed", notifier=notifier.name,
                    error=f"{type(failure[0]).__name__}: {failure[0]}")

"""The notifier protocol and the chain that delivers every result to every notifier.

A notifier that raises or hangs is logged and skipped: the job's outcome never
depends on its notifiers, and one slow notifier never holds back the others
longer than its timeout.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Protocol

from backupd.log import get_logger
from backupd.result import JobResult


class Notifier(Protocol):
    name: str

    def notify(self, result: JobResult) -> None: ...


class NotifierChain:
    def __init__(self, notifiers: Sequence[Notifier], timeout_seconds: float = 10.0) -> None:
        self.notifiers = list(notifiers)
        self.timeout_seconds = timeout_seconds

    def deliver(self, result: JobResult) -> None:
        log = get_logger(job=result.job, status=result.status.value)
        for notifier in self.notifiers:
            failure: list[BaseException] = []

            def send(target: Notifier = notifier, errors: list[BaseException] = failure) -> None:
                try:
                    target.notify(result)
                except BaseException as exc:  # a notifier must never break the chain
                    errors.append(exc)

            # A daemon thread: a notifier stuck in a network call cannot keep the
            # process alive at shutdown or delay the next notifier past the timeout.
            worker = threading.Thread(target=send, name=f"notify-{notifier.name}", daemon=True)
            worker.start()
            worker.join(self.timeout_seconds)
            if worker.is_alive():
                log.warning("notifier timed out", notifier=notifier.name,
                            timeout_seconds=self.timeout_seconds)
            elif failure:
                log.warning("notifier failed", notifier=notifier.name,
                            error=f"{type(failure[0]).__name__}: {failure[0]}")

"""A notifier for tests: it keeps every result a NotifierChain delivers to it."""

from __future__ import annotations

import threading
from typing import ClassVar

from backupd.result import JobResult


class RecordingNotifier:
    """Every result it is told, in order (``results``). A local notifier, as a chain's last
    (Slack would be); a subclass says ``remote = True`` for a network one. ``delivered`` is
    set at the first result, for a test that waits on another thread's delivery."""

    name = "recorder"
    remote: ClassVar[bool] = False

    def __init__(self) -> None:
        self.results: list[JobResult] = []
        self.delivered = threading.Event()

    def notify(self, result: JobResult) -> None:
        self.results.append(result)
        self.delivered.set()

    def all_of(self, database: str) -> list[JobResult]:
        return [r for r in self.results if r.database == database]

    def of(self, database: str) -> JobResult:
        """The one result of ``database`` (fails unless there is exactly one)."""
        [found] = self.all_of(database)
        return found

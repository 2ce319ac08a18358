"""Cooperative cancellation: a shutdown signal, or the watchdog, reaches whatever the job is
waiting on.

The token also carries the job's :class:`~backupd.progress.Progress`: every stage that can be
cancelled holds the token already, so it ticks the progress without a second parameter."""

from __future__ import annotations

import threading
from collections.abc import Callable

from backupd.errors import Cancelled
from backupd.progress import Progress

SHUTDOWN = "cancelled by shutdown signal"


class CancelToken:
    def __init__(self, progress: Progress | None = None) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []
        self.progress = progress if progress is not None else Progress()
        # Why it was cancelled (None: a shutdown); ``failure``: the cancel is the job's
        # failure (the watchdog: a stall or the job timeout), reported as such, not as a
        # cancelled job.
        self.reason: str | None = None
        self.failure = False
        self._release: Callable[[], None] = lambda: None

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def cancel(self, reason: str | None = None, *, failure: bool = False) -> None:
        with self._lock:
            if self._event.is_set():
                return
            self.reason, self.failure = reason, failure
            self._event.set()
            callbacks = list(self._callbacks)
        for callback in callbacks:
            callback()

    def child(self) -> CancelToken:
        """A token for a job run inside this one's: cancelled with this one (same reason),
        while cancelling it leaves this one running. ``release`` when the job is done."""
        token = CancelToken(self.progress.nested())
        unregister = self.on_cancel(lambda: token.cancel(self.reason, failure=self.failure))

        def release() -> None:
            unregister()
            token.progress.close()

        token._release = release
        return token

    def release(self) -> None:
        self._release()
        self._release = lambda: None

    def on_cancel(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Run ``callback`` on cancel (at once if already cancelled); returns an unregister."""
        with self._lock:
            already = self._event.is_set()
            if not already:
                self._callbacks.append(callback)
        if already:
            callback()

        def unregister() -> None:
            with self._lock:
                if callback in self._callbacks:
                    self._callbacks.remove(callback)

        return unregister

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled(self.reason or SHUTDOWN)

    def wait(self, timeout: float) -> bool:
        return self._event.wait(timeout)

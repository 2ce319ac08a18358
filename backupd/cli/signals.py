"""Signals while a one-off command asks a person something (a restore's confirmation):
Ctrl-C (SIGINT), SIGTERM and SIGHUP interrupt the question at once. A prompt waits in
``input()``, which only an exception ends.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import FrameType
from typing import Any

STOPPING = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
Handler = Callable[[int, FrameType | None], Any]


def _in_main_thread() -> bool:
    # Handlers can only be set there; a job run elsewhere (an in-process test) keeps its own.
    return threading.current_thread() is threading.main_thread()


def reason(signum: int) -> str:
    return f"cancelled by {signal.Signals(signum).name}"


def _put_back(previous: Mapping[signal.Signals, Handler | int | None]) -> None:
    for sig, before in previous.items():
        # None: a handler set outside Python, which cannot be put back; the default then.
        signal.signal(sig, signal.SIG_DFL if before is None else before)


@dataclass
class Interruption:
    """Which signal interrupted a question (None: none, or Ctrl-D)."""

    signum: int | None = None

    def describe(self) -> str:
        if self.signum is None or self.signum == signal.SIGINT:
            return "aborted"
        return reason(self.signum)


@contextlib.contextmanager
def interrupting() -> Iterator[Interruption]:
    """For the block (a question to a person): a stopping signal raises KeyboardInterrupt,
    which ends the wait in ``input()`` at once (a prompt turns it into ``Abort``)."""
    caught = Interruption()
    if not _in_main_thread():
        yield caught
        return

    def handler(signum: int, _frame: FrameType | None) -> None:
        caught.signum = signum
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, handler) for sig in STOPPING}
    try:
        yield caught
    finally:
        _put_back(previous)

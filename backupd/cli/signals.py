"""Signals while a one-off command runs its job: SIGTERM (``docker stop``, ``timeout``, a
Kubernetes deadline), SIGHUP (the terminal closed) and SIGINT (Ctrl-C) cancel the job
cooperatively, as the daemon's shutdown does (backupd.commands.run): children stopped,
temporary files and scratch databases removed, and a 'cancelled' result that reaches every
notifier. Left at their defaults, the first two killed backupd at once, with no cleanup and
no result; Ctrl-C's KeyboardInterrupt bypassed the result.

A second SIGTERM or SIGINT while the job cancels ends backupd at once, by that signal
(exit 143, 130): whoever sends it will not wait. The children die with it (PDEATHSIG, the
reaper: backupd.pipeline.reaper); nothing is reported. A second SIGHUP does not: a closed
terminal's hangup commonly comes twice (the kernel's, then the shell's), with nobody there.

Within ``for_the_command`` (``main``), once the job has ended, the signals are only noted
until the command ends: its result was reported, and its summary and exit code stand.

While a person is asked something (a restore's confirmation), the same signals interrupt
the question at once instead: a prompt waits in ``input()``, which a handler that only
cancels the token would not end.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, NoReturn

from backupd.cancel import CancelToken
from backupd.log import get_logger

STOPPING = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
# Those of STOPPING that, a second time while the job cancels, end backupd at once.
FORCING = (signal.SIGTERM, signal.SIGINT)
Handler = Callable[[int, FrameType | None], Any]
Handlers = Mapping[signal.Signals, Handler | int | None]


def _in_main_thread() -> bool:
    # Handlers can only be set there; a job run elsewhere (an in-process test) keeps its own.
    return threading.current_thread() is threading.main_thread()


def reason(signum: int) -> str:
    return f"cancelled by {signal.Signals(signum).name}"


@dataclass
class LateSignal:
    """The first stopping signal that came after the command's job ended (None: none)."""

    signum: int | None = None
    # The handlers in place before the first job's; put back when the command ends.
    previous: Handlers | None = field(default=None, repr=False)

    def note(self, signum: int, _frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum

    def describe(self) -> str:
        assert self.signum is not None
        return (f"{signal.Signals(self.signum).name} came after the job ended; ignored, its "
                "result stands")


_commands: list[LateSignal] = []


@contextlib.contextmanager
def for_the_command() -> Iterator[LateSignal]:
    """For a whole command (``main``): once a job ran, a stopping signal no longer stops
    anything until the block ends (the summary is printed, the job's exit code kept), and is
    noted in what this yields. The handlers in place before are put back after."""
    late = LateSignal()
    _commands.append(late)
    try:
        yield late
    finally:
        _commands.remove(late)
        if late.previous is not None:
            _put_back(late.previous)


@contextlib.contextmanager
def cancelled_by_signals(token: CancelToken) -> Iterator[None]:
    """For the block (a job): a stopping signal cancels ``token``, a second SIGTERM or SIGINT
    ends backupd at once. After it, within ``for_the_command`` the signals are only noted;
    else the handlers in place before are put back."""
    if not _in_main_thread():
        yield
        return
    # The handler runs in the main thread, between any two of the job's bytecodes: it may
    # not take the token's lock, which the interrupted code may hold (a deadlock). It only
    # writes the signal's number to a pipe; a thread of its own reads it and cancels.
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    cancelling = False

    def handler(signum: int, _frame: FrameType | None) -> None:
        nonlocal cancelling
        if cancelling and signum in FORCING:
            _exit_now(signum)
        cancelling = True
        with contextlib.suppress(OSError):  # a full pipe: a cancel is already on its way
            os.write(write_end, bytes([signum]))

    def watch() -> None:
        try:
            while data := os.read(read_end, 64):  # b"": the job is over, the pipe closed
                if not token.cancelled:
                    get_logger().warning("signal received; cancelling the job",
                                         signal=signal.Signals(data[0]).name)
                token.cancel(reason(data[0]))  # a second signal: already cancelling
        finally:
            os.close(read_end)

    watcher = threading.Thread(target=watch, name="signal-cancel", daemon=True)
    watcher.start()
    previous = {sig: signal.signal(sig, handler) for sig in STOPPING}
    try:
        yield
    finally:
        # Handlers that no longer write to the pipe first: its number may be reused once closed.
        command = _commands[-1] if _commands else None
        if command is None:
            _put_back(previous)
        else:
            if command.previous is None:  # a second job's "previous" is the noting handler
                command.previous = previous
            for sig in STOPPING:
                signal.signal(sig, command.note)
        os.close(write_end)
        watcher.join()


def _exit_now(signum: int) -> NoReturn:
    """Die of ``signum`` now, as a process without a handler would: a shell then reports
    128 + its number. The children die with us (PDEATHSIG, the reaper's pipe reaching end of
    file), so none is left running."""
    name = signal.Signals(signum).name
    # Says what stays behind and what removes it: nothing here cleans up any more.
    with contextlib.suppress(OSError):  # os.write: the interrupted code may be in a print
        os.write(2, f"backupd: second signal ({name}) while the job was cancelling: exiting "
                    "at once; its children are killed and no result is reported; its "
                    "temporary files stay until the daemon's next start-up removes them (a "
                    "mark's or PITR drill's scratch directory: also its next run); a "
                    "restore's scratch database "
                    "stays in PostgreSQL until the next restore into the same database "
                    "drops it (a drill's: the next drill), or drop it by hand\n".encode())
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    os._exit(128 + signum)  # only if the signal did not end us (it is not blocked here)


def _put_back(previous: Handlers) -> None:
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

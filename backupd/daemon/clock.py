"""How far the wall clock was stepped between two heartbeats, measured, not guessed.

The wall clock and the monotonic clock advance together; only a step (NTP correcting a
clock that was wrong, a host's RTC, a VM resumed) moves one without the other. So the
step since the previous reading is Δwall - Δmonotonic. Without it the daemon could only
see how far a slot it ran lies ahead of the clock, which is a lower bound on the step: a
clock 12 h ahead that runs 02:00 and is corrected 10 h later reads 00:00, a step of 12 h
that such a guess takes for 2 h (docs/reliability.md, T12).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta


@dataclass(frozen=True)
class ClockStep:
    """What the clock did since the previous heartbeat."""

    now: datetime  # the wall clock, now
    back: timedelta  # how far it was stepped back (negative: forward)
    # The previous heartbeat's moment as the clock now reads (now less the real time since):
    # a slot after it came due meanwhile, whatever the clock read before the step.
    since: datetime
    mono: float  # the monotonic clock, now (what a run's monotonic reading compares with)


class ClockWatch:
    """Keeps the previous heartbeat's wall and monotonic readings; :meth:`measure` compares
    them with the current ones."""

    def __init__(self, wall: datetime | None = None, mono: float | None = None) -> None:
        self._wall = wall or datetime.now(UTC)
        self._mono = time.monotonic() if mono is None else mono

    def measure(self, wall: datetime | None = None, mono: float | None = None) -> ClockStep:
        wall = wall or datetime.now(UTC)
        mono = time.monotonic() if mono is None else mono
        # The monotonic clock never goes back on a real system. Under libfaketime (how the
        # clock-step tests move the daemon's clock) it steps with the wall clock, so a
        # difference of the two would show no step at all. Its reading then says nothing
        # about the real time passed: that is taken as none, and the whole wall-clock move
        # as the step (short by at most one heartbeat, 30 s, against a 3 h or 5 min rule).
        real = timedelta(seconds=max(0.0, mono - self._mono))
        step = ClockStep(now=wall, back=real - (wall - self._wall), since=wall - real, mono=mono)
        self._wall, self._mono = wall, mono
        return step

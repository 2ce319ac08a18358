"""How far the wall clock was stepped between two heartbeats, measured, not guessed.

The wall clock and the monotonic clock advance together; only a step (NTP correcting a
clock that was wrong, a host's RTC, a VM resumed) moves one without the other. So the
step since the previous reading is Δwall - Δmonotonic. Without it the daemon could only
see how far a slot it ran lies ahead of the clock, which is a lower bound on the step: a
clock 12 h ahead that runs 02:00 and is corrected 10 h later reads 00:00, a step of 12 h
that such a guess takes for 2 h (docs/reliability.md, T12).

A restart has no monotonic reading of its own from before: the state file keeps, beside each
heartbeat's wall clock, this boot's id and its since-boot clock (:class:`BootReading`, with
its time namespace's offset), so a restart on the same boot measures the step exactly too
(:func:`step_back_since`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")
UPTIME_FILE = Path("/proc/uptime")
# This process's time namespace's offsets (Linux 5.6+): lines "<clock> <seconds> <nanoseconds>".
TIMENS_OFFSETS_FILE = Path("/proc/self/timens_offsets")
# This process's time namespace itself: there on every kernel that has time namespaces.
TIME_NAMESPACE_FILE = Path("/proc/self/ns/time")
# CLOCK_BOOTTIME and /proc/uptime are one kernel clock: read a moment apart, the file at
# 10 ms resolution, they agree far closer than this, unless the clock call is faked.
_UPTIME_AGREES = 5.0


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


@dataclass(frozen=True)
class BootReading:
    """This boot and its since-boot clock, taken with a wall-clock reading."""

    boot_id: str
    since_boot: float  # CLOCK_BOOTTIME, seconds: unlike CLOCK_MONOTONIC it counts suspend
    # In a time namespace (unshare --time, CRIU, some container runtimes) CLOCK_BOOTTIME and
    # /proc/uptime both read the host's plus this offset, under the host's boot id: readings
    # of two namespaces compare only less their offsets (0 on a kernel before 5.6, which has
    # none). None: not known (a namespace whose offsets cannot be read, a write by an older
    # version), and then the reading compares with none.
    boottime_offset: float | None

    def on_host_clock(self) -> float | None:
        """The since-boot clock as the host's reads it, when the offset is known."""
        if self.boottime_offset is None:
            return None
        return self.since_boot - self.boottime_offset


def read_boot() -> BootReading | None:
    """This boot's reading now, or None when the since-boot clock cannot be trusted.

    libfaketime (0.9.10, Debian's, which the tests use) fakes CLOCK_BOOTTIME as well as
    CLOCK_MONOTONIC and CLOCK_MONOTONIC_RAW: under it all three read the faked wall clock.
    It leaves /proc/uptime (a file, not a clock call) alone, so the two disagree, and a
    reading from a faked process, compared with a real one on the same boot, would show a
    step of decades. Also None where /proc/uptime is a container's own (LXCFS): then a
    restart falls back to the lower bound, as on another boot."""
    try:
        boot_id = BOOT_ID_FILE.read_text().strip()
        uptime = float(UPTIME_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    since_boot = time.clock_gettime(time.CLOCK_BOOTTIME)
    if not boot_id or abs(since_boot - uptime) > _UPTIME_AGREES:
        return None
    return BootReading(boot_id, since_boot, _boottime_offset())


def _boottime_offset() -> float | None:
    """This process's time namespace's offset of CLOCK_BOOTTIME, seconds (0 outside one).
    Its offset, not its identity (the inode of /proc/self/ns/time), tells readings apart:
    the kernel gives a new namespace the number of one gone, whatever its offset."""
    try:
        for line in TIMENS_OFFSETS_FILE.read_text().splitlines():
            clock, *value = line.split()
            if clock == "boottime" and len(value) == 2:
                return int(value[0]) + int(value[1]) / 1e9
    except FileNotFoundError:
        return _without_time_namespaces()
    except (OSError, ValueError):
        pass
    return None


def _without_time_namespaces() -> float | None:
    # No offsets file: a kernel before 5.6, which has no time namespaces, so every process's
    # since-boot clock is the host's (offset 0), unless its namespace is there all the same
    # (its offsets hidden from us): then any offset is possible.
    try:
        TIME_NAMESPACE_FILE.lstat()
    except FileNotFoundError:
        return 0.0
    except OSError:
        pass
    return None


def step_back_since(wall: datetime, then: BootReading, now: datetime,
                    current: BootReading) -> timedelta | None:
    """How far the wall clock was stepped back between a reading (``wall`` with ``then``) and
    now: the wall clock's move less the real time passed. None across a reboot (the
    since-boot clock started again, and the time the host was off is not known), or when
    either reading's time namespace offset is not known."""
    since, until = then.on_host_clock(), current.on_host_clock()
    if then.boot_id != current.boot_id or since is None or until is None or until < since:
        return None
    return (wall - now) + timedelta(seconds=until - since)

"""This boot and its since-boot clock, as backupd reads them (backupd.daemon.clock.read_boot),
for the tests of a restart on the same boot (docs/reliability.md, T12)."""

from __future__ import annotations

import pytest

from backupd.daemon.clock import BootReading, read_boot


def this_boot() -> BootReading:
    """This boot's reading now, as the kernel gives it to a process not under libfaketime
    (which fakes CLOCK_BOOTTIME too). Skips the test where backupd cannot trust that clock
    (it disagrees with /proc/uptime, e.g. a container's own from LXCFS): a restart there
    takes the lower bound, as on another boot, and the same-boot case cannot happen."""
    boot = read_boot()
    if boot is None:
        pytest.skip("CLOCK_BOOTTIME disagrees with /proc/uptime here (LXCFS gives a "
                    "container its own): backupd does not measure a step on the same boot")
    return boot

"""This boot and its since-boot clock, as backupd reads them (backupd.daemon.clock.read_boot),
for the tests of a restart on the same boot (docs/reliability.md, T12)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys

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


def earlier(boot: BootReading, seconds: float) -> BootReading:
    """The same boot's reading ``seconds`` before ``boot`` (a write that long ago)."""
    return dataclasses.replace(boot, since_boot=boot.since_boot - seconds)


def run_in_time_namespace(boottime_offset: int, code: str, *args: str) -> str:
    """Run Python ``code`` (with ``args``) in a new time namespace whose since-boot clock is
    ``boottime_offset`` seconds off the host's (``unshare --time --boottime``, as CRIU and
    some container runtimes make): a real process; its output. Skips the test where no
    time namespace can be made (util-linux too old, a kernel before 5.6, no CAP_SYS_ADMIN)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare (util-linux) is not installed: cannot make a time namespace")
    proc = subprocess.run([unshare, "--time", "--boottime", str(boottime_offset),
                           sys.executable, "-c", code, *args],
                          capture_output=True, text=True, timeout=60)
    if proc.returncode != 0 and "unshare" in proc.stderr:
        pytest.skip(f"cannot make a time namespace here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def boot_in_time_namespace(boottime_offset: int) -> BootReading:
    """This boot's reading as backupd takes it in a new time namespace (see
    :func:`run_in_time_namespace`)."""
    fields = json.loads(run_in_time_namespace(
        boottime_offset, "import dataclasses, json; from backupd.daemon.clock import "
        "read_boot; boot = read_boot(); print(json.dumps(boot and dataclasses.asdict(boot)))"))
    if fields is None:
        pytest.skip("CLOCK_BOOTTIME disagrees with /proc/uptime in a time namespace here")
    return BootReading(**fields)

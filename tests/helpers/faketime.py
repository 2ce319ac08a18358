"""Running backupd (and the pg_dump it starts) with its clock moved, through libfaketime
(Debian's ``faketime`` package; .ci/run installs it). Without it the tests skip, saying so."""

from __future__ import annotations

import glob
from datetime import UTC, datetime
from pathlib import Path

import pytest

_LIBRARY_GLOBS = ("/usr/lib/*/faketime/libfaketime.so.1", "/usr/lib/faketime/libfaketime.so.1",
                  "/usr/local/lib/faketime/libfaketime.so.1")


def library() -> str | None:
    for pattern in _LIBRARY_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


def clock_at(moment: datetime) -> dict[str, str]:
    """Environment variables that start a process's wall clock at ``moment`` (it then runs on
    at the normal rate); children inherit it. Skips the test when libfaketime is missing."""
    lib = library()
    if lib is None:
        pytest.skip("libfaketime is not installed (Debian package 'faketime'; .ci/run "
                    "installs it)")
    # A relative offset, not an absolute date: libfaketime reads absolute dates in the
    # process's local time zone, and these tests set TZ to something else than UTC.
    offset = round((moment - datetime.now(UTC)).total_seconds())
    return {
        "LD_PRELOAD": lib,
        "FAKETIME": f"{offset:+d}",
        # The monotonic clock is moved too (by the same offset, so durations stay true):
        # libfaketime 0.9.10's FAKETIME_DONT_FAKE_MONOTONIC makes Python's time.sleep fail
        # with EINVAL.
        "FAKETIME_NO_CACHE": "1",
    }


def movable_clock(spec_file: Path) -> dict[str, str]:
    """Environment variables for a process whose clock ``move_clock`` can step while it runs
    (an NTP step, a VM resumed), through ``spec_file``. Its monotonic clock steps with it.
    Skips the test when libfaketime is missing."""
    lib = library()
    if lib is None:
        pytest.skip("libfaketime is not installed (Debian package 'faketime'; .ci/run "
                    "installs it)")
    move_clock(spec_file, 0)
    return {"LD_PRELOAD": lib, "FAKETIME_TIMESTAMP_FILE": str(spec_file),
            "FAKETIME_NO_CACHE": "1"}


def move_clock(spec_file: Path, seconds: int) -> None:
    """The clock of the processes started with ``movable_clock(spec_file)``: ``seconds``
    ahead of the real one from now on."""
    spec_file.write_text(f"{seconds:+d}\n")


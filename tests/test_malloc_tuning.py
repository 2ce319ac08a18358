"""The console script fixes glibc's malloc thresholds (backupd.malloc_tuning): buffers of a
few MiB come from the heap and are reused there instead of being mapped, faulted in and
returned to the kernel each time. Read back through glibc's own mallinfo2."""

from __future__ import annotations

import subprocess
import sys

import pytest

# mallinfo2 (glibc >= 2.33): hblkhd is the bytes held in mmapped blocks, keepcost the free
# memory at the top of the heap that could be trimmed.
PROBE = """
import ctypes, sys
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
{setup}
before = libc.mallinfo2().hblkhd
buffer = bytearray(3 * 2**20)  # a buffer the size of a gzip member and more
mapped = libc.mallinfo2().hblkhd - before
del buffer
print(mapped, libc.mallinfo2().keepcost)
"""


def _probe(setup: str, env: dict[str, str] | None = None) -> tuple[int, int]:
    done = subprocess.run([sys.executable, "-c", PROBE.format(setup=setup)], check=True,
                          capture_output=True, text=True, env=env)
    mapped, keep = done.stdout.split()
    return int(mapped), int(keep)


@pytest.fixture(autouse=True)
def _glibc() -> None:
    import ctypes

    if not sys.platform.startswith("linux") or not hasattr(ctypes.CDLL(None), "mallinfo2"):
        pytest.skip("glibc >= 2.33 only (mallinfo2)")


def test_tuned_a_few_mib_buffer_stays_in_the_heap_and_is_kept_when_freed() -> None:
    mapped, keep = _probe("from backupd import malloc_tuning\nassert malloc_tuning.tune()")
    assert mapped == 0  # from the heap, not an mmap of its own
    assert keep >= 3 * 2**20  # freed, it stays for the next buffer instead of being trimmed


def test_untuned_the_same_buffer_is_mapped() -> None:
    """The witness: glibc's defaults map it, so the test above can tell the difference."""
    mapped, _ = _probe("")
    assert mapped >= 3 * 2**20


def test_a_users_own_malloc_settings_are_left_alone() -> None:
    import os

    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "131072"}
    mapped, _ = _probe("from backupd import malloc_tuning\nassert not malloc_tuning.tune()",
                       env)
    assert mapped >= 3 * 2**20


def test_the_console_script_tunes_before_the_cli_is_imported() -> None:
    probe = """
import sys
from backupd import malloc_tuning
def spy():
    print("tuned; CLI imported:", "backupd.cli" in sys.modules, flush=True)
    return True
malloc_tuning.tune = spy
sys.argv = ["backupd", "version"]
from backupd.__main__ import main
main()
"""
    done = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True,
                          text=True)
    assert done.stdout.splitlines()[0] == "tuned; CLI imported: False"

"""glibc's malloc, tuned for a process that streams data through buffers of a few MiB.

backupd's pipelines allocate and free buffers of 0.5 to 3 MiB on several threads: a pipe read
of up to 1 MiB, a 2 MiB gzip member, its compressed copy, an inflated step. With glibc's
defaults such a buffer is often a fresh mmap, or heap memory handed back to the kernel as
soon as it is freed, so its pages are faulted in and zeroed again for the next one. A
scale-30 backup took ~73,000 page faults; with the thresholds below ~23,000, and 2-4 % less
CPU (issue 18: the backup beside a CPU-bound job), at the same peak RSS (76-78 MiB). The
cost: buffers kept in the heap raise a scale-30 restore's peak RSS from 77 to 86 MiB.

* ``M_MMAP_THRESHOLD``: allocations below it come from the heap, where freed memory is
  reused, rather than from an mmap of their own;
* ``M_TRIM_THRESHOLD``: free memory at the top of a heap is kept up to this size rather than
  returned to the kernel at once.

Setting either turns off glibc's own adjustment of both, so both are set. A user who sets
glibc's ``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_`` keeps their own values.
Other C libraries (musl, macOS) are left alone.
"""

from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 4 * 2**20
TRIM_THRESHOLD = 32 * 2**20


def tune() -> bool:
    """Set the thresholds; whether they were set."""
    if not sys.platform.startswith("linux"):
        return False
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018  -- glibc's, absent from musl
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))

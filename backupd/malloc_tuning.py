"""glibc's malloc, tuned for a process that streams data through buffers of a few MiB.

backupd's pipelines allocate and free buffers of 0.5 to 3 MiB on several threads: a pipe read
of up to 1 MiB, a 2 MiB gzip member, its compressed copy, an inflated step. With glibc's
defaults such a buffer is often a fresh mmap, or heap memory handed back to the kernel as
soon as it is freed, so its pages are faulted in and zeroed again for the next one. A
scale-30 backup took ~73,000 page faults; tuned as below, ~22,000, and 2-4 % less CPU
(issue 18: the backup beside a CPU-bound job).

* ``M_MMAP_THRESHOLD`` (4 MiB): allocations below it come from the heap, where freed memory is
  reused, rather than from an mmap of their own;
* ``M_TRIM_THRESHOLD`` (32 MiB): free memory at the top of the heap is kept up to this size
  rather than returned to the kernel at once;
* ``M_ARENA_MAX`` (1): every thread allocates from the one heap. Each thread arena would keep
  up to the trim threshold of its own, and glibc's ``malloc_trim`` cannot shrink a thread
  arena's top: the daemon, which lives on between jobs, could not give that memory back. With
  one heap it does, after every job (``release_free_memory``). Python's small objects have an
  allocator of their own; the buffers above are a few allocations per MiB, so the one heap's
  lock is not contended (restores took the same time, three pairs).

Peak RSS at scale 30: a backup 72 MiB, a restore 76 MiB (77 and 77 untuned).

Setting a threshold turns off glibc's own adjustment of both, so both are set. A user who
tunes glibc's malloc (any ``MALLOC_*`` variable, or a ``glibc.malloc`` tunable in
``GLIBC_TUNABLES``) keeps their own settings. Other C libraries (musl, macOS) are left alone.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
MMAP_THRESHOLD = 4 * 2**20
TRIM_THRESHOLD = 32 * 2**20
ARENA_MAX = 1


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library, once per process (the daemon asks after every job), if it is glibc."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018  -- glibc's, absent from musl
    except (OSError, AttributeError):
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    return libc


def _tuned_by_the_user() -> bool:
    return (any(name.startswith("MALLOC_") for name in os.environ)
            or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""))


def tune() -> bool:
    """Set the thresholds and the one arena; whether they were set. Before any thread
    allocates: a thread's arena is chosen at its first allocation."""
    libc = _glibc()
    if libc is None or _tuned_by_the_user():
        return False
    return bool(libc.mallopt(_M_ARENA_MAX, ARENA_MAX)
                and libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def release_free_memory() -> None:
    """Give the heap's free memory back to the kernel (the daemon, after a job)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)

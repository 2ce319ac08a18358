"""The console script fixes glibc's malloc thresholds (backupd.malloc_tuning): buffers of a
few MiB come from the heap and are reused there instead of being mapped, faulted in and
returned to the kernel each time. Read back through glibc's own mallinfo2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


def _clean_env(**extra: str) -> dict[str, str]:
    """The tests' own environment, without a developer's own malloc tuning."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    return {**env, **extra}


def _probe(setup: str, env: dict[str, str] | None = None) -> tuple[int, int]:
    done = subprocess.run([sys.executable, "-c", PROBE.format(setup=setup)], check=True,
                          capture_output=True, text=True, env=env or _clean_env())
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


@pytest.mark.parametrize("variable, value", [
    ("MALLOC_TRIM_THRESHOLD_", "131072"),
    ("MALLOC_ARENA_MAX", "4"),
    ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=131072"),
])
def test_a_users_own_malloc_settings_are_left_alone(variable: str, value: str) -> None:
    mapped, _ = _probe("from backupd import malloc_tuning\nassert not malloc_tuning.tune()",
                       _clean_env(**{variable: value}))
    assert mapped >= 3 * 2**20


ARENA_PROBE = """
import ctypes, sys, tempfile, threading
from backupd import malloc_tuning
if sys.argv[1] == "tuned":
    assert malloc_tuning.tune()
barrier = threading.Barrier(4)

def pipeline_thread() -> None:  # allocating while the others do
    buffer = b"\\x01" * (3 * 2**20)
    barrier.wait()
    del buffer

threads = [threading.Thread(target=pipeline_thread) for _ in range(4)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
with tempfile.NamedTemporaryFile(suffix=".xml") as report:
    stream = libc.fopen(report.name.encode(), b"w")
    libc.malloc_info(0, stream)
    libc.fclose(stream)
    print(open(report.name).read().count("<heap nr="))
"""


def _heaps(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", ARENA_PROBE, mode], check=True,
                          capture_output=True, text=True, env=_clean_env())
    return int(done.stdout)


def test_every_thread_allocates_from_the_one_heap_the_daemon_can_trim() -> None:
    """glibc's malloc_trim, which the daemon calls after every job, cannot shrink a thread
    arena's top: with one heap, what the pipeline's threads freed can be given back."""
    assert _heaps("tuned") == 1
    assert _heaps("untuned") > 1  # the witness: glibc's default gives threads arenas


@pytest.mark.parametrize("fails", [False, True], ids=["succeeds", "fails"])
def test_the_daemon_gives_memory_back_after_every_job(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fails: bool) -> None:
    from datetime import UTC

    from backupd import malloc_tuning
    from backupd.daemon import scheduler
    from backupd.daemon.cron import parse_cron
    from backupd.daemon.state import DaemonState
    from backupd.errors import JobFailed
    from backupd.notify.base import NotifierChain
    from backupd.settings import Settings

    released: list[bool] = []
    ran: list[bool] = []
    monkeypatch.setattr(malloc_tuning, "release_free_memory",
                        lambda: released.append(bool(ran)))
    settings = Settings(_env_file=None, POSTGRES_DB="malloc_probe",  # type: ignore[call-arg]
                        DB_BACKUP_DIR=str(tmp_path), HEALTH_PORT="0")

    def body(ctx: object, slot: object) -> None:
        ran.append(True)
        if fails:  # a failed job's buffers are given back too
            raise JobFailed("pg_dump failed")

    spec = scheduler.JobSpec("backup", "backup_schedule", body)
    job = scheduler.ScheduledJob(spec, parse_cron("0 2 * * *", "BACKUP_SCHEDULE", UTC))
    daemon = scheduler.Daemon(settings, [job], NotifierChain([]), DaemonState(tmp_path))
    daemon._fire("backup")
    assert ran == [True]
    assert released == [True]  # once, after the job's body


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

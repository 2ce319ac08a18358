"""atomic_write makes a large file durable as it grows (fdatasync in a thread of its own),
and a failure of that background fdatasync fails the write: the closing fsync would not
report an error that an earlier fdatasync of the same file has already taken."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

from backupd.naming import partial_name
from backupd.storage.atomic import SYNC_STEP, atomic_write

BLOCK = os.urandom(1024 * 1024)


def write_blocks(path: Path, blocks: int, *, after_first_step: threading.Event | None = None
                 ) -> None:
    """``blocks`` MiB through atomic_write; with ``after_first_step``, the writer waits (10 s
    at most) for it once past SYNC_STEP, so the background sync has run before it closes."""
    with atomic_write(path) as handle:
        for number in range(blocks):
            handle.write(BLOCK)
            if after_first_step is not None and (number + 1) * len(BLOCK) == 2 * SYNC_STEP:
                handle.flush()  # the first step reaches the OS, the sync starts
                after_first_step.wait(10)


def test_a_large_file_is_synced_as_it_grows_in_another_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    synced = threading.Event()
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        calls.append(threading.current_thread().name)
        real(fd)
        synced.set()

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    blocks = 3 * SYNC_STEP // len(BLOCK) + 1
    path = tmp_path / "big.bin"
    write_blocks(path, blocks, after_first_step=synced)
    assert path.read_bytes() == BLOCK * blocks
    # Off the writer's thread, whose only sync is the closing fsync.
    assert calls
    assert set(calls) == {"fdatasync"}


def test_a_small_file_starts_no_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(os, "fdatasync", calls.append)
    write_blocks(tmp_path / "small.bin", 1)
    assert calls == []


def test_a_failed_background_sync_fails_the_write_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    failed = threading.Event()

    def fdatasync(fd: int) -> None:
        failed.set()
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    path = tmp_path / "big.bin"
    with pytest.raises(OSError) as caught:
        write_blocks(path, 3 * SYNC_STEP // len(BLOCK), after_first_step=failed)
    assert failed.is_set()
    assert caught.value.errno == errno.EIO
    assert not path.exists()
    assert not (tmp_path / partial_name(path.name)).exists()

"""The job's Progress: what the pipeline's streams moved, read by the stall watchdog and by
progress displays. One real backup shows the dump stream counted byte for byte."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from helpers.backups import read_manifest
from helpers.pg import ServerAddress

from backupd.cancel import CancelToken
from backupd.commands import backup
from backupd.job import JobContext, run_job
from backupd.notify.base import NotifierChain
from backupd.progress import Progress
from backupd.result import Status
from backupd.settings import load_settings


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_streams_count_bytes_and_idle_time() -> None:
    clock = FakeClock()
    progress = Progress(clock=clock)
    clock.now += 7
    assert progress.snapshot().idle_seconds == 7
    with progress.stream("pg_dump output") as dump:
        dump.moved(10)
        clock.now += 3
        dump.moved(5)
        clock.now += 2
        snap = progress.snapshot()
        assert snap.bytes == 15 and snap.idle_seconds == 2
        assert [s.name for s in snap.open_streams] == ["pg_dump output"]
    snap = progress.snapshot()
    assert snap.open_streams == () and snap.streams[0].finished and snap.streams[0].bytes == 15


def test_nested_progress_moves_its_parent_and_delegates_judgement() -> None:
    clock = FakeClock()
    outer = Progress(clock=clock)
    inner = outer.nested()
    assert outer.delegated
    clock.now += 50
    inner.stream("row counts").moved(0)
    assert outer.snapshot().idle_seconds == 0
    inner.close()
    assert not outer.delegated


def test_child_token_follows_its_parent_not_the_other_way() -> None:
    parent = CancelToken()
    child = parent.child()
    child.cancel("stalled", failure=True)
    assert not parent.cancelled
    other = parent.child()
    parent.cancel("job timeout", failure=True)
    assert other.cancelled and other.reason == "job timeout" and other.failure
    other.release()
    child.release()
    assert not parent.progress.delegated


def test_a_backup_counts_every_byte_pg_dump_wrote(
        pg_server: ServerAddress, small_db: str, backup_dir: Path,
        backupd_env: Callable[..., dict[str, str]]) -> None:
    settings = load_settings(**backupd_env(small_db))
    seen: list[Progress] = []

    def body(ctx: JobContext) -> None:
        seen.append(ctx.progress)
        backup.run(ctx)

    result = run_job("backup", settings, body, NotifierChain([]), CancelToken())
    assert result.status == Status.SUCCESS, result.error
    assert result.backup_name is not None
    dumped = [s for s in seen[0].snapshot().streams if s.name == "pg_dump output"]
    assert len(dumped) == 1 and dumped[0].finished
    assert dumped[0].bytes == read_manifest(backup_dir / result.backup_name)["raw_bytes"] > 0

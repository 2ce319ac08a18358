"""A live progress display on the terminal for a command's job: one line per byte stream.

It only observes the job's :class:`~backupd.progress.Progress` (the object the pipeline's
streams tick and the stall watchdog reads): bytes moved, of a total when the stream knows
one, the rate, the time elapsed and left. When every stream is done but the job still
works (psql building indexes after the last byte of a restore), it says so.

Shown only on a terminal (stdout and stderr both TTYs, ``cli.app.progress_wanted``) unless
``--progress`` or ``--no-progress`` says otherwise, so logs, pipes and cron output never see
it. It draws on stderr; it is paused around prompts (:func:`paused`) and stopped before the command
prints its summary or error, so it never hides either; log lines print above it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

from rich.console import Console, RenderableType
from rich.progress import (
    BarColumn,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress
from rich.text import Text

from backupd.progress import Progress, StreamState
from backupd.result import human_bytes

REFRESH_PER_SECOND = 4
# After a restore's data went in, psql (pg_restore) still builds indexes and checks
# constraints: no bytes move, and the display says why.
FEEDS = ("psql feed", "pg_restore feed")
BUILDING = "building indexes… (the data is in; psql is still working)"
WORKING = "working… (no data moving right now)"

_active: list[LiveDisplay] = []


@contextlib.contextmanager
def shown(progress: Progress, job: str, *, forced: bool = False) -> Iterator[None]:
    """Show ``progress`` while the body runs; stopped, whatever happens, before the caller
    prints anything after it. ``forced`` (--progress): drawn even when not on a terminal."""
    display = LiveDisplay(progress, job, forced=forced)
    display.start()
    _active.append(display)
    try:
        yield
    finally:
        _active.remove(display)
        display.stop()


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """No live display while the body runs (a prompt); it resumes afterwards."""
    displays = list(_active)
    for display in displays:
        display.stop()
    try:
        yield
    finally:
        for display in displays:
            display.start()


class _Percent(ProgressColumn):
    def render(self, task: Task) -> Text:
        if task.total is None or not task.total:
            return Text("")
        return Text(f"{min(100.0, 100.0 * task.completed / task.total):5.1f}%")


class _Bytes(ProgressColumn):
    def render(self, task: Task) -> Text:
        done = human_bytes(task.completed)
        return Text(done if task.total is None else f"{done} of {human_bytes(task.total)}")


class _Rate(ProgressColumn):
    def render(self, task: Task) -> Text:
        if task.fields.get("phase") or task.speed is None:
            return Text("")
        return Text(f"{human_bytes(task.speed)}/s")


class LiveDisplay(RichProgress):
    """rich's progress bars, synchronised with the job's Progress on every refresh."""

    def __init__(self, progress: Progress, job: str, *, forced: bool = False) -> None:
        self._job = job
        self._progress = progress
        self._lines: dict[tuple[str, float], TaskID] = {}  # (name, started) -> its line
        self._done: set[tuple[str, float]] = set()
        self._phase: TaskID | None = None
        super().__init__(
            TextColumn("{task.description}"), BarColumn(bar_width=24), _Percent(), _Bytes(),
            _Rate(), TextColumn("elapsed"), TimeElapsedColumn(), TextColumn("left"),
            TimeRemainingColumn(),
            console=Console(stderr=True, force_terminal=True if forced else None),
            refresh_per_second=REFRESH_PER_SECOND,
            redirect_stdout=True, redirect_stderr=True,
        )

    def get_renderables(self) -> Iterable[RenderableType]:
        with contextlib.suppress(Exception):  # a display problem must never fail the job
            self._sync(self._progress.streams_in_tree())
        yield from super().get_renderables()

    def _sync(self, streams: list[StreamState]) -> None:
        for stream in streams:
            key = (stream.name, stream.started)
            task = self._lines.get(key)
            if task is None:
                task = self._lines[key] = self.add_task(stream.name, total=stream.total)
            if key in self._done:
                continue
            self.update(task, completed=stream.bytes, total=stream.total)
            if stream.finished:
                self._done.add(key)
                self.update(task, total=stream.total or stream.bytes or 1)
                self.stop_task(task)
        open_streams = [s for s in streams if not s.finished]
        if open_streams or not streams:
            if self._phase is not None:
                self.remove_task(self._phase)
                self._phase = None
            return
        if self._phase is None:
            fed = self._job == "restore" and any(s.name.startswith(FEEDS) for s in streams)
            self._phase = self.add_task(BUILDING if fed else WORKING, total=None, phase=True)

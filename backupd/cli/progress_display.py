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
import threading
from collections.abc import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
)
from rich.progress import Progress as RichProgress
from rich.text import Text

from backupd.progress import Progress, StreamState
from backupd.result import human_bytes

REFRESH_PER_SECOND = 4
# Lines of finished streams still shown (a backup run of many databases stays short).
FINISHED_SHOWN = 4
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
        if task.fields.get("known_total") is None or not task.total:
            return Text("")
        return Text(f"{min(100.0, 100.0 * task.completed / task.total):5.1f}%")


class _Bytes(ProgressColumn):
    def render(self, task: Task) -> Text:
        if task.fields.get("phase"):
            return Text("")
        done = human_bytes(task.completed)
        total = task.fields.get("known_total")
        return Text(done if total is None else f"{done} of {human_bytes(total)}")


class _Times(ProgressColumn):
    def render(self, task: Task) -> Text:
        elapsed = _clock(task.finished_time if task.finished else task.elapsed)
        left = task.time_remaining
        if task.fields.get("known_total") is None or left is None or task.finished:
            return Text(f"elapsed {elapsed}")
        return Text(f"elapsed {elapsed}, left {_clock(left)}")


def _clock(seconds: float | None) -> str:
    whole = int(seconds or 0)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


class _Rate(ProgressColumn):
    def render(self, task: Task) -> Text:
        if task.fields.get("phase") or task.speed is None:
            return Text("")
        return Text(f"{human_bytes(task.speed)}/s")


class LiveDisplay(RichProgress):
    """rich's progress bars, synchronised with the job's Progress by a thread of its own
    (REFRESH_PER_SECOND)."""

    def __init__(self, progress: Progress, job: str, *, forced: bool = False) -> None:
        self._job = job
        self._progress = progress
        self._lines: dict[tuple[str, float], TaskID] = {}  # (name, started) -> its line
        self._done: set[tuple[str, float]] = set()
        self._phase: TaskID | None = None
        super().__init__(
            TextColumn("{task.description}"), BarColumn(bar_width=20), _Percent(), _Bytes(),
            _Rate(), _Times(),
            console=Console(stderr=True, force_terminal=True if forced else None),
            refresh_per_second=REFRESH_PER_SECOND,
            redirect_stdout=True, redirect_stderr=True,
        )

    def start(self) -> None:
        """Watches the job; draws nothing (not even the cursor-hide escape) until some stream
        has moved data, so a job that fails before that (bad input) prints only its error."""
        self._drawing = False
        self._drawing_lock = threading.RLock()
        self._stopping = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="progress-display",
                                        daemon=True)
        self._poller.start()

    def stop(self) -> None:
        self._stopping.set()
        self._poller.join(timeout=5)
        with self._drawing_lock:
            self._refresh_lines()  # the final figures
            if not self._drawing:
                return
            if self._phase is not None:
                self.remove_task(self._phase)  # the work it stood for is over
                self._phase = None
            super().stop()
            self._drawing = False

    def _poll(self) -> None:
        while not self._stopping.wait(1 / REFRESH_PER_SECOND):
            self._refresh_lines()

    def _refresh_lines(self) -> None:
        # Outside rich's rendering: adding a line makes rich redraw.
        with self._drawing_lock, contextlib.suppress(Exception):  # never fails the job
            streams = self._progress.streams_in_tree()
            if not self._drawing:
                if not any(stream.bytes for stream in streams):
                    return
                super().start()
                self._drawing = True
            self._sync(streams)

    def _sync(self, streams: list[StreamState]) -> None:
        for stream in streams:
            key = (stream.name, stream.started)
            task = self._lines.get(key)
            if task is None:
                task = self._lines[key] = self.add_task(stream.name, total=stream.total,
                                                        known_total=stream.total)
            if key in self._done:
                continue
            self.update(task, completed=stream.bytes, total=stream.total)
            if stream.finished:
                self._done.add(key)
                self.update(task, total=stream.total or stream.bytes or 1)
                self.stop_task(task)
        finished = [self._lines[(s.name, s.started)] for s in streams if s.finished]
        for old in finished[:max(0, len(finished) - FINISHED_SHOWN)]:
            self.update(old, visible=False)
        open_streams = [s for s in streams if not s.finished]
        if open_streams or not streams:
            if self._phase is not None:
                self.remove_task(self._phase)
                self._phase = None
            return
        if self._phase is None:
            fed = self._job == "restore" and any(s.name.startswith(FEEDS) for s in streams)
            self._phase = self.add_task(BUILDING if fed else WORKING, total=None, phase=True)

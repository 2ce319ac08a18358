"""How much data a job has moved, stream by stream.

The pipeline's stages tick it (pg_dump's output, the read-back, a verify read, the row
counts, a restore's feed, an upload or download); the stall watchdog (``backupd.watchdog``)
and progress displays read it through :meth:`Progress.snapshot`. It travels with the job's
``CancelToken`` (``token.progress``): every stage that can be cancelled already holds the
token, and every stage that moves data can be cancelled.

A top-level module of its own, importing nothing of backupd, so any layer may use it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # a type only: this module imports nothing of backupd when it runs
    from backupd.settings import Settings

# Finished streams a snapshot still shows (a display's final totals); older ones are dropped.
FINISHED_KEPT = 32

Clock = Callable[[], float]


@dataclass(frozen=True)
class Place:
    """A database the job's server sessions work in. ``server``: None for the job's own
    server (POSTGRES_HOST); else the settings of another server the job works on (a drill
    server), for the watchdog's probe. Progress only keeps it, compared by identity."""

    database: str
    server: Settings | None = None


@dataclass(frozen=True)
class StreamState:
    """One stream as a snapshot saw it; times are the Progress clock's (monotonic seconds)."""

    name: str
    bytes: int
    total: int | None
    started: float
    last_moved: float
    finished: bool


@dataclass(frozen=True)
class ProgressSnapshot:
    at: float
    last_moved: float
    streams: tuple[StreamState, ...]

    @property
    def bytes(self) -> int:
        return sum(stream.bytes for stream in self.streams)

    @property
    def idle_seconds(self) -> float:
        """Seconds since any data moved (or the job started)."""
        return max(0.0, self.at - self.last_moved)

    @property
    def open_streams(self) -> tuple[StreamState, ...]:
        return tuple(stream for stream in self.streams if not stream.finished)


class Stream:
    """One flow of bytes; ``moved(n)`` after every chunk. Use as a context manager (or call
    ``finish``) so the watchdog knows what a job is still waiting on."""

    def __init__(self, owner: Progress, name: str, total: int | None,
                 sample: Callable[[], int] | None = None) -> None:
        self._owner = owner
        self.name = name
        self.total = total
        self.bytes = 0
        self.started = self.last_moved = owner.clock()
        self.finished = False
        # A stream whose bytes are counted elsewhere (a child's own I/O), read on snapshots.
        self.sample = sample

    def moved(self, nbytes: int) -> None:
        self._owner._moved(self, nbytes)

    def finish(self) -> None:
        self._owner._finish(self)

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.finish()

    def state(self) -> StreamState:
        return StreamState(self.name, self.bytes, self.total, self.started, self.last_moved,
                           self.finished)


class Progress:
    """A job's progress. Thread-safe: stages tick from their own threads."""

    def __init__(self, *, clock: Clock = time.monotonic, parent: Progress | None = None) -> None:
        self.clock = clock
        self._parent = parent
        self._lock = threading.Lock()
        self._streams: list[Stream] = []
        self._last_moved = clock()
        self._nested = 0
        # Nested progresses, open or among the last FINISHED_KEPT closed (displays walk them).
        self._children: list[Progress] = []
        self._closed = False
        self._places: list[Place] = []

    def stream(self, name: str, total: int | None = None) -> Stream:
        """A new stream named for people ("pg_dump output", "S3 upload of NAME")."""
        stream = Stream(self, name, total)
        with self._lock:
            self._streams.append(stream)
            self._last_moved = stream.started
        if self._parent is not None:
            self._parent.touch()
        return stream

    def sampled(self, name: str, sample: Callable[[], int]) -> Stream:
        """A stream whose byte count ``sample()`` reads (a child that reads its file itself:
        ``Child.io_bytes``); every snapshot samples it, and a change is movement."""
        stream = Stream(self, name, None, sample)
        with self._lock:
            self._streams.append(stream)
            self._last_moved = stream.started
        return stream

    def touch(self) -> None:
        """Work done without bytes to count (a table's rows counted, a file opened)."""
        with self._lock:
            self._last_moved = self.clock()
        if self._parent is not None:
            self._parent.touch()

    def working_in(self, database: str, server: Settings | None = None) -> None:
        """The job's server sessions also work in ``database`` (a restore's scratch one; with
        ``server``, a database on another server, see :class:`Place`): the work the server
        shows there (an index build, a COPY) is the job's too."""
        with self._lock:
            if not any(p.database == database and p.server is server for p in self._places):
                self._places.append(Place(database, server))
        if self._parent is not None:
            self._parent.working_in(database, server)

    def places(self) -> tuple[Place, ...]:
        """Every database named by ``working_in``, with its server, in order."""
        with self._lock:
            return tuple(self._places)

    def nested(self) -> Progress:
        """The progress of a job run inside this one (each database of a backup run): its
        movement counts as ours, and while it is open (``close``) its own watchdog, not
        ours, judges stalls (``delegated``)."""
        child = Progress(clock=self.clock, parent=self)
        with self._lock:
            self._nested += 1
            self._children.append(child)
        return child

    def close(self) -> None:
        """A nested progress is done."""
        if self._parent is not None:
            with self._parent._lock:
                self._parent._nested -= 1
                self._closed = True
                closed = [c for c in self._parent._children if c._closed]
                for old in closed[:max(0, len(closed) - FINISHED_KEPT)]:
                    self._parent._children.remove(old)
            self._parent.touch()

    @property
    def delegated(self) -> bool:
        with self._lock:
            return self._nested > 0

    def snapshot(self) -> ProgressSnapshot:
        with self._lock:
            sampled = [s for s in self._streams if s.sample is not None and not s.finished]
        for stream in sampled:
            assert stream.sample is not None
            count = stream.sample()  # must not raise (Child.io_bytes: 0 when it cannot tell)
            if count != stream.bytes:
                self._moved(stream, count - stream.bytes)
        with self._lock:
            return ProgressSnapshot(self.clock(), self._last_moved,
                                    tuple(stream.state() for stream in self._streams))

    def streams_in_tree(self) -> list[StreamState]:
        """This progress's streams and those of its nested ones (the job run inside it, each
        database of a backup run; the last closed ones too): what a display shows, in the
        order they began."""
        snapshot = self.snapshot()
        with self._lock:
            children = list(self._children)
        streams = list(snapshot.streams)
        for child in children:
            streams += child.streams_in_tree()
        return sorted(streams, key=lambda stream: stream.started)

    def _moved(self, stream: Stream, nbytes: int) -> None:
        now = self.clock()
        with self._lock:
            stream.bytes += nbytes
            stream.last_moved = self._last_moved = now
        if self._parent is not None:
            self._parent.touch()

    def _finish(self, stream: Stream) -> None:
        with self._lock:
            if stream.finished:
                return
            stream.finished = True
            self._last_moved = self.clock()
            finished = [s for s in self._streams if s.finished]
            for old in finished[:max(0, len(finished) - FINISHED_KEPT)]:
                self._streams.remove(old)


class Writer(Protocol):
    def write(self, data: bytes) -> int: ...


class _Counted:
    def __init__(self, target: Writer, stream: Stream) -> None:
        self._target = target
        self._stream = stream

    def write(self, data: bytes) -> int:
        written = self._target.write(data)
        self._stream.moved(len(data))
        return written


def counted(target: Writer, stream: Stream | None) -> Writer:
    """``target``, counting every write on ``stream`` (when there is one)."""
    return target if stream is None else _Counted(target, stream)

"""The one supervisor for child processes: pg_dump, psql, pg_restore, pg_basebackup and the
long-running pg_receivewal all start, stop and fail the same way.

Every child

* starts with a minimal environment: ``CHILD_ENV_KEYS`` of ours plus what the caller adds
  (libpq's ``PG*`` variables), so AWS keys, webhook URLs and the like never reach it;
* leads a process group of its own (``start_new_session``); whatever it starts stays in it;
* dies with us, even when we are killed with SIGKILL:

  - ``PR_SET_PDEATHSIG`` (SIGKILL) kills the child itself when the *thread* that started it
    ends. A supervisor waits for its child in the thread that started it, so that thread
    always outlives the child; start a child from a short-lived thread and it dies early;
  - the reaper (``backupd.pipeline.reaper``), a tiny process of its own, holds the read end
    of a pipe whose write end only we hold. Each child registers its process group on it
    before it executes anything (so no grandchild can exist unregistered). When we die,
    however we die, the pipe reaches end of file and the reaper SIGKILLs every group still
    registered: grandchildren (pg_restore's parallel workers, a wrapper's real tool) go too;

* has its whole group stopped (SIGTERM) when the job's CancelToken fires, and killed
  (SIGKILL) ``STOP_GRACE_SECONDS`` later if it is still there: a child deaf to SIGTERM (a
  wedged tool, a wrapper that traps it) cannot hold a cancelled job;
* keeps the tail of its stderr, and ``error_line`` is the one rule for the line a failure
  quotes: the server's ``ERROR:``/``FATAL:`` line, never its ``DETAIL:``/``HINT:``.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import os
import re
import select
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import IO

from backupd.cancel import CancelToken
from backupd.errors import ConfigError
from backupd.pipeline.clients import chosen_tool
from backupd.pipeline.procio import group_io_bytes
from backupd.pipeline.reaper import REAPER, die_with

STDERR_TAIL_LINES = 20
# Only what a PostgreSQL client tool needs from our own environment; everything else,
# notably AWS_* and webhook URLs, stays out of the children.
CHILD_ENV_KEYS = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "HOME", "TMPDIR", "PGSSLMODE",
                  "PGSSLROOTCERT", "PGSSLCERT", "PGSSLKEY", "PGSERVICEFILE", "PGSERVICE")
# How long a child has between SIGTERM and SIGKILL when it is stopped.
STOP_GRACE_SECONDS = 10.0


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {key: os.environ[key] for key in CHILD_ENV_KEYS if key in os.environ}
    env.update(extra or {})
    return env


def tool_path(tool: str) -> str:
    # The versioned client for the server (backupd.pipeline.clients), else what PATH finds.
    path = chosen_tool(tool) or shutil.which(tool)
    if path is None:
        raise ConfigError(f"{tool}: not found on PATH; install the PostgreSQL client tools")
    return path


BinaryKey = tuple[str, int, int]


def binary_key(path: str) -> BinaryKey:
    """What identifies one build of a tool: its resolved path, mtime and size (a package
    upgrade that replaces the binary is a new key). For caching what a binary answers."""
    info = os.stat(path)
    return os.path.realpath(path), info.st_mtime_ns, info.st_size


def tool_version(tool: str) -> tuple[str, int]:
    """(full version text, major) of a PostgreSQL client tool, e.g. ("15.20", 15): asked
    once per binary (a backup needed it up to three times, a daemon at every run)."""
    path = tool_path(tool)
    return _version(binary_key(path), path, tool)


# A binary that hangs on --version (a broken install, a wrapper waiting on something) must not
# hang the job: neither the stall watchdog nor the job timeout reaches this child.
VERSION_TIMEOUT_SECONDS = 30.0


def _read_until_end(fd: int, timeout: float) -> str | None:
    """Everything a pipe carries until its end, or None past ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            return None
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks).decode("utf-8", "replace")
        chunks.append(chunk)


# The key argument makes a replaced binary (a package upgrade) a new entry. A failure (the
# ConfigError below) is not cached: it is asked again next time.
@functools.cache
def _version(key: BinaryKey, path: str, tool: str) -> tuple[str, int]:
    del key
    with Child([path, "--version"], stdout=subprocess.PIPE) as child:
        assert child.stdout is not None
        out = _read_until_end(child.stdout.fileno(), VERSION_TIMEOUT_SECONDS)
        if out is None:  # leaving the block kills the child's group
            raise ConfigError(f"{tool}: `{path} --version` did not answer within "
                              f"{VERSION_TIMEOUT_SECONDS:.0f} s; check that binary (the "
                              "PostgreSQL client tools) on this machine")
        child.wait(VERSION_TIMEOUT_SECONDS)
    match = re.search(r"(\d+)(?:\.(\d+))?", out)
    if match is None:
        raise ConfigError(f"{tool}: cannot tell its version from {out.strip()!r}")
    return match.group(0), int(match.group(1))


# --- the error-line rule ------------------------------------------------------------------------

# The server's own severity, as every client prints it ("... failed: FATAL:  password ...").
_SERVER_ERROR = re.compile(r"\b(?:ERROR|FATAL|PANIC):")
# A tool's own failure: "pg_dump: error: ...", "pg_restore: error: ...".
_TOOL_ERROR = re.compile(r"^[\w./-]+: (?:error|fatal): ", re.IGNORECASE)
# Lines that explain an error but are not it; a query echoed in them may hold any text.
_SUPPLEMENTARY = re.compile(
    r"^(?:[\w./<>:-]+: )?(?:DETAIL|HINT|CONTEXT|LINE \d+|QUERY|STATEMENT|Query was|Command was"
    r"|detail|hint)(?::|\s)", re.IGNORECASE)


def error_rank(line: str) -> int:
    """0 for the server's ERROR:/FATAL: line, 1 for a tool's "error:" line, 2 otherwise."""
    if _SUPPLEMENTARY.match(line):
        return 3
    if _SERVER_ERROR.search(line):
        return 0
    if _TOOL_ERROR.match(line):
        return 1
    return 2


def error_line(lines: Iterable[str]) -> str:
    """The line a failure quotes: the first server error, else the first tool error, else the
    last line that is not a DETAIL:/HINT:, else the last line ("" when there is none)."""
    best: dict[int, str] = {}
    last = ""
    for line in lines:
        rank = error_rank(line)
        if rank < 2:
            best.setdefault(rank, line)
        elif rank == 2:
            best[2] = line
        last = line
    for rank in (0, 1, 2):
        if rank in best:
            return best[rank]
    return last


# --- the child ------------------------------------------------------------------------------

class Child:
    """One supervised child process. Use as a context manager: leaving the block by an
    exception kills the child's whole process group and reaps it."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        stdin: int | IO[bytes] | None = subprocess.DEVNULL,
        stdout: int | IO[bytes] | None = subprocess.DEVNULL,
        cancel: CancelToken | None = None,
        stderr_lines: int = STDERR_TAIL_LINES,
    ) -> None:
        self.argv = list(argv)
        self.env = child_env(env)
        self._stdin = stdin
        self._stdout = stdout
        self._cancel = cancel
        self._tail: collections.deque[str] = collections.deque(maxlen=stderr_lines)
        self._first_errors: dict[int, str] = {}
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._reaped = False
        self._unwatch: Callable[[], None] = lambda: None
        self._killer: threading.Timer | None = None
        self.process: subprocess.Popen[bytes] | None = None

    # starting

    def start(self) -> Child:
        registered, registered_write = os.pipe()
        try:
            try:
                self.process = subprocess.Popen(
                    self.argv, stdin=self._stdin, stdout=self._stdout, stderr=subprocess.PIPE,
                    env=self.env, start_new_session=True,
                    preexec_fn=die_with(os.getpid(), REAPER.fd(), registered_write))
            except BaseException:
                os.close(registered_write)
                registered_write = -1
                # The child registered its group, then could not execute: unregister it.
                with os.fdopen(registered, "rb", closefd=False) as pids:
                    for line in pids.read().split():
                        REAPER.unregister(int(line))
                raise
        finally:
            for fd in (registered, registered_write):
                if fd >= 0:
                    os.close(fd)
        self.follow(self.process.stderr, self._stderr_line)
        if self._cancel is not None:
            self._unwatch = self._cancel.on_cancel(self.terminate)
        return self

    def __enter__(self) -> Child:
        return self if self.process is not None else self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self.process is None or self._reaped:
            return
        if kind is not None or not self._exited(0):
            self.kill()
        self.wait()

    @property
    def stdin(self) -> IO[bytes] | None:
        return self.process.stdin if self.process is not None else None

    @property
    def stdout(self) -> IO[bytes] | None:
        return self.process.stdout if self.process is not None else None

    def follow(self, stream: IO[bytes] | None, handle: Callable[[str], None]) -> None:
        """Read ``stream`` line by line in a thread of its own (joined by ``wait``)."""
        def run() -> None:
            assert stream is not None
            with contextlib.suppress(OSError, ValueError):
                for raw in stream:
                    handle(raw.decode("utf-8", "replace").rstrip())
        thread = threading.Thread(target=run, name=f"{os.path.basename(self.argv[0])}-reader",
                                  daemon=True)
        thread.start()
        self._threads.append(thread)

    def _stderr_line(self, line: str) -> None:
        if not line:
            return
        self._tail.append(line)
        rank = error_rank(line)
        if rank < 2:
            self._first_errors.setdefault(rank, line)

    # stopping

    def _signal_group(self, sig: int) -> None:
        with self._lock:
            if self.process is None or self._reaped:
                return
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, sig)

    def terminate(self) -> None:
        """SIGTERM to the whole process group (what a cancelled job does), SIGKILL after
        ``STOP_GRACE_SECONDS`` unless it is reaped by then. Whoever waits for the child then
        sees it end either way: a pipe it held reaches end of file, ``wait`` returns."""
        self._signal_group(signal.SIGTERM)
        with self._lock:
            if self.process is None or self._reaped or self._killer is not None:
                return
            # A timer, not a wait here: this runs in whatever thread cancelled the token.
            self._killer = threading.Timer(STOP_GRACE_SECONDS, self.kill)
            self._killer.daemon = True
            self._killer.start()

    def kill(self) -> None:
        self._signal_group(signal.SIGKILL)

    def interrupt(self) -> None:
        """SIGINT to the group: pg_receivewal flushes what it has and exits 0."""
        self._signal_group(signal.SIGINT)

    def wait(self, timeout: float | None = None) -> int:
        """The child's exit code; past ``timeout`` its group is killed first. Whatever the
        child left running in its group is killed before the child is reaped (its pid, the
        group's id, cannot be reused until then)."""
        assert self.process is not None
        if self._reaped:
            return self.process.wait()
        if not self._exited(timeout):
            self.kill()
            self._exited(None)
        self._unwatch()
        self.kill()  # stragglers in the group; the leader is a zombie by now
        # Unregistered while the zombie leader still holds the pid: once reaped, the pid may
        # become another process group's id, which a reaper acting on our death would kill.
        REAPER.unregister(self.process.pid)
        with self._lock:
            code = self.process.wait()
            self._reaped = True
            if self._killer is not None:
                self._killer.cancel()
        for thread in self._threads:
            thread.join(5)
        return code

    def has_exited(self, timeout: float) -> bool:
        """Whether the child exits within ``timeout`` seconds (it is not reaped: ``wait``)."""
        return self._exited(timeout)

    def _exited(self, timeout: float | None) -> bool:
        """Wait for the child to exit without reaping it."""
        assert self.process is not None
        flags = os.WEXITED | os.WNOWAIT
        if timeout is None:
            with contextlib.suppress(ChildProcessError):
                os.waitid(os.P_PID, self.process.pid, flags)
            return True
        deadline = time.monotonic() + timeout
        delay = 0.001
        while True:
            try:
                if os.waitid(os.P_PID, self.process.pid, flags | os.WNOHANG) is not None:
                    return True
            except ChildProcessError:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def stop(self, grace: float = STOP_GRACE_SECONDS, *, signum: int = signal.SIGTERM) -> int:
        """``signum`` to the group (SIGINT ends pg_receivewal after its last flush), SIGKILL
        after ``grace`` seconds; the exit code."""
        self._signal_group(signum)
        return self.wait(grace)

    def running(self) -> bool:
        """Started and not exited yet (a long-running child: pg_receivewal)."""
        return self.process is not None and not self._reaped and not self._exited(0)

    # what it does

    def io_bytes(self) -> int:
        """Bytes the child's process group has read and written so far (Linux
        ``/proc/<pid>/io``: files, pipes and sockets alike), for a child that moves its data
        itself (pg_restore reading its file): the stall watchdog's view of its movement."""
        if self.process is None or self._reaped:
            return 0
        return group_io_bytes(self.process.pid)

    # what went wrong

    @property
    def stderr_lines(self) -> list[str]:
        return list(self._tail)

    @property
    def stderr_tail(self) -> str:
        return "\n".join(self._tail)

    @property
    def error_line(self) -> str:
        """The one line a failure quotes (see ``error_line``); "" when stderr was empty."""
        for rank in (0, 1):
            if rank in self._first_errors:
                return self._first_errors[rank]
        return error_line(self._tail)

"""pg_dump as a child process whose stdout is the pipeline's source."""

from __future__ import annotations

import collections
import contextlib
import fcntl
import subprocess
import threading
from typing import IO

from backupd.pg import child_env, tool_path
from backupd.settings import Settings

STDERR_TAIL_LINES = 20
# pg_dump's stdout pipe is enlarged to this (Linux; capped by /proc/sys/fs/pipe-max-size):
# fewer, larger reads and far fewer context switches than with the default 64 KiB.
PIPE_SIZE = 1024 * 1024


class PgDump:
    """Runs pg_dump; keeps the last lines of its stderr for the job result."""

    def __init__(self, settings: Settings, backup_format: str = "plain") -> None:
        fmt = "custom" if backup_format == "custom" else "plain"
        # The database name travels in PGDATABASE, not argv: a name starting with '-'
        # can then never be read as an option.
        self.argv = [tool_path("pg_dump"), f"--format={fmt}", "--no-password"]
        self.env = child_env(settings)
        self._stderr: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self.process: subprocess.Popen[bytes] | None = None
        self._stderr_reader: threading.Thread | None = None

    def start(self) -> IO[bytes]:
        self.process = subprocess.Popen(
            self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        self._stderr_reader = threading.Thread(target=self._drain_stderr, daemon=True)
        self._stderr_reader.start()
        assert self.process.stdout is not None
        _enlarge_pipe(self.process.stdout.fileno())
        return self.process.stdout

    def _drain_stderr(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        for raw in self.process.stderr:
            line = raw.decode("utf-8", errors="replace").rstrip()
            if line:
                self._stderr.append(line)

    def terminate(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()

    def wait(self, timeout: float | None = None) -> int:
        assert self.process is not None
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        if self._stderr_reader is not None:
            self._stderr_reader.join(5)
        return code

    def stop(self) -> None:
        """Make sure the child is gone (after an error in our half of the pipe)."""
        if self.process is None:
            return
        self.terminate()
        self.wait(10)
        if self.process.stdout is not None:
            self.process.stdout.close()

    @property
    def stderr_tail(self) -> str:
        return "\n".join(self._stderr)

    @property
    def last_error_line(self) -> str:
        for line in reversed(self._stderr):
            if "error" in line.lower() or "fatal" in line.lower():
                return line
        return self._stderr[-1] if self._stderr else ""


def _enlarge_pipe(fd: int) -> None:
    """Best effort: an older kernel or a lower pipe-max-size keeps the default size."""
    size = PIPE_SIZE
    with contextlib.suppress(OSError, ValueError), open("/proc/sys/fs/pipe-max-size") as limit:
        size = min(size, int(limit.read()))
    with contextlib.suppress(OSError, AttributeError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, size)

"""psql as a supervised child: SQL streamed into one transaction that is committed only after
its last byte, and only if the producer of the SQL says so.

backupd writes BEGIN itself and COMMIT only after the last byte, rather than using psql's
--single-transaction: that option commits at end of input, so a backupd killed mid-stream
would leave a half-restored database. Here psql sees end of input inside an open
transaction and PostgreSQL rolls it back. psql echoes ``COMMIT_CONFIRMATION`` only once it
has executed the COMMIT: a psql that stops early without an error restored nothing.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Protocol

from backupd.cancel import CancelToken
from backupd.pipeline.config import ConnectionConfig
from backupd.pipeline.supervisor import Child, tool_path
from backupd.progress import Stream

# psql prints this (\echo, to stdout) only after it has executed backupd's COMMIT.
COMMIT_CONFIRMATION = b"backupd: restore committed"
# What psql's stdin gathers before it is written: a Linux pipe's capacity. Most of a dump
# comes in pieces this big or bigger (written at once); the small ones between entries
# (a header, a short statement, a commit boundary) go out together, not a write each.
BATCH_BYTES = 64 * 1024


class Feed(Protocol):
    """psql's input as the producer sees it. What is sent may wait in backupd's buffer:
    ``flush`` before anything waits on what psql runs (end of input flushes too)."""

    def send(self, data: bytes) -> None: ...

    def flush(self) -> None:
        """Hand psql everything sent so far."""
        ...

    def gone(self) -> bool:
        """psql stopped (an SQL error): nothing sent from now on runs."""
        ...


# Pushes the SQL through ``feed.send``; True when it may be committed.
Producer = Callable[[Feed], bool]


@dataclass(frozen=True)
class PsqlOutcome:
    exit_code: int
    stopped_reading: bool  # psql stopped at an SQL error before the end of the input
    committed: bool  # psql confirmed it executed the COMMIT
    error_line: str
    stderr_tail: str

    @property
    def failed(self) -> bool:
        return self.exit_code != 0 or self.stopped_reading


def run_in_one_transaction(connection: ConnectionConfig, cancel: CancelToken,
                           produce: Producer, before_commit: Callable[[], None]) -> PsqlOutcome:
    """Run ``produce``'s SQL in ``connection.database``: one transaction, psql stopping at
    the first error, COMMIT (after ``before_commit``) only if ``produce`` returned True and
    psql took every byte. Cancelled if ``cancel`` fires (psql's group is stopped)."""
    argv = [tool_path("psql"), "--no-psqlrc", "--quiet", "--no-password",
            "--set", "ON_ERROR_STOP=1", "--output", "/dev/null"]
    confirmed: list[bool] = []
    confirmation = COMMIT_CONFIRMATION.decode()
    with Child(argv, env=connection.libpq_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
               cancel=cancel) as psql:
        psql.follow(psql.stdout, lambda line: confirmed.append(confirmation in line))
        assert psql.stdin is not None
        feed = cancel.progress.stream(f"psql feed into {connection.database}")
        stdin = _PsqlInput(psql, psql.stdin, cancel, feed)
        stdin.send(b"BEGIN;\n")
        with feed:
            may_commit = produce(stdin)
            stdin.flush()  # the end of the SQL: every byte of it counted in the stream
        cancel.raise_if_cancelled()
        if may_commit and not stdin.broken:
            before_commit()
            stdin.send(b"\nCOMMIT;\n\\echo " + COMMIT_CONFIRMATION + b"\n")
        stdin.close()  # without COMMIT: end of input inside the transaction, rolled back
        code = psql.wait()
    cancel.raise_if_cancelled()
    return PsqlOutcome(code, stdin.broken, any(confirmed), psql.error_line, psql.stderr_tail)


class _PsqlInput:
    """psql's stdin, written in batches of ``BATCH_BYTES`` (the Feed's ``flush`` and
    ``close`` write the rest). Once psql has stopped (an SQL error) the rest is dropped,
    not an exception: the producer goes on to the end so a corrupt file is still reported
    as such."""

    def __init__(self, psql: Child, stdin: IO[bytes], cancel: CancelToken,
                 stream: Stream) -> None:
        self._psql = psql
        self._stdin = stdin
        self._cancel = cancel
        self._stream = stream
        # Kept here, not in the pipe's BufferedWriter: what an error or a cancel leaves
        # unsent is dropped with this object, never written to a dead psql at exit.
        self._held = bytearray()
        self.broken = False

    def send(self, data: bytes) -> None:
        self._cancel.raise_if_cancelled()
        if self.broken:
            return
        if len(data) >= BATCH_BYTES:
            self.flush()
            self._write(data)  # as it is: no copy of the bulk of the dump
            return
        self._held += data
        if len(self._held) >= BATCH_BYTES:
            self.flush()

    def flush(self) -> None:
        if self._held:
            self._write(self._held)
            self._held.clear()

    def _write(self, data: bytes | bytearray) -> None:
        if self.broken:
            return
        try:
            self._stdin.write(data)
            self._stdin.flush()  # the BufferedWriter holds nothing back between writes
            self._stream.moved(len(data))
        except BrokenPipeError:
            self.broken = True  # psql stopped at an error; its stderr says which

    def gone(self) -> bool:
        return self.broken or self._psql.has_exited(0)

    def close(self) -> None:
        """End of input: what is held goes to psql first."""
        self.flush()
        try:
            self._stdin.close()
        except BrokenPipeError:
            self.broken = True

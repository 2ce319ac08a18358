"""pg_dump's custom format (``.dump``): verified and restored with pg_restore.

Verify feeds the archive (decrypted on the fly when it is an ``.age`` file) to two
pg_restore processes at once: ``pg_restore --list`` reads the table of contents, and
``pg_restore --file=/dev/null`` reads every data block, so a damaged or truncated
archive fails even when no manifest records its checksum. Nothing touches a database.

Restore of a plain ``.dump`` file runs ``pg_restore --jobs=DB_RESTORE_JOBS`` on it. An
encrypted archive is decrypted on the fly into pg_restore's stdin: its plaintext never
touches a disk, so a backupd killed mid-restore leaves none behind. Parallel jobs need a
seekable file, so an encrypted archive is restored by one job (DB_RESTORE_JOBS does not
apply). Every pg_restore is a supervised child (backupd.pipeline.supervisor): it dies with us.
"""

from __future__ import annotations

import contextlib
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pyrage import x25519

from backupd.cancel import CancelToken
from backupd.errors import JobFailed
from backupd.pipeline.config import RestoreConfig
from backupd.pipeline.encrypt import Feed, decrypt_into
from backupd.pipeline.supervisor import Child, tool_path
from backupd.progress import Stream, counted

READ_SIZE = 1024 * 1024


class _Input:
    """A child's stdin that stops taking data (without an exception) once the child stops
    reading: its exit code and stderr tell why."""

    def __init__(self, child: Child) -> None:
        self.child = child
        self.open = True

    def feed(self, data: bytes) -> None:
        if not self.open:
            return
        assert self.child.stdin is not None
        try:
            self.child.stdin.write(data)
        except BrokenPipeError:
            # --list stops reading after the table of contents; its exit code tells.
            self.open = False

    def finish(self) -> int:
        if self.open:
            assert self.child.stdin is not None
            try:
                self.child.stdin.close()
            except BrokenPipeError:
                self.open = False
        return self.child.wait()


class _Tee:
    """Writes each chunk to every pg_restore still reading."""

    def __init__(self, inputs: list[_Input]) -> None:
        self._inputs = inputs

    def write(self, data: bytes | memoryview) -> int:
        for target in self._inputs:
            target.feed(bytes(data))
        return len(data)


@dataclass(frozen=True)
class ArchiveCheck:
    toc_problem: str | None
    data_problem: str | None
    toc_entries: int


class ArchiveReader:
    """A writer fed with a custom archive's bytes, in order (the stored file, or its
    plaintext): two pg_restore processes read them as they come, ``pg_restore --list`` the
    table of contents and ``pg_restore --file=/dev/null`` every data block. ``finish`` in
    the thread that made it (its children die with that thread) gives the ArchiveCheck."""

    def __init__(self) -> None:
        pg_restore = tool_path("pg_restore")
        self.toc_entries = 0
        self._stack = contextlib.ExitStack()
        try:
            self._toc = self._stack.enter_context(
                Child([pg_restore, "--list"], stdin=subprocess.PIPE, stdout=subprocess.PIPE))
            self._data = self._stack.enter_context(
                Child([pg_restore, "--file=/dev/null"], stdin=subprocess.PIPE))
        except BaseException:
            self._stack.close()  # the first one started is stopped
            raise
        self._toc.follow(self._toc.stdout, self._count)
        self._inputs = [_Input(self._toc), _Input(self._data)]
        self._tee = _Tee(self._inputs)
        self.result: ArchiveCheck | None = None

    def _count(self, line: str) -> None:
        # --list prints one line per entry; header lines and comments start with ';'.
        if line and not line.startswith(";"):
            self.toc_entries += 1

    def write(self, data: bytes | memoryview) -> int:
        return self._tee.write(data)

    def finish(self) -> ArchiveCheck:
        if self.result is not None:
            return self.result
        with self._stack:
            toc_code, data_code = (target.finish() for target in self._inputs)
        toc_problem = None
        if toc_code != 0 or self.toc_entries == 0:
            toc_problem = ("pg_restore --list cannot read the table of contents: "
                           f"{self._toc.error_line or f'exit code {toc_code}'}")
        data_problem = None
        if data_code != 0:
            data_problem = ("pg_restore cannot read the archive's data: "
                            f"{self._data.error_line or data_code}")
        self.result = ArchiveCheck(toc_problem, data_problem, self.toc_entries)
        return self.result

    def abort(self) -> None:
        """Stop both readers (the read failed): their verdict would mean nothing."""
        if self.result is None:
            self._stack.__exit__(JobFailed, JobFailed("read failed"), None)
            self.result = ArchiveCheck("the archive could not be read to its end", None, 0)


def check_archive(path: Path, identities: list[x25519.Identity] | None,
                  stream: Stream | None = None) -> ArchiveCheck:
    """Read the archive's table of contents and every data block; never touches a database.

    ``identities`` decrypts an ``.age`` archive on the fly (AgeError when they do not fit).
    """
    reader = ArchiveReader()
    feed: Feed = counted(reader, stream)
    try:
        with open(path, "rb") as source:
            if identities is not None:
                decrypt_into(source, feed, identities)
            else:
                while chunk := source.read(READ_SIZE):
                    feed.write(chunk)
    except BaseException:
        reader.abort()
        raise
    return reader.finish()


# --- restore ----------------------------------------------------------------------------------

def restore_archive(
    config: RestoreConfig,
    path: Path,
    database: str,
    cancel: CancelToken,
    *,
    identities: list[x25519.Identity] | None,
    options: tuple[str, ...] = (),
) -> tuple[str | None, list[str]]:
    """pg_restore ``path`` into ``database``; returns (error line or None, stderr tail).

    ``database`` is always a new scratch database that the caller drops if the restore
    fails, so no transaction over the whole restore is needed: DB_RESTORE_JOBS jobs in
    parallel (one for an encrypted archive, decrypted into pg_restore's stdin).
    ``options``: pg_restore's own (``--no-owner``, ``--no-privileges``).
    """
    mode = [f"--jobs={config.jobs}"] if identities is None else []
    # A conninfo string: a database name holding '=' or starting with '-' stays a name.
    argv = [tool_path("pg_restore"), "--exit-on-error", "--no-password", *mode, *options,
            f"--dbname={_conninfo(database)}"]
    env = config.connection.on(database).libpq_env()
    if identities is None:
        child = Child([*argv, "--", str(path)], env=env, cancel=cancel)
        # pg_restore reads the file itself: what its processes read and write is the movement.
        with child, cancel.progress.sampled(f"pg_restore of {path.name}", child.io_bytes):
            code = child.wait()
    else:
        child = Child(argv, env=env, stdin=subprocess.PIPE, cancel=cancel)
        with child, open(path, "rb") as source, \
                cancel.progress.stream(f"pg_restore feed of {path.name}") as stream:
            stdin = _Input(child)
            with contextlib.suppress(_StoppedReading):
                decrypt_into(source, counted(_Checked(stdin, cancel), stream), identities)
            code = stdin.finish()
    cancel.raise_if_cancelled()
    if code == 0:
        return None, child.stderr_lines
    return child.error_line or f"pg_restore exit code {code}", child.stderr_lines


class _StoppedReading(Exception):
    """pg_restore stopped reading its input (an error): decrypting the rest is pointless."""


class _Checked:
    """pg_restore's stdin during a restore: a cancel, or pg_restore having stopped reading,
    stops the decryption at once."""

    def __init__(self, target: _Input, cancel: CancelToken) -> None:
        self._target = target
        self._cancel = cancel

    def write(self, data: bytes) -> int:
        self._cancel.raise_if_cancelled()
        self._target.feed(bytes(data))
        if not self._target.open:
            raise _StoppedReading
        return len(data)


def _conninfo(database: str) -> str:
    # Imported here: psycopg costs ~80 ms of start-up that verify never needs.
    from psycopg.conninfo import make_conninfo

    return make_conninfo("", dbname=database)

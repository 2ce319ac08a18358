"""pg_dump's custom format (``.dump``): verified and restored with pg_restore.

Verify feeds the archive (decrypted on the fly when it is an ``.age`` file) to two
pg_restore processes at once: ``pg_restore --list`` reads the table of contents, and
``pg_restore --file=/dev/null`` reads every data block, so a damaged or truncated
archive fails even when no manifest records its checksum. Nothing touches a database.

Restore runs ``pg_restore --jobs=DB_RESTORE_JOBS``; parallel jobs need a seekable
file, so an encrypted archive is first decrypted to a private (0600) ``.partial``
file in DB_BACKUP_DIR, removed afterwards whatever happens.
"""

from __future__ import annotations

import collections
import contextlib
import os
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from pyrage import x25519

from backupd.cancel import CancelToken
from backupd.naming import partial_name
from backupd.pipeline.encrypt import Feed, decrypt_into, decrypt_to_path
from backupd.settings import Settings
from backupd.storage.atomic import FILE_MODE

READ_SIZE = 1024 * 1024
STDERR_LINES = 20
# Only what pg_restore needs to read an archive without a server: no password, no secrets.
_TOOL_ENV_KEYS = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "HOME", "TMPDIR")


@dataclass
class _Child:
    """A pg_restore reading stdin; keeps the tail of its stderr (and stdout if asked)."""

    argv: list[str]
    keep_stdout: bool = False
    process: subprocess.Popen[bytes] = field(init=False)
    stderr: collections.deque[str] = field(default_factory=lambda: collections.deque(
        maxlen=STDERR_LINES))
    toc_entries: int = 0
    open_for_input: bool = True
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        env = {k: os.environ[k] for k in _TOOL_ENV_KEYS if k in os.environ}
        self.process = subprocess.Popen(
            self.argv, stdin=subprocess.PIPE, env=env, start_new_session=True,
            stdout=subprocess.PIPE if self.keep_stdout else subprocess.DEVNULL,
            stderr=subprocess.PIPE)
        self._drain(self.process.stderr, self._stderr_line)
        if self.keep_stdout:
            self._drain(self.process.stdout, self._toc_line)

    def _drain(self, stream: IO[bytes] | None, handle: Callable[[str], None]) -> None:
        def run() -> None:
            assert stream is not None
            for raw in stream:
                handle(raw.decode("utf-8", "replace").rstrip())
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _stderr_line(self, line: str) -> None:
        if line:
            self.stderr.append(line)

    def _toc_line(self, line: str) -> None:
        # --list prints one line per entry; header lines and comments start with ';'.
        if line and not line.startswith(";"):
            self.toc_entries += 1

    def feed(self, data: bytes) -> None:
        if not self.open_for_input:
            return
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(data)
        except BrokenPipeError:
            # --list stops reading after the table of contents; its exit code tells.
            self.open_for_input = False

    def finish(self) -> int:
        if self.open_for_input:
            with contextlib.suppress(BrokenPipeError):
                assert self.process.stdin is not None
                self.process.stdin.close()
        code = self.process.wait()
        for thread in self._threads:
            thread.join(5)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    @property
    def last_error(self) -> str:
        return next((line for line in reversed(self.stderr) if "error" in line.lower()),
                    self.stderr[-1] if self.stderr else "")


class _Tee:
    """Writes each chunk to every pg_restore still reading."""

    def __init__(self, children: list[_Child]) -> None:
        self._children = children

    def write(self, data: bytes) -> int:
        for child in self._children:
            child.feed(bytes(data))
        return len(data)


@dataclass(frozen=True)
class ArchiveCheck:
    toc_problem: str | None
    data_problem: str | None
    toc_entries: int


def check_archive(path: Path, identities: list[x25519.Identity] | None) -> ArchiveCheck:
    """Read the archive's table of contents and every data block; never touches a database.

    ``identities`` decrypts an ``.age`` archive on the fly (AgeError when they do not fit).
    """
    from backupd.pg import tool_path  # not at import: backupd.pg loads psycopg (~80 ms)

    pg_restore = tool_path("pg_restore")
    toc = _Child([pg_restore, "--list"], keep_stdout=True)
    data = _Child([pg_restore, "--file=/dev/null"])
    children = [toc, data]
    for child in children:
        child.start()
    tee: Feed = _Tee(children)
    try:
        if identities is not None:
            with open(path, "rb") as source:
                decrypt_into(source, tee, identities)
        else:
            with open(path, "rb") as source:
                while chunk := source.read(READ_SIZE):
                    tee.write(chunk)
    except BaseException:
        for child in children:
            child.kill()
        raise
    toc_code, data_code = toc.finish(), data.finish()
    toc_problem = None
    if toc_code != 0 or toc.toc_entries == 0:
        toc_problem = ("pg_restore --list cannot read the table of contents: "
                       f"{toc.last_error or f'exit code {toc_code}'}")
    data_problem = None
    if data_code != 0:
        data_problem = f"pg_restore cannot read the archive's data: {data.last_error or data_code}"
    return ArchiveCheck(toc_problem, data_problem, toc.toc_entries)


# --- restore ----------------------------------------------------------------------------------

def restore_archive(
    settings: Settings,
    path: Path,
    database: str,
    cancel: CancelToken,
    *,
    identities: list[x25519.Identity] | None,
    single_transaction: bool,
) -> tuple[str | None, list[str]]:
    """pg_restore ``path`` into ``database``; returns (error line or None, stderr tail).

    ``single_transaction`` (for a target backupd cannot simply drop on failure) runs
    one job in one transaction; otherwise DB_RESTORE_JOBS jobs in parallel, and the
    caller drops the database it created if the restore fails.
    """
    if identities is None:
        return _run_pg_restore(settings, path, database, cancel, single_transaction)
    plaintext = path.with_name(partial_name(path.name.removesuffix(".age")))
    fd = os.open(plaintext, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        try:
            decrypt_to_path(path, fd, identities)
        finally:
            os.close(fd)
        cancel.raise_if_cancelled()
        return _run_pg_restore(settings, plaintext, database, cancel, single_transaction)
    finally:
        with contextlib.suppress(FileNotFoundError):
            plaintext.unlink()


def _run_pg_restore(settings: Settings, path: Path, database: str, cancel: CancelToken,
                    single_transaction: bool) -> tuple[str | None, list[str]]:
    mode = ["--single-transaction"] if single_transaction else [f"--jobs={settings.restore_jobs}"]
    # A conninfo string: a database name holding '=' or starting with '-' stays a name.
    from backupd.pg import child_env, tool_path  # see check_archive

    argv = [tool_path("pg_restore"), "--exit-on-error", "--no-password", *mode,
            f"--dbname={_conninfo(database)}", "--", str(path)]
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, env=child_env(settings, database),
                               start_new_session=True)
    errors: collections.deque[str] = collections.deque(maxlen=STDERR_LINES)
    assert process.stderr is not None
    stderr = process.stderr
    reader = threading.Thread(target=lambda: errors.extend(
        line.decode("utf-8", "replace").rstrip() for line in stderr), daemon=True)
    reader.start()
    unregister = cancel.on_cancel(process.terminate)
    try:
        code = process.wait()
    except BaseException:
        process.kill()
        process.wait()
        raise
    finally:
        unregister()
        reader.join(5)
    cancel.raise_if_cancelled()
    if code == 0:
        return None, list(errors)
    detail = next((line for line in errors if "error" in line.lower()),
                  errors[-1] if errors else f"pg_restore exit code {code}")
    return detail, list(errors)


def _conninfo(database: str) -> str:
    # Imported here: psycopg costs ~80 ms of start-up that verify never needs.
    from psycopg.conninfo import make_conninfo

    return make_conninfo("", dbname=database)

"""Reading the files that settings point at (POSTGRES_PASSWORD_FILE, the age key files).

A setting may name anything: /dev/zero (endless), a FIFO nobody writes (open() blocks
forever), a directory, a huge file, or a file on a hung network mount. Each of these must be
one clear error naming the setting, never memory growing without bound nor a hang. So a file
is read only if it is a regular file (symlinks to one, as Docker and Kubernetes mount secrets,
are fine), only up to MAX_BYTES, and within TIMEOUT_SECONDS.
"""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

from backupd.errors import ConfigError

# A password or a few age keys; a thousand recipients still fit.
MAX_BYTES = 64 * 1024
# Reading a small local file takes microseconds; this is for a mount that stopped answering.
TIMEOUT_SECONDS = 5.0

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _read_capped(path: Path, setting: str, fix: str) -> bytes:
    def refuse(problem: str) -> ConfigError:
        return ConfigError(f"{setting}: {path} {problem}; {fix}")

    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            raise refuse(f"is {_kind(mode)}, not a regular file")
        # O_NONBLOCK: should the path be swapped for a FIFO after the check, open() still
        # returns at once (and the fstat below refuses it) instead of waiting for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {path}: {exc.strerror}; {fix}") from None
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise refuse(f"is {_kind(info.st_mode)}, not a regular file")
        if info.st_size > MAX_BYTES:
            raise refuse(f"is {info.st_size} bytes; a secret file holds at most {MAX_BYTES}")
        data = file.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:  # it grew while we read it
        raise refuse(f"is over {MAX_BYTES} bytes; a secret file holds at most {MAX_BYTES}")
    return data


def read_setting_file(path: Path, setting: str, fix: str) -> str:
    """The text of the file ``setting`` names, or ConfigError naming ``setting`` (``fix`` says
    what to point it at) if it is not a readable regular UTF-8 file of at most MAX_BYTES, or
    cannot be read within TIMEOUT_SECONDS."""
    outcome: list[bytes | BaseException] = []

    def read() -> None:
        try:
            outcome.append(_read_capped(path, setting, fix))
        except BaseException as exc:  # handed to the caller's thread below
            outcome.append(exc)

    # A thread, because a hung mount blocks even stat() and no timeout can interrupt it; the
    # thread is a daemon so that it cannot keep backupd alive after we report the problem.
    reader = threading.Thread(target=read, name=f"read {setting}", daemon=True)
    reader.start()
    reader.join(TIMEOUT_SECONDS)
    if not outcome:
        raise ConfigError(f"{setting}: {path} could not be read within {TIMEOUT_SECONDS:g} s "
                          f"(a hung mount?); {fix}")
    result = outcome[0]
    if isinstance(result, BaseException):
        raise result
    try:
        return result.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{setting}: {path} is not UTF-8 text; {fix}") from None

"""pg_dump as a supervised child process whose stdout is the pipeline's source."""

from __future__ import annotations

import contextlib
import fcntl
import subprocess
from pathlib import Path
from typing import IO

from backupd.cancel import CancelToken
from backupd.pipeline import clients, codecs
from backupd.pipeline.codecs import ArchiveCodec
from backupd.pipeline.config import DumpConfig
from backupd.pipeline.supervisor import Child, tool_path, tool_version

# pg_dump's stdout pipe is enlarged to this (Linux; capped by /proc/sys/fs/pipe-max-size):
# fewer, larger reads and far fewer context switches than with the default 64 KiB.
PIPE_SIZE = 1024 * 1024


def pg_dump(config: DumpConfig, cancel: CancelToken, directory: Path | None = None) -> Child:
    """pg_dump of ``config``'s database to stdout, not started yet (see ``start``); for the
    directory format, into ``directory`` (which must not exist) with ``config.jobs`` jobs."""
    argv = [tool_path("pg_dump"), f"--format={config.backup_format}", "--no-password"]
    if config.backup_format != "plain":
        # Custom and directory formats compress inside pg_dump, with the codec chosen for it.
        assert config.archive_codec is not None  # DumpConfig requires one for these formats
        compress = config.archive_codec.option
        if compress is not None:
            argv.append(f"--compress={compress}")
    if config.backup_format == "directory":
        assert directory is not None
        argv += [f"--jobs={config.jobs}", f"--file={directory}"]
        return Child(argv, env=config.connection.libpq_env(), cancel=cancel)
    return Child(argv, env=config.connection.libpq_env(), stdout=subprocess.PIPE, cancel=cancel)


def archive_codec(level: int | None) -> ArchiveCodec:
    """The codec the pg_dump that runs compresses archives with (asked once per binary)."""
    return codecs.archive_codec(tool_path("pg_dump"), client_major(), level)


def client_major() -> int:
    """The major of the pg_dump that runs: known from its versioned directory, else asked."""
    known = clients.current("pg_dump").major
    return known if known is not None else tool_version("pg_dump")[1]


def start(dump: Child) -> tuple[IO[bytes], int]:
    """Start pg_dump; its stdout, through an enlarged pipe, and the pipe's capacity (0: not
    known, not a pipe)."""
    dump.start()
    assert dump.stdout is not None
    return dump.stdout, enlarge_pipe(dump.stdout.fileno())


def enlarge_pipe(fd: int) -> int:
    """The pipe's capacity after asking for PIPE_SIZE. Best effort: an older kernel or a
    lower pipe-max-size keeps the default size."""
    size = PIPE_SIZE
    with contextlib.suppress(OSError, ValueError), open("/proc/sys/fs/pipe-max-size") as limit:
        size = min(size, int(limit.read()))
    try:
        return int(fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, size))
    except (OSError, AttributeError):
        pass
    try:
        return int(fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ))
    except (OSError, AttributeError):
        return 0

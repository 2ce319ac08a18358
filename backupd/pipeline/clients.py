"""Which PostgreSQL client tools (pg_dump, psql, pg_restore) to run for a given server.

Debian, Ubuntu and the backupd image install each major's tools side by side in
``/usr/lib/postgresql/<major>/bin`` (packages postgresql-client-NN), with
postgresql-common's ``pg_wrapper`` as /usr/bin/pg_dump etc. For a remote server that
wrapper runs the newest installed major, which is wrong for a restore: a newer pg_dump's
SQL is not guaranteed to load into an older server (pg_dump 17 writes
``SET transaction_timeout``, which a 16 server rejects). So where the
tool on PATH is that wrapper (or there is none), backupd picks the directory itself: the
server's own major, else the nearest newer one (pg_dump cannot dump a newer server).
Any other tool found first on PATH is an explicit choice and is used as it is.

The server's major is learnt when backupd connects (``note_server_major``); before any
connection (``verify`` of a custom archive reads it without a server) the newest
installed major is used, which reads archives of every older one.

The server binaries (postgres, pg_waldump: packages postgresql-NN, side by side in the image
too) are found by ``server_tool``: exactly the data's own major under ``PG_SERVER_ROOT``.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

CLIENT_ROOT = Path("/usr/lib/postgresql")
_WRAPPER = "pg_wrapper"

# The major of the server this process last connected to (one server per process:
# POSTGRES_HOST/POSTGRES_PORT). Learnt, not configured, so a server upgraded while the
# daemon runs gets the matching client at its next job.
_server_major: int | None = None


@dataclass(frozen=True)
class ClientChoice:
    """The directory the tools come from, and why."""

    bin_dir: Path | None  # None: whatever PATH finds
    major: int | None  # the client's major when known from its directory
    reason: str


def note_server_major(major: int) -> None:
    global _server_major
    _server_major = major


def known_server_major() -> int | None:
    """The major of the server this process last connected to, if it has connected."""
    return _server_major


def server_tool(tool: str, major: int, root: Path = CLIENT_ROOT) -> Path | None:
    """``root/<major>/bin/<tool>`` for a server binary (postgres, pg_waldump), or None.

    Exactly the data's own major, unlike the clients' "own major or the nearest newer": a
    server starts only on a data directory of its major, and pg_waldump reads only its own
    major's WAL (each major has its own WAL page magic)."""
    path = root / str(major) / "bin" / tool
    return path if path.is_file() else None


def missing_server_tools(tools: tuple[str, ...], major: int, root: Path) -> str | None:
    """One line naming the server binaries of ``major`` not in ``root``, or None."""
    missing = [tool for tool in tools if server_tool(tool, major, root) is None]
    if not missing:
        return None
    return (f"no PostgreSQL {major} {' and '.join(missing)} in {root / str(major) / 'bin'}: "
            f"install postgresql-{major} (the backupd image carries 13 to 17), or set "
            f"PG_SERVER_ROOT to a directory with {major}/bin/ in it")


def installed_majors(root: Path = CLIENT_ROOT) -> list[int]:
    """Majors with a pg_dump in ``root/<major>/bin``, ascending."""
    try:
        names = os.listdir(root)
    except OSError:
        return []
    return sorted(int(n) for n in names
                  if re.fullmatch(r"\d+", n) and (root / n / "bin" / "pg_dump").is_file())


def choose(server_major: int | None, tool: str = "pg_dump",
           root: Path = CLIENT_ROOT) -> ClientChoice:
    """Where ``tool`` comes from for a server of ``server_major`` (None: not known yet)."""
    found = shutil.which(tool)
    if found is not None and Path(found).resolve().name != _WRAPPER:
        return ClientChoice(None, None, f"first on PATH ({found})")
    majors = [m for m in installed_majors(root) if (root / str(m) / "bin" / tool).is_file()]
    if not majors:
        return ClientChoice(None, None, "PATH (no versioned client directory has it)")
    if server_major is None:
        return ClientChoice(root / str(majors[-1]) / "bin", majors[-1],
                            "newest installed (server not contacted yet)")
    fitting = [m for m in majors if m >= server_major]
    if not fitting:
        # No client can dump this server; the newest one fails with a clear version error.
        return ClientChoice(root / str(majors[-1]) / "bin", majors[-1],
                            f"newest installed, older than the server ({server_major})")
    reason = ("the server's major" if fitting[0] == server_major
              else f"nearest newer than the server ({server_major})")
    return ClientChoice(root / str(fitting[0]) / "bin", fitting[0], reason)


def current(tool: str = "pg_dump") -> ClientChoice:
    """The choice for the server this process last connected to."""
    return choose(_server_major, tool)


def chosen_tool(tool: str) -> str | None:
    """The chosen directory's ``tool``, or None to fall back to PATH."""
    choice = current(tool)
    return None if choice.bin_dir is None else str(choice.bin_dir / tool)


@dataclass(frozen=True)
class ClientReport:
    """For ``backupd status``: the clients installed and which one a job would run."""

    installed: list[int]
    server_version: str | None  # as the newest backup recorded it; status does not connect
    pg_dump: ClientChoice

    def to_dict(self) -> dict[str, object]:
        return {
            "installed_majors": self.installed,
            "server_version": self.server_version,
            "pg_dump_dir": None if self.pg_dump.bin_dir is None else str(self.pg_dump.bin_dir),
            "pg_dump_major": self.pg_dump.major,
            "reason": self.pg_dump.reason,
            "summary": self.line(),
        }

    def line(self) -> str:
        where = ("pg_dump from PATH" if self.pg_dump.bin_dir is None
                 else f"pg_dump {self.pg_dump.major} ({self.pg_dump.bin_dir})")
        server = (f"server {self.server_version} at the newest backup"
                  if self.server_version else "server version not known yet")
        installed = " ".join(map(str, self.installed)) or "none in " + str(CLIENT_ROOT)
        return f"postgres client: {where}: {self.pg_dump.reason}; {server}; installed: {installed}"


def report(server_version: str | None, root: Path = CLIENT_ROOT) -> ClientReport:
    match = re.match(r"\d+", server_version or "")
    major = int(match.group(0)) if match else None
    return ClientReport(installed_majors(root), server_version, choose(major, "pg_dump", root))

"""A throwaway PostgreSQL cluster with password (scram) auth, for tests the shared server can't
host: wrong-password handling, server restarts and crashes mid-backup, separate restore targets.

The server binaries refuse to run as root, so as root every server command goes through
``runuser -u postgres`` and the whole cluster lives in a temp dir owned by postgres. As any
other user the commands run as that user, in a temp dir of its own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Literal

from .pg import ServerAddress, connect, pg_binary
from .ports import free_port

__all__ = ["DEFAULT_CLUSTER_PASSWORD", "PrivateCluster", "free_port"]

SERVER_OS_USER = "postgres"
AS_ROOT = os.geteuid() == 0

# A password with a quote, double quote, colon, backslash, space and dollar: every
# character that breaks naive quoting in a conninfo string, a pgpass line or a shell.
DEFAULT_CLUSTER_PASSWORD = "p'w\"d:x\\ y$z"


class PrivateCluster:
    def __init__(self, password: str, *, port: int | None = None,
                 server_settings: dict[str, str] | None = None,
                 bin_dir: Path | None = None, encoding: str = "UTF8",
                 initdb_options: tuple[str, ...] = ()) -> None:
        """``server_settings``: postgresql.conf lines on top of the small defaults below
        (e.g. ``{"max_prepared_transactions": "2", "wal_level": "logical"}``). ``bin_dir``:
        another major's server binaries (initdb, pg_ctl, postgres) than the suite's own.
        ``encoding``: initdb's; any other than UTF8 goes with the C locale (``SQL_ASCII``:
        a legacy cluster, whose sessions psycopg reads as bytes). ``initdb_options``: after
        the defaults (the last of an option wins), e.g. ``("--locale=C",)`` for a server
        whose template1 has another locale."""
        self.password = password
        self.encoding = encoding
        self.bin_dir = bin_dir
        self.initdb_options = initdb_options
        self.port = port or free_port()
        self.server_settings = dict(server_settings or {})
        self.root: Path | None = None

    # --- paths ---------------------------------------------------------------------------------

    def _path(self, name: str) -> Path:
        if self.root is None:
            raise RuntimeError("PrivateCluster used outside its `with` block")
        return self.root / name

    @property
    def data_dir(self) -> Path:
        return self._path("data")

    @property
    def log_file(self) -> Path:
        return self._path("server.log")

    def work_directory(self) -> Path:
        """A new directory beside the data directory for a test's backups and recovered
        copies: owned by the server's OS user when the tests run as root, so that a server
        started on a copy there can read it."""
        work = self._path("work")
        work.mkdir()
        if AS_ROOT:
            shutil.chown(work, SERVER_OS_USER, SERVER_OS_USER)
        return work

    @property
    def address(self) -> ServerAddress:
        return ServerAddress("127.0.0.1", self.port, "postgres", self.password)

    def _binary(self, name: str) -> str:
        return pg_binary(name) if self.bin_dir is None else str(self.bin_dir / name)

    # --- lifecycle -----------------------------------------------------------------------------

    def _as_server_user(self, args: list[str], *, check: bool = True) -> int:
        # cwd inside our dir: postgres can't read root's cwd. LC_ALL keeps initdb's locale fixed.
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"}
        proc = subprocess.run(
            ["runuser", "-u", SERVER_OS_USER, "--", *args] if AS_ROOT else args,
            cwd=self._path(""),
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
        if check and proc.returncode != 0:
            log = self.log_file.read_text() if self.log_file.exists() else ""
            raise RuntimeError(
                f"{args[0]} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}\n{log}"
            )
        return proc.returncode

    def __enter__(self) -> PrivateCluster:
        # Short path under /tmp: unix socket paths are limited to ~107 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="bk-pg-"))
        try:
            if AS_ROOT:
                shutil.chown(self.root, SERVER_OS_USER, SERVER_OS_USER)
            pwfile = self._path("pwfile")
            # Create 0600 before writing so the password is never world-readable.
            fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self.password + "\n")
            if AS_ROOT:
                shutil.chown(pwfile, SERVER_OS_USER, SERVER_OS_USER)
            self._as_server_user([
                self._binary("initdb"), "-D", str(self.data_dir), "--username=postgres",
                f"--pwfile={pwfile}", "--auth=scram-sha-256", f"--encoding={self.encoding}",
                "--locale=C.UTF-8" if self.encoding == "UTF8" else "--locale=C",
                "--no-sync", "--no-instructions", *self.initdb_options,
            ])  # fmt: skip
            pwfile.unlink()
            settings = {
                "listen_addresses": "'127.0.0.1'",
                "port": str(self.port),
                "unix_socket_directories": f"'{self.root}'",
                # Small footprint: CI has 2 cores and several clusters may run in a session.
                "shared_buffers": "'16MB'",
                "max_connections": "30",
                "fsync": "off",
                "log_min_messages": "warning",
                **self.server_settings,
            }
            with (self.data_dir / "postgresql.conf").open("a") as conf:
                conf.writelines(f"{k} = {v}\n" for k, v in settings.items())
        except BaseException:
            self._cleanup()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._cleanup()

    def _cleanup(self) -> None:
        if self.root is None:
            return
        try:
            if self.data_dir.exists() and self.is_running():
                self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def start(self) -> None:
        self._as_server_user([
            self._binary("pg_ctl"), "start", "-D", str(self.data_dir), "-l", str(self.log_file),
            "-w", "-t", "60",
        ])  # fmt: skip

    def stop(self, mode: Literal["smart", "fast", "immediate"] = "fast") -> None:
        self._as_server_user(
            [self._binary("pg_ctl"), "stop", "-D", str(self.data_dir), "-m", mode, "-w", "-t", "60"]
        )

    def restart_on_a_new_timeline(self) -> None:
        """Restart as a standby of nobody and promote it: the next timeline, on the same
        cluster (what a failover looks like to a WAL archive)."""
        self.stop("fast")
        self._start_promoted()

    def copy_data(self, name: str) -> Path:
        """A copy of the stopped server's data directory, ``name`` beside it (owned by the
        server's user): what a later recovery to this moment gives back."""
        copy = self._path(name)
        self._as_server_user(["cp", "-a", str(self.data_dir), str(copy)])
        return copy

    def promote_copy(self, copy: Path) -> None:
        """Put ``copy`` (:meth:`copy_data`) in place of the data directory and start it
        promoted: a new timeline forking where the copy ends, as after a recovery to an
        earlier moment. WAL the server wrote after the copy is on the abandoned history."""
        if self.is_running():
            self.stop("fast")
        shutil.rmtree(self.data_dir)
        copy.rename(self.data_dir)
        self._start_promoted()

    def _start_promoted(self) -> None:
        signal_file = self.data_dir / "standby.signal"
        signal_file.touch()
        if AS_ROOT:
            shutil.chown(signal_file, SERVER_OS_USER, SERVER_OS_USER)
        self.start()
        self._as_server_user([self._binary("pg_ctl"), "promote", "-D", str(self.data_dir), "-w",
                              "-t", "60"])

    def restart(self) -> None:
        if self.is_running():
            self.stop()
        self.start()

    def is_running(self) -> bool:
        # pg_ctl status: 0 = running, 3 = not running, 4 = no data dir.
        rc = self._as_server_user(
            [self._binary("pg_ctl"), "status", "-D", str(self.data_dir)], check=False
        )
        return rc == 0


def databases_on(cluster: PrivateCluster) -> set[str]:
    """The names of every database on ``cluster``."""
    with connect(cluster.address) as conn:
        return {str(r[0]) for r in conn.execute("SELECT datname FROM pg_database")}

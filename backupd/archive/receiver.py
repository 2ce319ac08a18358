"""pg_receivewal under the supervisor, restarted with backoff, each failure reported.

One thread runs pg_receivewal (it must outlive the child: PDEATHSIG) into the spool,
``--synchronous`` so every byte it acknowledges is fsynced here; the slot then lets the
server drop only what we have. The other thread (backupd.archive.archiver) moves what
pg_receivewal completes into the archive and offsite, and watches the slot.

Only one streamer per archive: an flock on the archive directory (a second daemon on the
same directory waits, reporting, and takes over when the first dies), and the slot itself
(a second archive of the same cluster is refused: the slot is not its own).
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from backupd.archive import server
from backupd.archive.server import ArchiveIdentity
from backupd.archive.walstore import SPOOL_SUBDIRECTORY, WalArchive, WalOrigin
from backupd.errors import BackupdError, JobFailed
from backupd.log import get_logger
from backupd.pipeline.clients import note_server_major
from backupd.pipeline.config import AgeKeyFiles, ConnectionConfig
from backupd.pipeline.supervisor import Child, tool_path
from backupd.storage.atomic import DIR_MODE
from backupd.storage.local import LocalRepository

LOCK_FILE = ".streaming.lock"
# A pg_receivewal that ran this long was healthy: the next failure starts the backoff over.
HEALTHY_RUN_SECONDS = 60.0
STOP_GRACE_SECONDS = 10.0

Report = Callable[[str], None]


class SpoolPositionGone(enum.Enum):
    """Why the server cannot stream from where the spool ends; either way pg_receivewal
    would fail the same way at every restart, so the spool is kept in the archive and
    emptied, and the next start goes from the slot."""

    # The slot was lost and the server recycled the WAL after the spool's position.
    REMOVED = "removed"
    # A recovery to an earlier moment (or a failover) started a new timeline that forks
    # before the spool's position: the spool's .partial is on the abandoned history.
    NOT_IN_HISTORY = "not in history"


# pg_receivewal's error line for each (the server's own message, quoted in it).
_GONE_MESSAGES = {
    "has already been removed": SpoolPositionGone.REMOVED,
    # "requested starting point 0/6000000 on timeline 1 is not in this server's history",
    # or "requested timeline 2 is not in this server's history".
    "is not in this server's history": SpoolPositionGone.NOT_IN_HISTORY,
}


def spool_position_gone(error_line: str) -> SpoolPositionGone | None:
    """Whether pg_receivewal's ``error_line`` says the spool's position cannot be resumed."""
    for text, why in _GONE_MESSAGES.items():
        if text in error_line:
            return why
    return None


@dataclass(frozen=True)
class WalConfig:
    """What WAL streaming needs, built from Settings at the edge (backupd.daemon.wal.wal_config)."""

    connection: ConnectionConfig  # the replication role, on POSTGRES_DB
    directory: Path  # the local archive: DB_BACKUP_DIR/wal
    slot_name: str | None  # None: backupd_<system identifier>
    compression: str = "zstd"
    level: int | None = None
    crypto: AgeKeyFiles | None = None
    partial_seconds: float = 60.0
    max_lag_seconds: float = 300.0
    min_backoff: float = 1.0
    max_backoff: float = 30.0

    @property
    def spool(self) -> Path:
        return self.directory / SPOOL_SUBDIRECTORY

    def local_archive(self) -> WalArchive:
        return WalArchive(LocalRepository(self.directory), self.crypto, spool=self.spool)


class AnotherStreamer(JobFailed):
    """Another backupd process streams into this archive."""


class Receiver:
    """Runs pg_receivewal until stopped; restarts it with a capped backoff."""

    def __init__(self, config: WalConfig, report: Report,
                 on_slot_lost: Callable[[str, str], None],
                 on_wal_removed: Callable[[SpoolPositionGone], None]) -> None:
        self.config = config
        self._report = report
        self._on_slot_lost = on_slot_lost  # (slot, why): reported, a base backup requested
        self._on_wal_removed = on_wal_removed  # the spool's position is gone from the server
        self._stop = threading.Event()
        self._child: Child | None = None
        self._lock_fd: int | None = None
        self._thread: threading.Thread | None = None
        self.identity: ArchiveIdentity | None = None
        self.slot: str | None = config.slot_name
        self.error: str | None = None
        self._log = get_logger(job="wal")

    # --- the thread ----------------------------------------------------------------------
    def start(self) -> None:
        self.config.spool.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        with contextlib.suppress(BackupdError):
            self.identity = server.read_identity(self.config.directory)
        self._thread = threading.Thread(target=self._loop, name="pg_receivewal", daemon=True)
        self._thread.start()

    def running(self) -> bool:
        child = self._child
        return child is not None and child.running()

    def stop(self, timeout: float = STOP_GRACE_SECONDS) -> None:
        """SIGINT pg_receivewal (it flushes and exits), SIGKILL past ``timeout``."""
        self._stop.set()
        child = self._child
        if child is not None:
            child.interrupt()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive() and child is not None:
                child.kill()
                self._thread.join(5)
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def interrupt(self) -> None:
        """Stop the running pg_receivewal (the loop starts it again after checking)."""
        child = self._child
        if child is not None:
            child.interrupt()

    def _loop(self) -> None:
        failures = 0
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self._hold_lock()
                slot = self._prepare()
                self._stream(slot)
                if self._stop.is_set():
                    break
                error = self.error or "pg_receivewal exited"
            except BackupdError as exc:
                error = str(exc)
            except Exception as exc:  # a bug is still a reported failure
                self._log.exception("WAL streaming failed")
                error = f"internal error: {type(exc).__name__}: {exc}"
            if self._stop.is_set():
                break
            self.error = error
            if time.monotonic() - started >= HEALTHY_RUN_SECONDS:
                failures = 0
            failures += 1
            delay = min(self.config.max_backoff, self.config.min_backoff * 2 ** (failures - 1))
            self._log.warning("WAL streaming stopped; retrying", error=error,
                              retry_in_seconds=delay)
            self._report(error)
            self._stop.wait(delay)

    # --- one run ---------------------------------------------------------------------------
    def _hold_lock(self) -> None:
        if self._lock_fd is not None:
            return
        fd = os.open(self.config.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise AnotherStreamer(
                f"another backupd (pid {holder}) is already streaming WAL into "
                f"{self.config.directory}; this one stands by and takes over if it stops"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _prepare(self) -> str:
        """Check the server and role, make sure the slot is ours (creating it, or restarting
        the archive when it was lost); the slot's name."""
        directory = self.config.directory
        with server.connect(self.config.connection) as conn:
            note_server_major(conn.info.server_version // 10000)
            facts = server.server_facts(conn)
            server.check_can_stream(facts, self.config.connection.user)
            slot = self.config.slot_name or server.default_slot_name(facts.system_identifier)
            identity = server.read_identity(directory)
            server.check_identity(identity, facts, directory)
            state = server.slot_state(conn, slot)
            ours = identity is not None and identity.slot_name == slot
            if state is not None and not ours:
                raise server.foreign_slot_error(slot, directory)
            if identity is None or not ours:
                identity = ArchiveIdentity(system_identifier=facts.system_identifier,
                                           slot_name=slot, segment_size=facts.segment_size)
                # Recorded before the slot exists: a crash in between leaves a slot the
                # archive knows, never one it would refuse as another archive's.
                server.write_identity(directory, identity)
            self.identity, self.slot = identity, slot
            if state is not None and state.lost:
                self._on_slot_lost(slot, "was invalidated by the server (wal_status = lost: "
                                   "max_slot_wal_keep_size was exceeded)")
                server.drop_slot(conn, slot)
                server.create_slot(conn, slot)
            elif state is None:
                if self.config.local_archive().segments():
                    self._on_slot_lost(slot, "is gone from the server (dropped, or the server "
                                       "was replaced)")
                server.create_slot(conn, slot)
        return slot

    def _repair_spool(self) -> None:
        """A ``.partial`` shorter than a segment is one pg_receivewal could not finish
        pre-allocating (a full disk): it holds no WAL yet, only zeros, and pg_receivewal
        refuses to start beside it. Removed, so streaming resumes from the slot; one that
        holds anything else is moved aside (``.damaged``) and reported, never deleted."""
        identity = self.identity
        if identity is None:
            return
        for path in self.config.spool.glob("*.partial"):
            size = path.stat().st_size
            if size in (0, identity.segment_size):
                continue
            if _only_zeros(path):
                self._log.warning("removed a .partial pg_receivewal could not pre-allocate",
                                  file=path.name, bytes=size)
                path.unlink()
            else:
                aside = path.with_name(path.name + ".damaged")
                path.rename(aside)
                self._report(f"WAL archiving: {path.name} in the spool has {size} bytes, not "
                             f"a segment's {identity.segment_size}; moved aside as "
                             f"{aside.name} (streaming resumes from the slot)")

    def _stream(self, slot: str) -> None:
        self._repair_spool()
        argv = [tool_path("pg_receivewal"), "--directory", str(self.config.spool),
                "--slot", slot, "--synchronous", "--no-loop", "--no-password",
                "--status-interval", "1"]
        with Child(argv, env=self.config.connection.libpq_env()) as child:
            self._child = child
            self.error = None
            self._log.info("pg_receivewal started", slot=slot, spool=str(self.config.spool))
            code = child.wait()
        if not self._stop.is_set():
            reason = child.error_line or f"exit code {code}"
            self.error = f"pg_receivewal stopped: {reason}"
            why = spool_position_gone(reason)
            if why is not None:
                self._on_wal_removed(why)


def _only_zeros(path: Path) -> bool:
    with open(path, "rb") as data:
        while chunk := data.read(1024 * 1024):
            if chunk.count(0) != len(chunk):
                return False
    return True


def origin_of(identity: ArchiveIdentity) -> WalOrigin:
    return WalOrigin(identity.system_identifier, identity.segment_size)


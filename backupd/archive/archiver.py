"""WAL archiving as the daemon runs it: the receiver (pg_receivewal), and a thread that
commits what it completes to the local archive, ships it offsite in order, uploads the live
partial every WAL_S3_PARTIAL_SECONDS and watches the slot (the figures in WalStatus).

Only what pg_receivewal needs stays in the spool: the segment it writes. A completed
segment leaves the spool once its compressed, checksummed copy is committed locally; with
the spool empty, pg_receivewal (PostgreSQL 15+) resumes from the slot's restart_lsn, which
never passes what it has flushed here (``--synchronous``).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime

import psycopg

from backupd.archive import server
from backupd.archive.receiver import (
    Receiver,
    Report,
    SpoolPositionGone,
    WalConfig,
    origin_of,
)
from backupd.archive.status import LagTracker, WalStatus
from backupd.archive.walnames import DEFAULT_SEGMENT_SIZE, parse_wal_name
from backupd.archive.walstore import WalArchive, offsite_wal_repository
from backupd.errors import BackupdError, OffsiteError
from backupd.log import get_logger
from backupd.naming import WAL_DATABASE, WAL_KIND, parse_backup_name
from backupd.storage.atomic import fsync_directory
from backupd.storage.base import Repository
from backupd.storage.local import LocalRepository
from backupd.storage.replication import replicate

LOOP_SECONDS = 0.5
MONITOR_SECONDS = 1.0
PUBLISH_SECONDS = 2.0
OFFSITE_RETRY_MAX_SECONDS = 60.0

# Called when the slot was lost: the archive has a gap, a new base backup is needed.
BaseBackupRequest = Callable[[str], None]


class WalStreamer:
    def __init__(self, config: WalConfig, offsite: Repository | None, report: Report,
                 request_base_backup: BaseBackupRequest | None = None) -> None:
        self.config = config
        self.local = LocalRepository(config.directory)
        self.archive = config.local_archive()
        self.offsite = offsite_wal_repository(offsite) if offsite is not None else None
        self._report = report
        self._request_base_backup = request_base_backup
        self.receiver = Receiver(config, report, self._slot_lost, self._wal_removed)
        self._stop = threading.Event()
        self._spool_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._lag = LagTracker()
        self._monitor_conn: psycopg.Connection[tuple] | None = None  # type: ignore[type-arg]
        self._pending: deque[str] = deque()  # committed locally, not offsite yet, in order
        self._offsite_partials: set[str] | None = None
        self._offsite_checked = False
        self._last_partial: tuple[str, int, int] | None = None
        self._offsite_synced_at: float | None = None
        self._offsite_failures = 0
        self._offsite_retry_at = 0.0
        self._status_lock = threading.Lock()
        self._status = WalStatus(updated_at=datetime.now(UTC), slot_name=config.slot_name)
        self._log = get_logger(job="wal")

    # --- life ------------------------------------------------------------------------------
    def start(self) -> None:
        self.config.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.receiver.start()
        self._pending.extend(e.name for e in reversed(self.archive.entries())
                             if e.awaiting_upload)
        self._thread = threading.Thread(target=self._loop, name="wal-archiver", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        self.receiver.stop(max(0.5, timeout / 2))
        self._stop.set()
        if self._thread is not None:
            self._thread.join(max(0.1, deadline - time.monotonic()))
        with self._status_lock:
            self._status.streaming = False
        self._publish()
        if self._monitor_conn is not None:
            with contextlib.suppress(Exception):
                self._monitor_conn.close()

    def status(self) -> WalStatus:
        with self._status_lock:
            return self._status.model_copy()

    # --- the loop ----------------------------------------------------------------------------
    def _loop(self) -> None:
        next_monitor = next_publish = next_partial = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            try:
                self._archive_spool()
                if self.offsite is not None and now >= self._offsite_retry_at:
                    self._ship()
                    if now >= next_partial:
                        next_partial = now + self.config.partial_seconds
                        self._ship_partial()
                if now >= next_monitor:
                    next_monitor = now + MONITOR_SECONDS
                    self._monitor()
                if now >= next_publish:
                    next_publish = now + PUBLISH_SECONDS
                    self._publish()
            except Exception:  # never let the archiver die silently
                self._log.exception("WAL archiver step failed")
            self._stop.wait(LOOP_SECONDS)
        with contextlib.suppress(Exception):
            self._archive_spool()  # what pg_receivewal completed while stopping

    def _set(self, **fields: object) -> None:
        with self._status_lock:
            for key, value in fields.items():
                setattr(self._status, key, value)

    # --- spool -> local archive ---------------------------------------------------------------
    def _archive_spool(self) -> None:
        identity = self.receiver.identity
        if identity is None:
            return
        origin = origin_of(identity)
        with self._spool_lock:
            for path in self.archive.spool_files(identity.segment_size):
                wal = parse_wal_name(path.name, identity.segment_size)
                if wal is None or wal.kind == "partial":
                    continue
                try:
                    manifest = self.archive.store(
                        path, wal, origin, compression=self.config.compression,
                        level=self.config.level, scratch=self.config.directory)
                except (OSError, BackupdError) as exc:
                    reason = getattr(exc, "strerror", None) or str(exc)
                    error = (f"cannot archive {wal.name} into {self.config.directory}: "
                             f"{reason}; it stays in the spool and the slot keeps the WAL")
                    if self.status().archive_error != error:
                        self._log.error("WAL archiving failed", error=error)
                        self._report(error)
                    self._set(archive_error=error)
                    return
                path.unlink()
                fsync_directory(path.parent)
                self._pending.append(manifest.name)
                self._set(archive_error=None, last_archived=wal.name,
                          last_archived_at=datetime.now(UTC))

    # --- local -> offsite --------------------------------------------------------------------
    def _ship(self) -> None:
        assert self.offsite is not None
        try:
            if not self._offsite_is_ours():
                return
        except OffsiteError as exc:
            self._offsite_failed(str(exc))
            return
        while self._pending and not self._stop.is_set():
            name = self._pending[0]
            try:
                entry = self.local.entry(name)
                replicate(self.local, self.offsite, entry, recheck=False,
                          scratch=self.config.directory)
                self._drop_superseded_partials(entry.parsed.wal_file or "")
            except OffsiteError as exc:
                self._offsite_failed(str(exc))
                return
            self._pending.popleft()
            self._offsite_failures = 0
            self._set(offsite_error=None, pending_uploads=len(self._pending))

    def _offsite_failed(self, error: str) -> None:
        self._offsite_failures += 1
        delay = min(OFFSITE_RETRY_MAX_SECONDS, 2.0 ** self._offsite_failures)
        self._offsite_retry_at = time.monotonic() + delay
        if self.status().offsite_error is None:
            self._report(f"WAL offsite copy failed (segments queue locally and go up in "
                         f"order once it works): {error}")
        self._set(offsite_error=error, pending_uploads=len(self._pending))

    def _ship_partial(self) -> None:
        """Upload the segment being written (when it changed), once every completed
        segment is up: the offsite archive then has everything up to ``snapshot``."""
        assert self.offsite is not None
        identity = self.receiver.identity
        if identity is None or self._pending or not self._offsite_checked:
            return
        snapshot = time.time()
        partials = [p for p in self.archive.spool_files(identity.segment_size)
                    if p.name.endswith(".partial")]
        if not partials:
            return
        path = partials[-1]
        try:
            info = path.stat()
        except FileNotFoundError:
            return  # completed in the meantime: the next round ships it as a segment
        mark = (path.name, info.st_mtime_ns, info.st_size)
        if mark != self._last_partial:
            wal = parse_wal_name(path.name, identity.segment_size)
            assert wal is not None
            remote = WalArchive(self.offsite, self.config.crypto)
            try:
                manifest = remote.store(path, wal, origin_of(identity),
                                        compression=self.config.compression,
                                        level=self.config.level, scratch=self.config.directory)
                self._known_offsite_partials().add(manifest.name)
            except OffsiteError as exc:
                self._offsite_failed(str(exc))
                return
            except FileNotFoundError:
                return
            self._last_partial = mark
        self._offsite_synced_at = snapshot

    def _known_offsite_partials(self) -> set[str]:
        if self._offsite_partials is None:
            self._offsite_partials = {n for n in self._offsite_names()
                                      if ".partial." in n}
        return self._offsite_partials

    def _offsite_names(self) -> list[str]:
        """The WAL artifacts' names offsite: one listing (S3), no manifest read each."""
        assert self.offsite is not None
        names = getattr(self.offsite, "names", None)
        listed = names() if callable(names) else [
            e.name for e in self.offsite.scan(WAL_DATABASE, WAL_KIND)]
        return [n for n in listed if (p := parse_backup_name(n)) is not None
                and p.kind == WAL_KIND]

    def _offsite_is_ours(self) -> bool:
        """Once per start: the offsite archive holds no other cluster's WAL (its newest
        artifact's manifest names this cluster); else nothing is shipped there."""
        if self._offsite_checked:
            return True
        identity = self.receiver.identity
        assert self.offsite is not None
        if identity is None:
            return False
        names = sorted(self._offsite_names())
        if names:
            manifest, _ = self.offsite.load_manifest(names[-1])
            theirs = manifest.wal.system_identifier if manifest and manifest.wal else None
            if theirs is not None and theirs != identity.system_identifier:
                error = (f"DB_BACKUP_S3_PREFIX: the WAL archive at {self.offsite.description} "
                         f"belongs to cluster {theirs}, not this one "
                         f"({identity.system_identifier}); nothing is uploaded there: point "
                         "DB_BACKUP_S3_PREFIX at this cluster's own prefix")
                if self.status().offsite_error != error:
                    self._report(error)
                self._set(offsite_error=error, pending_uploads=len(self._pending))
                self._offsite_retry_at = time.monotonic() + OFFSITE_RETRY_MAX_SECONDS
                return False
        self._offsite_checked = True
        return True

    def _drop_superseded_partials(self, uploaded: str) -> None:
        """The offsite partials of segments now complete there are deleted."""
        assert self.offsite is not None
        identity = self.receiver.identity
        done = parse_wal_name(uploaded, identity.segment_size) if identity else None
        if done is None or done.kind != "segment":
            return
        for name in sorted(self._known_offsite_partials()):
            wal = parse_wal_name(name.split(".wal.", 1)[0], done.segment_size)
            if wal is not None and (wal.timeline, wal.segno) <= (done.timeline, done.segno):
                self.offsite.delete(name)
                self._known_offsite_partials().discard(name)

    # --- the slot ------------------------------------------------------------------------------
    def _monitor(self) -> None:
        slot = self.receiver.slot
        now = time.time()
        state = None
        if slot is not None:
            try:
                if self._monitor_conn is None or self._monitor_conn.closed:
                    self._monitor_conn = server.connect(self.config.connection)
                state = server.slot_state(self._monitor_conn, slot)
            except (psycopg.Error, BackupdError):
                if self._monitor_conn is not None:
                    with contextlib.suppress(Exception):
                        self._monitor_conn.close()
                self._monitor_conn = None
        running = self.receiver.running()
        fields: dict[str, object] = {"slot_name": slot}
        if state is not None and state.current_lsn is not None:
            durable = state.restart_lsn or 0
            fields.update(retained_bytes=state.retained_bytes,
                          receive_lag_seconds=self._lag.observe(now, state.current_lsn, durable),
                          streaming=running and state.active and not state.lost)
            if state.lost and running:
                self.receiver.interrupt()  # the receiver's next start restarts the archive
        else:
            fields.update(receive_lag_seconds=self._lag.unknown_since(now), streaming=False)
        fields["streaming_error"] = None if fields["streaming"] else self.receiver.error
        if self.offsite is not None and self._offsite_synced_at is not None:
            fields["offsite_lag_seconds"] = max(0.0, now - self._offsite_synced_at)
        self._set(**fields)

    def _slot_lost(self, slot: str, why: str) -> None:
        """The slot was lost: WAL after the archive's end may be gone from the server.
        Report it and ask for a base backup; streaming goes on from the spool if the server
        still has that WAL (no gap after all), else from the new slot (``_wal_removed``)."""
        message = (f"WAL archiving: replication slot {slot!r} {why}; WAL written after the "
                   "archive's end may be gone from the server, and point-in-time recovery "
                   "cannot cross such a gap. The slot is recreated and streaming restarts; a "
                   "new base backup is needed (set max_slot_wal_keep_size with room to spare)")
        self._log.error("replication slot lost", slot=slot, why=why)
        self._set(slot_lost_at=datetime.now(UTC))
        self._report(message)
        if self._request_base_backup is not None:
            self._request_base_backup(message)
        else:
            # The daemon passes Daemon.run_soon("basebackup"); without it, say what to do.
            self._log.warning("a new base backup is needed; take one with `backupd basebackup`")

    def _wal_removed(self, why: SpoolPositionGone) -> None:
        """The server cannot stream from the spool's position (``why``): keep what the spool
        holds (completed segments committed, the partial committed as a ``.partial``: after
        a timeline fork, the abandoned history), empty it, and let pg_receivewal start from
        the slot (a new, unbroken run of the archive)."""
        identity = self.receiver.identity
        kept: list[str] = []
        self._archive_spool()
        with self._spool_lock:
            for path in self.archive.spool_files(identity.segment_size if identity else
                                                 DEFAULT_SEGMENT_SIZE):
                wal = parse_wal_name(path.name, identity.segment_size) if identity else None
                if identity is not None and wal is not None:
                    try:
                        stored = self.archive.store(path, wal, origin_of(identity),
                                                    compression=self.config.compression,
                                                    level=self.config.level,
                                                    scratch=self.config.directory)
                        self._pending.append(stored.name)  # offsite too
                        kept.append(wal.name)
                    except (OSError, BackupdError) as exc:
                        self._log.error("cannot keep the spool's partial", file=path.name,
                                        error=str(exc))
                        continue  # never deleted unless kept
                path.unlink()
        if why is SpoolPositionGone.REMOVED:
            self._log.warning("the server no longer has the WAL after the spool's; streaming "
                              "restarts from the replication slot", kept=kept)
            return
        self._log.warning("the spool's WAL is not in the server's history (a new timeline "
                          "forks before it); streaming restarts from the replication slot",
                          kept=kept)
        self._report("WAL archiving: the server's timeline forks before the WAL the spool "
                     "held (a recovery to an earlier moment, or a failover): that WAL is on "
                     "the abandoned history, kept in the archive (" + (", ".join(kept)
                     or "nothing to keep") + "), and streaming restarts from the replication "
                     "slot on the new timeline. Take a new base backup (`backupd "
                     "basebackup`) if none was taken since")

    def _publish(self) -> None:
        self._set(updated_at=datetime.now(UTC))
        try:
            self.status().write(self.config.directory)
        except OSError as exc:
            self._log.debug("cannot write the WAL status file", error=exc.strerror)

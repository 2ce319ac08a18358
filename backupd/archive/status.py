"""What WAL archiving reports: the figures behind /metrics, ``backupd status`` and health.

The daemon keeps a WalStatus in memory (its own /metrics and /healthz) and writes it to
DB_BACKUP_DIR/wal/status.json every few seconds for ``backupd status`` and ``backupd health``
(a file older than STALE_AFTER means nobody is streaming).
"""

from __future__ import annotations

import collections
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydantic import BaseModel

from backupd.storage.atomic import write_bytes_atomically

STATUS_FILE = "status.json"
STALE_AFTER = timedelta(seconds=60)
# Samples of the server's WAL position kept to date the oldest WAL not yet durable here.
LAG_SAMPLES = 3600


class WalStatus(BaseModel):
    updated_at: datetime
    slot_name: str | None = None
    streaming: bool = False
    # Server WAL the slot holds back (pg_current_wal_lsn() - restart_lsn).
    retained_bytes: int | None = None
    # How long the oldest WAL the server has and we have not made durable has existed.
    receive_lag_seconds: float | None = None
    # When the last completed segment was committed to the local archive.
    last_archived_at: datetime | None = None
    last_archived: str | None = None
    # How far S3 is behind the local archive, in seconds (None without S3).
    offsite_lag_seconds: float | None = None
    pending_uploads: int = 0
    streaming_error: str | None = None
    archive_error: str | None = None
    offsite_error: str | None = None
    slot_lost_at: datetime | None = None

    def stale(self, now: datetime | None = None) -> bool:
        return (now or datetime.now(UTC)) - self.updated_at > STALE_AFTER

    def problems(self, max_lag_seconds: float, now: datetime | None = None) -> list[str]:
        """Why WAL archiving is unhealthy (empty when it is fine)."""
        if self.stale(now):
            return [f"WAL archiving: no report since {self.updated_at:%Y-%m-%d %H:%M:%S} UTC "
                    "(is the daemon running with WAL_ARCHIVE=on?)"]
        found = []
        if not self.streaming:
            found.append("WAL archiving: pg_receivewal is not streaming"
                         + (f" ({self.streaming_error})" if self.streaming_error else ""))
        if self.archive_error:
            found.append(f"WAL archiving: {self.archive_error}")
        lag = self.receive_lag_seconds
        if lag is not None and lag > max_lag_seconds:
            found.append(f"WAL archiving: the local archive is {lag:.0f}s behind the server "
                         f"(more than WAL_MAX_LAG_SECONDS={max_lag_seconds:g})")
        return found

    def write(self, directory: Path) -> None:
        write_bytes_atomically(directory / STATUS_FILE,
                               self.model_dump_json(indent=2).encode() + b"\n")


def read_status(directory: Path) -> WalStatus | None:
    try:
        return WalStatus.model_validate_json((directory / STATUS_FILE).read_bytes())
    except (OSError, ValueError):
        return None


class LagTracker:
    """Dates WAL: samples of the server's position over time; the lag is the age of the
    oldest sample the archive has not reached (0 when it has everything the server had)."""

    def __init__(self) -> None:
        self._samples: collections.deque[tuple[float, int]] = collections.deque(
            maxlen=LAG_SAMPLES)
        self._caught_up_at: float | None = None

    def observe(self, now: float, server_lsn: int, durable_lsn: int) -> float:
        if not self._samples or self._samples[-1][1] != server_lsn:
            self._samples.append((now, server_lsn))
        while self._samples and self._samples[0][1] <= durable_lsn:
            self._samples.popleft()
        if not self._samples:
            self._caught_up_at = now
            return 0.0
        return max(0.0, now - self._samples[0][0])

    def unknown_since(self, now: float) -> float | None:
        """The lag while the server cannot be asked: since the archive last had it all."""
        if self._caught_up_at is None and not self._samples:
            return None
        oldest = self._samples[0][0] if self._samples else self._caught_up_at
        assert oldest is not None
        return max(0.0, now - oldest)

"""The WAL archiving metrics (issue 15): exactly these names, alert rules are written
against them (docs/operations.md)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from prometheus_client.core import GaugeMetricFamily, Metric

from backupd.archive.status import WalStatus


def wal_families(status: WalStatus | None, now: datetime) -> Iterator[Metric]:
    """``status``: the streamer's (None before it has reported: not archiving)."""
    up = status is not None and status.streaming and not status.stale(now)
    yield GaugeMetricFamily("backupd_wal_archiving_up",
                            "1 while pg_receivewal streams WAL into the local archive, else 0.",
                            value=1.0 if up else 0.0)
    if status is None:
        return
    values = (
        ("backupd_wal_receive_lag_seconds",
         "Age of the oldest WAL the server has written that the local archive has not "
         "made durable (0 when it has everything).", status.receive_lag_seconds),
        ("backupd_wal_slot_retained_bytes",
         "WAL the server keeps for backupd's replication slot "
         "(pg_current_wal_lsn() - restart_lsn).", status.retained_bytes),
        ("backupd_wal_last_archived_timestamp_seconds",
         "When the last completed WAL segment was committed to the local archive (Unix time).",
         status.last_archived_at.timestamp() if status.last_archived_at else None),
        ("backupd_wal_offsite_lag_seconds",
         "How far the offsite (S3) archive is behind the local one, in seconds.",
         status.offsite_lag_seconds),
    )
    for name, help_text, value in values:
        if value is not None:
            yield GaugeMetricFamily(name, help_text, value=float(value))

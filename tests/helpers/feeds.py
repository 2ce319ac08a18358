"""A psql Feed (backupd.pipeline.psql) that keeps what the stream sends and where it flushed:
for the tests of what the restore's stream hands psql, without a psql."""

from __future__ import annotations


class RecordingFeed:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        # How many of ``sent`` psql would have had at each flush.
        self.flushes: list[int] = []

    def send(self, data: bytes) -> None:
        self.sent.append(data)

    def flush(self) -> None:
        self.flushes.append(len(self.sent))

    def gone(self) -> bool:
        return False

    @property
    def data(self) -> bytes:
        return b"".join(self.sent)

"""What every job run ends in: one result, delivered to every notifier."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    SKIPPED = "skipped"
    MISSED = "missed"
    CANCELLED = "cancelled"


# Outcomes someone must hear about (Slack in failure mode, the heartbeat's /fail).
ALERT_STATUSES = frozenset({Status.FAILED, Status.MISSED, Status.CANCELLED})


@dataclass
class JobResult:
    job: str
    database: str
    status: Status = Status.RUNNING
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    finished_at: datetime | None = None
    backup_name: str | None = None
    size_bytes: int | None = None
    previous_size_bytes: int | None = None
    deleted: list[str] = field(default_factory=list)
    error: str | None = None
    stderr_tail: str | None = None
    warnings: list[str] = field(default_factory=list)
    # Offsite copy state: None (S3 off), "uploaded", or "pending: <reason>".
    offsite: str | None = None
    # Job-specific facts (verify reports, drill comparisons, ...), JSON-serialisable.
    details: dict[str, Any] = field(default_factory=dict)
    exit_code: int = 0

    @property
    def duration_seconds(self) -> float | None:
        if self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()

    @property
    def size_change_percent(self) -> float | None:
        if not self.size_bytes or not self.previous_size_bytes:
            return None
        return (self.size_bytes - self.previous_size_bytes) * 100.0 / self.previous_size_bytes

    @property
    def ok(self) -> bool:
        return self.status == Status.SUCCESS

    def finish(
        self, status: Status, error: str | None = None, exit_code: int | None = None
    ) -> None:
        self.status = status
        self.error = error
        self.finished_at = datetime.now(UTC)
        if exit_code is not None:
            self.exit_code = exit_code
        elif status in (Status.FAILED, Status.CANCELLED, Status.SKIPPED, Status.MISSED):
            self.exit_code = 1

    def summary(self) -> str:
        """One line for people: what happened, to what, how big, how long."""
        parts = [f"{self.job} {self.status.value}", f"database={self.database!r}"]
        if self.backup_name:
            parts.append(f"backup={self.backup_name}")
        if self.size_bytes is not None:
            parts.append(f"size={human_bytes(self.size_bytes)}")
        if self.size_change_percent is not None:
            parts.append(f"change={self.size_change_percent:+.1f}%")
        if self.duration_seconds is not None:
            parts.append(f"duration={self.duration_seconds:.1f}s")
        if self.deleted:
            parts.append(f"deleted={len(self.deleted)}")
        if self.offsite:
            parts.append(f"offsite={self.offsite}")
        if self.error:
            parts.append(f"error={self.error}")
        return " ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status.value
        data["duration_seconds"] = self.duration_seconds
        for key in ("started_at", "finished_at"):
            value = data[key]
            data[key] = value.isoformat() if value else None
        return data


def human_duration(seconds: float) -> str:
    """A span for people: "45 s", "12 min", "5.5 h", "3.2 days"."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"

"""What every job run ends in: one result, delivered to every notifier."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainSerializer, computed_field

from backupd.outcomes import Outcome, summary_parts, written_database


def _as_utc(moment: datetime) -> datetime:
    # Files written by older versions may hold naive times: they were UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


# The one datetime format of every file and record backupd writes: ISO 8601, UTC offset.
UtcDateTime = Annotated[
    datetime,
    AfterValidator(_as_utc),
    PlainSerializer(lambda moment: moment.astimezone(UTC).isoformat(), return_type=str,
                    when_used="json"),
]


class Status(StrEnum):
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    SKIPPED = "skipped"
    MISSED = "missed"
    CANCELLED = "cancelled"


# Outcomes someone must hear about (Slack in failure mode, the heartbeat's /fail).
ALERT_STATUSES = frozenset({Status.FAILED, Status.MISSED, Status.CANCELLED})


class JobResult(BaseModel):
    """One run of one job. The fields every job shares; ``outcome`` is the command's own."""

    model_config = ConfigDict(extra="ignore")

    job: str
    database: str
    status: Status = Status.RUNNING
    started_at: UtcDateTime = Field(default_factory=lambda: datetime.now(UTC))
    finished_at: UtcDateTime | None = None
    # The schedule slot a daemon run (or a missed/skipped one) stands for.
    scheduled_for: UtcDateTime | None = None
    backup_name: str | None = None
    size_bytes: int | None = None
    previous_size_bytes: int | None = None
    deleted: list[str] = Field(default_factory=list)
    error: str | None = None
    stderr_tail: str | None = None
    # Which child process ``stderr_tail`` came from (pg_dump, psql, pg_restore).
    stderr_tool: str | None = None
    warnings: list[str] = Field(default_factory=list)
    # Offsite copy state: None (S3 off), "uploaded", or "pending: <reason>".
    offsite: str | None = None
    outcome: Outcome | None = None
    exit_code: int = 0

    @computed_field  # type: ignore[prop-decorator]
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

    @property
    def written_database(self) -> str | None:
        """The database a restore or drill wrote into, when that is not POSTGRES_DB's copy."""
        return written_database(self.outcome)

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
        parts = [f"{self.job} {self.status.value}"]
        target = self.written_database
        if target is not None:
            # A restore into nc_r2 must never read as if the source was overwritten.
            parts += [f"target={target!r}", f"source={self.database!r}"]
        else:
            parts.append(f"database={self.database!r}")
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
        parts += summary_parts(self.outcome)
        if self.offsite:
            parts.append(f"offsite={self.offsite}")
        if self.error:
            parts.append(f"error={self.error}")
        return " ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (structured logs, the state file): one serialiser for all of them."""
        return self.model_dump(mode="json")


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

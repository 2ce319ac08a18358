"""Base backups (issue 15): when the daemon takes them and how many the archive keeps."""

from __future__ import annotations

from pydantic import BaseModel, Field, field_validator


class BaseBackupSettings(BaseModel):
    # A cron expression (like BACKUP_SCHEDULE); unset or "off": no scheduled base backups.
    basebackup_schedule: str | None = Field(None, validation_alias="BASEBACKUP_SCHEDULE")
    # The newest verified base backups always kept (and the WAL from the oldest one's start).
    basebackup_keep: int = Field(2, ge=1, le=1000, validation_alias="BASEBACKUP_KEEP")
    # Beyond BASEBACKUP_KEEP, base backups are kept while they are younger than this, and
    # the newest one older than it too, so any point of the last N days can be recovered.
    basebackup_max_age_days: float | None = Field(
        None, gt=0, le=36500, validation_alias="BASEBACKUP_MAX_AGE_DAYS")
    # "fast": an immediate checkpoint starts the backup at once; "spread": it waits for the
    # next regular checkpoint (no I/O burst on the server).
    basebackup_checkpoint: str = Field("fast", pattern="^(fast|spread)$",
                                       validation_alias="BASEBACKUP_CHECKPOINT")

    @field_validator("basebackup_schedule")
    @classmethod
    def _blank_schedule_disables(cls, value: str | None) -> str | None:
        if value is None or value.strip().lower() in ("", "off", "none", "disabled"):
            return None
        return value.strip()

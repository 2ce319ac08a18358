"""Base backups (issue 15): when the daemon takes them and how many the archive keeps."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, Field, field_validator, model_validator

# BASEBACKUP_SCHEDULE when WAL_ARCHIVE=on and it is not set: weekly, Sundays at 03:00. Without
# new base backups, retention could never let old WAL go, and recovery replays ever more.
DEFAULT_WITH_WAL_ARCHIVE = "0 3 * * 0"


class BaseBackupSettings(BaseModel):
    # A cron expression (like BACKUP_SCHEDULE); "off": none scheduled. Unset: weekly with
    # WAL_ARCHIVE=on (DEFAULT_WITH_WAL_ARCHIVE), none without.
    basebackup_schedule: str | None = Field(None, validation_alias="BASEBACKUP_SCHEDULE")
    # The newest verified base backups always kept (and the WAL from the oldest one's start).
    basebackup_keep: int = Field(2, ge=1, le=1000, validation_alias="BASEBACKUP_KEEP")
    # Beyond BASEBACKUP_KEEP, base backups are kept while they are younger than this, and
    # the newest one older than it too, so any point of the last N days can be recovered.
    basebackup_max_age_days: float | None = Field(
        None, gt=0, le=36500, validation_alias="BASEBACKUP_MAX_AGE_DAYS")
    # "fast": an immediate checkpoint starts the backup at once; "spread": it waits for the
    # next regular checkpoint (no I/O burst on the server).
    basebackup_checkpoint: Literal["fast", "spread"] = Field(
        "fast", validation_alias="BASEBACKUP_CHECKPOINT")

    @field_validator("basebackup_schedule")
    @classmethod
    def _blank_base_schedule_disables(cls, value: str | None) -> str | None:
        if value is None or value.strip().lower() in ("", "off", "none", "disabled"):
            return None
        return value.strip()

    @model_validator(mode="after")
    def _weekly_with_the_wal_archive(self) -> Self:
        # WAL_ARCHIVE is the WAL mixin's field, a sibling base of Settings.
        if ("basebackup_schedule" not in self.model_fields_set
                and getattr(self, "wal_archive", False)):
            self.basebackup_schedule = DEFAULT_WITH_WAL_ARCHIVE
        return self

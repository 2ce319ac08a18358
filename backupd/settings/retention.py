"""Retention settings: how long backups are kept (age, a minimum, calendar tiers)."""

from __future__ import annotations

from pydantic import BaseModel, Field

# An upper bound that no calendar needs (100 years of days) but that catches a typo.
_TIER_MAX = 36500


class RetentionSettings(BaseModel):
    """DB_BACKUP_RETENTION_DAYS, DB_BACKUP_KEEP_MIN and the calendar tiers (restic's
    --keep-daily/--keep-weekly/--keep-monthly). A backup survives if any of them keeps it."""

    retention_days: int = Field(7, ge=0, le=36500, validation_alias="DB_BACKUP_RETENTION_DAYS")
    keep_min: int = Field(3, ge=1, le=10000, validation_alias="DB_BACKUP_KEEP_MIN")
    # 0 = the tier is off (the default: retention is what it was before tiers existed).
    keep_daily: int = Field(0, ge=0, le=_TIER_MAX, validation_alias="DB_BACKUP_KEEP_DAILY")
    keep_weekly: int = Field(0, ge=0, le=_TIER_MAX, validation_alias="DB_BACKUP_KEEP_WEEKLY")
    keep_monthly: int = Field(0, ge=0, le=_TIER_MAX, validation_alias="DB_BACKUP_KEEP_MONTHLY")

    @property
    def has_retention_tiers(self) -> bool:
        return bool(self.keep_daily or self.keep_weekly or self.keep_monthly)

"""The stall watchdog and the job timeout (issue 17): how long a job may go without moving
data, and how long it may run at all, before it is stopped and reported as failed."""

from __future__ import annotations

from pydantic import BaseModel, Field

# A day: far beyond any sane stall, small enough that a typo (an extra zero or three) shows.
MAX_STALL_SECONDS = 86400
# A week for the whole job.
MAX_JOB_TIMEOUT_SECONDS = 7 * 86400


class WatchdogSettings(BaseModel):
    # 0 turns the watchdog off.
    stall_seconds: int = Field(600, ge=0, le=MAX_STALL_SECONDS,
                               validation_alias="DB_BACKUP_STALL_SECONDS")
    # Unset or 0: no limit.
    job_timeout_seconds: int = Field(0, ge=0, le=MAX_JOB_TIMEOUT_SECONDS,
                                     validation_alias="DB_BACKUP_JOB_TIMEOUT_SECONDS")

"""The restore session's bulk-load tuning (issue 18): DB_RESTORE_MAINTENANCE_WORK_MEM."""

from __future__ import annotations

import re

from pydantic import BaseModel, Field, field_validator

_MEMORY = re.compile(r"\d+(?:kB|MB|GB)")
_OFF = ("off", "default", "none")


class RestoreSessionSettings(BaseModel):
    """maintenance_work_mem for the sessions that restore (index builds, foreign keys);
    "off" leaves the server's own setting."""

    restore_maintenance_work_mem: str | None = Field(
        "256MB", validation_alias="DB_RESTORE_MAINTENANCE_WORK_MEM")

    @field_validator("restore_maintenance_work_mem")
    @classmethod
    def _memory_or_off(cls, value: str | None) -> str | None:
        if value is None or value.strip().lower() in _OFF:
            return None
        value = value.strip()
        if _MEMORY.fullmatch(value) is None:
            raise ValueError(f"{value!r} is not an amount of memory as PostgreSQL writes it "
                             "(e.g. 256MB, 1GB, 65536kB), or 'off' for the server's own")
        return value

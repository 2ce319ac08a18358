"""The status page (issue 19): a read-only HTML page on HEALTH_PORT, off by default."""

from __future__ import annotations

from pydantic import BaseModel, Field, SecretStr


class StatusPageSettings(BaseModel):
    # `GET /` on HEALTH_PORT: backups, jobs, drills, health and charts, for people.
    status_page: bool = Field(False, validation_alias="STATUS_PAGE")
    # When set, the page needs `?token=` or `Authorization: Bearer` with this value.
    status_page_token: SecretStr | None = Field(None, validation_alias="STATUS_PAGE_TOKEN")
    # How often an open page reloads itself (meta refresh).
    status_page_refresh_seconds: int = Field(
        60, ge=5, le=86400, validation_alias="STATUS_PAGE_REFRESH_SECONDS")

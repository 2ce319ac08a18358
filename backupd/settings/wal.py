"""Continuous archiving (issue 15): WAL streamed by pg_receivewal into DB_BACKUP_DIR/wal."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, Field, SecretStr, field_validator

# A replication slot name: lower-case letters, digits and underscores, at most 63 bytes.
_SLOT_NAME = re.compile(r"[a-z0-9_]{1,63}")


class WalSettings(BaseModel):
    wal_archive: bool = Field(False, validation_alias="WAL_ARCHIVE")
    # Unset: backupd_<system identifier>, so two clusters never share one slot.
    wal_slot_name: str | None = Field(None, validation_alias="WAL_SLOT_NAME")
    # Unset: the main POSTGRES_USER and its password.
    postgres_replication_user: str | None = Field(None,
                                                  validation_alias="POSTGRES_REPLICATION_USER")
    postgres_replication_password: SecretStr | None = Field(
        None, validation_alias="POSTGRES_REPLICATION_PASSWORD")
    postgres_replication_password_file: Path | None = Field(
        None, validation_alias="POSTGRES_REPLICATION_PASSWORD_FILE")
    # The offsite RPO: how often the segment being written is uploaded to S3. A minute costs
    # one small PUT a minute (the compressed partial of an idle server is a few KiB) and
    # bounds the WAL lost with the whole machine to about a minute.
    wal_s3_partial_seconds: float = Field(60.0, ge=1, le=86400,
                                          validation_alias="WAL_S3_PARTIAL_SECONDS")
    # Health goes red when the newest WAL durable in the local archive is older than this
    # behind the server (and at once when streaming is down for longer than it).
    wal_max_lag_seconds: float = Field(300.0, gt=0, le=7 * 86400,
                                       validation_alias="WAL_MAX_LAG_SECONDS")

    @field_validator("wal_slot_name")
    @classmethod
    def _slot_name_is_valid(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not _SLOT_NAME.fullmatch(value):
            raise ValueError("a replication slot name is 1 to 63 lower-case letters, digits "
                             "and underscores")
        return value

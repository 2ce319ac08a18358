"""Where the PostgreSQL server binaries are (PITR drills and recover, issue 16)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

# Debian's and the image's layout: each major side by side in <root>/<major>/bin.
DEFAULT_SERVER_ROOT = Path("/usr/lib/postgresql")


class PgServerSettings(BaseModel):
    # <root>/<major>/bin/postgres and pg_waldump, of the archive's own major.
    pg_server_root: Path = Field(DEFAULT_SERVER_ROOT, validation_alias="PG_SERVER_ROOT")

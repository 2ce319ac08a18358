"""Parallel dumps (issue 18): DB_BACKUP_JOBS, pg_dump's --jobs for the directory format."""

from __future__ import annotations

from pydantic import BaseModel, Field, model_validator

from backupd.errors import ConfigError

# pg_dump -j opens one connection per job plus one: a few cover a 2- to 16-core server.
DEFAULT_BACKUP_JOBS = 2


class ParallelDumpSettings(BaseModel):
    """DB_BACKUP_JOBS: how many tables pg_dump -Fd dumps at once (DB_BACKUP_FORMAT=directory
    only; unset means DEFAULT_BACKUP_JOBS)."""

    backup_jobs: int | None = Field(None, ge=1, le=64, validation_alias="DB_BACKUP_JOBS")

    @model_validator(mode="after")
    def _jobs_need_the_directory_format(self) -> ParallelDumpSettings:
        # Read from the model it is mixed into (Settings declares DB_BACKUP_FORMAT).
        backup_format = getattr(self, "backup_format", "directory")
        if self.backup_jobs is not None and backup_format != "directory":
            raise ConfigError(
                f"DB_BACKUP_JOBS: parallel dumps need DB_BACKUP_FORMAT=directory (it is "
                f"{backup_format}); set DB_BACKUP_FORMAT=directory or unset DB_BACKUP_JOBS")
        return self

    @property
    def dump_jobs(self) -> int:
        """pg_dump --jobs for a directory-format backup."""
        return self.backup_jobs or DEFAULT_BACKUP_JOBS

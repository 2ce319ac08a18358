"""The Settings model: every environment variable backupd reads, validated once.

The environment variable names are the public contract inherited from the shell
scripts this tool replaces; each field's ``validation_alias`` is the exact name.
Groups of settings that belong to one capability live in their own module of this package
as a mixin (a pydantic ``BaseModel``) that ``Settings`` inherits.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from backupd.errors import ConfigError
from backupd.naming import require_utf8
from backupd.secret_files import read_setting_file
from backupd.settings.basebackup import BaseBackupSettings
from backupd.settings.notify import NotifySettings
from backupd.settings.parallel import ParallelDumpSettings
from backupd.settings.pgserver import PgServerSettings
from backupd.settings.restore_session import RestoreSessionSettings
from backupd.settings.retention import RetentionSettings
from backupd.settings.selection import (
    EVERY_DATABASE,
    DatabaseSelection,
    check_database_list,
    split_database_list,
)
from backupd.settings.statuspage import StatusPageSettings
from backupd.settings.wal import WalSettings
from backupd.settings.watchdog import WatchdogSettings

# DB_BACKUP_COMPRESSION_LEVEL's range per compressor, on the scale users know: gzip's 0-9
# (ISA-L, which writes the gzip files, has levels 0-3: pipeline/compress.py maps 4-9 onto 3,
# its best), zstd's 1-22, and for the custom format pg_dump's own --compress 0-9.
COMPRESSION_LEVELS: dict[str, tuple[int, int]] = {"gzip": (0, 9), "zstd": (1, 22), "custom": (0, 9),
                                                  "directory": (0, 9)}


class Settings(BaseSettings, WalSettings, BaseBackupSettings, StatusPageSettings,
               ParallelDumpSettings, RestoreSessionSettings, RetentionSettings,
               NotifySettings, WatchdogSettings, PgServerSettings):
    """Configuration from the environment (and an optional ``.env`` file)."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_ignore_empty=True,  # compose passes `${VAR:-}` as "": treat it as "not set"
        extra="ignore",
        populate_by_name=False,
    )

    # --- the database -------------------------------------------------------
    postgres_host: str = Field("postgres", validation_alias="POSTGRES_HOST")
    postgres_port: int = Field(5432, ge=1, le=65535, validation_alias="POSTGRES_PORT")
    # One database (today's setting), a comma-separated list, or `*` (see database_selection).
    postgres_db: str = Field("certificate_verification", validation_alias="POSTGRES_DB")
    # With POSTGRES_DB='*': databases to leave out (comma-separated).
    backup_exclude: str | None = Field(None, validation_alias="DB_BACKUP_EXCLUDE")
    # The cluster's globals (roles, tablespaces) with every backup run: "auto" = when
    # POSTGRES_DB selects several databases (a list or `*`); one database keeps today's run.
    backup_globals: Literal["auto", "on", "off"] = Field("auto",
                                                         validation_alias="DB_BACKUP_GLOBALS")
    postgres_user: str = Field("postgres", validation_alias="POSTGRES_USER")
    postgres_password: SecretStr = Field(
        SecretStr("postgres"), validation_alias="POSTGRES_PASSWORD"
    )
    postgres_password_file: Path | None = Field(None, validation_alias="POSTGRES_PASSWORD_FILE")
    postgres_connect_timeout: int = Field(
        10, ge=1, le=3600, validation_alias="POSTGRES_CONNECT_TIMEOUT"
    )

    # --- where backups live, and for how long ----------------------------------
    backup_dir: Path = Field(Path("/backups"), validation_alias="DB_BACKUP_DIR")
    # DB_BACKUP_RETENTION_DAYS, DB_BACKUP_KEEP_MIN and the calendar tiers: RetentionSettings.

    # --- what a backup looks like (issue 6) ------------------------------------
    backup_format: Literal["plain", "custom", "directory"] = Field(
        "plain", validation_alias="DB_BACKUP_FORMAT")
    compression: Literal["gzip", "zstd"] = Field("gzip", validation_alias="DB_BACKUP_COMPRESSION")
    # Its range depends on the compressor: see COMPRESSION_LEVELS and _level_is_the_compressors.
    compression_level: int | None = Field(None, validation_alias="DB_BACKUP_COMPRESSION_LEVEL")
    age_recipients: str | None = Field(None, validation_alias="DB_BACKUP_AGE_RECIPIENTS")
    age_recipients_file: Path | None = Field(
        None, validation_alias="DB_BACKUP_AGE_RECIPIENTS_FILE"
    )
    age_identity_file: Path | None = Field(None, validation_alias="DB_BACKUP_AGE_IDENTITY_FILE")
    restore_jobs: int = Field(2, ge=1, le=64, validation_alias="DB_RESTORE_JOBS")

    # --- offsite copies (issue 4) ----------------------------------------------
    s3_bucket: str | None = Field(None, validation_alias="DB_BACKUP_S3_BUCKET")
    s3_prefix: str = Field("", validation_alias="DB_BACKUP_S3_PREFIX")
    s3_endpoint_url: str | None = Field(None, validation_alias="S3_ENDPOINT_URL")
    s3_region: str | None = Field(None, validation_alias="S3_REGION")
    s3_sse: Literal["AES256", "aws:kms"] | None = Field(None, validation_alias="S3_SSE")
    s3_sse_kms_key_id: SecretStr | None = Field(None, validation_alias="S3_SSE_KMS_KEY_ID")
    s3_storage_class: str | None = Field(None, validation_alias="S3_STORAGE_CLASS")
    s3_timeout_seconds: float = Field(30.0, gt=0, le=3600, validation_alias="S3_TIMEOUT_SECONDS")

    # --- the daemon's schedule (issue 3) ---------------------------------------
    backup_schedule: str = Field("0 2 * * *", validation_alias="BACKUP_SCHEDULE")
    verify_schedule: str | None = Field(None, validation_alias="VERIFY_SCHEDULE")
    retention_schedule: str | None = Field(None, validation_alias="RETENTION_SCHEDULE")
    drill_schedule: str | None = Field("0 4 * * 0", validation_alias="DRILL_SCHEDULE")
    timezone: str = Field("UTC", validation_alias="TZ")
    misfire_grace_seconds: int = Field(
        3600, ge=1, le=7 * 86400, validation_alias="SCHEDULE_MISFIRE_GRACE_SECONDS"
    )
    backup_on_start: bool = Field(True, validation_alias="BACKUP_ON_START")
    shutdown_timeout_seconds: float = Field(
        20.0, gt=0, le=3600, validation_alias="SHUTDOWN_TIMEOUT_SECONDS"
    )
    # A leading seconds field in the *_SCHEDULE expressions (6 fields); meant for tests.
    schedule_seconds_field: bool = Field(False, validation_alias="SCHEDULE_SECONDS_FIELD")

    # --- reporting ---------------------------------------------------------------
    slack_webhook_url: SecretStr | None = Field(None, validation_alias="SLACK_WEBHOOK_URL")
    slack_notify_on: Literal["all", "failure"] = Field("all", validation_alias="SLACK_NOTIFY_ON")
    # HEARTBEAT_URL, HEARTBEAT_STYLE, WEBHOOK_URL, WEBHOOK_SECRET: NotifySettings.
    notify_timeout_seconds: float = Field(
        10.0, gt=0, le=600, validation_alias="NOTIFY_TIMEOUT_SECONDS"
    )
    shrink_warn_percent: int = Field(
        50, ge=0, le=100, validation_alias="BACKUP_SHRINK_WARN_PERCENT"
    )
    health_port: int = Field(8080, ge=0, le=65535, validation_alias="HEALTH_PORT")
    backup_max_age_hours: float | None = Field(
        None, gt=0, validation_alias="BACKUP_MAX_AGE_HOURS"
    )
    log_format: Literal["auto", "json", "console"] = Field(
        "auto", validation_alias="BACKUPD_LOG_FORMAT"
    )

    # --- restore drills (issue 7) ----------------------------------------------
    drill_database: str | None = Field(None, validation_alias="DRILL_DATABASE")
    drill_max_age_days: float | None = Field(None, gt=0, validation_alias="DRILL_MAX_AGE_DAYS")
    drill_min_free_percent: float = Field(
        10.0, ge=0, le=100, validation_alias="DRILL_MIN_FREE_PERCENT"
    )
    drill_max_db_bytes: int | None = Field(None, gt=0, validation_alias="DRILL_MAX_DB_BYTES")
    # A scratch server for drills (issue 14): unset, drills restore beside the live database.
    # The other DRILL_POSTGRES_* settings are read only when the host is set.
    drill_postgres_host: str | None = Field(None, validation_alias="DRILL_POSTGRES_HOST")
    drill_postgres_port: int = Field(5432, ge=1, le=65535, validation_alias="DRILL_POSTGRES_PORT")
    drill_postgres_user: str = Field("postgres", validation_alias="DRILL_POSTGRES_USER")
    drill_postgres_password: SecretStr | None = Field(
        None, validation_alias="DRILL_POSTGRES_PASSWORD")
    drill_postgres_password_file: Path | None = Field(
        None, validation_alias="DRILL_POSTGRES_PASSWORD_FILE")

    @field_validator("postgres_db")
    @classmethod
    def _database_name_is_valid(cls, value: str) -> str:
        # PostgreSQL identifiers: at most 63 bytes, no NUL. Everything else is allowed,
        # and naming.py makes whatever is allowed safe for a file name.
        if value.strip() == EVERY_DATABASE:
            return EVERY_DATABASE
        if "," not in value:
            require_utf8(value)
            if not value or len(value.encode()) > 63 or "\x00" in value:
                raise ValueError("must be 1 to 63 bytes with no NUL character")
            return value
        names = check_database_list(value)
        if EVERY_DATABASE in names:
            raise ValueError("'*' (every database) cannot be part of a list; set "
                             "POSTGRES_DB='*' alone and DB_BACKUP_EXCLUDE for exceptions")
        return value

    @field_validator("postgres_user", "drill_postgres_user", "drill_database")
    @classmethod
    def _name_is_utf8(cls, value: str | None) -> str | None:
        # Sent to PostgreSQL (a connection string, a CREATE DATABASE), which encodes it.
        if value is not None:
            require_utf8(value)
        return value

    @field_validator("backup_exclude")
    @classmethod
    def _exclude_is_a_list_with_every_database(cls, value: str | None,
                                               info: ValidationInfo) -> str | None:
        if value is None:
            return None
        check_database_list(value)
        if "postgres_db" in info.data and info.data["postgres_db"] != EVERY_DATABASE:
            raise ValueError("only applies with POSTGRES_DB='*'; with a list, leave the "
                             "database out of POSTGRES_DB instead")
        return value

    @field_validator("compression_level")
    @classmethod
    def _level_is_the_compressors(cls, value: int | None, info: ValidationInfo) -> int | None:
        # backup_format and compression are declared (so validated) before this field; when
        # either is invalid itself, that is the error reported.
        if value is None or "backup_format" not in info.data or "compression" not in info.data:
            return value
        custom = info.data["backup_format"] in ("custom", "directory")
        compressor = info.data["backup_format"] if custom else info.data["compression"]
        lowest, highest = COMPRESSION_LEVELS[compressor]
        if lowest <= value <= highest:
            return value
        what = f"the {compressor} format (pg_dump)" if custom else compressor
        raise ValueError(f"{value} is out of range for {what}, which takes {lowest}-{highest} "
                         "(levels: gzip 0-9, zstd 1-22, custom and directory formats 0-9)")

    @field_validator("backup_dir")
    @classmethod
    def _backup_dir_can_be_a_directory(cls, value: Path) -> Path:
        # Caught at start-up, not at the first backup hours later. Only the shape is checked
        # here (writability is proven by LocalStore.prepare): a read-only mount is still fine
        # for list, verify and restore.
        probe = value
        try:
            while not probe.exists() and probe != probe.parent:
                probe = probe.parent
            is_directory = probe.is_dir()
        except OSError as exc:  # a parent it may not search (EACCES), a dead mount (EIO)
            raise ValueError(f"cannot look at {probe} ({exc.strerror or exc}) as uid "
                             f"{os.geteuid()}; give backupd access to it (owner or "
                             "permissions of its parents), or point it elsewhere") from None
        if not is_directory:
            raise ValueError(f"{probe} is not a directory; point it at a directory "
                             "(a missing one is created)")
        return value

    @field_validator("s3_prefix")
    @classmethod
    def _prefix_is_normalised(cls, value: str) -> str:
        value = value.strip("/")
        if ".." in value.split("/"):
            raise ValueError("must not contain '..' path segments")
        return f"{value}/" if value else ""

    @field_validator("drill_schedule", "verify_schedule", "retention_schedule")
    @classmethod
    def _blank_schedule_disables(cls, value: str | None) -> str | None:
        # An empty variable means "not set" (env_ignore_empty), i.e. the default, so a
        # default-on schedule (DRILL_SCHEDULE) is switched off with an explicit word.
        if value is None or value.strip().lower() in ("", "off", "none", "disabled"):
            return None
        return value.strip()

    @property
    def database_selection(self) -> DatabaseSelection:
        """POSTGRES_DB parsed: the ONE place it is (resolve_databases asks the server)."""
        if self.postgres_db == EVERY_DATABASE:
            exclude = split_database_list(self.backup_exclude) if self.backup_exclude else []
            return DatabaseSelection((), every=True, exclude=tuple(exclude))
        return DatabaseSelection(tuple(split_database_list(self.postgres_db)))

    @property
    def globals_enabled(self) -> bool:
        """Whether a backup run also dumps the cluster's globals (DB_BACKUP_GLOBALS)."""
        if self.backup_globals == "auto":
            return self.database_selection.several
        return self.backup_globals == "on"

    def for_database(self, database: str) -> Settings:
        """These settings narrowed to one database: what every per-database step (dump,
        verify, retention, health) works with, exactly as with a single POSTGRES_DB."""
        return self.model_copy(update={"postgres_db": database, "backup_exclude": None})

    @property
    def password(self) -> str:
        """The database password: the secret file wins over the variable."""
        if self.postgres_password_file is not None:
            return _read_secret_file(self.postgres_password_file, "POSTGRES_PASSWORD_FILE")
        return self.postgres_password.get_secret_value()

    @property
    def replication_user(self) -> str:
        """The role pg_receivewal streams as (POSTGRES_REPLICATION_USER, else POSTGRES_USER)."""
        return self.postgres_replication_user or self.postgres_user

    @property
    def replication_password(self) -> str:
        """Its password: POSTGRES_REPLICATION_PASSWORD_FILE, the variable, else the main one."""
        if self.postgres_replication_password_file is not None:
            return _read_secret_file(self.postgres_replication_password_file,
                                     "POSTGRES_REPLICATION_PASSWORD_FILE")
        if self.postgres_replication_password is not None:
            return self.postgres_replication_password.get_secret_value()
        return self.password

    @property
    def drill_password(self) -> str | None:
        """The drill server's password (DRILL_POSTGRES_PASSWORD_FILE wins), None when unset."""
        if self.drill_postgres_password_file is not None:
            return _read_secret_file(self.drill_postgres_password_file,
                                     "DRILL_POSTGRES_PASSWORD_FILE")
        if self.drill_postgres_password is not None:
            return self.drill_postgres_password.get_secret_value()
        return None

    def secret_values(self) -> list[str]:
        """Every secret this configuration holds, so the log redactor can mask them."""
        values = [self.postgres_password.get_secret_value()]
        if self.postgres_password_file is not None:
            with contextlib.suppress(ConfigError):
                values.append(self.password)
        if self.drill_postgres_host is not None:
            with contextlib.suppress(ConfigError):
                values.append(self.drill_password or "")
        with contextlib.suppress(ConfigError):
            values.append(self.replication_password)
        for secret in (self.slack_webhook_url, self.heartbeat_url, self.s3_sse_kms_key_id,
                       self.status_page_token, self.webhook_url, self.webhook_secret):
            if secret is not None:
                values.append(secret.get_secret_value())
        for name in ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN"):
            if os.environ.get(name):
                values.append(os.environ[name])
        # A "secret" equal to a public setting (the stock password `postgres` is also the
        # host, user and database name) is not secret; masking it would blank out every
        # log line naming the database while protecting nothing.
        public = {self.postgres_host, self.postgres_user, self.postgres_db}
        return [v for v in values if v and v not in public]


def _read_secret_file(path: Path, setting: str) -> str:
    value = read_setting_file(
        path, setting, "point it at a readable file holding only the secret, as text"
    ).rstrip("\r\n")
    if not value:
        # An empty file is a secret that was not mounted, not an empty password.
        raise ConfigError(f"{setting}: {path} is empty; put the secret in it")
    return value


"""Settings of the network notifiers added after Slack: the heartbeat's style and the
generic webhook (docs/operations.md, "Webhook")."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, SecretStr, ValidationInfo, field_validator


class NotifySettings(BaseModel):
    heartbeat_url: SecretStr | None = Field(None, validation_alias="HEARTBEAT_URL")
    # healthchecks: /start, the URL, /fail (healthchecks.io, and what backupd always did for
    # failures); plain: the URL on success only, for other dead man's switches.
    heartbeat_style: Literal["healthchecks", "plain"] = Field(
        "healthchecks", validation_alias="HEARTBEAT_STYLE")
    webhook_url: SecretStr | None = Field(None, validation_alias="WEBHOOK_URL")
    webhook_secret: SecretStr | None = Field(None, validation_alias="WEBHOOK_SECRET")

    @field_validator("webhook_url")
    @classmethod
    def _webhook_is_http(cls, value: SecretStr | None) -> SecretStr | None:
        # Never echo the value: the URL's path or query is often the credential.
        if value is not None:
            parts = urlsplit(value.get_secret_value().strip())
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError("must be an http:// or https:// URL (or unset it to send "
                                 "no webhook)")
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _secret_needs_a_url(cls, value: SecretStr | None,
                            info: ValidationInfo) -> SecretStr | None:
        # webhook_url is validated first: when it is wrong itself, that is the error reported.
        if value is not None and "webhook_url" in info.data and info.data["webhook_url"] is None:
            raise ValueError("is set but WEBHOOK_URL is not; set WEBHOOK_URL too (or unset "
                             "WEBHOOK_SECRET)")
        return value

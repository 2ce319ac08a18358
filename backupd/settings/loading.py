"""Loading the settings: every problem becomes one ConfigError line naming the variable."""

from __future__ import annotations

import re
from typing import Any

from pydantic import AliasChoices, ValidationError

from backupd.errors import ConfigError
from backupd.settings.model import Settings
from backupd.settings.zone import parse_zone

# pydantic's field name -> the environment variable users know it by.
ENV_NAMES: dict[str, str] = {
    name: str(field.validation_alias.choices[0])
    if isinstance(field.validation_alias, AliasChoices)
    else str(field.validation_alias)
    for name, field in Settings.model_fields.items()
}


def load_settings(**overrides: Any) -> Settings:
    """Load and validate settings, turning any problem into one ConfigError line per setting."""
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError("\n".join(_describe(error) for error in exc.errors())) from None
    if settings.postgres_password_file is not None:
        settings.password  # noqa: B018  -- fail now, not at 2 a.m.
    if settings.drill_postgres_host is not None:
        _check_drill_server(settings)
        settings.drill_password  # noqa: B018
    if settings.has_retention_tiers:
        # The tiers count days, weeks and months in TZ: a TZ that is no IANA name fails
        # here, before any backup or deletion (without tiers only the daemon reads TZ).
        parse_zone(settings.timezone)
    return settings


def _check_drill_server(settings: Settings) -> None:
    # The drill creates and drops databases and roles on its server: the live one, named
    # the same way, is refused here (a different spelling is caught by the drill itself,
    # which compares the servers' system identifiers).
    host = settings.drill_postgres_host
    if (host, settings.drill_postgres_port) == (settings.postgres_host, settings.postgres_port):
        raise ConfigError(
            f"DRILL_POSTGRES_HOST: {host}:{settings.drill_postgres_port} is the live server "
            "(POSTGRES_HOST and POSTGRES_PORT); a drill creates and drops databases and roles "
            "on its server, so point it at an empty scratch server (or unset it to drill "
            "beside the live database)")


def _describe(error: Any) -> str:
    # Never echo the input: it may be a password or a webhook URL.
    location = error.get("loc") or ("?",)
    field = str(location[0])
    env_name = ENV_NAMES.get(field, field.upper())
    message = re.sub(r"^Value error, ", "", str(error.get("msg", "invalid value")))
    message = message.rstrip(".")
    # Lower-case only pydantic's leading capital: the message may hold a path or a name.
    message = message[:1].lower() + message[1:]
    return f"{env_name}: {message}; fix the environment variable"

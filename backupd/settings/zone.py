"""TZ as a time zone: the daemon's schedules, and the calendar of the retention tiers."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from backupd.errors import ConfigError


def parse_zone(name: str, setting: str = "TZ") -> ZoneInfo:
    """An IANA zone (``Europe/Berlin``), or ConfigError naming ``setting``."""
    cleaned = name.strip().removeprefix(":")  # glibc accepts ":Europe/Berlin"
    try:
        return ZoneInfo(cleaned)
    except (ValueError, KeyError, OSError):  # ZoneInfoNotFoundError is a KeyError
        raise ConfigError(
            f"{setting}: {name!r} is not a known time zone; use an IANA name such as "
            "UTC or Europe/Berlin"
        ) from None

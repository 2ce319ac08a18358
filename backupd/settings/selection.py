"""POSTGRES_DB (and DB_BACKUP_EXCLUDE) as a selection of databases, before a server is asked."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from backupd.naming import require_utf8

# POSTGRES_DB='*': every connectable, non-template database on the server.
EVERY_DATABASE = "*"


@dataclass(frozen=True)
class DatabaseSelection:
    """What POSTGRES_DB (and DB_BACKUP_EXCLUDE) select, before a server is asked.

    ``names``: the databases listed, in the order given (empty for ``*``); ``every``: ``*``;
    ``exclude``: DB_BACKUP_EXCLUDE (only with ``*``). Resolving against a live server is
    ``backupd.postgres.databases.resolve_databases``; against a set of backups, ``choose``.
    """

    names: tuple[str, ...]
    every: bool = False
    exclude: tuple[str, ...] = ()

    @property
    def several(self) -> bool:
        """More than one database (or ``*``): a run covers a list, not today's one database."""
        return self.every or len(self.names) > 1

    def choose(self, available: Iterable[str]) -> list[str]:
        """The selected databases among ``available`` (e.g. those a backup run holds):
        for ``*`` all of them but the excluded, sorted; otherwise the listed ones present,
        in the listed order."""
        present = set(available)
        if self.every:
            return sorted(present - set(self.exclude))
        return [name for name in self.names if name in present]

    def watched(self, backed_up: Iterable[str]) -> list[str]:
        """The databases health and metrics report on, without asking the server: the
        listed ones (with or without backups); for ``*``, those with backups
        (``backed_up``) but the excluded."""
        return self.choose(backed_up) if self.every else list(self.names)


def split_database_list(value: str) -> list[str]:
    """POSTGRES_DB / DB_BACKUP_EXCLUDE as names. A value without a comma is one name, taken
    verbatim (today's setting); in a list, each element is stripped of surrounding spaces."""
    if "," not in value:
        return [value]
    return [element.strip() for element in value.split(",")]


def check_database_list(value: str) -> list[str]:
    names = split_database_list(value)
    seen: set[str] = set()
    for position, name in enumerate(names, start=1):
        if not name:
            raise ValueError(f"element {position} of the comma-separated list is empty; "
                             "remove the extra comma")
        require_utf8(name)
        if len(name.encode()) > 63 or "\x00" in name:
            raise ValueError(f"{name[:70]!r}: a database name must be 1 to 63 bytes "
                             "with no NUL character")
        if name in seen:
            raise ValueError(f"{name!r} is listed twice; list each database once")
        seen.add(name)
    return names


"""``--no-owner`` / ``--no-privileges``: restoring where the backup's roles must not be created.

Implemented for custom-format backups only, by pg_restore's own flags of the same names.
For plain SQL they are refused before anything happens: leaving out ``OWNER TO``, ``GRANT``
and ``REVOKE`` as the SQL streams would mean recognising statements inside arbitrary SQL
(function bodies, strings, COPY data), and a wrong guess would change what is restored.
The database's own recorded properties follow the same choice: without owner, the database
belongs to the restoring role; without privileges, it keeps the server's defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from backupd.database_properties import DatabaseProperties
from backupd.errors import ConfigError
from backupd.postgres.connection import as_text
from backupd.storage.base import BackupEntry

Connection = psycopg.Connection[tuple]  # type: ignore[type-arg]


@dataclass(frozen=True)
class Without:
    owner: bool = False
    privileges: bool = False

    @property
    def any(self) -> bool:
        return self.owner or self.privileges

    @property
    def flags(self) -> str:
        return " ".join(flag for flag, on in (("--no-owner", self.owner),
                                              ("--no-privileges", self.privileges)) if on)

    @property
    def pg_restore_options(self) -> tuple[str, ...]:
        return tuple(self.flags.split())

    def check(self, entry: BackupEntry) -> None:
        """ConfigError (nothing changed) for a backup these options cannot apply to."""
        if self.any and entry.parsed.backup_format == "plain":
            raise ConfigError(
                f"{self.flags}: {entry.name} is plain SQL, where ownership and privileges "
                "cannot be left out safely as it streams; restore it with its roles (the "
                "globals first), or take custom- or directory-format backups (DB_BACKUP_FORMAT) "
                "for restores without them; nothing was changed")

    def apply(self, properties: DatabaseProperties | None,
              restoring_role: str) -> DatabaseProperties | None:
        if properties is None or not self.any:
            return properties
        update: dict[str, object] = {}
        if self.owner:
            update["owner"] = restoring_role
            update["settings"] = [s for s in properties.settings if s.role is None]
        if self.privileges:
            update["grants"] = None
        return properties.model_copy(update=update)


def current_user(conn: Connection) -> str:
    with as_text(conn):
        row = conn.execute("SELECT current_user").fetchone()
        return str(row[0]) if row else ""


EVERYTHING = Without()  # the default: owners and privileges restored as backed up

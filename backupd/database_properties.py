"""What a database is, beyond what pg_dump writes without ``--create``: owner, encoding and
locale, default tablespace, connection limit, ``ALTER DATABASE … SET``, privileges and
comment.

They are read when the backup is taken and carried in its manifest, so that a restore (also
onto a new server) puts them back while the SQL file stays one that plain
``gunzip -c FILE | psql`` restores into a database of any name. This module is the typed
model and its comparison; the SQL lives in :mod:`backupd.postgres.databases`.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

PUBLIC = "PUBLIC"


class Grant(BaseModel):
    """One database privilege (CONNECT, CREATE, TEMPORARY) held by a role, or by PUBLIC."""

    model_config = ConfigDict(frozen=True)

    grantee: str  # a role name, or PUBLIC
    privilege: str
    grantable: bool = False

    def __str__(self) -> str:
        option = " WITH GRANT OPTION" if self.grantable else ""
        return f"{self.privilege} to {self.grantee}{option}"


class RoleSetting(BaseModel):
    """``ALTER DATABASE … SET`` (role None) or ``ALTER ROLE r IN DATABASE … SET``."""

    model_config = ConfigDict(frozen=True)

    role: str | None = None
    name: str
    value: str

    def __str__(self) -> str:
        where = f" for role {self.role}" if self.role is not None else ""
        return f"{self.name}={self.value}{where}"


class DatabaseProperties(BaseModel):
    owner: str
    encoding: str
    collate: str
    ctype: str
    # 'libc', 'icu' or 'builtin' (PostgreSQL 15 and 17 added the last two), and its locale.
    locale_provider: str = "libc"
    provider_locale: str | None = None
    connection_limit: int = -1
    settings: list[RoleSetting] = []
    # None: the default privileges (PUBLIC may connect and create temporary tables).
    grants: list[Grant] | None = None
    comment: str | None = None
    # The database's default tablespace (pg_default, or one of CREATE TABLESPACE's), where
    # its tables and indexes go unless they name another. None in manifests of older
    # backups: a restore then creates the database in the server's default.
    tablespace: str | None = None

    def effective_grants(self) -> set[Grant]:
        """The privileges as PostgreSQL applies them (a NULL ACL spelled out)."""
        if self.grants is not None:
            return set(self.grants)
        return {Grant(grantee=PUBLIC, privilege="CONNECT"),
                Grant(grantee=PUBLIC, privilege="TEMPORARY"),
                *(Grant(grantee=self.owner, privilege=p)
                  for p in ("CREATE", "CONNECT", "TEMPORARY"))}


def differences(expected: DatabaseProperties, actual: DatabaseProperties,
                expected_in: str, actual_in: str) -> list[str]:
    """Where ``actual`` differs from ``expected``, one line each, e.g.
    ``database owner: 'app' in the backup, 'postgres' in the restore``."""
    lines: list[str] = []
    for label, want, have in (
        ("owner", expected.owner, actual.owner),
        ("encoding", expected.encoding, actual.encoding),
        ("collation", expected.collate, actual.collate),
        ("ctype", expected.ctype, actual.ctype),
        ("locale provider", expected.locale_provider, actual.locale_provider),
        ("provider locale", expected.provider_locale, actual.provider_locale),
        ("connection limit", expected.connection_limit, actual.connection_limit),
        ("comment", expected.comment, actual.comment),
    ):
        if want != have:
            lines.append(f"database {label}: {want!r} in {expected_in}, {have!r} in {actual_in}")
    # Not recorded (an older backup), or not expected back (a restore onto a server without
    # that tablespace puts the database in the default one, and says so): not compared.
    if None not in (expected.tablespace, actual.tablespace) \
            and expected.tablespace != actual.tablespace:
        lines.append(f"database tablespace: {expected.tablespace!r} in {expected_in}, "
                     f"{actual.tablespace!r} in {actual_in}")
    for kind, want_set, have_set in (
        ("setting", set(map(str, expected.settings)), set(map(str, actual.settings))),
        ("privilege", set(map(str, expected.effective_grants())),
         set(map(str, actual.effective_grants()))),
    ):
        lines += [f"database {kind} {item}: in {expected_in}, not in {actual_in}"
                  for item in sorted(want_set - have_set)]
        lines += [f"database {kind} {item}: in {actual_in}, not in {expected_in}"
                  for item in sorted(have_set - want_set)]
    return lines


def split_list_value(value: str) -> list[str]:
    """The elements of a list setting as PostgreSQL stores it (``"$user", public``): comma
    separated, each possibly double-quoted with ``""`` for a quote. Mirrors SplitGUCList."""
    items: list[str] = []
    i, n = 0, len(value)
    while True:
        while i < n and value[i].isspace():
            i += 1
        if i >= n:
            break
        if value[i] == '"':
            i += 1
            item = []
            while i < n:
                if value[i] == '"':
                    if i + 1 < n and value[i + 1] == '"':
                        item.append('"')
                        i += 2
                        continue
                    i += 1
                    break
                item.append(value[i])
                i += 1
            items.append("".join(item))
        else:
            start = i
            while i < n and value[i] != ",":
                i += 1
            items.append(value[start:i].rstrip())
        while i < n and value[i].isspace():
            i += 1
        if i < n and value[i] == ",":
            i += 1
            continue
        break
    return items


# Settings whose value is a list of names: each element is its own literal in SET
# (PostgreSQL's GUC_LIST_QUOTE settings, as pg_dump treats them).
LIST_SETTINGS = frozenset({"search_path", "temp_tablespaces", "local_preload_libraries",
                           "session_preload_libraries", "shared_preload_libraries",
                           "unix_socket_directories"})

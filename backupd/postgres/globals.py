"""Putting a cluster's globals (``pg_dumpall --globals-only``) onto a server, statement by
statement, so that what already exists there is kept and what cannot be made is reported.

Feeding the file to psql fails on the first role that exists (the bootstrap superuser is
always in it) or, with ON_ERROR_STOP off, buries real failures in noise. Here the SQL is
cut into statements (quotes, identifiers and comments respected) and each runs on its own:

* ``CREATE ROLE`` of a role the server has already: the role is **kept** and reported,
  and every later statement about it (``ALTER ROLE … WITH/SET``, its comment) is left out,
  so an existing role, the bootstrap superuser above all, is never altered.
* role statements run in one transaction, each in its own savepoint: a failing one is
  reported (its SQL never: it may hold a password hash) and the others go on; a killed
  backupd leaves no half of them. A ``CREATE ROLE`` and the ``ALTER ROLE … WITH`` after it
  (attributes, password hash) share one savepoint: a role is made whole or not at all, never
  left NOLOGIN without its password for the next restore to keep. For a restoring role that
  is not a superuser (CREATEROLE, as on managed services), the attributes only a superuser
  may name are left out where they are off (a new role's default).
* memberships (``GRANT role TO role``) are granted when either side was created here;
  between two kept roles nothing changes.
* tablespaces cannot be created in a transaction: each runs on its own afterwards. One
  whose directory is missing on this machine is reported with the statement to run once
  the directory exists (creating directories is the administrator's part); the databases
  restored after it go to the default tablespace (backupd.postgres.tablespaces).
* ``DROP`` statements (``pg_dumpall --clean``) never run: they would drop roles the
  server has. psql meta-commands never run (``\\restrict`` is skipped; nothing executes
  anything but SQL here).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

import psycopg

from backupd.postgres.connection import as_text, describe_pg_error, is_superuser
from backupd.postgres.globals_sql import (
    GRANTED_BY,
    Kind,
    Statement,
    classify,
    name_of,
    quote_identifier,
    split_statements,
)
from backupd.postgres.not_held import Sent

Connection = psycopg.Connection[tuple]  # type: ignore[type-arg]


@dataclass(frozen=True)
class NotRestored:
    """One thing of the globals not restored: what and why, in one line (never the
    statement's SQL)."""

    text: str
    tablespace: str | None = None  # the tablespace not created (e.g. its directory missing)


@dataclass
class GlobalsApplied:
    """What applying a globals file did: names as PostgreSQL spells them (unquoted)."""

    roles_created: list[str] = field(default_factory=list)
    roles_kept: list[str] = field(default_factory=list)
    memberships_granted: int = 0
    tablespaces_created: list[str] = field(default_factory=list)
    tablespaces_kept: list[str] = field(default_factory=list)
    not_restored: list[NotRestored] = field(default_factory=list)  # in the order met
    seconds: float = 0.0

    def problem(self, text: str) -> None:
        self.not_restored.append(NotRestored(text))

    @property
    def problems(self) -> list[str]:
        return [item.text for item in self.not_restored]

    @property
    def tablespaces_not_created(self) -> list[str]:
        return [item.tablespace for item in self.not_restored if item.tablespace is not None]


def apply_globals(conn: Connection, script: bytes) -> GlobalsApplied:
    """Apply ``script`` (verified ``pg_dumpall --globals-only`` SQL) through ``conn``, an
    autocommit connection to the target server, as the module docstring describes."""
    if not conn.autocommit:
        raise ValueError("apply_globals needs an autocommit connection (tablespaces)")
    started = time.monotonic()
    statements = [classify(text) for text in split_statements(script)]
    applied = GlobalsApplied()
    roles = _RoleState(superuser=is_superuser(conn))
    with conn.transaction():
        # pg_dumpall writes each role's ALTER ROLE ... WITH right after its CREATE ROLE:
        # the two go together (_create_role), so the ALTER is not run again on its own.
        paired = False
        for statement, following in zip(statements, [*statements[1:], None], strict=True):
            if paired:
                paired = False
            elif statement.kind is Kind.CREATE_ROLE:
                paired = following is not None and _sets_attributes(following,
                                                                    statement.subject)
                _create_role(conn, statement, following if paired else None, roles, applied)
            elif statement.kind not in (Kind.CREATE_TABLESPACE, Kind.TABLESPACE):
                _apply_role_statement(conn, statement, roles, applied)
    _apply_tablespaces(conn, statements, applied)
    applied.seconds = time.monotonic() - started
    return applied


@dataclass
class _RoleState:
    created: set[bytes] = field(default_factory=set)
    kept: set[bytes] = field(default_factory=set)
    failed: set[bytes] = field(default_factory=set)
    superuser: bool = True  # the restoring role


def _run(conn: Connection, text: bytes, *, alone: bool = False) -> psycopg.Error | None:
    """One statement in its own savepoint (``alone``: on its own, outside any transaction,
    as CREATE TABLESPACE must be); the error, if it failed."""
    try:
        if alone:
            conn.execute(text)
        else:
            with conn.transaction():
                conn.execute(text)
    except psycopg.Error as exc:
        return exc
    return None


def _apply_role_statement(conn: Connection, statement: Statement, roles: _RoleState,
                          applied: GlobalsApplied) -> None:
    kind, subject = statement.kind, statement.subject
    if kind is Kind.META:
        return  # \restrict / \unrestrict: psql's guard; no meta-command is ever run here
    if kind is Kind.DROP:
        applied.problem("a DROP statement was left out (backupd never drops what the server "
                        "has; the file was made with --clean)")
        return
    if kind is Kind.ROLE:
        if subject in roles.kept or subject in roles.failed:
            return  # an existing role is kept as it is; a failed one was reported
        _report(applied, _run(conn, statement.text), f"role {name_of(subject)!r}")
        return
    if kind is Kind.MEMBERSHIP:
        _apply_membership(conn, statement, roles, applied)
        return
    error = _run(conn, statement.text)
    if kind is Kind.OTHER:
        _report(applied, error, "a statement of the globals file")


# pg_dumpall's ALTER ROLE ... WITH names every attribute, these too when they are off; only a
# superuser may name them at all (PostgreSQL 15), so a CREATEROLE role (a managed service's
# admin) is refused a plain login role. Off is a new role's default: they can go.
_SUPERUSER_ONLY_DEFAULTS = re.compile(rb"\s+(?:NOSUPERUSER|NOREPLICATION|NOBYPASSRLS)\b")
# Turned on, they need a superuser whatever is done.
_SUPERUSER_ONLY = re.compile(rb"\s(SUPERUSER|REPLICATION|BYPASSRLS)\b")


def _sets_attributes(statement: Statement, subject: bytes) -> bool:
    """Whether ``statement`` is the ALTER ROLE ... WITH that gives the role ``subject``,
    just created, its attributes and password (pg_dumpall writes it right after)."""
    return (statement.kind is Kind.ROLE and statement.subject == subject
            and statement.text.startswith(b"ALTER ROLE " + subject + b" WITH"))


def _create_role(conn: Connection, create: Statement, attributes: Statement | None,
                 roles: _RoleState, applied: GlobalsApplied) -> None:
    """CREATE ROLE and its attributes as one step: made whole, kept (it exists), or not made
    at all and reported. A half-made role (NOLOGIN, no password) would be "kept" as it is by
    every later restore. A restoring role that is not a superuser never sends what it will
    be refused: the statement would be in the server's log, password hash and all."""
    subject, name = create.subject, name_of(create.subject)
    texts = [create.text]
    if attributes is not None and roles.superuser:
        texts.append(attributes.text)
    elif attributes is not None:
        # Only the keywords before the first quoted value (a password hash, a date).
        head = b"ALTER ROLE " + subject + b" WITH"
        options, quote, rest = attributes.text[len(head):].partition(b"'")
        needs = _SUPERUSER_ONLY.search(options)
        if needs is not None and not _exists(conn, name):
            roles.failed.add(subject)
            applied.problem(
                f"role {name!r} was not created: it has {needs.group(1).decode()}, which "
                "only a superuser may give; restore the globals as a superuser")
            return
        texts.append(head + _SUPERUSER_ONLY_DEFAULTS.sub(b"", options) + quote + rest)
    error = _run_together(conn, texts)
    if error is None:
        roles.created.add(subject)
        applied.roles_created.append(name)
    elif isinstance(error, psycopg.errors.DuplicateObject):
        roles.kept.add(subject)
        applied.roles_kept.append(name)
    else:
        roles.failed.add(subject)
        applied.problem(f"role {name!r} was not created: {_reason(error)}")


def _exists(conn: Connection, name: str) -> bool:
    # The one statement here that sends a name as text, not as the file's bytes: through
    # as_text, so a session that cannot hold it (a LATIN1 one lacks 日) says so (NotHeld)
    # instead of psycopg's UnicodeEncodeError. Its own savepoint: a refusal must not leave
    # the roles' transaction aborted while as_text puts the client encoding back.
    sent = Sent("role name", name)
    with as_text(conn, f"the restore of role {name!r}", "globals", (sent,)), conn.transaction():
        return conn.execute("SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s",
                            (name,)).fetchone() is not None


def _run_together(conn: Connection, texts: list[bytes]) -> psycopg.Error | None:
    """Statements in one savepoint: all of them, or none; the first error."""
    try:
        with conn.transaction():
            for text in texts:
                conn.execute(text)
    except psycopg.Error as exc:
        return exc
    return None


def _apply_membership(conn: Connection, statement: Statement, roles: _RoleState,
                      applied: GlobalsApplied) -> None:
    group, member = statement.subject, statement.member
    if group in roles.failed or member in roles.failed:
        return
    if group in roles.kept and member in roles.kept:
        return  # between two roles the server had, nothing is changed
    error = _run(conn, statement.text)
    if error is not None and GRANTED_BY.search(statement.text):
        # The recorded grantor may not exist here (or may not be allowed to grant):
        # the membership matters, who granted it comes second.
        error = _run(conn, GRANTED_BY.sub(b"", statement.text))
    where = f"membership of {name_of(member)!r} in {name_of(group)!r}"
    if error is None:
        applied.memberships_granted += 1
    _report(applied, error, where)


def _apply_tablespaces(conn: Connection, statements: list[Statement],
                       applied: GlobalsApplied) -> None:
    missing: set[bytes] = set()
    for statement in statements:
        name = name_of(statement.subject)
        if statement.kind is Kind.CREATE_TABLESPACE:
            error = _run(conn, statement.text, alone=True)
            if error is None:
                applied.tablespaces_created.append(name)
            elif isinstance(error, psycopg.errors.DuplicateObject):
                missing.add(statement.subject)  # kept: its attributes are not changed
                applied.tablespaces_kept.append(name)
            else:
                missing.add(statement.subject)
                where = f" at {statement.location!r}" if statement.location else ""
                problem = (
                    f"tablespace {name!r}{where} was not created: {_reason(error)}; databases "
                    "and objects in it are restored into the default tablespace instead; to "
                    "have them in it, create that directory (empty, owned by the server's OS "
                    f"user) and run CREATE TABLESPACE {quote_identifier(name)} LOCATION "
                    "'<directory>' before restoring them")
                applied.not_restored.append(NotRestored(problem, tablespace=name))
        elif statement.kind is Kind.TABLESPACE and statement.subject not in missing:
            _report(applied, _run(conn, statement.text, alone=True), f"tablespace {name!r}")


def _report(applied: GlobalsApplied, error: psycopg.Error | None, where: str) -> None:
    if error is not None:
        applied.problem(f"{where}: {_reason(error)}")


def _reason(error: psycopg.Error) -> str:
    # The server's primary message only: it names the object, never echoes the statement
    # (which may hold a password hash).
    diag = getattr(error, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    return str(primary) if primary else describe_pg_error(error)

"""``backupd mark NAME``: a named restore point in the WAL (``pg_create_restore_point``), for
``backupd recover --to-name NAME``: "before-migration", "before-the-big-delete"."""

from __future__ import annotations

import psycopg

from backupd.errors import ConfigError, JobFailed
from backupd.job import JobContext
from backupd.outcomes import MarkOutcome
from backupd.postgres.connection import connect, describe_pg_error

# The server keeps restore point names in a fixed 64-byte field (MAXFNAMELEN), NUL included.
MAX_NAME_BYTES = 63


def run(ctx: JobContext, name: str) -> None:
    if not name or len(name.encode()) > MAX_NAME_BYTES or "\x00" in name:
        raise ConfigError(f"NAME: {name!r} must be 1 to {MAX_NAME_BYTES} bytes (PostgreSQL's "
                          "limit for restore point names)")
    try:
        with connect(ctx.settings) as conn:
            row = conn.execute("SELECT pg_create_restore_point(%s)::text, now()",
                               (name,)).fetchone()
            # The restore point is a WAL record the server does not flush by itself; a
            # committed transaction with an xid flushes it, so the archive has it at once.
            with conn.transaction():
                conn.execute("SELECT pg_current_xact_id()")
    except psycopg.errors.InsufficientPrivilege:
        raise JobFailed(f"POSTGRES_USER {ctx.settings.postgres_user!r} may not create restore "
                        "points: run `GRANT EXECUTE ON FUNCTION pg_create_restore_point(text) "
                        "TO ...` as a superuser, or mark as one") from None
    except psycopg.Error as exc:
        raise JobFailed(f"could not create restore point {name!r}: "
                        f"{describe_pg_error(exc)}") from None
    assert row is not None
    ctx.result.outcome = MarkOutcome(name=name, lsn=str(row[0]), server_time=row[1])
    ctx.say(f"restore point {name!r} at {row[0]} ({row[1].isoformat()}); recover to it with "
            f"`backupd recover --target-dir DIR --to-name {name}`")

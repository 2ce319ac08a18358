"""PostgreSQL helpers for tests: addresses, throwaway databases, fixture loading, fingerprints.

Everything here talks to a real server (the machine's cluster or a PrivateCluster); nothing is
mocked, so a passing test means backupd really moved data between real databases.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from functools import cache
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class ServerAddress:
    host: str
    port: int
    user: str
    password: str | None = None

    def conninfo(self, dbname: str) -> str:
        # make_conninfo quotes values, so passwords/db names with quotes or spaces survive.
        params: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "dbname": dbname,
            "connect_timeout": 10,
        }
        if self.password is not None:
            params["password"] = self.password
        return make_conninfo("", **params)

    def env(self, dbname: str) -> dict[str, str]:
        """libpq environment for command-line tools (keeps the password out of argv)."""
        env = {
            "PGHOST": self.host,
            "PGPORT": str(self.port),
            "PGUSER": self.user,
            "PGDATABASE": dbname,
        }
        if self.password is not None:
            env["PGPASSWORD"] = self.password
        return env


LOCAL = ServerAddress(
    os.environ.get("BACKUPD_TEST_PGHOST", "127.0.0.1"),
    int(os.environ.get("BACKUPD_TEST_PGPORT", "5432")),
    os.environ.get("BACKUPD_TEST_PGUSER", "postgres"),
    None,
)


@cache
def pg_bin_dir() -> Path | None:
    """Directory of the server binaries whose major matches the client tools (pg_dump)."""
    try:
        out = subprocess.run(
            ["pg_dump", "--version"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    match = re.search(r"\s(\d+)(?:\.\d+)?", out)
    if match:
        candidate = Path("/usr/lib/postgresql") / match.group(1) / "bin"
        if candidate.is_dir():
            return candidate
    return None


def pg_binary(name: str) -> str:
    """Absolute path of a PostgreSQL binary: the matching major's bin dir first, then PATH."""
    bin_dir = pg_bin_dir()
    if bin_dir is not None and (bin_dir / name).exists():
        return str(bin_dir / name)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"PostgreSQL binary {name!r} not found")
    return found


def connect(server: ServerAddress, dbname: str = "postgres") -> psycopg.Connection[tuple[Any, ...]]:
    # Autocommit: CREATE/DROP DATABASE refuse to run inside a transaction block.
    return psycopg.connect(server.conninfo(dbname), autocommit=True)


def unique_db_name(prefix: str) -> str:
    """A fresh, valid, lower-case database name such as ``bk_restore_1a2b3c4d``."""
    clean = re.sub(r"[^a-z0-9_]+", "_", prefix.lower()).strip("_")[:40] or "db"
    return f"bk_{clean}_{secrets.token_hex(4)}"


def database_exists(server: ServerAddress, name: str) -> bool:
    with connect(server) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                            (name,)).fetchone() is not None


def create_database(server: ServerAddress, name: str, *, template: str | None = None) -> None:
    query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template is not None:
        query = sql.SQL("{} TEMPLATE {}").format(query, sql.Identifier(template))
    with connect(server) as conn:
        conn.execute(query)


def drop_database(server: ServerAddress, name: str) -> None:
    """Drop ``name`` if it exists, kicking out sessions and clearing a template flag first."""
    with connect(server) as conn:
        row = conn.execute(
            "SELECT datistemplate FROM pg_database WHERE datname = %s", (name,)
        ).fetchone()
        if row is None:
            return
        if row[0]:
            # DROP DATABASE refuses template databases.
            conn.execute(
                sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE false").format(sql.Identifier(name))
            )
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


# The project's own test data (tests/fixtures/certificates.sql): psql -v scale=N loads it.
FIXTURE_SQL = REPO_ROOT / "tests" / "fixtures" / "certificates.sql"


def fixture_sql_path() -> Path:
    """The certificates fixture; BACKUPD_FIXTURE_SQL overrides it (another data set to try)."""
    override = os.environ.get("BACKUPD_FIXTURE_SQL")
    return Path(override) if override else FIXTURE_SQL


def _scale_literal(scale: float) -> str:
    # :g renders 1.0 as "1" and 0.1 as "0.1": the SQL sees exactly what Decimal sees below.
    return f"{scale:g}"


def fixture_rows(table: str, scale: float) -> int:
    """Rows the fixture puts in ``table`` at ``scale``: the SQL's round(N * scale), exactly."""
    per_unit = {"certificates": 20000, "verification_events": 100000}[table]
    exact = Decimal(per_unit) * Decimal(_scale_literal(scale))
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))


@dataclass(frozen=True)
class FixtureTemplate:
    name: str
    scale: float

    @property
    def certificates(self) -> int:
        """Rows in ``certificates`` (20k per unit of scale)."""
        return fixture_rows("certificates", self.scale)


class PsqlError(subprocess.CalledProcessError):
    def __str__(self) -> str:
        # The default message hides stderr, which is the only useful part for psql.
        return f"{super().__str__()}\n{self.stderr}"


def _tool_env(server: ServerAddress, dbname: str) -> dict[str, str]:
    # Drop inherited PG* variables (PGSERVICE, PGPASSWORD, ...) so only `server` is used.
    base = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    return {**base, **server.env(dbname), "PGCONNECT_TIMEOUT": "10"}


def _run_psql(server: ServerAddress, dbname: str, args: list[str], stdin: str | None) -> str:
    cmd = [pg_binary("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", *args]
    proc = subprocess.run(
        cmd,
        input=stdin,
        capture_output=True,
        text=True,
        env=_tool_env(server, dbname),
        stdin=None if stdin is not None else subprocess.DEVNULL,
        check=False,
    )
    if proc.returncode != 0:
        raise PsqlError(proc.returncode, cmd, proc.stdout, proc.stderr)
    return proc.stdout


def psql(server: ServerAddress, dbname: str, query: str) -> str:
    """Run SQL (possibly several statements) via psql; returns unaligned, tuples-only stdout."""
    return _run_psql(server, dbname, ["-A", "-t", "-f", "-"], query)


def load_fixture(
    server: ServerAddress, dbname: str, *, scale: float = 1, sql_file: Path | None = None
) -> None:
    path = sql_file or fixture_sql_path()
    _run_psql(server, dbname, ["-v", f"scale={_scale_literal(scale)}", "-f", str(path)], None)


# --- fingerprint -------------------------------------------------------------------------------

_USER_NS = (
    "n.nspname NOT IN ('pg_catalog', 'information_schema')"
    " AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'"
)

# Each query yields one text line per object; lines are sorted, so catalog order is irrelevant.
_SCHEMA_QUERIES: dict[str, str] = {
    "schemas": f"SELECT n.nspname FROM pg_namespace n WHERE {_USER_NS}",
    "extensions": "SELECT extname || ' ' || extversion FROM pg_extension",
    "tables": f"""
        SELECT format('%I.%I(%s)', n.nspname, c.relname, string_agg(
                 format('%I %s%s%s', a.attname, format_type(a.atttypid, a.atttypmod),
                        CASE WHEN a.attnotnull THEN ' not null' ELSE '' END,
                        coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')),
                 ', ' ORDER BY a.attnum))
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
        LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
        WHERE c.relkind IN ('r', 'p', 'f') AND {_USER_NS}
        GROUP BY n.nspname, c.relname""",
    "constraints": f"""
        SELECT format('%I.%I %I %s', n.nspname, c.relname, k.conname,
                      pg_get_constraintdef(k.oid))
        FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {_USER_NS}""",
    "views": f"""
        SELECT format('%I.%I %s %s', n.nspname, c.relname, c.relkind,
                      pg_get_viewdef(c.oid, true))
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('v', 'm') AND {_USER_NS}""",
    # pg_sequences.last_value is NULL until nextval()/setval(true), which dumps preserve.
    "sequences": """
        SELECT format('%I.%I %s start=%s inc=%s last=%s', schemaname, sequencename, data_type,
                      start_value, increment_by, coalesce(last_value::text, 'unset'))
        FROM pg_sequences
        WHERE schemaname NOT IN ('pg_catalog', 'information_schema')""",
    # md5(prosrc) so that a changed body counts too, not only the signature.
    "functions": f"""
        SELECT format('%I.%I(%s) %s %s md5=%s', n.nspname, p.proname,
                      pg_get_function_identity_arguments(p.oid),
                      coalesce(pg_get_function_result(p.oid), ''), p.prokind, md5(p.prosrc))
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE {_USER_NS}""",
    "indexes": """
        SELECT indexdef FROM pg_indexes
        WHERE schemaname NOT IN ('pg_catalog', 'information_schema')
          AND schemaname NOT LIKE 'pg_toast%'""",
    "types": f"""
        SELECT format('%I.%I %s %s', n.nspname, t.typname, t.typtype, CASE t.typtype
                 WHEN 'e' THEN (SELECT string_agg(quote_literal(e.enumlabel), ','
                                                  ORDER BY e.enumsortorder)
                                FROM pg_enum e WHERE e.enumtypid = t.oid)
                 WHEN 'd' THEN format_type(t.typbasetype, t.typtypmod)
                 ELSE '' END)
        FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
        LEFT JOIN pg_class c ON c.oid = t.typrelid
        WHERE {_USER_NS} AND t.typtype IN ('e', 'd', 'r', 'm', 'c')
          AND (t.typtype <> 'c' OR c.relkind = 'c')""",
    "triggers": f"""
        SELECT pg_get_triggerdef(t.oid) FROM pg_trigger t
        JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE NOT t.tgisinternal AND {_USER_NS}""",
    # Large objects live outside every table: pg_dump carries them separately (BLOBS).
    "large_objects": """
        SELECT format('%s md5=%s', oid, md5(lo_get(oid))) FROM pg_largeobject_metadata""",
}

# Row text depends on session settings; pin them so two servers render rows identically.
_FINGERPRINT_SETTINGS = {
    "TimeZone": "UTC",
    "DateStyle": "ISO, YMD",
    "IntervalStyle": "postgres",
    "extra_float_digits": "1",
    "bytea_output": "hex",
}


def fingerprint(server: ServerAddress, dbname: str) -> dict[str, str]:
    """Deterministic digest of a database's data and schema, one entry per table/object kind.

    Equal for two databases restored from the same dump; any changed row or dropped object
    changes an entry, and the differing keys say where.
    """
    result: dict[str, str] = {}
    with connect(server, dbname) as conn:
        for name, value in _FINGERPRINT_SETTINGS.items():
            conn.execute("SELECT set_config(%s, %s, false)", (name, value))
        for key, query in _SCHEMA_QUERIES.items():
            lines = sorted(str(row[0]) for row in conn.execute(query))
            result[key] = "\n".join(lines)
        relations = conn.execute(
            f"""SELECT n.nspname, c.relname FROM pg_class c
                JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE (c.relkind IN ('r', 'p') OR (c.relkind = 'm' AND c.relispopulated))
                  AND {_USER_NS}"""
        ).fetchall()
        for schema, table in sorted(relations):
            # ROW(r.*) rather than a bare alias, which a column of the same name would shadow.
            # COLLATE "C": the row order must not depend on the database's collation.
            digest = sql.SQL(
                "SELECT count(*), md5(coalesce(string_agg(x, E'\\n' ORDER BY x COLLATE \"C\"), ''))"
                " FROM (SELECT ROW(r.*)::text AS x FROM {} r) AS s"
            ).format(sql.Identifier(schema, table))
            row = conn.execute(digest).fetchone()
            assert row is not None
            result[f"data:{schema}.{table}"] = f"rows={row[0]} md5={row[1]}"
    return result

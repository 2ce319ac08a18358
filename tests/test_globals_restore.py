"""Restoring a cluster's globals (pg_dumpall --globals-only) onto a freshly initialised server:
new roles come with attributes, password hashes, memberships and settings; roles the server
has are kept as they are and reported; a tablespace whose directory is missing is reported."""

from __future__ import annotations

import gzip
import hashlib
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from helpers.cluster import SERVER_OS_USER, PrivateCluster
from helpers.pg import ServerAddress, connect, pg_binary

from backupd.commands.cluster_restore import restore_globals
from backupd.errors import JobFailed
from backupd.job import JobContext
from backupd.manifest import Manifest
from backupd.naming import GLOBALS_KIND, globals_name, parse_backup_name
from backupd.pipeline.sqlcheck import CLUSTER_FOOTER, CLUSTER_HEADER, FOOTER, HEADER, HeadTail
from backupd.postgres.globals import apply_globals
from backupd.postgres.globals_sql import Kind, classify, split_statements
from backupd.postgres.not_held import NotHeld
from backupd.result import JobResult
from backupd.settings import Settings
from backupd.storage.base import BackupEntry

OWNER_PASSWORD = "owner's pw"


@pytest.fixture(scope="module")
def source() -> Iterator[PrivateCluster]:
    with PrivateCluster("src-pw") as cluster:
        cluster.start()
        assert cluster.root is not None
        space = cluster.root / "space"
        space.mkdir()
        subprocess.run(["chown", SERVER_OS_USER, str(space)], check=True)
        with connect(cluster.address) as conn:
            conn.execute(f"CREATE ROLE app LOGIN CREATEDB CONNECTION LIMIT 7 "
                         f"PASSWORD '{OWNER_PASSWORD.replace(chr(39), chr(39) * 2)}'")
            conn.execute("CREATE ROLE reader NOLOGIN")
            conn.execute('CREATE ROLE "Odd ""Name""; x" NOLOGIN')
            conn.execute("GRANT app TO reader")
            conn.execute('GRANT reader TO "Odd ""Name""; x" WITH ADMIN OPTION')
            conn.execute("ALTER ROLE app SET statement_timeout = '42s'")
            conn.execute("ALTER ROLE app SET search_path = 'app', 'public'")
            conn.execute("COMMENT ON ROLE app IS 'the application; it owns everything'")
            conn.execute(f"CREATE TABLESPACE far LOCATION '{space}'")
            # The bootstrap superuser's own line must not change the target's superuser.
            conn.execute("ALTER ROLE postgres SET work_mem = '7MB'")
        yield cluster


@pytest.fixture
def target(private_cluster: Callable[..., PrivateCluster]) -> PrivateCluster:
    return private_cluster("target-pw")


def globals_file(source: PrivateCluster, directory: Path) -> tuple[Path, BackupEntry]:
    """The globals artifact as a backup run makes it (gzip + manifest), for this test."""
    sql = subprocess.run([pg_binary("pg_dumpall"), "--globals-only", "--no-password"],
                         env=source.address.env("postgres"), capture_output=True,
                         check=True).stdout
    when = datetime.now(UTC).replace(microsecond=0)
    name = globals_name(when)
    path = directory / name
    path.write_bytes(gzip.compress(sql))
    data = path.read_bytes()
    manifest = Manifest(kind="globals", name=name, database="globals", started_at=when,
                        finished_at=when, raw_bytes=len(sql), stored_bytes=len(data),
                        sha256=hashlib.sha256(data).hexdigest(), verified=True)
    parsed = parse_backup_name(name)
    assert parsed is not None and parsed.kind == GLOBALS_KIND
    return path, BackupEntry(parsed, len(data), manifest)


def context(server: ServerAddress, directory: Path) -> JobContext:
    values: dict[str, Any] = {"POSTGRES_HOST": server.host, "POSTGRES_PORT": str(server.port),
              "POSTGRES_USER": server.user, "POSTGRES_PASSWORD": server.password or "",
              "POSTGRES_DB": "postgres", "DB_BACKUP_DIR": str(directory)}
    settings = Settings(_env_file=None, **values)  # type: ignore[call-arg]
    return JobContext(settings, JobResult(job="restore", database="postgres"))


def roles(server: ServerAddress) -> dict[str, tuple[object, ...]]:
    with connect(server) as conn:
        rows = conn.execute(
            "SELECT rolname, rolsuper, rolcanlogin, rolcreatedb, rolconnlimit, rolconfig, "
            "shobj_description(oid, 'pg_authid'), "
            "ARRAY(SELECT b.rolname || '>' || m.admin_option FROM pg_auth_members m "
            "      JOIN pg_roles b ON b.oid = m.roleid WHERE m.member = r.oid ORDER BY 1) "
            "FROM pg_roles r WHERE rolname !~ '^pg_' ORDER BY 1").fetchall()
    return {str(row[0]): tuple(row[1:]) for row in rows}


def test_splitting_respects_quotes_comments_and_meta_commands() -> None:
    script = (b"--\n-- header; not a statement\n--\n\n\\restrict abc\n\n"
              b"SET standard_conforming_strings = on;\n"
              b"CREATE ROLE \"a;b\";\nALTER ROLE \"a;b\" WITH PASSWORD 'x;''y';\n"
              b"COMMENT ON ROLE \"a;b\" IS E'it\\'s; fine';\n"
              b"GRANT \"a;b\" TO app GRANTED BY postgres;\n"
              b"GRANT CREATE ON TABLESPACE far TO app;\n"
              b"/* a; comment */ DROP ROLE x;\n\\unrestrict abc\n")
    statements = [classify(text) for text in split_statements(script)]
    assert [s.kind for s in statements] == [
        Kind.META, Kind.SESSION, Kind.CREATE_ROLE, Kind.ROLE, Kind.ROLE, Kind.MEMBERSHIP,
        Kind.TABLESPACE, Kind.OTHER, Kind.META]
    assert statements[3].text == b"ALTER ROLE \"a;b\" WITH PASSWORD 'x;''y';"
    assert statements[2].subject == statements[3].subject == b'"a;b"'
    assert statements[5].member == b"app"


def test_roles_restore_onto_a_fresh_server(source: PrivateCluster, target: PrivateCluster,
                                           tmp_path: Path) -> None:
    path, entry = globals_file(source, tmp_path)
    ctx = context(target.address, tmp_path)
    superuser_before = roles(target.address)["postgres"]
    with connect(target.address) as conn:
        outcome = restore_globals(ctx, conn, path, entry)

    assert outcome.verify is not None and outcome.verify.ok
    assert sorted(outcome.roles_created) == ['Odd "Name"; x', "app", "reader"]
    assert outcome.roles_kept == ["postgres"]
    assert outcome.memberships_granted == 2
    expected = roles(source.address)
    restored = roles(target.address)
    for name in ("app", "reader", 'Odd "Name"; x'):
        assert restored[name] == expected[name], name
    # The kept superuser is untouched: no work_mem from the old cluster, same password.
    assert restored["postgres"] == superuser_before
    with psycopg.connect(target.address.conninfo("postgres")):
        pass
    # The owner logs in on the new server with its old password (its hash travelled).
    owner = ServerAddress(target.address.host, target.port, "app", OWNER_PASSWORD)
    with connect(owner) as conn:
        row = conn.execute("SHOW statement_timeout").fetchone()
        assert row is not None and row[0] == "42s"
    # The tablespace's directory does not exist here: reported, with what to do.
    assert outcome.tablespaces_created == []
    [problem] = outcome.problems
    assert "tablespace 'far'" in problem and "CREATE TABLESPACE" in problem
    assert "already in use" in problem  # the source's directory, on this same machine
    assert any("tablespace 'far'" in w for w in ctx.result.warnings)
    assert OWNER_PASSWORD not in " ".join(ctx.result.warnings)

    # Again: now every role is there, kept and reported, and nothing changes.
    with connect(target.address) as conn:
        conn.execute("ALTER ROLE reader LOGIN")
        again = restore_globals(context(target.address, tmp_path), conn, path, entry)
    assert again.roles_created == []
    assert sorted(again.roles_kept) == ['Odd "Name"; x', "app", "postgres", "reader"]
    assert roles(target.address)["reader"][1] is True  # kept as the server had it


def test_a_globals_file_that_fails_verification_is_never_applied(
        source: PrivateCluster, target: PrivateCluster, tmp_path: Path) -> None:
    path, entry = globals_file(source, tmp_path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    before = roles(target.address)
    with connect(target.address) as conn, pytest.raises(JobFailed, match="verification"):
        restore_globals(context(target.address, tmp_path), conn, path, entry)
    assert roles(target.address) == before


def test_a_role_that_cannot_be_created_is_reported_and_the_others_go_on(
        target: PrivateCluster) -> None:
    script = (b"CREATE ROLE one;\nALTER ROLE one WITH NOLOGIN;\n"
              b"CREATE ROLE two;\nALTER ROLE two WITH NO_SUCH_OPTION;\n"
              b"CREATE ROLE three;\nGRANT one TO three GRANTED BY nobody_here;\n")
    with connect(target.address) as conn:
        applied = apply_globals(conn, script)
    assert applied.roles_created == ["one", "three"]
    assert applied.problems == [
        "role 'two' was not created: unrecognized role option \"no_such_option\""]
    assert applied.memberships_granted == 1  # granted without the unknown grantor
    on_server = set(roles(target.address))
    assert {"one", "three"} <= on_server and "two" not in on_server  # never half made


def test_globals_and_database_dumps_never_pass_for_each_other() -> None:
    cluster_sql = HeadTail()
    cluster_sql.feed(CLUSTER_HEADER + b"\nCREATE ROLE x;\n\n" + CLUSTER_FOOTER + b"\n\n")
    dump_sql = HeadTail()
    dump_sql.feed(HEADER + b"\nCREATE TABLE t ();\n\n" + FOOTER + b"\n\n")
    assert cluster_sql.problem(cluster=True) is None
    assert dump_sql.problem() is None
    assert "pg_dump's header" in (cluster_sql.problem() or "")
    assert "pg_dumpall's header" in (dump_sql.problem(cluster=True) or "")
    truncated = HeadTail()
    truncated.feed(CLUSTER_HEADER + b"\nCREATE ROLE x;\n")
    assert "incomplete" in (truncated.problem(cluster=True) or "")


def test_a_tablespace_whose_directory_exists_is_created_with_its_grants(
        target: PrivateCluster) -> None:
    assert target.root is not None
    space = target.root / "new-space"
    space.mkdir()
    subprocess.run(["chown", SERVER_OS_USER, str(space)], check=True)
    script = (b"CREATE ROLE spaceuser;\n"
              b"CREATE TABLESPACE fast OWNER postgres LOCATION '" + str(space).encode() + b"';\n"
              b"GRANT CREATE ON TABLESPACE fast TO spaceuser;\n"
              b"COMMENT ON TABLESPACE fast IS 'the fast disk';\n")
    with connect(target.address) as conn:
        applied = apply_globals(conn, script)
        row = conn.execute("SELECT spcacl::text[], shobj_description(oid, 'pg_tablespace') "
                           "FROM pg_tablespace WHERE spcname = 'fast'").fetchone()
    assert applied.problems == []
    assert applied.tablespaces_created == ["fast"]
    assert row is not None and "spaceuser=C/postgres" in row[0] and row[1] == "the fast disk"


def test_a_role_with_createrole_restores_the_roles_whole(
        source: PrivateCluster, target: PrivateCluster, tmp_path: Path) -> None:
    """Not a superuser (a managed service's admin role): pg_dumpall's ALTER ROLE ... WITH
    names NOREPLICATION and NOBYPASSRLS, which only a superuser may, even to keep them off.
    Left out (they are a new role's defaults), every role is made with its attributes and
    password; never half made (NOLOGIN, no password) and then "kept" by the next restore."""
    path, entry = globals_file(source, tmp_path)
    with connect(target.address) as conn:
        conn.execute("CREATE ROLE restorer LOGIN CREATEROLE PASSWORD 'restorer pw'")
    restorer = ServerAddress(target.address.host, target.port, "restorer", "restorer pw")
    with connect(restorer) as conn:
        outcome = restore_globals(context(restorer, tmp_path), conn, path, entry)

    assert sorted(outcome.roles_created) == ['Odd "Name"; x', "app", "reader"]
    assert outcome.roles_kept == ["postgres"]  # not "needs SUPERUSER": it exists
    assert all("tablespace 'far'" in p for p in outcome.problems), outcome.problems
    expected, restored = roles(source.address), roles(target.address)
    for name in ("app", "reader", 'Odd "Name"; x'):
        assert restored[name][:5] == expected[name][:5], name  # attributes and settings
    owner = ServerAddress(target.address.host, target.port, "app", OWNER_PASSWORD)
    with connect(owner) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("app",)


def test_a_role_whose_attributes_cannot_be_set_is_not_created(target: PrivateCluster) -> None:
    """CREATE ROLE and its ALTER ROLE ... WITH are one step: a role the restoring role may
    not make as it was (a superuser, made by a CREATEROLE role) is reported and not made,
    so that a later restore by a superuser creates it whole instead of keeping a husk."""
    with connect(target.address) as conn:
        conn.execute("CREATE ROLE restorer LOGIN CREATEROLE PASSWORD 'restorer pw'")
    restorer = ServerAddress(target.address.host, target.port, "restorer", "restorer pw")
    script = (b"CREATE ROLE boss;\nALTER ROLE boss WITH SUPERUSER INHERIT NOCREATEROLE "
              b"NOCREATEDB LOGIN NOREPLICATION NOBYPASSRLS PASSWORD 'boss pw';\n"
              b"CREATE ROLE worker;\nALTER ROLE worker WITH NOSUPERUSER INHERIT NOCREATEROLE "
              b"NOCREATEDB LOGIN NOREPLICATION NOBYPASSRLS;\n"
              b"GRANT worker TO boss;\n")
    with connect(restorer) as conn:
        applied = apply_globals(conn, script)
    assert applied.roles_created == ["worker"]
    assert applied.problems == ["role 'boss' was not created: it has SUPERUSER, which only a "
                                "superuser may give; restore the globals as a superuser"]
    on_server = roles(target.address)
    assert "boss" not in on_server and on_server["worker"][1] is True  # worker can log in
    # Never sent to be refused: the server logs a failed statement whole, password included.
    assert "boss pw" not in target.log_file.read_text()



def test_a_superuser_role_a_latin1_session_cannot_hold_is_said_as_such() -> None:
    """A CREATEROLE restorer asks whether a SUPERUSER role exists before leaving it out. On a
    LATIN1 session psycopg encoded the name as Latin-1: a role '日本' was an internal error
    (UnicodeEncodeError). Now, as every statement sending a name, through as_text: one line
    naming the role name, the character and the encoding (not_held), nothing applied, and
    the session back to its own encoding. (A SQL_ASCII session does not provoke it: psycopg
    sends a str parameter as UTF-8 there, so 'rôle' was looked up all the same.)"""
    with PrivateCluster("latin1-pw", encoding="LATIN1") as cluster:
        cluster.start()
        with connect(cluster.address) as conn:
            conn.execute("CREATE ROLE restorer LOGIN CREATEROLE PASSWORD 'restorer pw'")
        restorer = ServerAddress(cluster.address.host, cluster.port, "restorer", "restorer pw")
        script = ("CREATE ROLE worker;\nALTER ROLE worker WITH NOSUPERUSER INHERIT "
                  "NOCREATEROLE NOCREATEDB LOGIN NOREPLICATION NOBYPASSRLS;\n"
                  'CREATE ROLE "日本";\nALTER ROLE "日本" WITH SUPERUSER INHERIT NOCREATEROLE '
                  "NOCREATEDB LOGIN NOREPLICATION NOBYPASSRLS PASSWORD 'x pw';\n").encode()
        with connect(restorer) as conn:
            with pytest.raises(NotHeld) as raised:
                apply_globals(conn, script)
            encoding = conn.info.parameter_status("client_encoding")
            assert conn.execute("SELECT 1").fetchone() == (1,)  # the session still works
        said = str(raised.value)
        assert said.startswith("cannot send the role name '日本' for "), said
        assert "LATIN1" in said and "'日' (U+65E5)" in said, said
        assert encoding == "LATIN1"
        assert "worker" not in roles(cluster.address)  # rolled back with the rest

"""The PITR drill: recover the newest base backup with all its WAL into a scratch directory,
start a private server on it, and prove what it holds.

With ``DRILL_SCHEDULE`` and ``WAL_ARCHIVE=on`` every drill also runs this
(:func:`backupd.commands.drill.run`):

1. ``recover`` to the end of the local archive into ``DB_BACKUP_DIR/.pitr-drill/data``
   (a leftover of a killed drill is removed first: only that directory is ever removed;
   the daemon's start-up removes such a leftover too, :mod:`backupd.commands.pitr_scratch`);
2. the newest commit in the copied WAL, read with pg_waldump: the newest durable in the
   archive;
3. a private server (the image's ``/usr/lib/postgresql/<major>/bin/postgres``, of the
   archive's own major, ``PG_SERVER_ROOT`` moving the root; under the one supervisor) on a
   unix socket inside the scratch directory, with its own pg_hba (trust over that socket
   only) and no hot standby; waited for until it promotes. Without that major's server
   binaries the drill is skipped in one line (checked before recovering when the live
   server's major is known, and again on the recovered directory's own);
4. each database compared with the live one (the dump drill's comparisons), and that
   newest commit is there;
5. the measured RTO (recover + start + replay + promotion) and replay time reported, and
   the server stopped and the directory removed in a ``finally``.
"""

from __future__ import annotations

import os
import pwd
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from backupd.archive.recovery import RecoverySource, RecoveryTarget
from backupd.archive.recovery_dir import WAL_COPY_NAME
from backupd.archive.waldump import Commit, data_major, newest_commit, waldump_for
from backupd.archive.walnames import format_lsn
from backupd.commands.pitr_scratch import scratch_directory
from backupd.commands.recover import RecoverOptions, recover_into
from backupd.configs import age_key_files
from backupd.errors import JobFailed, JobSkipped
from backupd.job import JobContext
from backupd.outcomes import RecoverOutcome
from backupd.pipeline.clients import known_server_major, missing_server_tools, server_tool
from backupd.pipeline.supervisor import Child
from backupd.postgres.compare import compare, read_catalog
from backupd.postgres.connection import as_text, connect, describe_pg_error
from backupd.postgres.databases import resolve_databases
from backupd.scratch import owned, remove_abandoned

# What the drill runs of the archive's major: the scratch server, and pg_waldump for the
# newest durable commit.
SERVER_TOOLS = ("postgres", "pg_waldump")
PROMOTION_TIMEOUT_SECONDS = 3600.0
# The server refuses to run as root; a root backupd (tests, a root container) runs it as this
# user, as the postgres packages do.
SERVER_OS_USER = "postgres"


def run(ctx: JobContext, source: RecoverySource | None = None) -> RecoverOutcome:
    """The drill (``source``: the local archive by default); JobFailed naming what is wrong,
    JobSkipped in one line when the server binaries of the archive's major are not here."""
    # The live server's major is the archive's (unless upgraded since): checked before what
    # may be hours of recovery; the recovered directory's own major is checked after it.
    live_major = known_server_major()
    if live_major is not None:
        _require_server_tools(ctx, live_major)
    if source is None:
        from backupd.archive.recovery_source import archive_source

        source = archive_source(ctx.repos, age_key_files(ctx.settings))
    scratch = scratch_directory(ctx.settings.backup_dir)
    found = remove_abandoned(scratch)
    if found == "removed":
        ctx.warn(f"removed the scratch directory {scratch} an interrupted PITR drill left")
    elif found == "live":
        raise JobFailed(f"another PITR drill is running in {scratch} (a `backupd drill` beside "
                        "the daemon's scheduled one?); run this one when it has ended")
    outcome = RecoverOutcome(target_dir=str(scratch / "data"),
                             target=RecoveryTarget().describe())
    started = time.monotonic()
    with owned(scratch):
        data = scratch / "data"
        run_as = _server_user()
        owner = (run_as.pw_uid, run_as.pw_gid) if run_as is not None else None
        chosen = recover_into(ctx, source, data, RecoveryTarget(), RecoverOptions(owner=owner),
                              outcome)
        _require_server_tools(ctx, data_major(data))
        durable = newest_commit(data / WAL_COPY_NAME, chosen.newest_files(3),
                                chosen.segments[-1].timeline,
                                waldump_for(data, ctx.settings.pg_server_root))
        if owner is not None:
            os.chown(scratch, *owner)
        with _server(ctx, data, scratch, run_as) as server:
            replay_started = time.monotonic()
            # Replay moves no data through backupd: the server's own reads are the movement.
            with ctx.progress.sampled("WAL replay of the recovered server", server.io_bytes):
                socket_dir = _wait_promoted(ctx, server, scratch)
            outcome.replay_seconds = round(time.monotonic() - replay_started, 3)
            outcome.rto_seconds = round(time.monotonic() - started, 3)
            problems = _compare(ctx, socket_dir)
            problems += _durable_present(ctx, socket_dir, durable)
    ctx.say(f"PITR drill: recovered {chosen.base.name} with {len(chosen.segments)} WAL "
            f"segments; RTO {outcome.rto_seconds}s (server start to promotion "
            f"{outcome.replay_seconds}s); scratch directory removed")
    if problems:
        raise JobFailed("PITR drill failed: " + "; ".join(problems[:5]))
    return outcome


def _server_user() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVER_OS_USER)
    except KeyError:
        raise JobSkipped("PITR drill skipped: backupd runs as root and there is no "
                         f"{SERVER_OS_USER!r} user to run the scratch server as") from None


def _require_server_tools(ctx: JobContext, major: int) -> None:
    problem = missing_server_tools(SERVER_TOOLS, major, ctx.settings.pg_server_root)
    if problem is not None:
        raise JobSkipped(f"PITR drill skipped: {problem}")


@contextmanager
def _server(ctx: JobContext, data: Path, scratch: Path,
            run_as: pwd.struct_passwd | None) -> Iterator[Child]:
    """The scratch server on a unix socket in ``scratch`` (no TCP port: nothing else can reach
    it), trusting that socket alone."""
    hba = scratch / "drill_hba.conf"
    hba.write_text("local all all trust\n")
    if run_as is not None:
        os.chown(hba, run_as.pw_uid, run_as.pw_gid)
    binary = server_tool("postgres", data_major(data), ctx.settings.pg_server_root)
    assert binary is not None  # _require_server_tools
    # jit=off: the image leaves out the LLVM bitcode JIT inlining reads.
    argv = [str(binary), "-D", str(data), "-k", str(scratch),
            "-c", "listen_addresses=", "-c", f"hba_file={hba}", "-c", "hot_standby=off",
            "-c", "jit=off", "-c", "archive_mode=off", "-c", "shared_preload_libraries=",
            "-c", "logging_collector=off", "-c", "ssl=off", "-c", "max_connections=20",
            "-c", "shared_buffers=32MB", "-c", "port=5432"]
    if run_as is not None:
        argv = ["runuser", "-u", run_as.pw_name, "--", *argv]
    with Child(argv, cancel=ctx.cancel, stderr_lines=40) as child:
        ctx.say(f"PITR drill: scratch server started on {data}")
        try:
            yield child
        finally:
            child.stop(60)


def _connect(ctx: JobContext, socket_dir: Path, database: str) -> psycopg.Connection[tuple]:  # type: ignore[type-arg]
    conninfo = psycopg.conninfo.make_conninfo(
        host=str(socket_dir), port=5432, dbname=database, user=ctx.settings.postgres_user,
        connect_timeout=10)
    return psycopg.connect(conninfo, autocommit=True)


# What the server answers while it recovers (hot standby off: no connections until promoted).
_NOT_YET = ("starting up", "not yet accepting", "not accepting connections")


def _wait_promoted(ctx: JobContext, server: Child, socket_dir: Path) -> Path:
    """``socket_dir`` once the server has promoted; JobFailed with its own error line when it
    exits instead (a corrupt or missing WAL file, a setting the copy cannot run with)."""
    deadline = time.monotonic() + PROMOTION_TIMEOUT_SECONDS
    last_error = ""
    while time.monotonic() < deadline:
        ctx.cancel.raise_if_cancelled()
        if server.process is not None and server.process.poll() is not None:
            server.wait()
            raise JobFailed("PITR drill failed: the recovered server exited: "
                            + (server.error_line or server.stderr_tail or "no output"))
        if not (socket_dir / ".s.PGSQL.5432").exists():
            time.sleep(0.2)
            continue
        try:
            with _connect(ctx, socket_dir, "postgres") as conn:
                row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            if row is not None and not row[0]:
                return socket_dir
        except psycopg.Error as exc:
            last_error = describe_pg_error(exc)
            if not any(state in last_error for state in _NOT_YET):
                raise JobFailed(f"PITR drill failed: the recovered server did not start: "
                                f"{last_error}") from None
        time.sleep(0.3)
    raise JobFailed(f"PITR drill failed: the recovered server did not promote within "
                    f"{PROMOTION_TIMEOUT_SECONDS:.0f}s ({last_error})")


def _compare(ctx: JobContext, socket_dir: Path) -> list[str]:
    problems = []
    resolved = resolve_databases(ctx.settings)
    for warning in resolved.unnamed_warnings:
        ctx.warn(f"PITR drill: {warning}")
    for database in resolved.databases:
        with connect(ctx.settings, database) as live_conn:
            live_conn.execute("SET default_transaction_read_only = on")
            live = read_catalog(live_conn)
        try:
            with _connect(ctx, socket_dir, database) as conn:
                recovered = read_catalog(conn)
        except psycopg.Error as exc:
            problems.append(f"database {database!r} is not in the recovered server "
                            f"({describe_pg_error(exc)})")
            continue
        comparison = compare(live, recovered, None)
        ctx.say(f"PITR drill, {database!r}: {comparison.summary}")
        problems += [f"{database}: {line}" for line in comparison.differences]
    return problems


def _durable_present(ctx: JobContext, socket_dir: Path, durable: Commit | None) -> list[str]:
    if durable is None:
        ctx.warn("PITR drill: no commit found in the newest WAL segments (or no pg_waldump); "
                 "the newest durable commit was not checked")
        return []
    with _connect(ctx, socket_dir, "postgres") as conn, as_text(conn):  # not bytes on SQL_ASCII
        row = conn.execute(
            "SELECT pg_current_wal_lsn() >= %s::pg_lsn, pg_xact_status(((("
            "pg_current_xact_id()::text::bigint >> 32) << 32) + %s)::text::xid8)",
            (format_lsn(durable.lsn), durable.xid)).fetchone()
    if row is None or not row[0] or row[1] != "committed":
        return [f"the newest commit durable in the archive (transaction {durable.xid} at "
                f"{format_lsn(durable.lsn)}, {durable.time.isoformat()}) is not in the "
                "recovered server"]
    ctx.say(f"PITR drill: the newest commit durable in the archive (transaction "
            f"{durable.xid}, {durable.time.isoformat()}) is present")
    return []

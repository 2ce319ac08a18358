#!/usr/bin/env python3
"""backupd whole-cluster benchmark: two databases backed up and restored onto a fresh cluster.

    .venv/bin/python bench/cluster.py                       # scale 3, 3 rounds
    .venv/bin/python bench/cluster.py --scale 1 --repeat 3 --out /tmp/cluster.md

It starts two private PostgreSQL clusters (initdb as the OS user postgres when run as root,
free ports, under ``--workdir``): a source with an application role ``app`` (a password) owning
two databases, each loaded with tests/fixtures/certificates.sql at ``--scale``, and a fresh
target. Alternating within each round, it times

- backup: one ``backupd backup`` run with ``POSTGRES_DB=db1,db2`` (both dumps and the globals)
  against ``pg_dumpall | gzip > FILE``;
- restore onto the target, reset to a fresh cluster before each contender: ``backupd restore
  --latest --yes`` (roles, then both databases) against ``gunzip -c FILE | psql``;

checks after every restore that both databases and the role arrived, and prints medians and
ratios. Both clusters are stopped and removed at the end, also when something fails.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import BACKUPD, Contender, Server, backupd_env, publish, run_rounds, table

REPO = Path(__file__).resolve().parents[1]
DEFAULT_FIXTURE = REPO / "tests" / "fixtures" / "certificates.sql"
PG_BIN = Path(os.environ.get("BACKUPD_BENCH_PG_BIN", "/usr/lib/postgresql/15/bin"))
AS_ROOT = os.geteuid() == 0
DATABASES = ("db1", "db2")
APP_ROLE = "app"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """A throwaway cluster (scram auth, TCP only) in a directory of its own under ``parent``."""

    def __init__(self, parent: Path, name: str, password: str) -> None:
        # As root the server runs as `postgres`, which must reach its directory: a parent under
        # root's private temporary directories (pytest's, 0700) is not reachable, /tmp is.
        self.root = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=None if AS_ROOT else parent))
        self.data = self.root / "data"
        self.port = free_port()
        self.server = Server("127.0.0.1", str(self.port), "postgres", password)
        self.started = False

    def _as_server_user(self, *args: str) -> None:
        argv = [str(PG_BIN / args[0]), *args[1:]]
        subprocess.run(["runuser", "-u", "postgres", "--", *argv] if AS_ROOT else argv,
                       cwd=self.root, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                           "LC_ALL": "C.UTF-8"},
                       stdin=subprocess.DEVNULL, capture_output=True, check=True)

    def start(self) -> None:
        if AS_ROOT:
            shutil.chown(self.root, "postgres", "postgres")
        pwfile = self.root / "pwfile"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.server.password + "\n")
        if AS_ROOT:
            shutil.chown(pwfile, "postgres", "postgres")
        self._as_server_user("initdb", "-D", str(self.data), "--username=postgres",
                             f"--pwfile={pwfile}", "--auth=scram-sha-256", "--encoding=UTF8",
                             "--locale=C.UTF-8", "--no-sync", "--no-instructions")
        pwfile.unlink()
        with (self.data / "postgresql.conf").open("a") as conf:
            # No unix socket: --workdir paths may be longer than a socket path may be.
            conf.write(f"listen_addresses = '127.0.0.1'\nport = {self.port}\n"
                       "unix_socket_directories = ''\nshared_buffers = '64MB'\n"
                       "max_connections = 30\nfsync = off\nlog_min_messages = warning\n")
        self.started = True
        self._as_server_user("pg_ctl", "start", "-D", str(self.data),
                             "-l", str(self.root / "server.log"), "-w", "-t", "60")

    def stop(self) -> None:
        try:
            if self.started:
                self._as_server_user("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate",
                                     "-w", "-t", "60")
        except subprocess.CalledProcessError:
            pass  # not running (initdb or start failed)
        finally:
            self.started = False
            shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def clusters(parent: Path, *names: str) -> Iterator[list[Cluster]]:
    # One superuser password for all: pg_dumpall's output sets the target's postgres password
    # to the source's (ALTER ROLE postgres ... PASSWORD), and its later \connect must still work.
    password = secrets.token_urlsafe(12)
    started: list[Cluster] = []
    try:
        for name in names:
            cluster = Cluster(parent, name, password)
            started.append(cluster)
            cluster.start()
        yield started
    finally:
        for cluster in reversed(started):
            cluster.stop()


def load_source(source: Server, scale: int, fixture: Path, app_password: str) -> None:
    source.psql(f"CREATE ROLE {APP_ROLE} LOGIN PASSWORD '{app_password}'")
    app = Server(source.host, source.port, APP_ROLE, app_password)
    for database in DATABASES:
        source.psql(f"CREATE DATABASE {database} OWNER {APP_ROLE}")
        started = time.perf_counter()
        # As the application role: it owns every object (the fixture's extensions are trusted).
        loaded = subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1",
                                 "-v", f"scale={scale}", "-f", str(fixture)],
                                env=app.env(database), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        if loaded.returncode != 0:  # its stderr otherwise: ANALYZE's warnings for a non-superuser
            raise SystemExit(f"bench: loading {fixture} into {database} failed:\n"
                             f"{loaded.stderr[-2000:]}")
        source.psql("VACUUM ANALYZE", database)
        print(f"bench: loaded scale {scale} into {database} in "
              f"{time.perf_counter() - started:.0f}s", file=sys.stderr, flush=True)


def reset_target(target: Server) -> None:
    """Back to a freshly initialised cluster: only postgres, template0/1 and the superuser."""
    for database in target.psql("SELECT datname FROM pg_database WHERE datname NOT IN "
                                "('postgres', 'template0', 'template1')").split():
        target.drop(database)
    target.psql("DROP DATABASE postgres WITH (FORCE)", "template1")
    target.psql("CREATE DATABASE postgres", "template1")
    for role in target.psql("SELECT rolname FROM pg_roles WHERE rolname !~ '^pg_' "
                            "AND rolname <> 'postgres'").split():
        target.psql(f'DROP ROLE "{role}"')


def check_restored(source: Server, target: Server, contender: str) -> None:
    query = "SELECT count(*) FROM certificates"
    for database in DATABASES:
        want, got = source.psql(query, database), target.psql(query, database)
        owner = target.psql(f"SELECT pg_get_userbyid(datdba) FROM pg_database "
                            f"WHERE datname = '{database}'")
        if got != want or owner != APP_ROLE:
            raise SystemExit(f"bench: after {contender}: {database} has {got} certificates "
                             f"(source {want}), owner {owner!r}")


def bench(args: argparse.Namespace) -> list[str]:
    work = Path(tempfile.mkdtemp(prefix="backupd-cluster-bench-", dir=args.workdir))
    if AS_ROOT:
        work.chmod(0o755)  # the server's OS user must reach its cluster directories inside
    try:
        with clusters(work, "source", "target") as (source_cluster, target_cluster):
            source, target = source_cluster.server, target_cluster.server
            load_source(source, args.scale, args.fixture, secrets.token_urlsafe(12))
            return run_contenders(source, target, work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_contenders(source: Server, target: Server, work: Path,
                   args: argparse.Namespace) -> list[str]:
    backup_dir, shell_dir = work / "backupd", work / "shell"
    shell_dir.mkdir()
    dumpall = shell_dir / "cluster.sql.gz"
    backup_env = backupd_env(source, "postgres", backup_dir)
    backup_env["POSTGRES_DB"] = ",".join(DATABASES)

    backupd_backup = Contender(
        "backupd backup (db1,db2 + globals)", lambda _: [*BACKUPD, "backup", "--no-prune"],
        backup_env, before=lambda _: shutil.rmtree(backup_dir, ignore_errors=True),
        track_memory=True)
    shell_backup = Contender("pg_dumpall | gzip", lambda _: f"pg_dumpall | gzip > {dumpall}",
                             source.env())
    backups = [backupd_backup, shell_backup]
    print(f"bench: backup, {args.repeat} round(s)", file=sys.stderr, flush=True)
    run_rounds(backups, args.repeat, "backup")
    files = sorted(p for p in backup_dir.iterdir() if p.name.endswith(".gz"))
    size_notes = {
        backupd_backup.name: f"{len(files)} files, "
                             f"{sum(p.stat().st_size for p in files) / 2**20:.1f} MiB",
        shell_backup.name: f"1 file, {dumpall.stat().st_size / 2**20:.1f} MiB",
    }

    restore_env = backupd_env(target, "postgres", backup_dir)
    restore_env["POSTGRES_DB"] = ",".join(DATABASES)
    backupd_restore = Contender(
        "backupd restore --latest --yes", lambda _: [*BACKUPD, "restore", "--latest", "--yes"],
        restore_env, before=lambda _: reset_target(target),
        after=lambda _: check_restored(source, target, "backupd restore"), track_memory=True)
    shell_restore = Contender(
        "gunzip -c | psql", lambda _: f"gunzip -c {dumpall} | psql -X -q -o /dev/null",
        target.env(), before=lambda _: reset_target(target),
        after=lambda _: check_restored(source, target, "gunzip | psql"))
    restores = [backupd_restore, shell_restore]
    print(f"bench: restore, {args.repeat} round(s)", file=sys.stderr, flush=True)
    run_rounds(restores, args.repeat, "restore")

    return [f"## Whole cluster: two databases at scale {args.scale}, "
            f"{args.repeat} round(s), medians", "",
            *table("Cluster backup", backups, shell_backup, size_notes),
            *table("Cluster restore onto a fresh cluster", restores, shell_restore)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=3,
                        help="fixture scale of each database (1 = ~10 MiB of SQL). Default 3.")
    parser.add_argument("--repeat", type=int, default=3, help="rounds for backup and restore")
    parser.add_argument("--fixture", type=Path, default=DEFAULT_FIXTURE)
    parser.add_argument("--workdir", default=None,
                        help="parent of the clusters and backups (default: the temp dir); "
                             "as root, the OS user postgres must be able to reach it")
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    if args.scale < 1:
        parser.error("--scale must be a positive integer")
    if args.repeat < 1:
        parser.error("--repeat must be a positive integer")
    if not args.fixture.is_file():
        parser.error(f"--fixture: {args.fixture} not found")

    def terminate(signum: int, _: FrameType | None) -> None:
        raise SystemExit(f"bench: stopped by signal {signum}")  # unwinds: clusters are removed

    signal.signal(signal.SIGTERM, terminate)
    load_before = os.getloadavg()
    body = bench(args)
    load_after = os.getloadavg()
    publish("backupd whole-cluster benchmark",
            f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after, ",
            str(PG_BIN / "postgres"), body, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

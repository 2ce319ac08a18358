"""The recover contender of bench/run.py: physical recovery against a logical restore.

On a private cluster (bench/cluster.py's, initdb'd under the bench's work directory) with
backupd's daemon streaming WAL (WAL_ARCHIVE=on):

1. the daemon's own first base backup of the near-empty cluster (base 1), then the fixture loaded at
   ``--scale`` into one database, then ``backupd mark bench-loaded``;
2. base-backup time: ``backupd basebackup`` (base 2) against ``pg_basebackup -Ft -z`` to a
   file, one round each;
3. ``pg_dump | gzip`` of the database, for the logical contender;
4. the daemon stopped (a quiescent archive), then, alternating, ``--repeat`` rounds of
   - ``backupd recover`` to the end (base 2 plus the WAL after it) + server start +
     promotion,
   - ``backupd recover --to-name bench-loaded`` (base 1: the whole load replayed from WAL)
     + start + promotion: its replay time gives the WAL replay throughput,
   - ``createdb; gunzip -c | psql`` of the same database on the same cluster (the baseline).

Each recovered directory is checked (the row count of ``certificates``) and removed.
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cluster import AS_ROOT, PG_BIN, Cluster, clusters, free_port
from harness import BACKUPD, Contender, Run, Server, backupd_env, load_fixture, table, timed

DATABASE = "bench"
MARK = "bench-loaded"


def _wait(predicate: object, what: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        time.sleep(0.1)
    raise SystemExit(f"bench: timed out waiting for {what}")


def _as_postgres(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", "postgres", "--", *argv] if AS_ROOT else argv,
                          cwd=cwd, capture_output=True, text=True, check=False,
                          env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                               "LC_ALL": "C.UTF-8"})


def _owner() -> list[str]:
    if not AS_ROOT:
        return []
    entry = pwd.getpwnam("postgres")
    return ["--owner", f"{entry.pw_uid}:{entry.pw_gid}"]


class Recovered:
    """One timed recover + start + promotion into ``target``; the server stopped after."""

    def __init__(self, env: dict[str, str], target: Path, password: str, expected: str) -> None:
        self.env = env
        self.target = target
        self.password = password
        self.expected = expected

    def run(self, args: list[str]) -> tuple[Run, float]:
        """(the whole run, the server's start-to-promotion seconds)."""
        shutil.rmtree(self.target, ignore_errors=True)
        port = free_port()
        started = time.perf_counter()
        proc = subprocess.run([*BACKUPD, "recover", "--target-dir", str(self.target),
                               *_owner(), *args], env={**self.env,
                                                       "BACKUPD_LOG_FORMAT": "console"},
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              check=False)
        if proc.returncode != 0:
            raise SystemExit(f"bench: backupd recover failed:\n{proc.stderr[-2000:]}")
        recovered = time.perf_counter()
        for line in proc.stderr.splitlines():  # where the time went
            if "extracted" in line or "copied and checked" in line:
                print(f"    {line.split('] ', 1)[-1].split(' job=')[0]}", file=sys.stderr)
        server_start = time.perf_counter()
        print(f"    recover {recovered - started:.1f}s", file=sys.stderr)
        proc = _as_postgres([str(PG_BIN / "pg_ctl"), "start", "-D", str(self.target), "-l",
                             str(self.target.parent / "recovered.log"), "-w", "-t", "3600",
                             "-o", f"-p {port}"], self.target.parent)
        if proc.returncode != 0:
            raise SystemExit(f"bench: the recovered server did not start:\n{proc.stderr}")
        server = Server("127.0.0.1", str(port), "postgres", self.password)

        def promoted() -> bool:
            try:
                return server.psql("SELECT pg_is_in_recovery()") == "f"
            except subprocess.CalledProcessError:
                return False

        _wait(promoted, "the recovered server's promotion", 3600)
        done = time.perf_counter()
        rows = server.psql("SELECT count(*) FROM certificates", DATABASE)
        _as_postgres([str(PG_BIN / "pg_ctl"), "stop", "-D", str(self.target), "-m",
                      "immediate", "-w"], self.target.parent)
        shutil.rmtree(self.target, ignore_errors=True)
        if rows != self.expected:
            raise SystemExit(f"bench: the recovered database has {rows} certificates, "
                             f"not {self.expected}")
        return Run(done - started), done - server_start


def bench_recover(work: Path, args: argparse.Namespace) -> list[str]:
    # As root the servers run as `postgres`, which must reach their directories: the work
    # directory may sit under one only root can enter (pytest's tmp_path), so use one in /tmp.
    recover_dir = (Path(tempfile.mkdtemp(prefix="backupd-bench-recover-")) if AS_ROOT
                   else work / "recover")
    recover_dir.mkdir(exist_ok=True)
    recover_dir.chmod(0o755)
    try:
        with clusters(recover_dir, "archived") as (cluster,):
            return _bench(cluster, recover_dir, args)
    finally:
        if AS_ROOT:
            shutil.rmtree(recover_dir, ignore_errors=True)


def _bench(cluster: Cluster, work: Path, args: argparse.Namespace) -> list[str]:
    source = cluster.server
    backup_dir, shell_dir = work / "backupd", work / "shell"
    shell_dir.mkdir()
    # The archive is the cluster's; backupd connects to `postgres` (the bench database comes
    # later, after the first base backup).
    env = backupd_env(source, "postgres", backup_dir, WAL_ARCHIVE="on", BACKUP_ON_START="false",
                      DRILL_SCHEDULE="off", DB_BACKUP_COMPRESSION="zstd")
    log = work / "daemon.log"
    with log.open("w") as daemon_log:
        daemon = subprocess.Popen([*BACKUPD, "run"], env=env, stdin=subprocess.DEVNULL,
                                  stdout=daemon_log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        spool = backup_dir / "wal" / "spool"

        def streaming() -> bool:
            if daemon.poll() is not None:
                raise SystemExit(f"bench: backupd run exited:\n{log.read_text()[-3000:]}")
            return spool.is_dir() and any(spool.glob("*.partial"))

        try:
            _wait(streaming, "WAL streaming", 120)
        except SystemExit as exc:
            raise SystemExit(f"{exc}; backupd run says:\n{log.read_text()[-3000:]}") from None
        # Base 1: the daemon takes it at start (WAL_ARCHIVE=on, no base backup yet).
        _wait(lambda: any(backup_dir.glob("base_*.manifest.json")), "the first base backup")
        before_lsn = source.psql("SELECT pg_current_wal_lsn()")
        source.psql(f'CREATE DATABASE "{DATABASE}"')
        load_fixture(source, DATABASE, args.scale, args.fixture)
        timed([*BACKUPD, "mark", MARK], env, False)
        loaded_lsn = source.psql("SELECT pg_current_wal_lsn()")
        wal_bytes = int(float(source.psql(
            f"SELECT pg_wal_lsn_diff('{loaded_lsn}', '{before_lsn}')")))
        base = Contender("backupd basebackup", lambda _: [*BACKUPD, "basebackup", "--no-prune"],
                         env)
        plain = Contender("pg_basebackup -Ft -z (to a file)",
                          lambda _: f"rm -rf {shell_dir}/pgbb && pg_basebackup -Ft -z -X fetch "
                                    f"-D {shell_dir}/pgbb", source.env())
        for contender in (base, plain):
            contender.runs.append(timed(contender.command(0), contender.env, False))
        expected = source.psql("SELECT count(*) FROM certificates", DATABASE)
        dump = shell_dir / "bench.sql.gz"
        subprocess.run(f"pg_dump | gzip > {dump}", shell=True, env=source.env(DATABASE),
                       check=True, executable="/bin/bash")
        source.psql("SELECT pg_switch_wal()")
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(120)
    server_dir = work / "server"  # the recovered server's directory and log: its own
    server_dir.mkdir()
    if AS_ROOT:
        shutil.chown(server_dir, "postgres", "postgres")
    recovered = Recovered(env, server_dir / "recovered", source.password, expected)
    to_end = Contender("backupd recover + start + promotion", lambda _: [], env)
    replayed = Contender("... from base 1, the whole load replayed (--to-name)", lambda _: [],
                         env)
    target = f"{DATABASE}_logical"
    logical = Contender("createdb; gunzip -c | psql",
                        lambda _: f"createdb {target} && gunzip -c {dump} | "
                                  "psql -X -q -o /dev/null", source.env(target),
                        before=lambda _: source.drop(target), after=lambda _: source.drop(target))
    replay_seconds = []
    for round_no in range(args.restore_repeat):
        run, _ = recovered.run([])
        to_end.runs.append(run)
        run, replay = recovered.run(["--to-name", MARK])
        replayed.runs.append(run)
        replay_seconds.append(replay)
        assert logical.before is not None and logical.after is not None
        logical.before(round_no)
        logical.runs.append(timed(logical.command(round_no), logical.env, False))
        logical.after(round_no)
        print(f"  [recover round {round_no + 1}/{args.restore_repeat}] to the end "
              f"{to_end.runs[-1].seconds:.1f}s, whole load replayed {run.seconds:.1f}s, "
              f"logical {logical.runs[-1].seconds:.1f}s", file=sys.stderr, flush=True)
    replay = sorted(replay_seconds)[len(replay_seconds) // 2]
    ratio = to_end.median / logical.median
    return [
        f"## Point-in-time recovery at scale {args.scale}, {args.restore_repeat} round(s), "
        "medians", "",
        *table("Recover (physical) vs logical restore of the same database", [to_end, replayed,
               logical], logical),
        f"Goal: recover + start + promotion <= 0.3x the logical restore: **{ratio:.2f}x** "
        f"({'met' if ratio <= 0.3 else 'NOT met'}).", "",
        *table("Base backup", [base, plain], plain),
        f"WAL replay: {wal_bytes / 2**20:.0f} MiB of WAL (the whole load) replayed, server "
        f"start to promotion {replay:.1f}s: **{wal_bytes / 2**20 / replay:.0f} MiB/s**.", "",
    ]

#!/usr/bin/env python3
"""backupd benchmark: backup, verify and restore against the plain shell tools.

Run it on your own machine (see docs/performance.md):

    .venv/bin/python bench/run.py                   # default scale, 3 rounds
    .venv/bin/python bench/run.py --scale 4 --repeat 1 --out /tmp/bench.md

It creates its own databases on the server given by PGHOST/PGPORT/PGUSER/PGPASSWORD
(default 127.0.0.1:5432, user postgres), loads the project's fixture,
tests/fixtures/certificates.sql, at ``--scale``, times every contender ``--repeat`` times,
alternating them within each round (A B C D, A B C D, ...) so that a slow moment of the
machine hits all of them, and prints medians, ratios against the baseline ``pg_dump | gzip``,
compression ratios and the peak resident memory of the backupd process itself. It drops its
databases at the end.

Then point-in-time recovery (bench/recover.py, on a private cluster of its own; leave it out
with ``--no-recover``, run it alone with ``--only-recover``): ``backupd recover`` + server
start + promotion against ``createdb; gunzip -c | psql`` of the same database, the base-backup
time against ``pg_basebackup -Ft -z``, and the WAL replay throughput.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_FIXTURE = REPO / "tests" / "fixtures" / "certificates.sql"
# The pid keeps two runs on one server (a CI smoke run, a manual run) apart.
PREFIX = f"backupd_bench_{os.getpid()}"


# --- plumbing -----------------------------------------------------------------------------------

@dataclass
class Server:
    host: str = os.environ.get("PGHOST", "127.0.0.1")
    port: str = os.environ.get("PGPORT", "5432")
    user: str = os.environ.get("PGUSER", "postgres")
    password: str = os.environ.get("PGPASSWORD", "")

    def env(self, database: str = "postgres") -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "DB_BACKUP_"))}
        env.update(PGHOST=self.host, PGPORT=self.port, PGUSER=self.user, PGDATABASE=database)
        if self.password:
            env["PGPASSWORD"] = self.password
        return env

    def psql(self, sql: str, database: str = "postgres") -> str:
        return subprocess.run(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                               "-c", sql], env=self.env(database), check=True,
                              capture_output=True, text=True).stdout.strip()

    def create(self, database: str) -> None:
        self.drop(database)
        self.psql(f'CREATE DATABASE "{database}"')

    def drop(self, database: str) -> None:
        self.psql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


@dataclass
class Run:
    seconds: float
    peak_rss: int | None = None  # bytes, backupd's own process


@dataclass
class Contender:
    name: str
    command: Callable[[int], list[str] | str]  # round number -> argv or shell line
    env: dict[str, str]
    before: Callable[[int], None] | None = None  # untimed set-up (drop/create a target)
    after: Callable[[int], None] | None = None  # untimed clean-up
    track_memory: bool = False
    runs: list[Run] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(r.seconds for r in self.runs)

    @property
    def peak_rss(self) -> int | None:
        peaks = [r.peak_rss for r in self.runs if r.peak_rss is not None]
        return max(peaks) if peaks else None


def _vm_hwm(pid: int) -> int | None:
    """Peak resident set size of one process (VmHWM), in bytes; None once it has gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def timed(command: list[str] | str, env: dict[str, str], track_memory: bool) -> Run:
    """Run one command; raise if it fails. Memory: VmHWM of the process, polled until exit."""
    shell = isinstance(command, str)
    started = time.perf_counter()
    process = subprocess.Popen(command, shell=shell, env=env, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               executable="/bin/bash" if shell else None)
    peak: list[int] = []

    def poll() -> None:
        while process.poll() is None:
            value = _vm_hwm(process.pid)
            if value is not None:
                peak.append(value)
            time.sleep(0.02)

    poller = threading.Thread(target=poll, daemon=True) if track_memory else None
    if poller is not None:
        poller.start()
    _, stderr = process.communicate()
    elapsed = time.perf_counter() - started
    if poller is not None:
        poller.join()
    if process.returncode != 0:
        raise SystemExit(f"bench: {command!r} failed ({process.returncode}):\n"
                         f"{stderr.decode(errors='replace')[-2000:]}")
    return Run(elapsed, max(peak) if peak else None)


def run_rounds(contenders: list[Contender], repeat: int, label: str) -> None:
    for round_no in range(repeat):
        for contender in contenders:
            if contender.before is not None:
                contender.before(round_no)
            contender.runs.append(timed(contender.command(round_no), contender.env,
                                        contender.track_memory))
            if contender.after is not None:
                contender.after(round_no)
            print(f"  [{label} round {round_no + 1}/{repeat}] {contender.name}: "
                  f"{contender.runs[-1].seconds:.2f}s", file=sys.stderr, flush=True)


def mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:.0f} MiB"


def cell(text: str) -> str:
    return text.replace("|", "\\|")  # a shell pipe inside a Markdown table cell


def table(title: str, contenders: list[Contender], baseline: Contender,
          extra: dict[str, str] | None = None) -> list[str]:
    lines = [f"### {title}", "",
             f"| contender | median s | ratio vs `{cell(baseline.name)}` | notes |",
             "|---|---:|---:|---|"]
    for c in contenders:
        note = (extra or {}).get(c.name, "")
        if c.peak_rss is not None:
            note = (note + "; " if note else "") + f"peak RSS {mib(c.peak_rss)}"
        ratio = c.median / baseline.median
        lines.append(f"| {cell(c.name)} | {c.median:.2f} | {ratio:.2f} | {note} |")
    return [*lines, ""]


# --- the benchmark ----------------------------------------------------------------------------

@contextlib.contextmanager
def loaded_database(server: Server, scale: int, fixture: Path) -> Iterator[str]:
    name = f"{PREFIX}_src_{scale}"
    server.create(name)
    try:
        load_fixture(server, name, scale, fixture)
        yield name
    finally:
        server.drop(name)


def load_fixture(server: Server, database: str, scale: int, fixture: Path) -> None:
    started = time.perf_counter()
    subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-v", f"scale={scale}",
                    "-f", str(fixture)], env=server.env(database), check=True,
                   stdout=subprocess.DEVNULL)
    server.psql("VACUUM ANALYZE", database)
    print(f"bench: loaded scale {scale} into {database} in "
          f"{time.perf_counter() - started:.0f}s", file=sys.stderr, flush=True)


def backupd_env(server: Server, database: str, directory: Path, **extra: str) -> dict[str, str]:
    env = server.env(database)
    env.update(POSTGRES_HOST=server.host, POSTGRES_PORT=server.port, POSTGRES_USER=server.user,
               POSTGRES_PASSWORD=server.password or "unused", POSTGRES_DB=database,
               DB_BACKUP_DIR=str(directory), HEALTH_PORT="0", BACKUPD_LOG_FORMAT="json",
               DB_BACKUP_KEEP_MIN="1000", DB_BACKUP_RETENTION_DAYS="0", **extra)
    return env


BACKUPD = [sys.executable, "-m", "backupd"]


def bench(args: argparse.Namespace) -> list[str]:
    server = Server()
    work = Path(tempfile.mkdtemp(prefix="backupd-bench-", dir=args.workdir))
    out: list[str] = []
    try:
        with loaded_database(server, args.scale, args.fixture) as source:
            out += bench_scale(server, source, work, args)
        if not args.no_memory:
            out += bench_memory(server, work, args)
        if not args.no_recover:
            from recover import bench_recover  # bench/recover.py: a private cluster of its own

            out += bench_recover(work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        for suffix in ("restore_a", "restore_b", "restore_c", "restore_d"):
            server.drop(f"{PREFIX}_{suffix}")
    return out


def _age_keys(work: Path) -> tuple[Path, Path]:
    from pyrage import x25519

    identity = x25519.Identity.generate()
    identity_file, recipients_file = work / "identity.txt", work / "recipients.txt"
    identity_file.write_text(f"{identity}\n")
    identity_file.chmod(0o600)
    recipients_file.write_text(f"{identity.to_public()}\n")
    return identity_file, recipients_file


def bench_scale(server: Server, source: str, work: Path, args: argparse.Namespace) -> list[str]:
    identity_file, recipients_file = _age_keys(work)
    modes = {
        "backupd plain gzip (default)": {},
        "backupd plain zstd": {"DB_BACKUP_COMPRESSION": "zstd"},
        "backupd custom": {"DB_BACKUP_FORMAT": "custom"},
        "backupd plain gzip + age": {"DB_BACKUP_AGE_RECIPIENTS_FILE": str(recipients_file)},
        "backupd directory (2 jobs)": {"DB_BACKUP_FORMAT": "directory", "DB_BACKUP_JOBS": "2"},
    }
    dirs = {name: work / f"mode{i}" for i, name in enumerate(modes)}
    shell_dir = work / "shell"
    shell_dir.mkdir()
    env = server.env(source)

    def clear(directory: Path) -> Callable[[int], None]:
        def run(_: int) -> None:
            shutil.rmtree(directory, ignore_errors=True)
        return run

    backupd_contenders = [
        Contender(name, lambda _: [*BACKUPD, "backup", "--no-prune"],
                  backupd_env(server, source, dirs[name], **extra),
                  before=clear(dirs[name]), track_memory=True)
        for name, extra in modes.items()
    ]
    baseline = Contender("pg_dump | gzip", lambda _: f"pg_dump | gzip > {shell_dir}/base.sql.gz",
                         env)
    contenders = [
        *backupd_contenders, baseline,
        Contender("pg_dump -Fc", lambda _: ["bash", "-c", f"pg_dump -Fc > {shell_dir}/base.dump"],
                  env),
        Contender("pg_dump -Fd -j 2", lambda _: f"rm -rf {shell_dir}/dir && "
                  f"pg_dump -Fd -j 2 -f {shell_dir}/dir", env),
        Contender("pg_dump > /dev/null (floor)", lambda _: "pg_dump > /dev/null", env),
    ]
    # Alternate the contenders, but keep the order within a round fixed.
    print(f"bench: backup, {args.repeat} round(s)", file=sys.stderr, flush=True)
    run_rounds(contenders, args.repeat, "backup")

    raw = int(subprocess.run("pg_dump | wc -c", shell=True, env=env, check=True,
                             capture_output=True, text=True).stdout)
    sizes: dict[str, int] = {}
    for c in backupd_contenders:
        data = [p for p in dirs[c.name].iterdir()
                if not p.name.endswith((".json", ".txt")) and not p.name.startswith(".")]
        sizes[c.name] = data[0].stat().st_size
    sizes["pg_dump | gzip"] = (shell_dir / "base.sql.gz").stat().st_size
    sizes["pg_dump -Fc"] = (shell_dir / "base.dump").stat().st_size
    sizes["pg_dump -Fd -j 2"] = sum(p.stat().st_size for p in (shell_dir / "dir").iterdir())
    notes = {name: f"{size / 2**20:.1f} MiB, compression {raw / size:.1f}x"
             for name, size in sizes.items()}
    notes["pg_dump > /dev/null (floor)"] = f"{raw / 2**20:.0f} MiB of SQL"
    floor = contenders[-1]
    default = backupd_contenders[0]

    def first_backup(name: str) -> str:
        return next(p.name for p in dirs[name].iterdir()
                    if not p.name.endswith((".json", ".txt")) and not p.name.startswith("."))

    # --- verify ---------------------------------------------------------------------------------
    default_name = first_backup(default.name)
    verify_default = Contender("backupd verify (plain gzip)",
                               lambda _: [*BACKUPD, "verify", default_name],
                               backupd_env(server, source, dirs[default.name]),
                               track_memory=True)
    gzip_t = Contender("gzip -t", lambda _: ["gzip", "-t", str(dirs[default.name] / default_name)],
                       env)
    custom_name = first_backup("backupd custom")
    verify_custom = Contender("backupd verify (custom)",
                              lambda _: [*BACKUPD, "verify", custom_name],
                              backupd_env(server, source, dirs["backupd custom"]))
    age_name = first_backup("backupd plain gzip + age")
    verify_age = Contender("backupd verify (gzip + age, with identity)",
                           lambda _: [*BACKUPD, "verify", age_name],
                           backupd_env(server, source, dirs["backupd plain gzip + age"],
                                       DB_BACKUP_AGE_IDENTITY_FILE=str(identity_file)))
    verifiers = [verify_default, gzip_t, verify_custom, verify_age]
    print(f"bench: verify, {args.repeat} round(s)", file=sys.stderr, flush=True)
    run_rounds(verifiers, args.repeat, "verify")

    # --- restore --------------------------------------------------------------------------------
    def target(letter: str) -> str:
        return f"{PREFIX}_restore_{letter}"

    def fresh(letter: str, create: bool) -> Callable[[int], None]:
        def run(_: int) -> None:
            server.drop(target(letter))
            if create:
                server.create(target(letter))
        return run

    def drop(letter: str) -> Callable[[int], None]:
        return lambda _: server.drop(target(letter))

    restore_default = Contender(
        "backupd restore (plain gzip)",
        lambda _: [*BACKUPD, "restore", "--yes", "--target-db", target("a"), default_name],
        backupd_env(server, source, dirs[default.name]), before=fresh("a", False),
        after=drop("a"), track_memory=True)
    # Both sides start with no target database: backupd creates it, so the baseline does too.
    shell_restore = Contender(
        "createdb; gunzip -c | psql",
        lambda _: f"createdb {target('b')} && "
                  f"gunzip -c {shell_dir}/base.sql.gz | psql -X -q -o /dev/null",
        server.env(target("b")), before=fresh("b", False), after=drop("b"))
    restore_custom = Contender(
        f"backupd restore (custom, {args.restore_jobs} jobs)",
        lambda _: [*BACKUPD, "restore", "--yes", "--target-db", target("c"), custom_name],
        backupd_env(server, source, dirs["backupd custom"],
                    DB_RESTORE_JOBS=str(args.restore_jobs)),
        before=fresh("c", False), after=drop("c"))
    restore_age = Contender(
        "backupd restore (gzip + age)",
        lambda _: [*BACKUPD, "restore", "--yes", "--target-db", target("d"), age_name],
        backupd_env(server, source, dirs["backupd plain gzip + age"],
                    DB_BACKUP_AGE_IDENTITY_FILE=str(identity_file)),
        before=fresh("d", False), after=drop("d"))
    restorers = [restore_default, shell_restore, restore_custom, restore_age]
    print(f"bench: restore, {args.restore_repeat} round(s)", file=sys.stderr, flush=True)
    run_rounds(restorers, args.restore_repeat, "restore")

    lines = [f"## Scale {args.scale} ({raw / 2**20:.0f} MiB of SQL), "
             f"{args.repeat} round(s), medians", ""]
    lines += table("Backup", contenders, baseline, notes)
    lines.append(f"Default backup vs the floor `pg_dump > /dev/null`: "
                 f"{default.median / floor.median:.2f}x")
    lines.append("")
    lines += table("Verify", verifiers, gzip_t)
    lines += table(f"Restore ({args.restore_repeat} round(s))", restorers, shell_restore)
    from issue18 import Target, targets_table

    by_name = {c.name: c for c in [*contenders, *verifiers, *restorers]}
    zstd_peak = by_name["backupd plain zstd"].peak_rss
    lines += targets_table([
        Target("backup vs `pg_dump \\| gzip`", default.median / baseline.median, 0.6),
        Target("backup vs the `pg_dump > /dev/null` floor", default.median / floor.median, 1.1),
        Target("verify vs `gzip -t`", verify_default.median / gzip_t.median, 0.5),
        Target("plain restore vs `createdb; gunzip -c \\| psql`",
               restore_default.median / shell_restore.median, 0.9),
        Target("custom backup vs `pg_dump -Fc`",
               by_name["backupd custom"].median / by_name["pg_dump -Fc"].median, 1.0),
        Target("directory backup (2 jobs) vs `pg_dump -Fd -j 2`",
               by_name["backupd directory (2 jobs)"].median / by_name["pg_dump -Fd -j 2"].median,
               None),
        Target("zstd backup peak memory", float(zstd_peak or 0), 100e6, unit="bytes"),
    ])
    return lines


def bench_memory(server: Server, work: Path, args: argparse.Namespace) -> list[str]:
    """Peak RSS of `backupd backup` and `backupd restore` at two scales ten times apart."""
    small = max(1, args.scale // 10)
    rows = ["### Peak memory of the backupd process (VmHWM)", "",
            "| scale | backup | verify | restore |", "|---:|---:|---:|---:|"]
    for scale in sorted({small, args.scale}):
        directory = work / f"mem{scale}"
        with loaded_database(server, scale, args.fixture) as source:
            env = backupd_env(server, source, directory)
            backup = timed([*BACKUPD, "backup", "--no-prune"], env, True)
            name = next(p.name for p in directory.iterdir() if p.name.endswith(".sql.gz"))
            verify = timed([*BACKUPD, "verify", name], env, True)
            target = f"{PREFIX}_restore_a"
            server.drop(target)
            restore = timed([*BACKUPD, "restore", "--yes", "--target-db", target, name], env,
                            True)
            server.drop(target)
        rows.append(f"| {scale} | {mib(backup.peak_rss)} | {mib(verify.peak_rss)} | "
                    f"{mib(restore.peak_rss)} |")
        shutil.rmtree(directory, ignore_errors=True)
    if small == args.scale:
        rows += ["", "(only one scale: run with --scale 10 or more for two scales 10x apart)"]
    return [*rows, ""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=30,
                        help="fixture scale (integer; 1 = ~10 MiB of SQL). Default 30.")
    parser.add_argument("--repeat", type=int, default=3, help="rounds for backup and verify")
    parser.add_argument("--restore-repeat", type=int, default=None,
                        help="rounds for restore (default: --repeat)")
    parser.add_argument("--restore-jobs", type=int, default=2, help="DB_RESTORE_JOBS for custom")
    parser.add_argument("--fixture", type=Path, default=DEFAULT_FIXTURE)
    parser.add_argument("--workdir", default=None, help="where backups are written (tmp)")
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    parser.add_argument("--no-recover", action="store_true",
                        help="leave out point-in-time recovery (bench/recover.py)")
    parser.add_argument("--only-recover", action="store_true",
                        help="just point-in-time recovery against its logical restore")
    parser.add_argument("--curve", action="store_true",
                        help="instead: the cost curve, scales 1, 10 and 50 (needs matplotlib "
                             "for its plot: pip install matplotlib)")
    parser.add_argument("--curve-200", action="store_true",
                        help="with --curve: also scale 200 (~2 GB of SQL)")
    parser.add_argument("--curve-scales", default=None,
                        help="with --curve: other scales, comma-separated (e.g. 1,10)")
    parser.add_argument("--plot", type=Path, default=None,
                        help="with --curve: the PNG to write (default docs/performance-curve.png)")
    parser.add_argument("--no-memory", action="store_true",
                        help="leave out the peak-memory runs at two scales (see --curve)")
    parser.add_argument("--cpu-hog", action="store_true",
                        help="run beside one CPU-bound job (stress-ng --cpu 1, else a busy loop)")
    args = parser.parse_args(argv)
    if args.scale < 1:
        parser.error("--scale must be a positive integer")
    args.restore_repeat = args.restore_repeat or args.repeat
    if not args.fixture.is_file():
        parser.error(f"--fixture: {args.fixture} not found")
    from issue18 import cpu_hog

    load = os.getloadavg()[0]
    with cpu_hog(args.cpu_hog) as hog:
        if args.curve:
            from issue18 import DEFAULT_PLOT, curve

            args.plot = args.plot or DEFAULT_PLOT
            body = curve(args)
        elif args.only_recover:
            from recover import bench_recover

            work = Path(tempfile.mkdtemp(prefix="backupd-bench-", dir=args.workdir))
            try:
                body = bench_recover(work, args)
            finally:
                shutil.rmtree(work, ignore_errors=True)
        else:
            body = bench(args)
    body.append(f"Load average (1 min): {load:.2f} at the start, {os.getloadavg()[0]:.2f} at "
                f"the end{hog}.")
    publish("backupd benchmark", f"load average {load:.2f}, ", "pg_dump", body, args.out)
    return 0


def publish(title: str, load: str, pg_tool: str, body: list[str], out: Path | None) -> None:
    """Print the report (a header naming the machine, then ``body``), and write it to ``out``."""
    header = [f"# {title}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC", "",
              f"Machine: {platform.node()}, {os.cpu_count()} CPUs, {load}Python "
              f"{platform.python_version()}, "
              + subprocess.run([pg_tool, "--version"], capture_output=True,
                               text=True).stdout.strip(), ""]
    report = "\n".join(header + body)
    print(report)
    if out is not None:
        out.write_text(report + "\n")


if __name__ == "__main__":
    sys.exit(main())

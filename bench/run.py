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
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (
    BACKUPD,
    DEFAULT_FIXTURE,
    PREFIX,
    Contender,
    Server,
    backupd_env,
    compile_bytecode,
    loaded_database,
    mib,
    publish,
    run_rounds,
    stop_on_sigterm,
    table,
    timed,
)


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
        # Like for like with `pg_dump -Fc`: zlib at pg_dump's own default level.
        "backupd custom (level 6)": {"DB_BACKUP_FORMAT": "custom",
                                     "DB_BACKUP_COMPRESSION_LEVEL": "6"},
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
        Contender("pg_dump -Fc -Z1", lambda _: f"pg_dump -Fc -Z1 > {shell_dir}/fast.dump", env),
        Contender("pg_dump -Fd -j 2", lambda _: f"rm -rf {shell_dir}/dir && "
                  f"pg_dump -Fd -j 2 -f {shell_dir}/dir", env),
        Contender("pg_dump > /dev/null (floor)", lambda _: "pg_dump > /dev/null", env),
    ]
    # Alternate the contenders, but keep the order within a round fixed.
    print(f"bench: backup, {args.repeat} round(s)", file=sys.stderr, flush=True)
    run_rounds(contenders, args.repeat, "backup")

    from daemon_backup import bench_daemon

    daemon, daemon_floor, daemon_first = bench_daemon(server, source, work, args.repeat,
                                                            args.scale)

    raw = int(subprocess.run("pg_dump | wc -c", shell=True, env=env, check=True,
                             capture_output=True, text=True).stdout)
    sizes: dict[str, int] = {}
    for c in backupd_contenders:
        data = [p for p in dirs[c.name].iterdir()
                if not p.name.endswith((".json", ".txt")) and not p.name.startswith(".")]
        sizes[c.name] = data[0].stat().st_size
    sizes["pg_dump | gzip"] = (shell_dir / "base.sql.gz").stat().st_size
    sizes["pg_dump -Fc"] = (shell_dir / "base.dump").stat().st_size
    sizes["pg_dump -Fc -Z1"] = (shell_dir / "fast.dump").stat().st_size
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
    lines += table("Backup by the running daemon (bench/daemon_backup.py)",
                   [daemon, daemon_floor], daemon_floor, {})
    lines += [f"The daemon's first backup after its start: {daemon_first:.2f} s (left out of "
              "the median).", ""]
    lines += table("Verify", verifiers, gzip_t)
    lines += table(f"Restore ({args.restore_repeat} round(s))", restorers, shell_restore)
    from issue18 import Target, targets_table

    by_name = {c.name: c for c in [*contenders, *verifiers, *restorers]}
    zstd_peak = by_name["backupd plain zstd"].peak_rss
    floor_goal = 1.3 if args.cpu_hog else 1.1  # the issue's: 1.1x idle, 1.3x beside a job
    lines += targets_table([
        Target("backup vs `pg_dump \\| gzip`", default.median / baseline.median, 0.6),
        Target("backup by the running daemon vs the `pg_dump > /dev/null` floor",
               daemon.median / daemon_floor.median, floor_goal),
        Target("one-off `backupd backup` (with its start-up) vs the floor",
               default.median / floor.median, floor_goal),
        Target("verify vs `gzip -t`", verify_default.median / gzip_t.median, 0.5),
        Target("plain restore vs `createdb; gunzip -c \\| psql`",
               restore_default.median / shell_restore.median, 0.9),
        Target("custom backup vs `pg_dump -Fc`",
               by_name["backupd custom"].median / by_name["pg_dump -Fc"].median, 1.0),
        Target("custom backup at level 6 vs `pg_dump -Fc` (same level)",
               by_name["backupd custom (level 6)"].median / by_name["pg_dump -Fc"].median, None),
        Target("custom backup vs `pg_dump -Fc -Z1` (same level)",
               by_name["backupd custom"].median / by_name["pg_dump -Fc -Z1"].median, None),
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

    stop_on_sigterm()  # the CPU-bound job and the run's databases go with it
    compile_bytecode()
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


if __name__ == "__main__":
    sys.exit(main())

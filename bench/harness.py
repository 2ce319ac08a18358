"""What every bench script shares: the server and contender types, timing with peak memory,
the alternating rounds, the Markdown tables, loading the fixture, backupd's environment, and
publishing the report. bench/run.py, cluster.py, recover.py, issue18.py, wal_rpo.py and
oneoff_ab.py use it.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
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


def timed(command: list[str] | str, env: dict[str, str], track_memory: bool,
          cwd: Path | None = None) -> Run:
    """Run one command; raise if it fails. Memory: VmHWM of the process, polled until exit."""
    shell = isinstance(command, str)
    started = time.perf_counter()
    process = subprocess.Popen(command, shell=shell, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
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


@contextlib.contextmanager
def cpu_bound_job(own_session: bool) -> Iterator[str]:
    """One CPU-bound job beside the bench (issue 18's "under contention" figures):
    `stress-ng --cpu 1`, else a Python busy loop; yields how to name it in a report.

    ``own_session``: in a session of its own, as another job on the host would be. Else in the
    bench's session (as the bench ran it before issue 18's seventh round). Where the kernel
    groups tasks by session for the CPU's fair share (sched_autogroup_enabled), that changes
    the figures: in the bench's session it shares one group with backupd and with the floor's
    pg_dump, but not with the pg_dump backupd starts (docs/performance.md). Either way it leads
    a process group, so stress-ng's workers are stopped with it."""
    stress = shutil.which("stress-ng")
    argv = ([stress, "--cpu", "1", "--quiet"] if stress else
            [sys.executable, "-c", "while True: pass"])
    job = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=own_session,
                           process_group=None if own_session else 0)
    try:
        yield f"`{' '.join(argv[:3])}`" if stress else "a busy loop"
    finally:
        for stop in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(job.pid, stop)
            job.send_signal(stop)  # should it lead no group after all
            try:
                job.wait(10)
                break
            except subprocess.TimeoutExpired:
                continue


def compile_bytecode(checkout: Path = REPO) -> None:
    """Write the checkout's backupd bytecode, as the image's `pip install` does. An editable
    install run with PYTHONDONTWRITEBYTECODE=1 (as the image sets) compiles every module it
    imports on every run: ~0.11 s of each command's start-up on the bench machine, which no
    installed backupd pays."""
    # Best effort: a read-only checkout is still measured (and pays the compiling).
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(checkout / "backupd")],
                   check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_on_sigterm() -> None:
    """SIGTERM (a timeout, CI) unwinds like Ctrl-C: every ``finally`` runs, so no CPU-bound
    job, database or work directory of the run is left behind."""
    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(f"bench: stopped by signal {signum}")

    signal.signal(signal.SIGTERM, stop)


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

"""The benchmark harness runs end to end at the smallest scale (a smoke test, not a timed test:
it checks that the harness works and prints its tables, never the figures themselves)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from helpers.pg import REPO_ROOT, ServerAddress, connect, fixture_sql_path


@dataclass(frozen=True)
class BenchRun:
    pid: int
    returncode: int
    stdout: str
    stderr: str


def _run_bench(script: str, args: list[str], pg_server: ServerAddress, home: Path,
               timeout: float, **extra_env: str) -> BenchRun:
    """A bench script, run as a user runs it, against the test server."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME": str(home),
           "LANG": "C.UTF-8",
           "PGHOST": pg_server.host, "PGPORT": str(pg_server.port), "PGUSER": pg_server.user,
           **extra_env}
    with subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "bench" / script), "--scale", "1",
         "--fixture", str(fixture_sql_path()), *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as proc:
        stdout, stderr = proc.communicate(timeout=timeout)
    return BenchRun(proc.pid, proc.returncode, stdout, stderr)


def _databases_left(pg_server: ServerAddress, run: BenchRun) -> list[str]:
    """The run's databases still on the server (it should drop every one)."""
    with connect(pg_server) as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                            (f"backupd\\_bench\\_{run.pid}\\_%",)).fetchall()
    return [str(row[0]) for row in rows]


def test_bench_runs_at_tiny_scale_and_prints_the_ratio_tables(
    pg_server: ServerAddress, tmp_path: Path,
) -> None:
    out = tmp_path / "bench.md"
    run = _run_bench("run.py", ["--repeat", "1", "--workdir", str(tmp_path), "--out", str(out)],
                     pg_server, tmp_path, timeout=280)
    stdout = run.stdout

    assert run.returncode == 0, run.stderr[-3000:]
    for heading in ("### Backup", "### Verify", "### Restore", "### Peak memory"):
        assert heading in stdout
    assert "ratio vs `pg_dump \\| gzip`" in stdout
    assert "ratio vs `gzip -t`" in stdout
    assert "ratio vs `createdb; gunzip -c \\| psql`" in stdout
    assert "Default backup vs the floor" in stdout
    assert "### Backup by the running daemon" in stdout
    assert "backup by the running daemon vs the `pg_dump > /dev/null` floor" in stdout
    assert "### Against the goals of issue 18 (this run)" in stdout
    assert "custom backup vs `pg_dump -Fc`" in stdout
    assert "custom backup vs `pg_dump -Fc -Z1` (same level)" in stdout
    assert "Load average (1 min):" in stdout
    assert out.read_text().strip() == stdout.strip()
    # It cleans up after itself: no database of this run is left on the server.
    assert _databases_left(pg_server, run) == []


# Run in a child: bench/ is a folder of scripts, not a package the tests (or mypy) import.
# Each way of starting the CPU-bound job prints: its session and process group, ours, then
# whether its process group is gone once the job has been stopped.
_HOG_PROBE = """
import os, subprocess, sys, time
sys.path.insert(0, sys.argv[1])
started = []

class Recording(subprocess.Popen):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        started.append(self.pid)

subprocess.Popen = Recording
import issue18, oneoff_ab

def gone(group):
    for _ in range(100):
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False

for name, job in (("run.py --cpu-hog", lambda: issue18.cpu_hog(True)),
                  ("own-session", lambda: oneoff_ab.hog("own-session")),
                  ("bench-session", lambda: oneoff_ab.hog("bench-session"))):
    with job():
        pid = started[-1]
        facts = (os.getsid(pid), os.getpgid(pid), os.getsid(0), os.getpgid(0))
    print(name, *facts, gone(facts[1]))
"""


def test_cpu_bound_job_runs_where_asked_and_goes_with_its_workers() -> None:
    # Where the kernel shares the CPU between sessions (sched_autogroup), a job in the bench's
    # session shared a group with the floor's pg_dump and with backupd, but not with the
    # pg_dump backupd starts: the busy figures measured that grouping, not the contention.
    out = subprocess.run([sys.executable, "-c", _HOG_PROBE, str(REPO_ROOT / "bench")],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    facts = {name: ([int(word) for word in ids], gone == "True")
             for name, *ids, gone in (line.rsplit(None, 5) for line in out.splitlines())}
    for name in ("run.py --cpu-hog", "own-session"):
        (sid, group, our_sid, _), gone = facts[name]
        assert sid != our_sid and group == sid, name  # leads a session of its own
        assert gone, name
    (sid, group, our_sid, our_group), gone = facts["bench-session"]
    assert sid == our_sid and group not in (sid, our_group)  # our session, its own group
    assert gone


_FAKE_MAIN = """
import os
with open(os.environ["FAKE_BACKUPD_RAN"], "a") as ran:
    ran.write(os.environ["DB_BACKUP_DIR"] + "\\n")
"""


def test_oneoff_ab_runs_each_checkout_at_tiny_scale(
    pg_server: ServerAddress, tmp_path: Path,
) -> None:
    fake = tmp_path / "fake-checkout"
    (fake / "backupd").mkdir(parents=True)
    (fake / "backupd" / "__init__.py").write_text("")
    (fake / "backupd" / "__main__.py").write_text(_FAKE_MAIN)
    ran = tmp_path / "fake-ran"
    work = tmp_path / "work"
    work.mkdir()
    run = _run_bench("oneoff_ab.py", ["--rounds", "2", "--workdir", str(work), str(REPO_ROOT),
                                      str(fake)],
                     pg_server, tmp_path, timeout=120, FAKE_BACKUPD_RAN=str(ran))

    assert run.returncode == 0, run.stderr[-3000:]
    assert "| `pg_dump > /dev/null` (floor) |" in run.stdout
    assert f"| one-off `backupd backup` ({REPO_ROOT}) |" in run.stdout
    assert f"| one-off `backupd backup` ({fake}) |" in run.stdout
    assert run.stderr.count("[round ") == 2
    assert len(ran.read_text().splitlines()) == 2  # the fake checkout's own code ran each round
    assert _databases_left(pg_server, run) == []
    assert list(work.iterdir()) == []  # its work directory is gone

"""The benchmark harness runs end to end at the smallest scale (a smoke test, not a timed test:
it checks that the harness works and prints its tables, never the figures themselves)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from helpers.pg import REPO_ROOT, ServerAddress, connect, fixture_sql_path


def test_bench_runs_at_tiny_scale_and_prints_the_ratio_tables(
    pg_server: ServerAddress, tmp_path: Path,
) -> None:
    out = tmp_path / "bench.md"
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME": str(tmp_path),
           "LANG": "C.UTF-8",
           "PGHOST": pg_server.host, "PGPORT": str(pg_server.port), "PGUSER": pg_server.user}
    with subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "bench" / "run.py"), "--scale", "1", "--repeat", "1",
         "--fixture", str(fixture_sql_path()), "--workdir", str(tmp_path), "--out", str(out)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as proc:
        stdout, stderr = proc.communicate(timeout=280)

    assert proc.returncode == 0, stderr[-3000:]
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
    with connect(pg_server) as conn:
        left = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                            (f"backupd\\_bench\\_{proc.pid}\\_%",)).fetchall()
    assert left == []


# Run in a child: bench/ is a folder of scripts, not a package the tests (or mypy) import.
_HOG_SESSION_PROBE = """
import os, sys
sys.path.insert(0, sys.argv[1])
from issue18 import cpu_hog
with cpu_hog(True):
    me = os.getpid()
    with open(f"/proc/{me}/task/{me}/children") as children:
        hog = int(children.read().split()[0])
    print(os.getsid(hog), os.getsid(0), os.getpgid(hog))
"""


def test_cpu_hog_runs_in_a_session_of_its_own() -> None:
    # Where the kernel shares the CPU between sessions (sched_autogroup), a hog in the bench's
    # session shared a group with the floor's pg_dump and with backupd but not with the pg_dump
    # backupd starts: the busy figures measured that grouping, not the contention.
    out = subprocess.run([sys.executable, "-c", _HOG_SESSION_PROBE, str(REPO_ROOT / "bench")],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    hog_session, bench_session, hog_group = (int(word) for word in out.split())
    assert hog_session != bench_session
    assert hog_group == hog_session  # it leads that session


def test_oneoff_ab_runs_at_tiny_scale_and_prints_each_checkout(
    pg_server: ServerAddress, tmp_path: Path,
) -> None:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME": str(tmp_path),
           "LANG": "C.UTF-8",
           "PGHOST": pg_server.host, "PGPORT": str(pg_server.port), "PGUSER": pg_server.user}
    with subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "bench" / "oneoff_ab.py"), "--scale", "1",
         "--rounds", "2", "--workdir", str(tmp_path), str(REPO_ROOT)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as proc:
        stdout, stderr = proc.communicate(timeout=120)

    assert proc.returncode == 0, stderr[-3000:]
    assert "| `pg_dump > /dev/null` (floor) |" in stdout
    assert f"| one-off `backupd backup` ({REPO_ROOT}) |" in stdout
    assert stderr.count("[round ") == 2
    with connect(pg_server) as conn:
        left = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                            (f"backupd\\_bench\\_{proc.pid}\\_%",)).fetchall()
    assert left == []
    assert not list(tmp_path.glob("backupd-ab-*"))  # its work directory is gone

"""The secret-leak check under pytest-xdist: the controller searches every worker's evidence
after the last worker has finished, and a leak recorded on any worker fails the session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import leakcheck

PLANT = "BACKUPD_TEST_PLANT_LEAK"


@pytest.mark.skipif(not os.environ.get(PLANT),
                    reason="run only by the test below, in a child pytest")
def test_planted_leak_on_a_worker() -> None:
    leakcheck.record_output("planted by a worker", f"connecting with {leakcheck.SECRET_PASSWORD}")


@pytest.mark.parametrize("plant", [True, False])
def test_a_leak_on_any_worker_fails_the_whole_session(plant: bool, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "BACKUPD_LEAKCHECK_DIR"}
    env["BACKUPD_LEAKCHECK_DIR"] = str(tmp_path)  # a fresh directory: only the child's evidence
    if plant:
        env[PLANT] = "1"
    here = Path(__file__).resolve()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "2", "-p", "no:cacheprovider",
         f"{here}::test_planted_leak_on_a_worker"],
        cwd=here.parent.parent, env=env, capture_output=True, text=True, timeout=120, check=False)
    output = proc.stdout + proc.stderr
    if plant:
        assert proc.returncode == 1, output
        assert "1 leak(s)" in output and "planted by a worker" in output, output
    else:
        assert proc.returncode == 0, output
        assert "0 leak(s)" in output, output

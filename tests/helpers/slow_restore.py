"""A psql stand-in that pauses in the middle of a restore, so a test can kill a drill (or a
restore) while a real restore transaction is open in the target database."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path

from .cli import BackupdProcess, kill_group
from .pg import ServerAddress, pg_binary, psql

PAUSE_QUERY = "SELECT pg_sleep"
# The tail of a Python stand-in that must stay until backupd, its parent, is gone.
WHILE_PARENT_LIVES = (
    "parent = os.getppid()\n"
    "while os.getppid() == parent:\n"
    "    time.sleep(0.1)\n"
)


def _python_stand_in(directory: Path, tool: str, body: str) -> Path:
    """``directory/tool``: an executable Python script running ``body``. Returns directory."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / tool
    script.write_text(f"#!{sys.executable}\n{body}")
    script.chmod(0o755)
    return directory


def pausing_psql(directory: Path, pid_file: Path, pause_seconds: float = 60) -> Path:
    """A directory to put first on PATH whose ``psql`` passes the dump through to the real psql
    but, right after the first ``ALTER TABLE ... OWNER TO`` line (a complete statement, so
    tables already exist in the open transaction), runs ``SELECT pg_sleep(pause_seconds)``.
    The stand-in writes its pid (which is its process group: backupd starts psql in a new
    session) to ``pid_file`` so the test can kill it. Returns the directory."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "psql"
    script.write_text(
        "#!/bin/sh\n"
        f"echo $$ > '{pid_file}'\n"
        "awk -v pause='" + f"{PAUSE_QUERY}({pause_seconds:g});" + "' "
        "'{ print; fflush() } !done && /^ALTER TABLE .* OWNER TO .*;$/ "
        "{ print pause; fflush(); done = 1 }' "
        f"| '{pg_binary('psql')}' \"$@\"\n"
    )
    script.chmod(0o755)
    return directory


def cut_at_statement_psql(directory: Path, done_file: Path) -> Path:
    """A directory to put first on PATH whose ``psql`` passes the dump to the real psql only
    up to and including the first complete ``ALTER TABLE ... OWNER TO`` line, then closes the
    real psql's input (end of input exactly on a statement boundary: where committing at end
    of input would keep a half-restored database), touches ``done_file`` once the real psql
    has exited, and stops reading, so the feeder blocks until the test kills it; then it
    exits too."""
    return _python_stand_in(
        directory, "psql",
        "import os, pathlib, re, subprocess, sys, time\n"
        f"real = subprocess.Popen([{str(pg_binary('psql'))!r}, *sys.argv[1:]],"
        " stdin=subprocess.PIPE)\n"
        "for line in sys.stdin.buffer:\n"
        "    real.stdin.write(line)\n"
        "    if re.match(rb'ALTER TABLE .* OWNER TO .*;$', line.rstrip(b'\\n')):\n"
        "        break\n"
        "real.stdin.close()\n"
        "real.wait()\n"
        f"pathlib.Path({str(done_file)!r}).write_text(str(real.returncode))\n"
        + WHILE_PARENT_LIVES  # until the feeder (backupd) is gone
    )


def pausing_pg_restore(directory: Path, paused_file: Path, after_bytes: int = 256 * 1024) -> Path:
    """A directory to put first on PATH whose ``pg_restore`` runs the real one unchanged,
    except for a restore into a database (``--dbname``): it feeds the archive (the file
    named after ``--``, else its stdin) to the real pg_restore's stdin, stops after
    ``after_bytes``, touches ``paused_file`` and waits while backupd, its parent, lives.
    Once backupd is gone it feeds the rest, as an orphaned pg_restore would go on and
    finish the restore unreported."""
    return _python_stand_in(
        directory, "pg_restore",
        "import os, pathlib, subprocess, sys, time\n"
        f"real = {str(pg_binary('pg_restore'))!r}\n"
        "args = sys.argv[1:]\n"
        "if not any(a.startswith('--dbname') for a in args):\n"
        "    os.execv(real, [real, *args])\n"
        "source = sys.stdin.buffer\n"
        "if '--' in args:\n"
        "    cut = args.index('--')\n"
        "    source, args = open(args[cut + 1], 'rb'), args[:cut]\n"
        "child = subprocess.Popen([real, *args], stdin=subprocess.PIPE)\n"
        f"child.stdin.write(source.read({after_bytes}))\n"
        "child.stdin.flush()\n"
        f"pathlib.Path({str(paused_file)!r}).touch()\n"
        + WHILE_PARENT_LIVES
        + "while chunk := source.read(65536):\n"
        "    child.stdin.write(chunk)\n"
        "child.stdin.close()\n"
        "sys.exit(child.wait())\n"
    )


def kill_once_paused(proc: BackupdProcess, server: ServerAddress, database: str,
                     pid_file: Path, *, timeout: float = 60) -> None:
    """Wait until ``pausing_psql`` holds the restore into ``database`` (its transaction open,
    tables created), then SIGKILL backupd's process group, as an OOM killer or `docker kill`
    would, and the stand-in's own session (psql runs in a session of its own)."""
    try:
        deadline = time.monotonic() + timeout
        while psql(server, "postgres",
                   "SELECT count(*) FROM pg_stat_activity WHERE datname = "
                   f"'{database}' AND query LIKE '{PAUSE_QUERY}%'").strip() != "1":
            assert proc.poll() is None, proc.read_stderr()
            assert time.monotonic() < deadline, "the restore never reached the pause"
            time.sleep(0.1)
    finally:
        kill_group(proc)
        proc.wait()
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(pid_file.read_text()), signal.SIGKILL)


def throttled_psql(directory: Path, *, chunk: int = 16 * 1024, pause: float = 0.02,
                   linger: float = 2.0) -> Path:
    """A directory to put first on PATH whose ``psql`` passes its input to the real psql
    ``chunk`` bytes every ``pause`` seconds (a restore that takes seconds, at any size), then,
    the input all in, waits ``linger`` seconds before letting the real psql finish (as
    psql does while it builds indexes). Returns the directory."""
    return _python_stand_in(directory, "psql", (
        "import os, subprocess, sys, time\n"
        f"real = subprocess.Popen([{pg_binary('psql')!r}, *sys.argv[1:]], "
        "stdin=subprocess.PIPE)\n"
        "assert real.stdin is not None\n"
        f"while data := sys.stdin.buffer.read({chunk}):\n"
        "    real.stdin.write(data)\n"
        "    real.stdin.flush()\n"
        f"    time.sleep({pause})\n"
        f"time.sleep({linger})\n"
        "real.stdin.close()\n"
        "sys.exit(real.wait())\n"
    ))


def meddling_psql(directory: Path, server: ServerAddress, database: str, statement: str) -> Path:
    """A directory to put first on PATH whose ``psql``, the first time it is run, runs
    ``statement`` in ``database`` on ``server`` (as another client would while a restore is
    under way: an application reconnecting once its role is back), then execs the real psql.
    Returns the directory."""
    done = directory / "meddled"
    return _python_stand_in(directory, "psql", (
        "import os, pathlib, subprocess, sys\n"
        f"real = {pg_binary('psql')!r}\n"
        f"done = pathlib.Path({str(done)!r})\n"
        "if not done.exists():\n"
        f"    env = {{**os.environ, **{server.env(database)!r}}}\n"
        f"    subprocess.run([real, '--no-psqlrc', '-v', 'ON_ERROR_STOP=1', '-c', "
        f"{statement!r}], env=env, check=True, stdin=subprocess.DEVNULL)\n"
        "    done.touch()\n"
        "os.execv(real, [real, *sys.argv[1:]])\n"
    ))

"""A psql stand-in that pauses in the middle of a restore, so a test can kill a drill (or a
restore) while a real restore transaction is open in the target database."""

from __future__ import annotations

from pathlib import Path

from .pg import pg_binary

PAUSE_QUERY = "SELECT pg_sleep"


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

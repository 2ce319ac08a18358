"""Loaded by backupd subprocesses started from the tests (PYTHONPATH points here).

An audit hook appends the argv of every process backupd starts (pg_dump, psql, anything) to
$BACKUPD_TEST_ARGV_LOG, one JSON list per line, so the leak check can prove no secret is
ever passed on a command line. The environment is deliberately not recorded: PGPASSWORD
belongs there.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

_LOG = os.environ.get("BACKUPD_TEST_ARGV_LOG")


def _record(event: str, args: tuple[Any, ...]) -> None:
    if event == "subprocess.Popen" or event in ("os.posix_spawn", "os.exec"):
        argv = args[1]
    else:
        return
    try:
        words = [os.fsdecode(a) for a in argv] if not isinstance(argv, str | bytes) else [
            os.fsdecode(argv)]
        with open(_LOG, "a", encoding="utf-8") as handle:  # type: ignore[arg-type]
            handle.write(json.dumps(words) + "\n")
    except Exception:  # evidence collection must never break backupd
        pass


if _LOG:
    sys.addaudithook(_record)

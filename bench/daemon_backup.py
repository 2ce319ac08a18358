"""Backups taken by the running daemon, against the floor, alternating in one phase.

`backupd run` is how backupd takes its backups: a long-running process that has imported
what it needs once. A one-off `backupd backup` pays the interpreter's and the libraries'
start-up (about half a second here) on every run; this phase leaves that out, so the two
rows together show what start-up costs and what the backup itself costs.

The daemon runs with a seconds-field schedule (a slot every ``slot_period(scale)`` seconds).
A backup's time is its "job finished" record's ``finished_at`` minus its slot
(``scheduled_for``): the scheduler's wake-up, the checks, pg_dump, the compression, the
read-back, the fsyncs and both manifest commits. After each backup, while the daemon waits
for its next slot, the floor `pg_dump > /dev/null` runs once. The daemon's first backup is
left out of the medians (it imports the backup's modules and asks pg_dump for its version
once per process) and shown on its own.
"""

from __future__ import annotations

import contextlib
import json
import queue
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from harness import BACKUPD, Contender, Run, Server, backupd_env, timed


def slot_period(scale: int) -> int:
    """Seconds between the daemon's slots (a divisor of 60): one backup and one floor run must
    fit between two slots (at scale 30, about 4.5 s and 4.3 s on two cores)."""
    return 5 if scale <= 3 else 10 if scale <= 12 else 20 if scale <= 40 else 30 if scale <= 80 \
        else 60


@contextlib.contextmanager
def running_daemon(env: dict[str, str]) -> Iterator[queue.Queue[dict[str, object]]]:
    """`backupd run`; yields the queue of its backup jobs' "job finished" records."""
    process = subprocess.Popen([*BACKUPD, "run"], env=env, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    records: queue.Queue[dict[str, object]] = queue.Queue()
    tail: list[bytes] = []

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            tail[:] = [*tail[-40:], line]
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if record.get("job") == "backup" and "finished_at" in record:
                    records.put(record)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        yield records
    except BaseException:
        print(b"".join(tail).decode(errors="replace"), file=sys.stderr)
        raise
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        reader.join(timeout=5)


def _seconds(record: dict[str, object]) -> float:
    if record.get("status") != "success":
        raise SystemExit(f"bench: the daemon's backup failed: {record}")
    due = datetime.fromisoformat(str(record["scheduled_for"]))
    done = datetime.fromisoformat(str(record["finished_at"]))
    return (done - due).total_seconds()


def bench_daemon(server: Server, source: str, work: Path, repeat: int,
                 scale: int) -> tuple[Contender, Contender, float]:
    """(the daemon's backups, the floor runs between them, the first backup's seconds)."""
    period = slot_period(scale)
    directory = work / "daemon"
    env = backupd_env(server, source, directory,
                      SCHEDULE_SECONDS_FIELD="true",
                      BACKUP_SCHEDULE=f"*/{period} * * * * *" if period < 60 else "0 * * * * *",
                      BACKUP_ON_START="false", DRILL_SCHEDULE="off",
                      # No retention sweep after each backup: the CLI rows run --no-prune.
                      RETENTION_SCHEDULE="0 0 0 1 1 *")
    daemon = Contender("backup by the running daemon (slot to verified)", lambda _: [], env)
    floor = Contender("pg_dump > /dev/null (floor, between the daemon's backups)",
                      lambda _: "pg_dump > /dev/null", server.env(source))
    print(f"bench: backups by the running daemon, {repeat} round(s) after a first one, "
          f"a slot every {period} s", file=sys.stderr, flush=True)
    with running_daemon(env) as records:
        first = _seconds(records.get(timeout=period + 120))
        for round_no in range(repeat):
            floor.runs.append(timed(floor.command(round_no), floor.env, False))
            floor_ended = datetime.now(UTC)
            record = records.get(timeout=period + 120)
            if datetime.fromisoformat(str(record["scheduled_for"])) < floor_ended:
                raise SystemExit("bench: the floor run was still running at the daemon's next "
                                 f"slot (a slot every {period} s is too short at this scale)")
            daemon.runs.append(Run(_seconds(record), None))
            print(f"  [daemon round {round_no + 1}/{repeat}] backup "
                  f"{daemon.runs[-1].seconds:.2f}s, floor {floor.runs[-1].seconds:.2f}s",
                  file=sys.stderr, flush=True)
    shutil.rmtree(directory, ignore_errors=True)
    return daemon, floor, first

"""A backup run's start (its id, naming.run_id), reserved in DB_BACKUP_DIR while the run
lasts, and the start-up cleanup's view of reservations a killed run left.

With DB_BACKUP_GLOBALS=off no globals file is written, so its name kept nothing apart: two
runs started in one second shared an id, and "the newest run" (restore, drill, health) mixed
them. A run's second is one no manifest in the directory records as a run id, and one no
other run holds: two processes starting runs in the same second at once have no manifest
yet, so each takes the second by creating ``.backupd-run-<id>`` with O_EXCL; only one gets
it and the other tries the next second. Reading the manifests is the repository's
(LocalRepository._run_ids_by_backup, given here as ``run_ids``).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path

from backupd.errors import JobFailed
from backupd.naming import RUN_RESERVATION, run_id, run_reservation_name
from backupd.storage.atomic import FILE_MODE

# A run's reservation of its id older than this is a killed run's: no run lasts a day before
# its first manifest records the id, and a reservation names a second that is past by then.
RUN_RESERVATION_STALE = 24 * 3600

# The run id each backup's manifest records, by backup name, except the backups given
# (read already: a manifest's run id never changes).
RunIds = Callable[[Mapping[str, str | None]], dict[str, str | None]]


def free_second(free: Callable[[datetime], bool]) -> datetime:
    """The current second, or the first after it that ``free`` accepts."""
    while True:
        now = datetime.now(UTC).replace(microsecond=0)
        if free(now):
            return now
        time.sleep(1.05 - datetime.now(UTC).microsecond / 1e6)


@contextlib.contextmanager
def reserved_run_start(directory: Path, names_free: Callable[[datetime], bool],
                       run_ids: RunIds) -> Iterator[datetime]:
    """The first second from now whose names are free (``names_free``), that no manifest
    (``run_ids``: of any database, another configuration sharing the directory records its
    runs here too) records as a run id, and that this process could reserve; held while the
    ``with`` lasts."""
    # Every manifest read once, not on each one-second retry; a second already recorded
    # is passed over without reserving it.
    known = run_ids({})
    # The reservation made and not yet let go. Released in the one finally below, which
    # also covers the second listing failing (JobFailed) or an interrupt once reserved:
    # left behind, it would hold that second for a day.
    held: list[str] = []

    def free(at: datetime) -> bool:
        if not names_free(at):
            return False
        rid = run_id(at)
        if rid in known.values() or not _reserve(directory, rid):
            return False
        held.append(rid)
        # Looked at again once the second is ours: a run that held it and has ended
        # wrote its manifests before letting it go, maybe since the first reading. Only
        # backups new since are read (a manifest's run id never changes).
        known.update(run_ids(known))
        if rid in known.values():
            _release(directory, held.pop())
            return False
        return True

    try:
        yield free_second(free)
    finally:
        for rid in held:
            _release(directory, rid)


def is_stale_reservation(entry: os.DirEntry[str]) -> bool:
    """A reservation a killed run left, for the start-up cleanup. A live one may belong to
    another process's run (that cleanup does not wait for runs), so only an old one."""
    if not entry.name.startswith(RUN_RESERVATION):
        return False
    try:
        return time.time() - entry.stat(follow_symlinks=False).st_mtime > RUN_RESERVATION_STALE
    except FileNotFoundError:
        return False


def _reserve(directory: Path, rid: str) -> bool:
    path = directory / run_reservation_name(rid)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE))
    except FileExistsError:
        return False  # another run holds this second (or one killed in it left this)
    except OSError as exc:
        raise JobFailed(
            f"DB_BACKUP_DIR: cannot create {path} to reserve the run id "
            f"({exc.strerror or exc}); fix the directory's owner, permissions or free "
            "space") from None
    return True


def _release(directory: Path, rid: str) -> None:
    with contextlib.suppress(OSError):
        (directory / run_reservation_name(rid)).unlink()

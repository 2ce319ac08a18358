"""What the newest backup run of ``*`` did with template1, read from the repository alone
(no server, local or S3): whether a whole-system restore brings template1's dumps back, and
whether health, metrics and the schedule's cover still judge them.

A run of ``*`` dumps template1 only while it holds something template0 lacks; emptied, it
gets no more dumps, and its last one, kept by retention, is neither due nor part of the
cluster to bring back. Every dump manifest of a run says what the run did
(Manifest.template1_look), so the fact travels with the run, to S3 too, whatever
DB_BACKUP_GLOBALS; runs written before that said it in their globals manifest alone
(``template1_empty``), still read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from backupd.manifest import TEMPLATE1_EMPTY, TEMPLATE1_FAILED
from backupd.naming import run_id as run_id_at
from backupd.storage.base import BackupEntry


@dataclass(frozen=True)
class Template1InRun:
    """``run_id``: the newest run that said; ``took``: it dumped template1; ``empty``: it
    found template1 holding nothing. Neither when the look failed: not restored (the run
    has no dump of it), still judged (nothing proves the old dumps are no longer due)."""

    run_id: str
    took: bool
    empty: bool


def newest_template1_run(dumps: Iterable[BackupEntry], globals_entries: Iterable[BackupEntry],
                         now: datetime | None = None) -> Template1InRun | None:
    """What the newest run that said anything about template1 did with it, from the
    verified ``dumps`` (of any databases) and ``globals_entries``; None when no run said
    (no run of ``*``, or only runs that left template1 out). A run that says nothing never
    hides what an older one said: a config that leaves template1 out (DB_BACKUP_EXCLUDE)
    sharing the repository does not undo another's finding."""
    found: list[tuple[tuple[str, datetime], Template1InRun]] = []
    for entry in dumps:
        manifest = entry.manifest
        if manifest is None or manifest.template1_look is None or not entry.proven_good(now):
            continue
        look = manifest.template1_look
        rid = manifest.run_id or run_id_at(entry.parsed.taken_at)
        # Anything but empty or failed (a later version's value): taken, so still judged.
        found.append(((rid, entry.parsed.taken_at), Template1InRun(
            rid, took=look not in (TEMPLATE1_EMPTY, TEMPLATE1_FAILED),
            empty=look == TEMPLATE1_EMPTY)))
    for entry in globals_entries:
        manifest = entry.manifest
        if manifest is None or manifest.template1_empty is None or not entry.proven_good(now):
            continue
        rid = manifest.run_id or run_id_at(entry.parsed.taken_at)
        empty = manifest.template1_empty
        found.append(((rid, entry.parsed.taken_at), Template1InRun(rid, not empty, empty)))
    # By run, then by time: two runs of DB_BACKUP_GLOBALS=off started in one second
    # shared an id before LocalRepository.reserved_run_start (older runs' manifests may
    # still): the later dump is newer.
    return max(found, key=lambda pair: pair[0])[1] if found else None


def template1_in_newest_run(names: Iterable[str], listed: Callable[[str], Iterable[BackupEntry]],
                            globals_entries: Iterable[BackupEntry]) -> Template1InRun | None:
    """newest_template1_run over the dumps of every database in ``names``, each as
    ``listed`` gives it (a repository's list_backups, or what the caller already listed, so
    nothing is read twice): the one lookup health, metrics, the schedule's cover, the drill
    and the whole-system restore judge template1 by."""
    return newest_template1_run((entry for name in names for entry in listed(name)),
                                globals_entries)

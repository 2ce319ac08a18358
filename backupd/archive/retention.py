"""Retention of the archive: which base backups stay, and from where the WAL must stay.

* The newest BASEBACKUP_KEEP verified base backups always stay.
* With BASEBACKUP_MAX_AGE_DAYS, every verified one younger than that stays too, and the
  newest one older than it: recovery can then reach any point of the last N days.
* A base backup that is not verified never counts; it stays while it is newer than the
  oldest one kept (something to look at), and goes with the others once older.
* Nor does one off the path to the archive's newest timeline (taken on a timeline after it
  was left, e.g. after a point-in-time recovery forked a new one): recovery cannot use it.
  It stays and goes as an unverified one does.
* A base backup dated in the future (a wrong clock) never counts, and stays.
* WAL: everything from the oldest kept base backup's start LSN on stays; only segments
  wholly before it go, oldest first, so the archive stays one unbroken run (no gap is ever
  opened) and every kept base backup can reach consistency and the archive's end. With no
  verified base backup at all, no WAL is deleted.

Pure functions of the listings: the same plan is made for the local archive and for S3.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from backupd.archive.continuity import TimelineSpan, on_path
from backupd.archive.walnames import lsn_to_segno, parse_lsn
from backupd.storage.base import BackupEntry


@dataclass
class BaseRetentionPlan:
    keep: list[BackupEntry] = field(default_factory=list)
    delete: list[BackupEntry] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)
    # WAL before this LSN is needed by no kept base backup (None: delete no WAL).
    wal_needed_from: int | None = None


def plan_base_retention(entries: list[BackupEntry], keep: int, max_age_days: float | None,
                        now: datetime, *,
                        spans: Sequence[TimelineSpan] | None = None) -> BaseRetentionPlan:
    """``entries``: the base backups, newest first. ``spans``: the path to the archive's
    newest timeline (``continuity.timeline_spans``; None: every one is on it)."""
    plan = BaseRetentionPlan()
    off_path = {e.name for e in entries
                if spans is not None and e.proven_good(now) and not _on(e, spans)}
    good = [e for e in entries if e.proven_good(now) and _facts_start(e) is not None
            and e.name not in off_path]
    for entry in good[:keep]:
        plan.reasons[entry.name] = f"one of the newest {keep} verified base backups"
    if max_age_days is not None:
        window_start = now - timedelta(days=max_age_days)
        for entry in good:
            if entry.taken_at >= window_start:
                plan.reasons.setdefault(entry.name, f"younger than {max_age_days:g} days")
        cover = next((e for e in good if e.taken_at < window_start), None)
        if cover is not None:
            plan.reasons.setdefault(cover.name, f"the newest base backup older than "
                                                f"{max_age_days:g} days (covers the window)")
    kept_good = [e for e in good if e.name in plan.reasons]
    if not kept_good:
        plan.keep = list(entries)  # nothing proven: delete nothing, neither base nor WAL
        return plan
    oldest_kept = min(e.taken_at for e in kept_good)
    for entry in entries:
        if entry.name in plan.reasons or entry.from_the_future(now):
            plan.keep.append(entry)
        elif entry not in good and entry.taken_at > oldest_kept:
            plan.reasons[entry.name] = ("not on the path to the newest timeline"
                                        if entry.name in off_path else "not verified"
                                        ) + ", newer than the oldest kept"
            plan.keep.append(entry)
        else:
            plan.delete.append(entry)
    starts = [start for e in plan.keep if (start := _facts_start(e)) is not None]
    plan.wal_needed_from = min(starts)
    return plan


def _on(entry: BackupEntry, spans: Sequence[TimelineSpan]) -> bool:
    facts = entry.manifest.base_backup if entry.manifest is not None else None
    return facts is not None and on_path(spans, facts.timeline, parse_lsn(facts.stop_lsn))


def _facts_start(entry: BackupEntry) -> int | None:
    if entry.manifest is None or entry.manifest.base_backup is None:
        return None
    return parse_lsn(entry.manifest.base_backup.start_lsn)


def wal_to_delete(segments: Iterable[tuple[str, int, bool]], needed_from: int | None,
                  segment_size: int) -> list[str]:
    """Names of the archived WAL segments ``(name, segno, is_history)`` wholly before
    ``needed_from``, oldest first; history files always stay (they are tiny and recovery
    follows them to any later timeline)."""
    if needed_from is None:
        return []
    first_needed = lsn_to_segno(needed_from, segment_size)
    doomed = [(segno, name) for name, segno, history in segments
              if not history and segno < first_needed]
    return [name for _, name in sorted(doomed)]

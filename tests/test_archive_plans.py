"""The archive's plans as pure functions of listings (issue 15): which base backups and WAL
retention keeps, and what `verify --wal` finds across timelines. The same plans run against
real archives in test_wal_continuity.py; here every case the real ones cannot reach cheaply
(windows of days, timeline switches)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from backupd.archive.basebackups import BaseBackupInfo
from backupd.archive.continuity import check_base, parse_history, timeline_spans
from backupd.archive.retention import plan_base_retention, wal_to_delete
from backupd.archive.walnames import WalFileName, format_lsn, segment_name
from backupd.manifest import BaseBackupFacts, Manifest
from backupd.naming import base_backup_name, parse_backup_name
from backupd.storage.base import BackupEntry

SEG = 16 * 1024 * 1024
NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def entry(days_ago: float, start_segno: int, *, verified: bool = True,
          timeline: int = 1) -> BackupEntry:
    taken = NOW - timedelta(days=days_ago)
    name = base_backup_name(taken, "gzip")
    parsed = parse_backup_name(name)
    assert parsed is not None
    facts = BaseBackupFacts(system_identifier=1, timeline=timeline, start_timeline=timeline,
                            start_lsn=format_lsn(start_segno * SEG + 40),
                            stop_lsn=format_lsn(start_segno * SEG + 400), wal_segment_size=SEG)
    manifest = Manifest(kind="base", name=name, database="base", started_at=taken,
                        finished_at=taken, raw_bytes=1, stored_bytes=10, sha256="0" * 64,
                        verified=verified, base_backup=facts)
    return BackupEntry(parsed, 10, manifest)


def names(entries: list[BackupEntry]) -> list[str]:
    return [e.name for e in entries]


def test_keep_counts_verified_base_backups_and_wal_from_the_oldest_kept() -> None:
    listing = [entry(1, 40), entry(8, 30), entry(15, 20), entry(22, 10)]
    plan = plan_base_retention(listing, keep=2, max_age_days=None, now=NOW)
    assert names(plan.keep) == names(listing[:2])
    assert names(plan.delete) == names(listing[2:])
    assert plan.wal_needed_from == 30 * SEG + 40
    segments = [(segment_name(1, n, SEG), n, False) for n in range(5, 45)]
    segments.append(("00000002.history", 0, True))
    doomed = wal_to_delete(reversed(segments), plan.wal_needed_from, SEG)
    # Oldest first, everything before segment 30 and nothing from it on; history stays.
    assert doomed == [segment_name(1, n, SEG) for n in range(5, 30)]


def test_the_age_window_keeps_younger_ones_and_the_one_that_covers_its_start() -> None:
    listing = [entry(1, 40), entry(8, 30), entry(15, 20), entry(22, 10)]
    plan = plan_base_retention(listing, keep=1, max_age_days=10, now=NOW)
    # Younger than 10 days: 1 and 8 days; the newest older than the window: 15 days.
    assert names(plan.keep) == names(listing[:3])
    assert names(plan.delete) == names(listing[3:])
    assert plan.wal_needed_from == 20 * SEG + 40


def test_unverified_base_backups_never_count() -> None:
    listing = [entry(1, 40, verified=False), entry(8, 30), entry(15, 20, verified=False),
               entry(22, 10)]
    plan = plan_base_retention(listing, keep=1, max_age_days=None, now=NOW)
    # The failed newest one stays for inspection (newer than the kept one); the kept one is
    # the newest *verified*; the older failed one goes.
    assert names(plan.keep) == names(listing[:2])
    assert names(plan.delete) == names(listing[2:])
    assert plan.wal_needed_from == 30 * SEG + 40


def test_nothing_verified_deletes_nothing() -> None:
    listing = [entry(1, 40, verified=False), entry(8, 30, verified=False)]
    plan = plan_base_retention(listing, keep=1, max_age_days=None, now=NOW)
    assert plan.delete == [] and plan.wal_needed_from is None
    assert wal_to_delete([(segment_name(1, 1, SEG), 1, False)], plan.wal_needed_from, SEG) == []


def test_base_backups_off_the_newest_timelines_path_never_count() -> None:
    # Recovered to a point in segment 25 and started: timeline 2 forks there. The base
    # backup taken on timeline 1 after that point (8 days ago) cannot reach timeline 2.
    listing = [entry(1, 28, timeline=2), entry(8, 30), entry(15, 20), entry(22, 10)]
    spans = timeline_spans(2, [(1, 25 * SEG + 100)])
    plan = plan_base_retention(listing, keep=2, max_age_days=None, now=NOW, spans=spans)
    # The two newest on the path are kept; the abandoned one stays only while it is newer
    # than the oldest kept (something to look at), like an unverified one.
    assert names(plan.keep) == names(listing[:3])
    assert "not on the path" in plan.reasons[listing[1].name]
    assert names(plan.delete) == names(listing[3:])
    assert plan.wal_needed_from == 20 * SEG + 40


# --- continuity -------------------------------------------------------------------------

def base(timeline: int, start_segno: int, stop_segno: int, *, verified: bool = True,
         name: str = "base_20261205_120000.tar.gz") -> BaseBackupInfo:
    return BaseBackupInfo(name=name, system_identifier=1, timeline=timeline,
                          start_timeline=timeline, start_lsn=start_segno * SEG + 40,
                          stop_lsn=stop_segno * SEG + 400, start_time=NOW, stop_time=NOW,
                          wal_segment_size=SEG, verified=verified, size=1, encrypted=False)


# Timeline 2 was forked from timeline 1 in the middle of segment 5.
HISTORY = "1\t0/5000800\tno recovery target specified\n"


def wal(timeline: int, segno: int, partial: bool = False) -> WalFileName:
    return WalFileName(timeline, segno, "partial" if partial else "segment", SEG)


def archive(*, drop: tuple[int, int] | None = None) -> list[WalFileName]:
    files = [wal(1, n) for n in range(2, 5)] + [wal(1, 5, partial=True)]
    files += [wal(2, n) for n in range(5, 8)] + [wal(2, 8, partial=True)]
    return [f for f in files if (f.timeline, f.segno) != drop]


def test_history_is_followed_across_a_timeline_switch() -> None:
    spans = timeline_spans(2, parse_history(HISTORY))
    verdict = check_base(base(1, 2, 3), True, archive(), spans, SEG)
    assert verdict.ok, verdict
    # Timeline 1's segment 5 holds the switch: replay reads timeline 2's copy of it.
    assert verdict.reaches == segment_name(2, 8, SEG)


def test_a_missing_segment_on_the_new_timeline_is_named() -> None:
    spans = timeline_spans(2, parse_history(HISTORY))
    verdict = check_base(base(1, 2, 3), True, archive(drop=(2, 6)), spans, SEG)
    assert not verdict.pitr and verdict.consistent and verdict.valid
    assert verdict.missing == [segment_name(2, 6, SEG)]
    assert segment_name(2, 6, SEG) in verdict.line()


def test_a_missing_segment_before_the_switch_is_named() -> None:
    spans = timeline_spans(2, parse_history(HISTORY))
    verdict = check_base(base(1, 2, 3), True, archive(drop=(1, 4)), spans, SEG)
    assert verdict.missing == [segment_name(1, 4, SEG)]


def test_a_base_backup_after_the_fork_on_the_old_timeline_is_not_on_the_path() -> None:
    spans = timeline_spans(2, parse_history(HISTORY))
    verdict = check_base(base(1, 6, 6), True, [*archive(), wal(1, 6)], spans, SEG)
    assert not verdict.pitr and "not on the path" in verdict.problem


def test_consistency_without_the_wal_inside_needs_the_archive() -> None:
    spans = timeline_spans(1, [])
    files = [wal(1, n) for n in (2, 4, 5)]
    verdict = check_base(base(1, 2, 4), False, files, spans, SEG)
    assert not verdict.consistent and verdict.pitr is True
    assert check_base(base(1, 2, 4), True, files, spans, SEG).consistent
    unverified = check_base(base(1, 2, 4, verified=False), True, files, spans, SEG)
    assert not unverified.valid and not unverified.ok and "not verified" in unverified.problem


def test_a_damaged_segment_is_named_as_damage_not_as_missing() -> None:
    """Listed, but its stored size is not its manifest's: recovery cannot use it, and the
    verdict says why, apart from any gap."""
    spans = timeline_spans(2, parse_history(HISTORY))
    why = "wal/000000020000000000000006.wal.zst is 10 bytes, its manifest records 20"
    damaged = {segment_name(2, 6, SEG): why}
    verdict = check_base(base(1, 2, 3), True, archive(drop=(2, 7)), spans, SEG, damaged)
    assert not verdict.pitr and verdict.consistent
    assert verdict.damaged == [f"{segment_name(2, 6, SEG)} ({why})"]
    assert verdict.missing == [segment_name(2, 7, SEG)]
    assert verdict.problem == (f"1 WAL file damaged: {segment_name(2, 6, SEG)} ({why}); "
                               f"1 WAL segment missing: {segment_name(2, 7, SEG)}")
    # Before the base backup's stop, without the WAL inside it: not consistent either.
    spans = timeline_spans(1, [])
    files = [wal(1, n) for n in (2, 3, 4, 5)]
    verdict = check_base(base(1, 2, 4), False, files, spans, SEG,
                         {segment_name(1, 3, SEG): why})
    assert not verdict.consistent and verdict.pitr  # replay from the stop needs it not
    assert verdict.problem == (f"WAL before its stop missing or damaged: "
                               f"{segment_name(1, 3, SEG)} ({why})")

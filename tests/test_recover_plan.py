"""recover's plan, from an archive's listing alone: which base backup, which WAL files, and
the refusals (gap, a target outside the archive), across a timeline change."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import pytest

from backupd.archive.continuity import timeline_spans
from backupd.archive.recovery import RecoveryTarget, WalDamaged, plan
from backupd.archive.walnames import segment_name
from backupd.errors import ConfigError, JobFailed

SIZE = 16 * 1024 * 1024
T0 = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Base:
    name: str
    timeline: int
    start_lsn: int
    stop_lsn: int
    stop_time: datetime
    wal_segment_size: int = SIZE
    encrypted: bool = False


@dataclass(frozen=True)
class Wal:
    name: str
    timeline: int
    segno: int
    partial: bool = False
    history: bool = False
    damage: str | None = None
    encrypted: bool = False


def segments(timeline: int, first: int, last: int, *, partial_last: bool = False) -> list[Wal]:
    out = [Wal(segment_name(timeline, n, SIZE), timeline, n) for n in range(first, last + 1)]
    if partial_last:
        out[-1] = Wal(out[-1].name + ".partial", timeline, last, partial=True)
    return out


BASES = [Base("base_old", 1, 2 * SIZE + 40, 2 * SIZE + 400, T0),
         Base("base_new", 1, 5 * SIZE + 40, 5 * SIZE + 400, T0 + timedelta(hours=1))]
# plan's path to the newest timeline on timeline 1, which has no history file.
ON_TIMELINE_1 = timeline_spans(1, [])


def test_the_newest_base_backup_before_the_target_and_all_wal_after_it() -> None:
    wal = segments(1, 2, 8, partial_last=True)
    chosen = plan(wal, BASES, RecoveryTarget(), spans=ON_TIMELINE_1)
    assert chosen.base.name == "base_new"
    assert [w.segno for w in chosen.segments] == [5, 6, 7, 8] and chosen.segments[-1].partial
    assert chosen.file_name(chosen.segments[-1]) == segment_name(1, 8, SIZE)
    early = plan(wal, BASES, RecoveryTarget(time=T0 + timedelta(minutes=30)),
                 spans=ON_TIMELINE_1)
    assert early.base.name == "base_old" and early.segments[0].segno == 2
    assert plan(wal, BASES, RecoveryTarget(name="before-migration"),
                spans=ON_TIMELINE_1).base.name == "base_old"


def test_after_a_timeline_change_the_abandoned_history_is_left_out() -> None:
    # Recovered at segment 6 onto timeline 2, which is shorter than what timeline 1 went on
    # to write (the history after the target, abandoned).
    wal = [*segments(1, 2, 9), Wal("00000002.history", 2, 0, history=True),
           *segments(2, 6, 7, partial_last=True)]
    chosen = plan(wal, BASES, RecoveryTarget(),
                  spans=timeline_spans(2, [(1, 6 * SIZE + 1000)]))
    assert [(w.timeline, w.segno) for w in chosen.segments] == [(1, 5), (2, 6), (2, 7)]
    assert [h.name for h in chosen.history] == ["00000002.history"]


def test_a_gap_names_the_missing_range() -> None:
    wal = [w for w in segments(1, 2, 9) if w.segno not in (6, 7)]
    with pytest.raises(JobFailed, match=f"WAL gap: {segment_name(1, 6, SIZE)} .. "
                                        f"{segment_name(1, 7, SIZE)} missing"):
        plan(wal, BASES, RecoveryTarget(), spans=ON_TIMELINE_1)


def test_a_damaged_file_the_plan_needs_is_refused_naming_it_and_one_before_it_is_not() -> None:
    """Listed with its damage (its stored size is not its manifest's): not a gap, damage;
    refused only where replay needs it."""
    why = "wal/...06.wal.zst is 100 bytes, its manifest records 200"
    wal = [replace(w, damage=why) if w.segno in (3, 6) else w for w in segments(1, 2, 9)]
    with pytest.raises(WalDamaged, match=f"WAL file {segment_name(1, 6, SIZE)} is damaged: "
                                         f"{re.escape(why)}; it is needed to replay base "
                                         "backup base_new onward"):
        plan(wal, BASES, RecoveryTarget(), spans=ON_TIMELINE_1)
    early = RecoveryTarget(time=T0 + timedelta(minutes=30))  # base_old: 3 is needed too
    with pytest.raises(WalDamaged, match=r"WAL file 0+10+3 is damaged: .*\(and 1 more\)"):
        plan(wal, BASES, early, spans=ON_TIMELINE_1)
    undamaged = [replace(w, damage=None) if w.segno == 6 else w for w in wal]
    chosen = plan(undamaged, BASES, RecoveryTarget(), spans=ON_TIMELINE_1)
    assert chosen.base.name == "base_new"  # from 5 on: the damaged 3 is not needed


def test_targets_outside_the_archive_are_refused() -> None:
    wal = segments(1, 2, 8)
    with pytest.raises(ConfigError, match="before the oldest base backup"):
        plan(wal, BASES, RecoveryTarget(time=T0 - timedelta(days=1)),
             spans=ON_TIMELINE_1)
    with pytest.raises(ConfigError, match="after the archive's end"):
        plan(wal, BASES, RecoveryTarget(lsn=20 * SIZE), spans=ON_TIMELINE_1)
    with pytest.raises(ConfigError, match="one recovery target"):
        RecoveryTarget(time=T0, name="x")


def test_a_restore_point_found_in_the_wal_picks_the_newest_base_backup_before_it() -> None:
    wal = segments(1, 2, 8)
    target = RecoveryTarget(name="before-migration")
    # Without the restore point's LSN: the oldest, to read every restore point.
    assert plan(wal, BASES, target, spans=ON_TIMELINE_1).base.name == "base_old"
    at_six = plan(wal, BASES, target, restore_point=6 * SIZE + 100, spans=ON_TIMELINE_1)
    assert at_six.base.name == "base_new" and at_six.segments[0].segno == 5
    assert plan(wal, BASES, target, restore_point=3 * SIZE,
                spans=ON_TIMELINE_1).base.name == "base_old"
    with pytest.raises(ConfigError, match="--to-name: restore point 'before-migration' at "
                                          "0/2000100 is before the oldest base backup's end"):
        plan(wal, BASES, target, restore_point=2 * SIZE + 256, spans=ON_TIMELINE_1)


def test_an_empty_restore_point_name_is_refused() -> None:
    with pytest.raises(ConfigError, match="--to-name: the name is empty"):
        RecoveryTarget(name="")


# Recovered to a time in segment 6 and started: timeline 2 forks there. Timeline 1 went on
# (a base backup was taken on it after that time, before the recovery); timeline 2 has its
# own base backup since, which ends at a lower LSN than the abandoned one.
FORK = 6 * SIZE + 1000
FORKED_WAL = [*segments(1, 2, 9), Wal("00000002.history", 2, 0, history=True),
              *segments(2, 6, 8, partial_last=True)]
ABANDONED = Base("base_abandoned", 1, 8 * SIZE + 40, 8 * SIZE + 400, T0 + timedelta(hours=2))
ON_TIMELINE_2 = Base("base_tl2", 2, 7 * SIZE + 40, 7 * SIZE + 400, T0 + timedelta(hours=3))


def test_after_a_point_in_time_recovery_the_abandoned_timelines_base_backup_is_never_chosen(
        ) -> None:
    forked = timeline_spans(2, [(1, FORK)])
    chosen = plan(FORKED_WAL, [*BASES, ABANDONED, ON_TIMELINE_2], RecoveryTarget(),
                  spans=forked)
    assert chosen.base.name == "base_tl2"
    assert [(w.timeline, w.segno) for w in chosen.segments] == [(2, 7), (2, 8)]
    # Before timeline 2 has a base backup of its own: the newest before the fork.
    chosen = plan(FORKED_WAL, [*BASES, ABANDONED], RecoveryTarget(), spans=forked)
    assert chosen.base.name == "base_new"
    late = RecoveryTarget(time=T0 + timedelta(hours=5))
    chosen = plan(FORKED_WAL, [*BASES, ABANDONED], late, spans=forked)
    assert chosen.base.name == "base_new"


def test_only_base_backups_off_the_path_is_refused_naming_them() -> None:
    with pytest.raises(JobFailed, match=r"base_abandoned .* not on the path to timeline 2"):
        plan(FORKED_WAL, [ABANDONED], RecoveryTarget(), spans=timeline_spans(2, [(1, FORK)]))


def test_the_path_to_the_newest_timeline_cannot_be_left_out() -> None:
    """plan has no default for it: a caller that skipped reading the newest timeline's history
    file would be told so here, not given a plan that cannot follow the fork."""
    with pytest.raises(TypeError, match="spans"):
        plan(FORKED_WAL, [*BASES, ABANDONED], RecoveryTarget())  # type: ignore[call-arg]

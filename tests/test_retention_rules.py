"""The pure retention selection (backupd.commands.retention_rules): the cases the calendar
test (test_retention_tiers.py) does not isolate, each small enough to read by hand."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from backupd.commands.retention_rules import Candidate, RetentionPolicy, select

NOW = datetime(2027, 1, 12, 12, 0, tzinfo=UTC)


def at(text: str, good: bool = True) -> Candidate:
    moment = datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=UTC)
    return Candidate(f"d_{moment:%Y%m%d_%H%M%S}.sql.gz", moment, good)


def policy(**tiers: int) -> RetentionPolicy:
    return RetentionPolicy(retention_days=0, keep_min=1, **tiers)  # type: ignore[arg-type]


def test_no_tiers_is_retention_as_before() -> None:
    """Tiers at 0: age and keep-min alone decide, as before tiers existed."""
    backups = [at("2027-01-11 02:00"), at("2027-01-10 02:00"), at("2027-01-02 02:00")]
    chosen = select(backups, RetentionPolicy(retention_days=7, keep_min=1), NOW)
    assert chosen.keep == [backups[0].name, backups[1].name]
    assert chosen.delete == [backups[2].name]


def test_a_day_is_a_day_in_tz() -> None:
    """23:30 UTC on the 10th is the 11th in Berlin: with the 11th's backup, one day."""
    backups = [at("2027-01-11 09:00"), at("2027-01-10 23:30"), at("2027-01-10 09:00")]
    utc = select(backups, policy(keep_daily=2), NOW)
    berlin = select(backups, RetentionPolicy(0, 1, keep_daily=2, zone=ZoneInfo("Europe/Berlin")),
                    NOW)
    assert utc.keep == [backups[0].name, backups[1].name]
    assert berlin.keep == [backups[0].name, backups[2].name]


def test_only_good_backups_count_for_a_tier() -> None:
    """An unverified backup is no day's backup: the day's newest good one is kept instead
    (and, older than the unverified one, also as the last good backup before it)."""
    bad = at("2027-01-11 09:00", good=False)
    backups = [at("2027-01-11 10:00"), bad, at("2027-01-11 08:00"), at("2027-01-10 08:00")]
    chosen = select(backups, policy(keep_daily=2), NOW)
    assert bad.name in chosen.delete
    assert set(chosen.keep) == {backups[0].name, backups[2].name, backups[3].name}
    reasons = dict((d.name, d.reasons) for d in chosen.decisions)
    assert any("last good backup before" in r for r in reasons[backups[2].name])
    assert any(r.startswith("daily 2027-01-10") for r in reasons[backups[3].name])


def test_iso_weeks_span_the_new_year() -> None:
    """2026-12-31 and 2027-01-03 are both in ISO week 2026-W53: one weekly, not two."""
    backups = [at("2027-01-04 09:00"), at("2027-01-03 09:00"), at("2026-12-31 09:00"),
               at("2026-12-27 09:00")]
    chosen = select(backups, policy(keep_weekly=3), NOW)
    assert chosen.keep == [backups[0].name, backups[1].name, backups[3].name]
    reasons = dict((d.name, d.reasons) for d in chosen.decisions)
    assert "weekly 2026-W53 (DB_BACKUP_KEEP_WEEKLY=3)" in reasons[backups[1].name]


def test_periods_without_a_backup_cost_nothing() -> None:
    """keep_monthly=3 over backups in March, January and October: all three, the empty
    months in between do not use up the count."""
    backups = [at("2027-03-01 09:00"), at("2027-01-15 09:00"), at("2027-01-01 09:00"),
               at("2026-10-20 09:00"), at("2026-09-20 09:00")]
    chosen = select(backups, policy(keep_monthly=3), datetime(2027, 3, 2, tzinfo=UTC))
    assert chosen.keep == [backups[0].name, backups[1].name, backups[3].name]


def test_the_safety_rules_are_what_must_be_proven() -> None:
    """keep-min and last-good are re-checked before a delete; tier keeps are not (they are
    trusted per the manifest, so a year of monthlies is not re-read every run)."""
    backups = [at("2027-01-11 09:00"), at("2026-12-11 09:00"), at("2026-11-11 09:00")]
    chosen = select(backups, policy(keep_monthly=3), NOW)
    assert chosen.keep == [b.name for b in backups]
    assert chosen.relied_on == {backups[0].name}


def test_a_tier_keeps_young_unverified_backups_only_by_age() -> None:
    fresh_bad = Candidate("d_x.sql.gz", NOW - timedelta(hours=1), good=False)
    chosen = select([fresh_bad], RetentionPolicy(1, 1, keep_daily=5), NOW)
    assert chosen.keep == [fresh_bad.name]
    assert chosen.decisions[0].reasons == ("younger than DB_BACKUP_RETENTION_DAYS=1",)


def test_a_legacy_backup_counts_for_keep_min_only_after_the_verified_ones() -> None:
    """A newer good backup without a manifest (the old scripts') never pushes an older
    verified one out of the minimum kept; with keep-min 2 both are kept."""
    verified = at("2020-01-01 02:00")
    legacy = Candidate("d_20200301_020000.sql.gz", datetime(2020, 3, 1, 2, tzinfo=UTC), True,
                       legacy=True)
    assert select([legacy, verified], policy(), NOW).keep == [verified.name]
    both = RetentionPolicy(retention_days=0, keep_min=2)
    assert select([legacy, verified], both, NOW).keep == [legacy.name, verified.name]

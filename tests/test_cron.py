"""cron(8) expressions as the daemon reads them: Sunday is 0 and 7, day-of-month OR
day-of-week, DST changes in a real zone, and one clear error line per bad value."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from backupd.daemon.cron import CronSchedule, parse_cron, parse_zone
from backupd.errors import ConfigError

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def firings(schedule: CronSchedule, start: datetime, count: int) -> list[datetime]:
    """The next ``count`` firings from ``start``, driven through the APScheduler trigger
    exactly as the scheduler drives it (previous fire time -> next)."""
    trigger = schedule.trigger()
    out: list[datetime] = []
    previous = None
    for _ in range(count):
        fire = trigger.get_next_fire_time(previous, start)
        assert fire is not None
        out.append(fire)
        previous = fire
    return out


def local(moments: list[datetime], zone: ZoneInfo) -> list[str]:
    return [m.astimezone(zone).strftime("%a %d %H:%M%z") for m in moments]


@pytest.mark.parametrize("dow", ["0", "7", "sun", "SUN", "0,7"])
def test_sunday_is_zero_and_seven(dow: str) -> None:
    schedule = parse_cron(f"0 3 * * {dow}", "BACKUP_SCHEDULE", UTC)
    # 2024-01-01 is a Monday.
    fires = firings(schedule, datetime(2024, 1, 1, tzinfo=UTC), 3)
    assert [f.strftime("%A %Y-%m-%d %H:%M") for f in fires] == [
        "Sunday 2024-01-07 03:00", "Sunday 2024-01-14 03:00", "Sunday 2024-01-21 03:00"]


def test_weekday_ranges_use_cron_numbering() -> None:
    weekdays = parse_cron("0 3 * * 1-5", "BACKUP_SCHEDULE", UTC)
    distinct = {f.strftime("%a") for f in firings(weekdays, datetime(2024, 1, 1, tzinfo=UTC), 10)}
    assert distinct == {"Mon", "Tue", "Wed", "Thu", "Fri"}
    weekend = parse_cron("0 3 * * 6-7", "BACKUP_SCHEDULE", UTC)
    days = [f.strftime("%a") for f in firings(weekend, datetime(2024, 1, 1, tzinfo=UTC), 4)]
    assert days == ["Sat", "Sun", "Sat", "Sun"]
    fri_to_sun = parse_cron("0 3 * * 5-7", "BACKUP_SCHEDULE", UTC)
    days = [f.strftime("%a") for f in firings(fri_to_sun, datetime(2024, 1, 1, tzinfo=UTC), 3)]
    assert days == ["Fri", "Sat", "Sun"]
    every_other = parse_cron("0 3 * * */2", "BACKUP_SCHEDULE", UTC)  # 0,2,4,6 = Sun,Tue,Thu,Sat
    days = [f.strftime("%a") for f in firings(every_other, datetime(2024, 1, 1, tzinfo=UTC), 4)]
    assert days == ["Tue", "Thu", "Sat", "Sun"]


def test_day_of_month_or_day_of_week_as_in_cron() -> None:
    # cron(8): both restricted -> either matches (the 13th, and every Friday).
    schedule = parse_cron("0 2 13 * 5", "BACKUP_SCHEDULE", UTC)
    fires = firings(schedule, datetime(2024, 1, 1, tzinfo=UTC), 4)
    assert [f.strftime("%a %d") for f in fires] == ["Fri 05", "Fri 12", "Sat 13", "Fri 19"]
    # Only one restricted: that one alone.
    schedule = parse_cron("0 2 13 * *", "BACKUP_SCHEDULE", UTC)
    assert [f.strftime("%d %b") for f in firings(schedule, datetime(2024, 1, 1, tzinfo=UTC), 2)] \
        == ["13 Jan", "13 Feb"]


def test_schedule_runs_in_the_given_zone() -> None:
    schedule = parse_cron("0 2 * * *", "BACKUP_SCHEDULE", BERLIN)
    fire = firings(schedule, datetime(2024, 1, 10, 12, tzinfo=UTC), 1)[0]
    assert fire == datetime(2024, 1, 11, 1, 0, tzinfo=UTC)  # 02:00 CET


def test_dst_spring_forward_runs_a_skipped_fixed_time_once_at_the_change() -> None:
    # Europe/Berlin, 2024-03-31: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist.
    schedule = parse_cron("30 2 * * *", "BACKUP_SCHEDULE", BERLIN)
    fires = firings(schedule, datetime(2024, 3, 30, 12, tzinfo=BERLIN), 3)
    assert local(fires, BERLIN) == ["Sun 31 03:00+0200",
                                    "Mon 01 02:30+0200", "Tue 02 02:30+0200"]
    # A wildcard-hour job does not catch up the skipped hour (cron(8)); it goes on at 03:xx.
    hourly = parse_cron("30 * * * *", "BACKUP_SCHEDULE", BERLIN)
    fires = firings(hourly, datetime(2024, 3, 31, 0, 45, tzinfo=BERLIN), 3)
    assert local(fires, BERLIN) == ["Sun 31 01:30+0100", "Sun 31 03:30+0200", "Sun 31 04:30+0200"]


def test_dst_fall_back_runs_a_fixed_time_once() -> None:
    # Europe/Berlin, 2024-10-27: 03:00 CEST falls back to 02:00 CET; 02:30 happens twice.
    schedule = parse_cron("30 2 * * *", "BACKUP_SCHEDULE", BERLIN)
    fires = firings(schedule, datetime(2024, 10, 26, 12, tzinfo=BERLIN), 3)
    assert local(fires, BERLIN) == ["Sun 27 02:30+0200", "Mon 28 02:30+0100", "Tue 29 02:30+0100"]
    assert all(later > earlier for earlier, later in itertools.pairwise(fires))


def test_dst_fall_back_wildcard_job_runs_in_both_passes_and_never_goes_backwards() -> None:
    schedule = parse_cron("*/30 * * * *", "BACKUP_SCHEDULE", BERLIN)
    fires = firings(schedule, datetime(2024, 10, 27, 1, 45, tzinfo=BERLIN), 5)
    assert local(fires, BERLIN) == ["Sun 27 02:00+0200", "Sun 27 02:30+0200",
                                    "Sun 27 02:00+0100", "Sun 27 02:30+0100", "Sun 27 03:00+0100"]
    gaps = {later - earlier for earlier, later in itertools.pairwise(fires)}
    assert gaps == {timedelta(minutes=30)}


def test_dst_new_york_spring_forward() -> None:
    schedule = parse_cron("15 2 * * *", "BACKUP_SCHEDULE", NEW_YORK)
    fires = firings(schedule, datetime(2024, 3, 9, 12, tzinfo=NEW_YORK), 3)
    assert local(fires, NEW_YORK) == ["Sun 10 03:00-0400", "Mon 11 02:15-0400",
                                      "Tue 12 02:15-0400"]


def test_previous_firing_and_interval() -> None:
    schedule = parse_cron("0 2 * * *", "BACKUP_SCHEDULE", UTC)
    now = datetime(2024, 5, 5, 10, 0, tzinfo=UTC)
    assert schedule.previous_at_or_before(now) == datetime(2024, 5, 5, 2, 0, tzinfo=UTC)
    assert schedule.previous_at_or_before(datetime(2024, 5, 5, 2, 0, tzinfo=UTC)) == \
        datetime(2024, 5, 5, 2, 0, tzinfo=UTC)
    assert schedule.interval_around(now) == timedelta(days=1)
    # Across the fall-back night a daily job's interval is 25 hours of real time.
    berlin = parse_cron("0 4 * * *", "BACKUP_SCHEDULE", BERLIN)
    assert berlin.interval_around(datetime(2024, 10, 27, 12, tzinfo=BERLIN)) == \
        timedelta(hours=24)
    assert berlin.interval_around(datetime(2024, 10, 27, 3, tzinfo=BERLIN)) == \
        timedelta(hours=25)


def test_macros_and_month_names() -> None:
    assert firings(parse_cron("@daily", "BACKUP_SCHEDULE", UTC),
                   datetime(2024, 1, 1, 5, tzinfo=UTC), 1)[0] == datetime(2024, 1, 2, tzinfo=UTC)
    fire = firings(parse_cron("0 0 1 jun *", "BACKUP_SCHEDULE", UTC),
                   datetime(2024, 1, 1, tzinfo=UTC), 1)[0]
    assert fire == datetime(2024, 6, 1, tzinfo=UTC)


def test_seconds_field_only_when_enabled() -> None:
    with pytest.raises(ConfigError, match="SCHEDULE_SECONDS_FIELD=1"):
        parse_cron("*/5 * * * * *", "BACKUP_SCHEDULE", UTC)
    schedule = parse_cron("*/5 * * * * *", "BACKUP_SCHEDULE", UTC, allow_seconds=True)
    fires = firings(schedule, datetime(2024, 1, 1, 0, 0, 1, tzinfo=UTC), 2)
    assert [f.second for f in fires] == [5, 10]


@pytest.mark.parametrize(("expression", "fragment"), [
    ("0 2 * *", "has 4 fields"),
    ("0 2 * * * * *", "has 7 fields"),
    ("61 2 * * *", "61"),
    ("0 24 * * *", "24"),
    ("0 2 * * 8", "day-of-week"),
    ("0 2 * * 5-1", "runs backwards"),
    ("0 2 L * *", "not cron syntax"),
    ("0 2 ? * *", "not cron syntax"),
    ("0 0 30 2 *", "never fires"),
    ("rm -rf /", "fields"),
])
def test_bad_expressions_name_the_setting(expression: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_cron(expression, "VERIFY_SCHEDULE", UTC)
    message = str(info.value)
    assert message.startswith("VERIFY_SCHEDULE: ")
    assert fragment in message
    assert "\n" not in message


@pytest.mark.parametrize("name", ["Mars/Olympus", "../../etc/passwd", "", "Europe/"])
def test_bad_zone_names_the_setting(name: str) -> None:
    with pytest.raises(ConfigError, match=r"^TZ: .* is not a known time zone"):
        parse_zone(name)


def test_zone_accepts_glibc_colon_prefix() -> None:
    assert parse_zone(":Europe/Berlin") == BERLIN

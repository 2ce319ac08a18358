"""Cron expressions as cron(8) reads them, turned into APScheduler 3 triggers.

Three places where APScheduler 3's own ``CronTrigger`` differs from cron(8), and
which this module corrects, because users copy their crontab lines unchanged:

* Day of week: cron counts 0 and 7 as Sunday; APScheduler counts 0 as Monday.
  The field is parsed here and handed to APScheduler in its own numbering.
* Day of month AND day of week both restricted: cron runs when EITHER matches;
  APScheduler would require both.
* Daylight-saving transitions: cron runs a fixed-time job once when the wall clock
  repeats an hour, and soon after the change when the clock skips it; APScheduler
  3.11 runs it twice in the repeated hour (and can even step backwards in time).

So the wall-clock matching is done by APScheduler on a "floating" clock (local time
treated as if it were UTC), and this module maps each wall-clock match to real
instants in the schedule's zone with cron(8)'s rules.

A sixth, leading seconds field is accepted only with ``SCHEDULE_SECONDS_FIELD=1``
(meant for tests): a 6-field line in a crontab is otherwise easily a year-last
expression that would silently mean something else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger

from backupd.errors import ConfigError
from backupd.settings.zone import parse_zone as parse_zone  # where TZ is read: settings

FIELDS_5 = ("minute", "hour", "day", "month", "day_of_week")
FIELDS_6 = ("second", *FIELDS_5)
FIELD_LABELS = {
    "second": "second", "minute": "minute", "hour": "hour", "day": "day-of-month",
    "month": "month", "day_of_week": "day-of-week",
}
MACROS = {
    "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
DAY_NAMES = {name: number for number, name in
             enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
# One element of a comma list: *, n, a-b, each optionally /step; names only where cron has them.
_NUMERIC_ELEMENT = re.compile(r"^(?:\*|\d+(?:-\d+)?)(?:/\d+)?$")
_NAMED_ELEMENT = re.compile(r"^(?:\*|(?:\d+|[a-z]{3})(?:-(?:\d+|[a-z]{3}))?)(?:/\d+)?$")
# How far a search looks ahead before declaring that an expression never fires.
_HORIZON = timedelta(days=366 * 8)
# The largest jump of a zone's UTC offset that cron(8) treats as a DST change.
_MAX_SHIFT = timedelta(hours=3)
_SECOND = timedelta(seconds=1)


@dataclass(frozen=True)
class CronSchedule:
    """One cron expression in one zone; answers "when next" and "when last"."""

    expression: str
    zone: tzinfo
    # Floating-clock triggers (naive wall time as UTC); two when day-of-month and
    # day-of-week are both restricted (cron's OR), else one.
    _wall_triggers: tuple[CronTrigger, ...]
    # cron(8)'s DST rules apply to fixed-time jobs only (no '*' in minute or hour).
    fixed_time: bool

    def next_at_or_after(self, moment: datetime) -> datetime | None:
        """The first instant >= ``moment`` at which this schedule fires, in UTC.

        Everything is returned and compared in UTC: aware datetimes sharing a tzinfo
        compare and add by wall clock and ignore ``fold``, which goes wrong exactly
        around DST changes (adding a second to 02:30 of the second pass lands in the
        first one). Convert to ``zone`` only for display.
        """
        start = moment.astimezone(UTC)
        local = start.astimezone(self.zone)
        # Near a backward change the wall clock will repeat: wall times before
        # ``moment``'s can still map to instants after it, so start earlier.
        ahead = (start + _MAX_SHIFT).astimezone(self.zone)
        lookback = max(timedelta(0), _utc_offset(local) - _utc_offset(ahead))
        wall = _naive(local) - lookback
        limit = _naive(local) + _HORIZON
        best: datetime | None = None
        best_wall: datetime | None = None
        while wall <= limit:
            candidate = self._next_wall(wall)
            if candidate is None or (best_wall is not None and candidate > best_wall + lookback):
                break
            for instant in self._instants(candidate):
                if instant >= start and (best is None or instant < best):
                    best, best_wall = instant, candidate
            wall = candidate + _SECOND
        return best

    def previous_at_or_before(self, moment: datetime,
                              horizon: timedelta = _HORIZON) -> datetime | None:
        """The last instant <= ``moment`` at which this schedule fired, in UTC."""
        end = moment.astimezone(UTC)
        window = _SECOND
        while window <= horizon * 2:
            found = self.next_at_or_after(end - window)
            if found is not None and found <= end:
                # Walk forward to the last firing not after ``moment``.
                while (later := self.next_at_or_after(found + _SECOND)) is not None \
                        and later <= end:
                    found = later
                return found
            window *= 2
        return None

    def interval_around(self, moment: datetime) -> timedelta | None:
        """The gap between the last firing at or before ``moment`` and the next one."""
        before = self.previous_at_or_before(moment)
        if before is None:
            return None
        after = self.next_at_or_after(before + _SECOND)
        return after - before if after is not None else None

    def trigger(self) -> ScheduleTrigger:
        return ScheduleTrigger(self)

    def _next_wall(self, wall: datetime) -> datetime | None:
        start = wall.replace(tzinfo=UTC)
        found = [t.get_next_fire_time(None, start) for t in self._wall_triggers]
        times = [f for f in found if f is not None]
        return min(times).replace(tzinfo=None) if times else None

    def _instants(self, wall: datetime) -> list[datetime]:
        """The real instants (UTC) a wall-clock match stands for, per cron(8)."""
        first = wall.replace(tzinfo=self.zone, fold=0).astimezone(UTC)
        second = wall.replace(tzinfo=self.zone, fold=1).astimezone(UTC)
        if _naive(first.astimezone(self.zone)) != wall:
            # Skipped by a forward change: a fixed-time job runs at the change.
            return [self._transition(min(first, second), max(first, second))] \
                if self.fixed_time else []
        if first != second:
            # Repeated by a backward change: a fixed-time job runs only the first time.
            return [first] if self.fixed_time else [first, second]
        return [first]

    def _transition(self, low: datetime, high: datetime) -> datetime:
        """The instant (UTC) the zone's offset changes between two instants, to the second."""
        old_offset = _utc_offset(low.astimezone(self.zone))
        while high - low > _SECOND:
            middle = low + (high - low) / 2
            middle = middle.replace(microsecond=0)
            if middle <= low:
                break
            if _utc_offset(middle.astimezone(self.zone)) == old_offset:
                low = middle
            else:
                high = middle
        return high


class ScheduleTrigger(BaseTrigger):  # type: ignore[misc]
    """An APScheduler 3 trigger backed by a :class:`CronSchedule`."""

    def __init__(self, schedule: CronSchedule) -> None:
        self.schedule = schedule

    def get_next_fire_time(
        self, previous_fire_time: datetime | None, now: datetime
    ) -> datetime | None:
        # Same contract as APScheduler's CronTrigger: the first firing after the
        # previous one (which the scheduler then treats as due or missed).
        if previous_fire_time is not None:
            start = previous_fire_time.astimezone(UTC) + timedelta(microseconds=1)
        else:
            start = now
        return self.schedule.next_at_or_after(start)

    def __str__(self) -> str:
        return f"cron[{self.schedule.expression!r}, {self.schedule.zone}]"

    def __getstate__(self) -> Any:  # pragma: no cover - only the memory job store is used
        raise TypeError("ScheduleTrigger is not serialisable")


def parse_cron(expression: str, setting: str, zone: tzinfo, *,
               allow_seconds: bool = False) -> CronSchedule:
    """Parse a cron(8) expression, or raise ConfigError naming ``setting``."""
    text = " ".join(expression.lower().split())
    text = MACROS.get(text, text)
    parts = text.split(" ")
    if len(parts) == 6 and allow_seconds:
        names: tuple[str, ...] = FIELDS_6
    elif len(parts) == 5:
        names = FIELDS_5
    else:
        extra = " (a leading seconds field needs SCHEDULE_SECONDS_FIELD=1)" \
            if len(parts) == 6 else ""
        raise ConfigError(
            f"{setting}: {expression!r} has {len(parts)} fields; expected 5 "
            f"(minute hour day-of-month month day-of-week), e.g. '0 2 * * *'{extra}"
        )
    fields = dict(zip(names, parts, strict=True))
    for name, value in fields.items():
        for element in value.split(","):
            pattern = _NAMED_ELEMENT if name in ("month", "day_of_week") else _NUMERIC_ELEMENT
            if not pattern.match(element):
                raise ConfigError(
                    f"{setting}: {FIELD_LABELS[name]} field {value!r} is not cron syntax "
                    "(use *, numbers, a-b ranges, /steps and commas)"
                )
    try:
        dow = _day_of_week(fields["day_of_week"])
    except ValueError as exc:
        raise ConfigError(f"{setting}: day-of-week field {fields['day_of_week']!r}: {exc} "
                          "(0-7, 0 and 7 are Sunday, or sun-sat)") from None
    common = {k: v for k, v in fields.items() if k not in ("day", "day_of_week")}
    common.setdefault("second", "0")
    dom_star = fields["day"].startswith("*")
    dow_star = fields["day_of_week"].startswith("*")
    variants: list[dict[str, str]]
    if not dom_star and not dow_star:
        variants = [{"day": fields["day"]}, {"day_of_week": dow}]  # cron(8): either matches
    else:
        variants = [{"day": fields["day"], "day_of_week": dow}]
    try:
        triggers = tuple(
            CronTrigger(**common, **variant, timezone=UTC)
            for variant in variants
        )
    except ValueError as exc:
        raise ConfigError(f"{setting}: {expression!r}: {exc}") from None
    schedule = CronSchedule(
        expression=expression.strip(), zone=zone, _wall_triggers=triggers,
        fixed_time=not (fields["minute"].startswith("*") or fields["hour"].startswith("*")),
    )
    if schedule.next_at_or_after(datetime.now(UTC)) is None:
        raise ConfigError(f"{setting}: {expression!r} never fires (no such date); "
                          "check the day-of-month and month fields")
    return schedule


def _day_of_week(value: str) -> str:
    """cron's day-of-week field (0/7 = Sunday) in APScheduler's numbering (0 = Monday)."""
    days: set[int] = set()
    for element in value.split(","):
        span, _, step_text = element.partition("/")
        step = int(step_text) if step_text else 1
        if step < 1:
            raise ValueError("a step must be at least 1")
        if span == "*":
            first, last = 0, 6
        else:
            low, _, high = span.partition("-")
            first = _day_number(low)
            last = _day_number(high) if high else (6 if step_text else first)
            if high == "7" or (not high and low == "7" and not step_text):
                last = 7
            if last < first:
                raise ValueError(f"range {span!r} runs backwards")
        days.update(day % 7 for day in range(first, last + 1, step))
    if days == set(range(7)):
        return "*"
    return ",".join(str((day - 1) % 7) for day in sorted(days))


def _day_number(text: str) -> int:
    if text in DAY_NAMES:
        return DAY_NAMES[text]
    if not text.isdigit() or int(text) > 7:
        raise ValueError(f"{text!r} is not a day")
    return int(text)


def _naive(moment: datetime) -> datetime:
    return moment.replace(tzinfo=None, fold=0)


def _utc_offset(moment: datetime) -> timedelta:
    offset = moment.utcoffset()
    return offset if offset is not None else timedelta(0)

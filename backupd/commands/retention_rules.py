"""Which backups retention keeps, and why: the pure selection, no I/O and no settings.

A backup survives if any rule keeps it:

* **age**: taken less than ``retention_days`` ago (good or not, as before tiers existed);
* **keep-min**: one of the newest ``keep_min`` good backups, backupd's verified ones first
  (a legacy backup without a manifest counts only after every one of those);
* **last good before**: the newest good backup older than a backup that is not good, so
  a failed verification never costs the last restorable copy before it;
* **calendar tiers**, restic's ``--keep-daily/--keep-weekly/--keep-monthly``: walking the good
  backups newest first, each tier keeps the first (newest) backup of every new day, ISO week
  or month in ``zone``, until it has kept its count. Periods without a good backup cost
  nothing: ``keep_daily=7`` keeps the newest of the 7 most recent days *that have one*.

"Good" is decided by the caller (verified, not dated in the future, re-checked): only good
backups count for keep-min, the last-good rule and the tiers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo


@dataclass(frozen=True)
class RetentionPolicy:
    retention_days: int
    keep_min: int
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    zone: tzinfo = UTC  # the calendar the tiers count days, weeks and months in (TZ)

    @property
    def has_tiers(self) -> bool:
        return bool(self.keep_daily or self.keep_weekly or self.keep_monthly)

    def describe(self) -> str:
        """The rules in one phrase, for "nothing to delete" lines."""
        text = (f"retention {self.retention_days} days, keeping at least {self.keep_min} "
                "verified backups")
        tiers = [f"{count} {label}" for label, count in
                 (("daily", self.keep_daily), ("weekly", self.keep_weekly),
                  ("monthly", self.keep_monthly)) if count]
        return text + (f" and {', '.join(tiers)}" if tiers else "")


@dataclass(frozen=True)
class Candidate:
    """One backup as retention sees it. ``taken_at`` is timezone-aware."""

    name: str
    taken_at: datetime
    good: bool
    # A good backup without a manifest (the old scripts' file, proven by content only):
    # keep-min counts it only after every verified one, so it never pushes one of those out.
    legacy: bool = False


@dataclass(frozen=True)
class Decision:
    name: str
    reasons: tuple[str, ...]  # every rule that keeps it; empty: it goes

    @property
    def keep(self) -> bool:
        return bool(self.reasons)


@dataclass(frozen=True)
class Selection:
    decisions: tuple[Decision, ...]  # one per candidate, newest first
    # Good backups kept by the safety rules (keep-min, last good before): the ones whose
    # goodness must be proven now before anything is deleted in reliance on them.
    relied_on: frozenset[str]

    @property
    def delete(self) -> list[str]:
        return [d.name for d in self.decisions if not d.keep]

    @property
    def keep(self) -> list[str]:
        return [d.name for d in self.decisions if d.keep]


def select(candidates: Sequence[Candidate], policy: RetentionPolicy, now: datetime) -> Selection:
    """Apply every rule of ``policy`` to ``candidates`` (any order) at ``now``."""
    ordered = sorted(candidates, key=lambda c: (c.taken_at, c.name), reverse=True)
    good = [c for c in ordered if c.good]
    reasons: dict[str, list[str]] = {c.name: [] for c in ordered}
    cutoff = now - timedelta(days=policy.retention_days)
    for candidate in ordered:
        if candidate.taken_at >= cutoff:
            reasons[candidate.name].append(
                f"younger than DB_BACKUP_RETENTION_DAYS={policy.retention_days}")
    relied_on: set[str] = set()
    verified_first = sorted(good, key=lambda c: c.legacy)  # stable: newest first in each
    for candidate in verified_first[: policy.keep_min]:
        reasons[candidate.name].append(f"one of the newest {policy.keep_min} verified backups "
                                       f"(DB_BACKUP_KEEP_MIN={policy.keep_min})")
        relied_on.add(candidate.name)
    for index, candidate in enumerate(ordered):
        if candidate.good:
            continue
        # An unverified (or broken) backup must not lose its last good predecessor.
        older_good = next((c for c in ordered[index + 1 :] if c.good), None)
        if older_good is not None and older_good.name not in relied_on:
            reasons[older_good.name].append(f"last good backup before {candidate.name}")
            relied_on.add(older_good.name)
    for label, setting, count, period in _tiers(policy):
        for candidate, key in _newest_per_period(good, count, period, policy.zone):
            reasons[candidate.name].append(f"{label} {key} ({setting}={count})")
    decisions = tuple(Decision(c.name, tuple(reasons[c.name])) for c in ordered)
    return Selection(decisions, frozenset(relied_on))


Period = Callable[[datetime], str]


def day(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d")


def iso_week(moment: datetime) -> str:
    year, week, _ = moment.isocalendar()
    return f"{year}-W{week:02d}"


def month(moment: datetime) -> str:
    return moment.strftime("%Y-%m")


def _tiers(policy: RetentionPolicy) -> list[tuple[str, str, int, Period]]:
    return [(label, setting, count, period) for label, setting, count, period in (
        ("daily", "DB_BACKUP_KEEP_DAILY", policy.keep_daily, day),
        ("weekly", "DB_BACKUP_KEEP_WEEKLY", policy.keep_weekly, iso_week),
        ("monthly", "DB_BACKUP_KEEP_MONTHLY", policy.keep_monthly, month),
    ) if count > 0]


def _newest_per_period(good: Sequence[Candidate], count: int, period: Period,
                       zone: tzinfo) -> list[tuple[Candidate, str]]:
    """restic's bucket walk: newest first, keep the first backup of each new period."""
    kept: list[tuple[Candidate, str]] = []
    last: str | None = None
    for candidate in good:
        if len(kept) == count:
            break
        key = period(candidate.taken_at.astimezone(zone))
        if key != last:
            kept.append((candidate, key))
            last = key
    return kept

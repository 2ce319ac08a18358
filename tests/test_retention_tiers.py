"""Calendar retention tiers (DB_BACKUP_KEEP_DAILY/WEEKLY/MONTHLY) keep exactly what restic's
``forget --keep-last/--keep-daily/--keep-weekly/--keep-monthly`` keeps for the same history.

The history is months of backups on an irregular calendar (days with none, days with two,
backups near midnight that fall on the next day, week or month in TZ, the ISO year's week
53): a few real backups taken with the clock moved by libfaketime, the rest copies of a
real verified backup under other dates (helpers.backups.calendar). ``backupd prune`` runs
for real, as a subprocess whose clock says "now" is after the last backup. The expected
set comes from ``restic_keeps`` below: restic's own algorithm (restic 0.14's
``ApplyPolicy``), written here independently of backupd's code.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from helpers.backups import backup_files, calendar, take_backup
from helpers.cli import EnvFactory, run_backupd
from helpers.faketime import clock_at
from helpers.offsite import object_keys, s3_env
from helpers.pg import ServerAddress
from helpers.s3server import S3Server

ZONE = "Europe/Berlin"
NOW = datetime(2027, 1, 12, 18, 0, tzinfo=UTC)  # the clock of every prune below
RULES = {"DB_BACKUP_RETENTION_DAYS": "0", "DB_BACKUP_KEEP_MIN": "2",
         "DB_BACKUP_KEEP_DAILY": "6", "DB_BACKUP_KEEP_WEEKLY": "5",
         "DB_BACKUP_KEEP_MONTHLY": "5", "TZ": ZONE}
NAME = re.compile(r"^(?P<db>.+)_(?P<ts>\d{8}_\d{6})\.sql\.gz$")


def history(seed: int) -> list[datetime]:
    """An irregular calendar, Aug 2026 to Jan 2027, about 45 backups (UTC)."""
    rng = random.Random(seed)
    times: set[datetime] = set()
    # Older months: sparse, July empty; 2026-10-31 23:xx UTC is November 1st in Berlin.
    for month, days in ((8, (3, 29)), (9, (14,)), (10, (1, 31)), (11, (2, 15, 30))):
        for day_of_month in days:
            hour = 23 if (month, day_of_month) == (10, 31) else rng.choice((1, 9, 14))
            times.add(datetime(2026, month, day_of_month, hour, rng.randrange(60), tzinfo=UTC))
    # Recent weeks: none, one or two a day, some at 22-23 h UTC (the next day in Berlin);
    # 2026-12-28..2027-01-03 is ISO week 2026-W53.
    day = datetime(2026, 12, 10, tzinfo=UTC)
    while day < datetime(2027, 1, 12, tzinfo=UTC):
        for _ in range(rng.choice((0, 1, 1, 2))):
            times.add(day + timedelta(hours=rng.choice((0, 2, 11, 22, 23)),
                                      minutes=rng.randrange(60), seconds=rng.randrange(60)))
        day += timedelta(days=1)
    return sorted(times)


def taken_at(name: str) -> datetime:
    match = NAME.match(name)
    assert match, name
    return datetime.strptime(match["ts"], "%Y%m%d_%H%M%S").replace(tzinfo=UTC)


@dataclass
class Bucket:
    count: int
    value: Callable[[datetime, int], int]
    last: int | None = None


def restic_keeps(names: list[str], *, last: int, daily: int, weekly: int, monthly: int,
                 zone: str) -> set[str]:
    """restic 0.14's ApplyPolicy: snapshots newest first; each bucket with counts left
    keeps a snapshot whose bucket value differs from the last one it kept."""
    tz = ZoneInfo(zone)
    buckets = [
        Bucket(last, lambda t, nr: nr),
        Bucket(daily, lambda t, nr: t.year * 10000 + t.month * 100 + t.day),
        Bucket(weekly, lambda t, nr: t.isocalendar()[0] * 100 + t.isocalendar()[1]),
        Bucket(monthly, lambda t, nr: t.year * 100 + t.month),
    ]
    keep: set[str] = set()
    for nr, name in enumerate(sorted(names, key=taken_at, reverse=True)):
        local = taken_at(name).astimezone(tz)
        for bucket in buckets:
            if bucket.count > 0:
                value = bucket.value(local, nr)
                if value != bucket.last:
                    keep.add(name)
                    bucket.last = value
                    bucket.count -= 1
    return keep


def expected(names: list[str]) -> set[str]:
    return restic_keeps(names, last=int(RULES["DB_BACKUP_KEEP_MIN"]),
                        daily=int(RULES["DB_BACKUP_KEEP_DAILY"]),
                        weekly=int(RULES["DB_BACKUP_KEEP_WEEKLY"]),
                        monthly=int(RULES["DB_BACKUP_KEEP_MONTHLY"]), zone=ZONE)


def test_the_reference_is_restics_rule_on_a_small_case() -> None:
    """The reference itself, on a case small enough to check by hand: keep-daily 2 keeps the
    newest of the two most recent days *that have a backup* (in Berlin: 23:30 UTC on the
    4th is the 5th)."""
    names = ["d_20260105_100000.sql.gz", "d_20260105_090000.sql.gz",
             "d_20260104_233000.sql.gz", "d_20260101_080000.sql.gz"]
    assert restic_keeps(names, last=0, daily=2, weekly=0, monthly=0, zone="UTC") == {
        "d_20260105_100000.sql.gz", "d_20260104_233000.sql.gz"}
    assert restic_keeps(names, last=0, daily=2, weekly=0, monthly=0, zone=ZONE) == {
        "d_20260105_100000.sql.gz", "d_20260101_080000.sql.gz"}


def test_tiers_keep_exactly_restics_set(
    small_db: str, backupd_env: EnvFactory, backup_dir: Path
) -> None:
    env = backupd_env(small_db, **RULES)
    times = history(seed=17)
    # A few real backups, each taken with the clock at its place in the calendar.
    real: list[Path] = []
    for moment in (times[0], times[len(times) // 2], times[-1]):
        made = take_backup({**env, **clock_at(moment)})
        # The name is backupd's clock at dump start: the faked one.
        assert abs(taken_at(made.name) - moment) < timedelta(minutes=5), made.name
        real.append(made)
    others = [t for t in times if t not in (times[0], times[len(times) // 2], times[-1])]
    calendar(real[-1], others)
    before = backup_files(backup_dir)
    assert len(before) == len(times) >= 36
    keep = expected(before)
    assert 10 < len(keep) < len(before) - 10  # the tiers really thin the history out

    dry = run_backupd(["prune", "--dry-run"], {**env, **clock_at(NOW)})

    assert dry.returncode == 0, dry.stderr
    assert backup_files(backup_dir) == before  # a dry run deletes nothing
    would_delete = set(re.findall(r"^would delete (\S+)$", dry.stdout, re.MULTILINE))
    kept_lines = dict(re.findall(r"^keep (\S+) \(.*?\): (.+)$", dry.stdout, re.MULTILINE))
    assert would_delete == set(before) - keep
    assert set(kept_lines) == keep
    # Each kept backup says which rules keep it; the newest is kept by every tier at once.
    newest = max(before, key=taken_at)
    local = taken_at(newest).astimezone(ZoneInfo(ZONE))
    for reason in ("DB_BACKUP_KEEP_MIN", f"daily {local:%Y-%m-%d}",
                   f"weekly {local.isocalendar()[0]}-W{local.isocalendar()[1]:02d}",
                   f"monthly {local:%Y-%m}"):
        assert reason in kept_lines[newest], kept_lines[newest]
    assert any("weekly 2026-W53" in why for why in kept_lines.values())

    real_run = run_backupd(["prune"], {**env, **clock_at(NOW)})

    assert real_run.returncode == 0, real_run.stderr
    assert set(backup_files(backup_dir)) == keep


def test_tiers_apply_per_database_and_in_s3(
    pg_server: ServerAddress, make_db: Callable[..., str], backupd_env: EnvFactory,
    backup_dir: Path, s3_server: S3Server, s3_bucket: str,
) -> None:
    databases = [make_db(), make_db()]
    offsite = s3_env(s3_server, s3_bucket, prefix="tiers")
    for seed, database in enumerate(databases):
        source = take_backup(backupd_env(database))
        calendar(source, history(seed=seed))
    names = {db: [n for n in backup_files(backup_dir) if n.startswith(f"{db}_")]
             for db in databases}
    env = backupd_env(",".join(databases), DB_BACKUP_GLOBALS="off", **offsite, **RULES)
    uploaded = run_backupd(["upload"], env, timeout=300)
    assert uploaded.returncode == 0, uploaded.stderr
    assert len(object_keys(s3_server, s3_bucket, "tiers/")) == 2 * sum(map(len, names.values()))

    pruned = run_backupd(["prune"], {**env, **clock_at(NOW)}, timeout=300)

    assert pruned.returncode == 0, pruned.stderr
    remote = object_keys(s3_server, s3_bucket, "tiers/")
    for database in databases:
        keep = expected(names[database])
        assert keep != set(names[database])
        assert {n for n in backup_files(backup_dir) if n.startswith(f"{database}_")} == keep
        assert {k.removeprefix("tiers/") for k in remote
                if k.startswith(f"tiers/{database}_") and k.endswith(".sql.gz")} == keep

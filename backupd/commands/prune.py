"""``backupd prune``: the retention sweep.

Deletes this database's backups older than DB_BACKUP_RETENTION_DAYS, but never:
fewer than DB_BACKUP_KEEP_MIN good backups; the newest good backup before an
unverified one; one a calendar tier keeps (DB_BACKUP_KEEP_DAILY/WEEKLY/MONTHLY);
anything that is not one of backupd's own backup files. Which rule keeps what is
``retention_rules.select``; this module feeds it and acts on its decisions.
A "good" backup is verified per its manifest, and its SHA-256 is re-checked
before the sweep relies on it, so a file corrupted on disk never counts. A backup
from the old scripts (no manifest) counts as good once its content verifies in full.
A backup dated in the future (its clock was wrong) never counts as one of the minimum
kept; it is reported, and kept until its date has passed like any other.

Written once for every repository: the offsite one gets the same policy, without the
re-check (that would cost the egress of keep-min backups every run; ``verify --remote``
proves the bytes).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime

from backupd.commands import archive_retention, selection
from backupd.commands.retention_rules import Candidate, RetentionPolicy, select
from backupd.errors import JobFailed, OffsiteError
from backupd.job import JobContext
from backupd.naming import BASE_KIND, DUMP_KIND, GLOBALS_KIND
from backupd.outcomes import PruneDecision, PruneOutcome
from backupd.pipeline.verification import verify_file
from backupd.settings import Settings
from backupd.settings.zone import parse_zone
from backupd.storage.base import BackupEntry, Repository
from backupd.storage.replication import sha256_of

# The kinds of artifact the calendar tiers apply to.
TIERED_KINDS = frozenset({DUMP_KIND, GLOBALS_KIND})


@dataclass
class PrunePlan:
    delete: list[BackupEntry]
    keep: list[BackupEntry]
    # Why each kept backup stays (every rule that keeps it), by name.
    reasons: dict[str, tuple[str, ...]]
    # The good backups the plan relies on (keep-min, last good before): proven before a delete.
    relied_on: frozenset[str]


def retention_policy(settings: Settings, kind: str = DUMP_KIND) -> RetentionPolicy:
    """The rules for one kind of artifact. The calendar tiers are for the dumps and the
    globals that go with them; any other kind (base backups, WAL) has its own retention and
    gets none (docs/backup-and-recovery.md, "Retention tiers")."""
    if kind not in TIERED_KINDS:
        return RetentionPolicy(settings.retention_days, settings.keep_min)
    policy = RetentionPolicy(settings.retention_days, settings.keep_min, settings.keep_daily,
                             settings.keep_weekly, settings.keep_monthly)
    # TZ matters only to the tiers: without them, a TZ that is no IANA name (a POSIX rule
    # such as "CET-1CEST", fine for the old scripts) must not start failing prune.
    return replace(policy, zone=parse_zone(settings.timezone)) if policy.has_tiers else policy


def plan_prune(
    entries: list[BackupEntry],
    policy: RetentionPolicy,
    now: datetime,
    is_good: Iterable[BackupEntry] | None = None,
) -> PrunePlan:
    """Decide what retention deletes (``retention_rules.select``). ``entries`` newest first;
    ``is_good`` overrides which entries count as good (the local store re-checks first)."""
    good_names = ({e.name for e in is_good} if is_good is not None
                  else {e.name for e in entries if e.proven_good(now)})
    chosen = select([Candidate(e.name, e.parsed.taken_at, e.name in good_names,
                               legacy=_from_old_scripts(e)) for e in entries], policy, now)
    by_name = {e.name: e for e in entries}
    reasons = {d.name: d.reasons for d in chosen.decisions if d.keep}
    return PrunePlan([by_name[n] for n in chosen.delete], [by_name[n] for n in chosen.keep],
                     reasons, chosen.relied_on)


def rechecked_plan(
    ctx: JobContext, repository: Repository, entries: list[BackupEntry],
    policy: RetentionPolicy, now: datetime, already_proven: Iterable[str] = (),
) -> PrunePlan:
    """The plan, relying only on backups proven good now: verified ones whose bytes still
    match their manifest, and old-script ones (no manifest) whose content verifies.

    Only the backups the safety rules rely on (keep-min, last good before) are read, not
    every backup nor every one a calendar tier keeps (that would read a year of monthly
    backups on every run; ``verify --all`` proves those): when one turns out bad, it stops
    counting as good, the plan is made again (so an older good backup takes its place), and
    the newly relied-on ones are checked in turn.
    """
    # backupd's own verified backups (checksum recorded at write time) fill the minimum kept
    # first; old-script files, proven only by content, count when there are too few of those
    # (Candidate.legacy).
    candidates = [e for e in entries if not e.from_the_future(now)
                  and (e.verified or _from_old_scripts(e))]
    proven: set[str] = set(already_proven)  # read back in full earlier in this same run
    bad: set[str] = set()
    while True:
        good = [e for e in candidates if e.name not in bad]
        plan = plan_prune(entries, policy, now, is_good=good)
        relied_on = [e for e in good if e.name in plan.relied_on and e.name not in proven]
        if not relied_on:
            return plan
        for entry in relied_on:
            problem = _problem_now(ctx, repository, entry)
            if problem is None:
                proven.add(entry.name)
            else:
                bad.add(entry.name)
                ctx.warn(f"{entry.name} {problem}; not counted as a good backup")


def _from_old_scripts(entry: BackupEntry) -> bool:
    return entry.manifest is None and entry.manifest_error is None


def _problem_now(ctx: JobContext, repository: Repository, entry: BackupEntry) -> str | None:
    if entry.manifest is not None:
        digest = sha256_of(repository, entry.name, ctx.progress)
        return None if digest == entry.manifest.sha256 else "no longer matches its checksum"
    # No checksum to compare with: only reading the whole content proves it.
    with selection.local_file(ctx, repository, entry) as path:
        report = verify_file(path, entry.parsed, None, progress=ctx.progress)
    if not report.ok:
        return f"(no manifest) fails verification: {report.problem}"
    return None if report.content_checked else "(no manifest) cannot be verified here"


def sweep(ctx: JobContext, store: Repository, *, dry_run: bool = False,
          recheck: bool = True, already_proven: Iterable[str] = (),
          database: str | None = None, kind: str = DUMP_KIND) -> list[str]:
    """Apply retention to one repository; returns the names deleted (or that would be).
    ``database``/``kind``: whose artifacts (default POSTGRES_DB's dumps; the globals:
    GLOBALS_DATABASE, GLOBALS_KIND)."""
    settings = ctx.settings
    entries = store.list_backups(database or settings.postgres_db, kind)
    selection.warn_future(ctx, entries)
    now = datetime.now(tz=ctx.result.started_at.tzinfo)
    policy = retention_policy(settings, kind)
    plan = plan_prune(entries, policy, now)
    if plan.delete and recheck:
        # Re-check before trusting: only done when something would be deleted.
        plan = rechecked_plan(ctx, store, entries, policy, now, already_proven)
    _record(ctx, store, entries, plan, dry_run=dry_run)
    why = f"older than {settings.retention_days} days" + (
        ", kept by no tier" if policy.has_tiers else "")
    deleted: list[str] = []
    for entry in plan.delete:
        if dry_run:
            ctx.say(f"would delete {entry.name} from {store.description} "
                    f"(taken {entry.parsed.taken_at:%Y-%m-%d %H:%M} UTC)")
        else:
            store.delete(entry.name)
            ctx.say(f"deleted {entry.name} from {store.description} ({why})")
        deleted.append(entry.name)
    return deleted


def _record(ctx: JobContext, store: Repository, entries: list[BackupEntry], plan: PrunePlan,
            *, dry_run: bool) -> None:
    """Per backup, which rules keep it (or that it goes), in the prune job's outcome; a dry
    run also says it in the log."""
    outcome = ctx.result.outcome
    if not isinstance(outcome, PruneOutcome):
        return  # the sweep after a backup: its result is the backup's
    for entry in entries:
        reasons = list(plan.reasons.get(entry.name, ()))
        outcome.decisions.append(PruneDecision(name=entry.name, repository=store.description,
                                               kept=bool(reasons), reasons=reasons))
        if dry_run and reasons:
            ctx.say(f"keep {entry.name} in {store.description}: {'; '.join(reasons)}")


def sweep_offsite(ctx: JobContext, offsite: Repository | None, *, dry_run: bool = False,
                  strict: bool = False, database: str | None = None,
                  kind: str = DUMP_KIND) -> list[str]:
    """The same retention on the offsite repository; returns the locations deleted. A copy
    counts as good per its manifest and its size there. With ``strict`` a failure of the
    offsite repository fails the job, else it warns (a backup run must not fail for it)."""
    if offsite is None:
        return []
    try:
        names = sweep(ctx, offsite, dry_run=dry_run, recheck=False, database=database,
                      kind=kind)
    except OffsiteError as exc:
        if strict:
            raise JobFailed(f"retention on {offsite.description} failed: {exc}") from None
        ctx.warn(f"retention on {offsite.description} skipped: {exc}")
        return []
    return [offsite.location(name) for name in names]


def run(ctx: JobContext, *, dry_run: bool = False) -> None:
    offsite = ctx.repos.offsite()  # bad S3 settings: exit 2 before anything is deleted
    ctx.store.prepare()
    outcome = ctx.result.outcome = PruneOutcome(dry_run=dry_run)
    names: list[str] = []
    judged_base_backups = False
    # Each database on its own (and the globals): DB_BACKUP_KEEP_MIN is per database.
    for database, kind in selection.artifact_sets(ctx.settings, ctx.store):
        if kind == BASE_KIND:
            # Base backups and the WAL they need: BASEBACKUP_KEEP, BASEBACKUP_MAX_AGE_DAYS.
            names += archive_retention.apply(ctx, offsite, dry_run=dry_run, strict=True)
            judged_base_backups = True
            continue
        names += sweep(ctx, ctx.store, dry_run=dry_run, database=database, kind=kind)
        # The same policy offsite (this database's own backups under the prefix only).
        names += sweep_offsite(ctx, offsite, dry_run=dry_run, strict=True, database=database,
                               kind=kind)
    # A dry run deleted nothing: its names must never count (summary, Slack, metrics).
    if dry_run:
        outcome.would_delete = names
    else:
        ctx.result.deleted = names
    if not names:
        # Every policy that judged something: the line must not leave the base backups' out.
        policies = retention_policy(ctx.settings).describe()
        if judged_base_backups:
            policies = (f"dumps: {policies}; base backups: "
                        f"{archive_retention.describe_policy(ctx.settings)}")
        ctx.say(f"retention: nothing to delete ({policies})")

"""``backupd recover``: a data directory recovered to a point in time from the WAL archive.

1. The target directory is checked first (empty, not a live server's; exit 2, untouched).
2. The plan, from the archive's listing alone (:mod:`backupd.archive.recovery`; and the
   newest timeline's history file): the newest base backup on the path to the newest
   timeline that ends before the target and every WAL file from its start to the
   archive's end, without a gap. A gap or an impossible target fails here, before writing.
3. The WAL is copied and the base backup unpacked into a staging directory inside the
   target (:mod:`backupd.archive.recovery_dir`); the in-progress partial segment is copied
   under its completed name (zero-padded), so a recover to the end holds every commit the
   archive received. For ``--to-name`` the WAL (from the oldest base backup on) comes
   first: the restore points in it (:mod:`backupd.archive.restore_points`) decide the base
   backup, and a name that is not there exactly once is refused before it is unpacked.
4. The recovery settings are written, and the staging directory's entries are moved up,
   ``PG_VERSION`` last: until then no server starts on the directory.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from backupd.archive import recovery_dir, restore_points
from backupd.archive.continuity import history_to_read, path_to_newest
from backupd.archive.recovery import (
    RecoveryPlan,
    RecoverySource,
    RecoveryTarget,
    plan,
    require_identity,
)
from backupd.archive.waldump import data_major, newest_commit, waldump_for
from backupd.cancel import CancelToken
from backupd.configs import age_key_files
from backupd.errors import ConfigError
from backupd.job import JobContext
from backupd.outcomes import RecoverOutcome
from backupd.pipeline.clients import missing_server_tools


@dataclass(frozen=True)
class RecoverOptions:
    owner: tuple[int, int] | None = None
    force: bool = False


def run(ctx: JobContext, target_dir: Path, target: RecoveryTarget, *, from_s3: bool = False,
        options: RecoverOptions | None = None) -> None:
    options = options or RecoverOptions()
    target_dir = target_dir.absolute()
    outcome = RecoverOutcome(target_dir=str(target_dir), target=target.describe())
    ctx.result.outcome = outcome
    # Before the archive is read:
    recovery_dir.check_target(target_dir, force=options.force, owner=options.owner)
    from backupd.archive.recovery_source import archive_source

    source = archive_source(ctx.repos, age_key_files(ctx.settings), from_s3=from_s3)
    recover_into(ctx, source, target_dir, target, options, outcome)
    ctx.say(f"recovered into {target_dir}; start a PostgreSQL server of the same major on it "
            "(pg_ctl -D DIR start, or the compose postgres service): it replays the WAL to "
            "the target, then promotes")


def recover_into(ctx: JobContext, source: RecoverySource, target_dir: Path,
                 target: RecoveryTarget, options: RecoverOptions,
                 outcome: RecoverOutcome) -> RecoveryPlan:
    """Plan, then write ``target_dir`` (checked already), reporting into ``outcome``. Also
    the PITR drill's recovery."""
    started = time.monotonic()
    wal, backups = source.wal(), source.base_backups()
    # Read once, when the source was made (a set file without a usable identity failed
    # there), for every check below and every file the source decrypts.
    identities = source.identities
    # The identity for exactly the files read, each check before any of them is fetched:
    # older encrypted files an archive still holds need none when they are not read.
    require_identity(identities, history_to_read(wal))
    for note in source.left_out:
        ctx.warn(note)
    spans = path_to_newest(wal, source.fetch)
    chosen = plan(wal, backups, target, spans=spans)
    # For --to-name the base backup is chosen once the WAL is read: checked then.
    require_identity(identities, [*([chosen.base] if target.name is None else []),
                                  *chosen.wal_files])
    if target.name is None:
        # For --to-name the WAL decides the base backup first (and a name it refuses is
        # then the one line said).
        _report(ctx, chosen, outcome)
    if options.force and recovery_dir.clean_incomplete(target_dir):
        ctx.warn(f"--force: removed the incomplete recover left in {target_dir}")
    try:
        with recovery_dir.staging(target_dir) as stage:
            # The WAL first: for --to-name it says where the restore point is, and so which
            # base backup to unpack (and whether to go on at all).
            wal_dir = stage / recovery_dir.WAL_COPY_NAME
            phase = time.monotonic()
            outcome.wal_bytes = copy_wal(source, chosen, wal_dir, ctx.cancel)
            if target.name is not None:
                chosen = to_restore_point(ctx, chosen, wal_dir, plan_at=lambda lsn: plan(
                    wal, backups, target, restore_point=lsn, spans=spans))
                outcome.wal_bytes = sum((wal_dir / chosen.file_name(w)).stat().st_size
                                        for w in chosen.segments)
                _report(ctx, chosen, outcome)
                require_identity(identities, [chosen.base])  # before it is unpacked
            ctx.say(f"{len(chosen.segments)} WAL files ({outcome.wal_bytes / 2**20:.0f} MiB) "
                    f"copied and checked in {time.monotonic() - phase:.1f}s")
            phase = time.monotonic()
            stale = source.extract(chosen.base, stage, ctx.cancel,
                                   beside=frozenset({recovery_dir.WAL_COPY_NAME}))
            ctx.say(f"base backup {chosen.base.name} extracted and checked in "
                    f"{time.monotonic() - phase:.1f}s")
            for name in sorted(stale):
                ctx.warn(f"the base backup holds a {name}/ left by an earlier recover: not "
                         "unpacked (remove it from the source server's data directory)")
            waldump = waldump_for(stage, ctx.settings.pg_server_root)
            if waldump is None and chosen.target.time is not None:
                ctx.warn(unchecked_time(chosen.target.time, data_major(stage),
                                        ctx.settings.pg_server_root, target_dir))
            check_time_reachable(chosen, wal_dir, waldump)
            recovery_dir.prepare(stage, target, f"base backup {chosen.base.name}, target "
                                 f"{target.describe()}")
            ctx.cancel.raise_if_cancelled()
            recovery_dir.complete(target_dir, stage, options.owner)
    except OSError as exc:  # reading the archive fails naming it: this is writing
        raise recovery_dir.write_failed(target_dir, exc) from None
    outcome.recover_seconds = round(time.monotonic() - started, 3)
    return chosen


def _report(ctx: JobContext, chosen: RecoveryPlan, outcome: RecoverOutcome) -> None:
    for line in chosen.describe():
        ctx.say(line)
    outcome.base_backup = chosen.base.name
    outcome.wal_first = chosen.segments[0].name
    outcome.wal_last = chosen.segments[-1].name
    outcome.wal_segments = len(chosen.segments)


def to_restore_point(ctx: JobContext, chosen: RecoveryPlan, wal_dir: Path,
                     plan_at: Callable[[int], RecoveryPlan]) -> RecoveryPlan:
    """The plan for ``chosen.target.name``, whose every WAL file (from the oldest base
    backup on) is in ``wal_dir``: refused unless the name is there exactly once, since
    PostgreSQL stops at the first of the name; then from the newest base backup before that
    one (``plan_at`` its LSN), the WAL before that backup's start removed again."""
    name = chosen.target.name
    assert name is not None
    root = ctx.settings.pg_server_root
    first = wal_dir / chosen.file_name(chosen.segments[0])
    waldump = restore_points.waldump_reading(first, root)
    if waldump is None:
        # Unchecked, a name twice would stop replay at the first, and one not there would
        # replay everything, then keep the server from starting.
        raise ConfigError(f"--to-name: restore point {name!r} cannot be checked to be in the "
                          "archive exactly once without the archive's pg_waldump: "
                          f"{restore_points.missing_waldump(first, root)}; or recover with "
                          f"--to-lsn at the LSN `backupd mark {name}` printed (in "
                          "DB_BACKUP_DIR/mark_log.txt)")
    points = restore_points.find(chosen, wal_dir, waldump, name)
    if not points:
        raise ConfigError(f"--to-name: no restore point {name!r} in the archive's WAL "
                          f"({chosen.wal_range}); give a name `backupd mark` made, or "
                          "recover with --to-time or --to-lsn")
    if len(points) > 1:
        raise ConfigError(
            f"--to-name: {len(points)} restore points are named {name!r} in the archive, at "
            + ", ".join(p.describe() for p in points) + "; recovery would stop at the first: "
            "recover with --to-lsn LSN of the one you mean instead")
    point = points[0]
    ctx.say(f"restore point {name!r} at {point.describe()}")
    final = plan_at(point.lsn)
    needed = {final.file_name(w) for w in final.segments} | {h.name for h in final.history}
    for path in wal_dir.iterdir():
        if path.name not in needed:
            path.unlink()
    return final


def copy_wal(source: RecoverySource, chosen: RecoveryPlan, wal_dir: Path,
             cancel: CancelToken) -> int:
    """Every planned WAL file into ``wal_dir`` under the name replay asks for; bytes copied."""
    wal_dir.mkdir(mode=0o700)
    total = 0
    for history in chosen.history:
        source.fetch(history, wal_dir / history.name)
    for wal in chosen.segments:
        cancel.raise_if_cancelled()
        dest = wal_dir / chosen.file_name(wal)
        source.fetch_segment(wal, dest, chosen.segment_size)
        total += dest.stat().st_size
    return total


def unchecked_time(when: datetime, major: int, server_root: Path, target_dir: Path) -> str:
    """The warning for a --to-time that cannot be checked against the archive's newest commit.
    Not refused, as an unchecked --to-name is: a time before that commit (the usual case)
    recovers as asked, and one after it fails loudly at the server's start, with a way out
    that needs no second recover (tests/test_recover.py proves both)."""
    missing = missing_server_tools(("pg_waldump",), major, server_root) or \
        f"no pg_waldump {major} in {server_root}"
    return (f"--to-time {when.isoformat()} not checked against the archive's newest commit: "
            f"{missing}. If it is after that commit, the recovered server replays all the WAL "
            "and then refuses to start (recovery ended before configured recovery target was "
            f"reached): add the line recovery_target_time = '' to "
            f"{target_dir / 'postgresql.auto.conf'} and start it again to recover to the "
            "archive's end, or recover again with an earlier --to-time")


def check_time_reachable(chosen: RecoveryPlan, wal_dir: Path, waldump: Path | None) -> None:
    """A ``--to-time`` after the archive's newest commit is never reached: the server would
    replay all and refuse to start. Refused here (the staging directory goes with it)."""
    when = chosen.target.time
    if when is None:
        return
    if when > datetime.now(UTC):
        raise ConfigError(f"--to-time: {when.isoformat()} is in the future, after the "
                          "archive's end; recover without --to-time for everything it holds")
    commit = newest_commit(wal_dir, chosen.newest_files(3), chosen.segments[-1].timeline,
                           waldump)
    if commit is not None and commit.time < when:
        raise ConfigError(
            f"--to-time: {when.isoformat()} is after the archive's end (its newest commit "
            f"is at {commit.time.isoformat()}); recover without --to-time for everything the "
            "archive holds")


"""Point-in-time recovery, planned: which base backup, which WAL, and is it all there.

Everything here decides from the archive's *listing* alone (and the newest timeline's
history file), before a byte is written: the newest base backup on the path to the newest
timeline that ends before the target, and every WAL segment from that backup's start to
the archive's end, without a gap. :mod:`backupd.archive.recovery_dir` then writes.

The archive is read through :class:`RecoverySource` (base backups and WAL of one
repository, see :mod:`backupd.archive.recovery_source`), so the plan is the same for the
local archive and for S3.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from pyrage import x25519

from backupd.archive.continuity import ListedWal, TimelineSpan, on_path
from backupd.archive.walnames import DEFAULT_SEGMENT_SIZE, format_lsn, parse_lsn, segment_name
from backupd.cancel import CancelToken
from backupd.errors import ConfigError, JobFailed


class BaseBackupLike(Protocol):
    """What recovery reads of a base backup (``archive.basebackups.BaseBackupInfo``)."""

    @property
    def name(self) -> str: ...
    @property
    def timeline(self) -> int: ...
    @property
    def start_lsn(self) -> int: ...
    @property
    def stop_lsn(self) -> int: ...
    @property
    def stop_time(self) -> datetime: ...
    @property
    def wal_segment_size(self) -> int: ...
    @property
    def encrypted(self) -> bool: ...


class WalLike(ListedWal, Protocol):
    """What recovery reads of one archived WAL file (``archive.walstore.ArchivedWal``): what
    continuity reads of it (name, timeline, history), and more."""

    @property
    def segno(self) -> int: ...
    @property
    def partial(self) -> bool: ...
    @property
    def damage(self) -> str | None:
        """Why the stored file cannot be what its manifest records (None: nothing known)."""
        ...
    @property
    def encrypted(self) -> bool: ...


class WalDamaged(JobFailed):
    """A WAL file the plan needs is listed as damaged (its stored size is not its
    manifest's): the archive's fault, never a reason to go on without it."""


class RecoverySource(Protocol):
    """One repository's archive, as recovery consumes it."""

    description: str
    # The age identities it decrypts with, loaded once when it was made (None:
    # DB_BACKUP_AGE_IDENTITY_FILE not set): its reader's identity checks use the same.
    identities: list[x25519.Identity] | None

    def base_backups(self) -> Sequence[BaseBackupLike]:
        """The verified base backups, any order."""
        ...

    def extract(self, backup: BaseBackupLike, target: Path, cancel: CancelToken,
                beside: frozenset[str] = frozenset()) -> frozenset[str]:
        """Unpack ``backup``'s data directory into ``target`` (checked while it streams);
        ``target`` holds nothing but the entries ``beside``, which are left alone. The
        backup's own entries of those names are not unpacked: which ones it held."""
        ...

    def wal(self) -> Sequence[WalLike]:
        """Every archived WAL file: segments, partial segments and history files."""
        ...

    @property
    def left_out(self) -> Sequence[str]:
        """What the last :meth:`wal` left out as a write in progress, one line each."""
        ...

    def fetch(self, wal: WalLike, dest: Path) -> None:
        """The raw WAL file at ``dest``; fails naming it when its checksum does not match."""
        ...

    def fetch_segment(self, wal: WalLike, dest: Path, segment_size: int) -> None:
        """:meth:`fetch` of a segment as replay reads it: a partial padded to
        ``segment_size``."""
        ...


class Encryptable(Protocol):
    """A file of the archive, as the identity check reads it (a base backup or WAL file)."""

    @property
    def name(self) -> str: ...
    @property
    def encrypted(self) -> bool: ...


def first_encrypted(files: Iterable[Encryptable]) -> str | None:
    """``files``' encrypted ones, named in a few words (None: none is)."""
    names = [f.name for f in files if f.encrypted]
    if not names:
        return None
    return names[0] + (f" and {len(names) - 1} more" if len(names) > 1 else "")


def require_identity(identities: Sequence[x25519.Identity] | None,
                     files: Iterable[Encryptable]) -> None:
    """Before ``files`` (what is about to be fetched, from the listing) are: ConfigError
    naming DB_BACKUP_AGE_IDENTITY_FILE when it is not set (``identities`` None, as
    ``load_identities`` gives, which refuses a set file that holds no usable identity) while
    any of ``files`` is encrypted (found part way through otherwise, after the WAL copy or
    during the unpacking). Only those files: an archive that holds older encrypted ones
    (encryption turned off later) needs no identity for the rest."""
    if identities is not None:
        return
    encrypted = first_encrypted(files)
    if encrypted is not None:
        raise ConfigError(f"DB_BACKUP_AGE_IDENTITY_FILE: not set, and the archive's files "
                          f"this recovery reads are encrypted ({encrypted}); set it to the "
                          "age identity file that decrypts them (age-keygen output)")


# The settings that each name a recovery target; the server allows at most one set.
TARGET_KINDS = ("recovery_target", "recovery_target_time", "recovery_target_lsn",
                "recovery_target_name", "recovery_target_xid")


@dataclass(frozen=True)
class RecoveryTarget:
    """Where replay stops; all None: the archive's end (the partial segment included)."""

    time: datetime | None = None
    lsn: int | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        given = [option for option, value in (("--to-time", self.time), ("--to-lsn", self.lsn),
                                              ("--to-name", self.name)) if value is not None]
        if len(given) > 1:
            raise ConfigError(f"{' and '.join(given)}: give one recovery target, not several")
        if self.name is not None and not self.name:
            raise ConfigError("--to-name: the name is empty; give the restore point's name as "
                              "`backupd mark NAME` made it, or leave --to-name out for the "
                              "archive's end")
        if self.time is not None and self.time.tzinfo is None:
            raise ConfigError("--to-time: give the time with its offset, e.g. "
                              "2026-12-05T14:06:00+01:00 (a time without one is ambiguous)")

    @property
    def is_end(self) -> bool:
        return self.time is None and self.lsn is None and self.name is None

    def describe(self) -> str:
        if self.time is not None:
            return f"time {self.time.isoformat()}"
        if self.lsn is not None:
            return f"LSN {format_lsn(self.lsn)}"
        if self.name is not None:
            return f"restore point {self.name!r}"
        return "the end of the archive (the in-progress partial segment included)"

    def settings(self) -> dict[str, str]:
        """Every recovery target setting, in the order they are to be written.

        The base backup's own postgresql.conf / postgresql.auto.conf may carry targets (a
        primary once recovered to a point in time and never reset keeps them): whatever is
        not written here would still apply. So every kind is written, empty unless it is the
        one asked for. The server applies only the last line of a setting, in file order,
        and refuses a second kind while one is set ("multiple recovery targets
        specified"): the empty ones come first, the chosen one last.

        Two more settings a base backup may carry apply in archive recovery and are reset:
        ``recovery_min_apply_delay`` (a delayed standby's; every commit younger than it would
        wait, so the server would not promote) and ``recovery_end_command`` (a command of the
        source server's own setup, run when recovery ends)."""
        chosen: dict[str, str] = {}
        if self.time is not None:
            chosen = {"recovery_target_time": self.time.isoformat(sep=" ")}
        elif self.lsn is not None:
            chosen = {"recovery_target_lsn": format_lsn(self.lsn)}
        elif self.name is not None:
            chosen = {"recovery_target_name": self.name}
        cleared = {key: "" for key in TARGET_KINDS if key not in chosen}
        return {**cleared, "recovery_target_inclusive": "on",
                "recovery_target_action": "promote", "recovery_target_timeline": "latest",
                "recovery_min_apply_delay": "0", "recovery_end_command": "", **chosen}


def parse_target_lsn(text: str) -> int:
    try:
        return parse_lsn(text)
    except ValueError:
        raise ConfigError(f"--to-lsn: {text!r} is not an LSN; give it as PostgreSQL prints "
                          "it, e.g. 0/3000028") from None


@dataclass(frozen=True)
class RecoveryPlan:
    base: BaseBackupLike
    target: RecoveryTarget
    # In replay order; a partial segment (at most one: the newest timeline's last) is copied
    # under its completed name.
    segments: list[WalLike]
    history: list[WalLike]
    segment_size: int

    @property
    def wal_files(self) -> list[WalLike]:
        """Every WAL file the plan fetches: the history files, then the segments."""
        return [*self.history, *self.segments]

    def file_name(self, wal: WalLike) -> str:
        """The name replay asks the restore_command for (a partial's completed name)."""
        return segment_name(wal.timeline, wal.segno, self.segment_size)

    def newest_files(self, count: int) -> list[str]:
        """The last ``count`` segments' file names on the newest timeline, oldest first."""
        last = self.segments[-1].timeline
        return [self.file_name(w) for w in self.segments[-count:] if w.timeline == last]

    @property
    def wal_range(self) -> str:
        if not self.segments:
            return "none"
        last = self.segments[-1]
        return (f"{self.segments[0].name} .. {last.name}"
                + (" (partial)" if last.partial else "") + f", {len(self.segments)} segments")

    def describe(self) -> list[str]:
        return [f"base backup: {self.base.name} (timeline {self.base.timeline}, "
                f"{format_lsn(self.base.start_lsn)} .. {format_lsn(self.base.stop_lsn)}, "
                f"ended {self.base.stop_time.isoformat()})",
                f"WAL: {self.wal_range}",
                f"target: {self.target.describe()}"]


def choose_base(backups: Sequence[BaseBackupLike], target: RecoveryTarget,
                restore_point: int | None = None) -> BaseBackupLike:
    """The newest base backup that ends before the target (a base backup is consistent only
    from its stop LSN on). For a restore point: at ``restore_point`` (its LSN, read from the
    WAL) when known; else the oldest, whose WAL reaches every restore point the archive
    holds (what recover copies to find it)."""
    if not backups:
        raise JobFailed("no verified base backup in the archive; take one with "
                        "`backupd basebackup` (WAL alone cannot be recovered)")
    by_age = sorted(backups, key=lambda b: (b.stop_lsn, b.stop_time))
    if target.name is not None and restore_point is None:
        return by_age[0]
    if target.name is not None and restore_point is not None:
        point = restore_point
        return _ending_by(by_age, lambda b: b.stop_lsn <= point,
                          f"--to-name: restore point {target.name!r} at {format_lsn(point)} is",
                          _stop_lsn)
    if target.time is not None:
        time = target.time
        return _ending_by(by_age, lambda b: b.stop_time <= time,
                          f"--to-time: {time.isoformat()} is",
                          lambda b: b.stop_time.isoformat())
    if target.lsn is not None:
        lsn = target.lsn
        return _ending_by(by_age, lambda b: b.stop_lsn <= lsn,
                          f"--to-lsn: {format_lsn(lsn)} is", _stop_lsn)
    return by_age[-1]


def _ending_by(by_age: Sequence[BaseBackupLike], fits: Callable[[BaseBackupLike], bool],
               what: str, shown: Callable[[BaseBackupLike], str]) -> BaseBackupLike:
    """The newest of ``by_age`` (oldest first) that ``fits`` (ends before the target); else
    one line saying ``what`` is before the oldest one's end, as ``shown``."""
    fitting = [b for b in by_age if fits(b)]
    if not fitting:
        oldest = by_age[0]
        raise ConfigError(f"{what} before the oldest base backup's end ({oldest.name}, "
                          f"{shown(oldest)}); the archive cannot go back that far")
    return fitting[-1]


def _stop_lsn(backup: BaseBackupLike) -> str:
    return format_lsn(backup.stop_lsn)


def on_the_path(backups: Sequence[BaseBackupLike],
                spans: Sequence[TimelineSpan]) -> list[BaseBackupLike]:
    """The base backups that can replay to the archive's newest timeline: on its path
    ``spans`` (``continuity.path_to_newest``, from the newest timeline's history file). After
    a point-in-time recovery the old timeline's later base backups are not (and end at
    higher LSNs than the new timeline's, so they would otherwise look the newest)."""
    newest = spans[-1].timeline
    fitting = [b for b in backups if on_path(spans, b.timeline, b.stop_lsn)]
    if backups and not fitting:
        left = "; ".join(f"timeline {s.timeline} was left at {format_lsn(s.end)}"
                         for s in spans if s.end is not None)
        raise JobFailed(
            "no verified base backup can replay to the archive's newest timeline: "
            + ", ".join(f"{b.name} (timeline {b.timeline}, ends {format_lsn(b.stop_lsn)})"
                        for b in backups)
            + f" are not on the path to timeline {newest}" + (f" ({left})" if left else "")
            + "; take a base backup with `backupd basebackup`")
    return fitting


def plan(source_wal: Sequence[WalLike], backups: Sequence[BaseBackupLike],
         target: RecoveryTarget, restore_point: int | None = None, *,
         spans: Sequence[TimelineSpan]) -> RecoveryPlan:
    """The base backup and the WAL for ``target``; a gap, a damaged file or a target beyond
    the archive's end fails here, naming the missing range or the file, before anything is
    written. ``restore_point``: the LSN of ``target.name``'s one restore point, once read
    from the WAL.
    ``spans``: the path to the archive's newest timeline (:func:`on_the_path`;
    ``continuity.path_to_newest``, read once by the caller for every plan of one listing).
    Required: without it a planner could not tell the path to the newest timeline from an
    abandoned one."""
    base = choose_base(on_the_path(backups, spans), target, restore_point)
    size = base.wal_segment_size or DEFAULT_SEGMENT_SIZE
    history = sorted((w for w in source_wal if w.history), key=lambda w: w.timeline)
    timelines = {base.timeline} | {h.timeline for h in history if h.timeline > base.timeline}
    first = base.start_lsn // size
    candidates = [w for w in source_wal if not w.history and w.timeline in timelines
                  and w.segno >= first]
    # A timeline begins at its first segment (the switch point's, which the new timeline
    # rewrites): from there on an older timeline's files are the abandoned history after
    # the switch, which replay never reads.
    begins = {t: min(w.segno for w in candidates if w.timeline == t)
              for t in {w.timeline for w in candidates}}
    # Per position, the newest timeline's file (what replay with recovery_target_timeline
    # 'latest' reads); a completed segment wins over a partial of the same position.
    chosen: dict[int, WalLike] = {}
    for wal in sorted((w for w in candidates
                       if not any(t > w.timeline and start <= w.segno
                                  for t, start in begins.items())),
                      key=lambda w: (w.segno, w.timeline, not w.partial)):
        chosen[wal.segno] = wal
    stop = base.stop_lsn // size
    if not chosen or max(chosen) < stop:
        raise JobFailed(
            f"WAL missing: {segment_name(base.timeline, first, size)} .. "
            f"{segment_name(base.timeline, stop, size)} (from the start to the end of base "
            f"backup {base.name}) is not all in the archive; without it the base backup never "
            "becomes consistent")
    last = max(chosen)
    missing = [segno for segno in range(first, last + 1) if segno not in chosen]
    if missing:
        gap_start, gap_end = missing[0], missing[0]
        while gap_end + 1 in missing:
            gap_end += 1
        tli = chosen[gap_start - 1].timeline if gap_start - 1 in chosen else base.timeline
        raise JobFailed(
            f"WAL gap: {segment_name(tli, gap_start, size)} .. {segment_name(tli, gap_end, size)}"
            f" missing from the archive (needed to replay base backup {base.name} onward); "
            "nothing was written. Recover to a time before the gap, or from a base backup "
            "taken after it")
    segments = [chosen[segno] for segno in range(first, last + 1)]
    damaged = [w for w in [*history, *segments] if w.damage is not None]
    if damaged:
        raise WalDamaged(f"WAL file {damaged[0].name} is damaged: {damaged[0].damage}; it is "
                         f"needed to replay base backup {base.name} onward"
                         + (f" (and {len(damaged) - 1} more)" if len(damaged) > 1 else ""))
    partials = [w for w in segments[:-1] if w.partial]
    if partials:
        raise JobFailed(f"WAL gap: only the partial {partials[0].name} of a segment that "
                        "later WAL follows is in the archive; the rest of it is missing")
    if target.lsn is not None:
        end = (last + 1) * size
        if target.lsn > end:
            raise ConfigError(f"--to-lsn: {format_lsn(target.lsn)} is after the archive's end "
                              f"({segments[-1].name} ends at {format_lsn(end)})")
    return RecoveryPlan(base, target, segments, history, size)

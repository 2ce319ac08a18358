"""``verify --wal``: can each kept base backup be recovered, and up to where?

Three levels per base backup, after pgBackRest's:

* **valid**: the base backup itself is verified: every file matched PostgreSQL's
  ``backup_manifest`` when it was read back (``backupd verify NAME`` re-reads it);
* **consistent**: the WAL from its start to its stop LSN is there (inside the base backup,
  which carries it, or in the archive): it can reach a consistent state;
* **PITR**: the archive holds every segment from the base backup's stop to the archive's end,
  following the timelines: the newest timeline's history file says at which LSN each
  ancestor timeline was left, and recovery (``recovery_target_timeline = 'latest'``) reads a
  position's segment from the timeline that was current there. Any missing segment is a gap,
  named.

Pure functions of the listings (``WalFileName``s and the history files' text): the command that
runs them (``commands.wal_verify``) reads the archive locally or on S3.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

from backupd.archive.basebackups import BaseBackupInfo
from backupd.archive.walnames import (
    WalFileName,
    format_lsn,
    lsn_to_segno,
    parse_lsn,
    segment_name,
)
from backupd.errors import JobFailed

# Missing segments named in one line before "and N more".
NAMED_MISSING = 10


@dataclass(frozen=True)
class TimelineSpan:
    """Timeline ``timeline`` is current from ``begin`` (an LSN) until ``end`` (None: still)."""

    timeline: int
    begin: int
    end: int | None


def parse_history(text: str) -> list[tuple[int, int]]:
    """A ``.history`` file's (parent timeline, switch LSN) lines, oldest first."""
    entries: list[tuple[int, int]] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and not line.lstrip().startswith("#"):
            try:
                entries.append((int(fields[0]), parse_lsn(fields[1])))
            except ValueError:
                continue
    return entries


def read_history(names: Iterable[str], timeline: int,
                 fetch: Callable[[str, Path], object]) -> list[tuple[int, int]]:
    """``timeline``'s history file, among the archive's file ``names``, fetched by name into
    a scratch file and read ([] for timeline 1: it has none). JobFailed when it is missing:
    no recovery can then follow that timeline."""
    if timeline == 1:
        return []
    name = f"{timeline:08X}.history"
    if name not in names:
        raise JobFailed(f"the archive reaches timeline {timeline} but holds no {name}; "
                        "without it no recovery can follow that timeline")
    with tempfile.TemporaryDirectory(prefix="backupd-history-") as scratch:
        target = Path(scratch) / name
        fetch(name, target)
        return parse_history(target.read_text("utf-8", "replace"))


class ListedWal(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def timeline(self) -> int: ...
    @property
    def history(self) -> bool: ...


Listed = TypeVar("Listed", bound=ListedWal)


def newest_timeline(files: Iterable[ListedWal]) -> int:
    """The newest timeline among an archive's listed files (1 for none): the one recovery
    ends on, and whose history file :func:`path_to_newest` reads."""
    return max((f.timeline for f in files), default=1)


def path_to_newest(files: Sequence[Listed],
                   fetch: Callable[[Listed, Path], object]) -> list[TimelineSpan]:
    """The path of timelines to the archive's newest timeline among its listed ``files``
    (:func:`timeline_spans`), from that timeline's history file, fetched as listed (no
    listing again; none on timeline 1)."""
    histories = {f.name: f for f in files if f.history}
    newest = newest_timeline(files)
    return timeline_spans(newest, read_history(histories, newest,
                                               lambda name, dest: fetch(histories[name], dest)))


def history_to_read(files: Sequence[Listed]) -> list[Listed]:
    """The history file :func:`path_to_newest` fetches from ``files`` (none on timeline 1,
    or when it is missing: then it fails naming it)."""
    newest = newest_timeline(files)
    return [f for f in files if f.history and f.timeline == newest and newest > 1]


def timeline_spans(newest: int, history: Sequence[tuple[int, int]]) -> list[TimelineSpan]:
    """The path of timelines that leads to ``newest``, from the first."""
    spans: list[TimelineSpan] = []
    begin = 0
    for parent, switch in history:
        spans.append(TimelineSpan(parent, begin, switch))
        begin = switch
    spans.append(TimelineSpan(newest, begin, None))
    return spans


def on_path(spans: Sequence[TimelineSpan], timeline: int, lsn: int) -> bool:
    """Whether ``lsn`` on ``timeline`` is on the path ``spans`` (a base backup ending there
    can replay to the path's newest timeline; one on a timeline after it was left cannot:
    the server refuses, "requested timeline is not a child of this server's history")."""
    return any(s.timeline == timeline and s.begin <= lsn and (s.end is None or lsn < s.end)
               for s in spans)


@dataclass
class Continuity:
    """The verdict for one base backup."""

    base: str
    valid: bool
    consistent: bool
    pitr: bool
    reaches: str = ""  # the last segment recovery can replay ("" when none)
    missing: list[str] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)  # "NAME (why)", listed but unusable
    problem: str = ""

    @property
    def ok(self) -> bool:
        return self.valid and self.consistent and self.pitr

    def line(self) -> str:
        levels = ", ".join(f"{name} {'yes' if ok else 'NO'}" for name, ok in
                           (("valid", self.valid), ("consistent", self.consistent),
                            ("pitr", self.pitr)))
        text = f"{self.base}: {levels}"
        if self.reaches:
            text += f"; recovers up to {self.reaches}"
        return text + (f"; {self.problem}" if self.problem else "")


def describe_missing(names: list[str]) -> str:
    shown = ", ".join(names[:NAMED_MISSING])
    more = len(names) - NAMED_MISSING
    return shown + (f" and {more} more" if more > 0 else "")


def check_base(base: BaseBackupInfo, wal_inside: bool, archive: Sequence[WalFileName],
               spans: list[TimelineSpan], segment_size: int,
               damaged: Mapping[str, str] | None = None,
               damaged_history: Sequence[str] = ()) -> Continuity:
    """One base backup against the archive. ``wal_inside``: the base backup carries (and
    was verified with) the WAL from its start to its stop. ``damaged``: files of ``archive``
    (by name) that are there but cannot be used, and why: needed, they are damage, not a
    gap. ``damaged_history``: the history files so (``NAME (why)``); recovery copies every
    history file and refuses a damaged one, so each is damage for every base backup."""
    damaged = damaged or {}
    broken = {(w.timeline, w.segno): f"{w.name} ({damaged[w.name]})" for w in archive
              if w.name in damaged}
    present = {(w.timeline, w.segno) for w in archive} - broken.keys()
    verdict = Continuity(base.name, valid=base.verified, consistent=False, pitr=False)
    first, stop_segno = (lsn_to_segno(base.start_lsn, segment_size),
                         lsn_to_segno(base.stop_lsn, segment_size))
    own = next((s for s in spans if on_path([s], base.timeline, base.stop_lsn)), None)
    gaps = [(base.timeline, segno) for segno in range(first, stop_segno)
            if (base.timeline, segno) not in present]
    before_stop = [broken.get(gap, segment_name(*gap, segment_size)) for gap in gaps]
    verdict.consistent = wal_inside or not before_stop
    if own is None:
        verdict.problem = (f"its timeline {base.timeline} is not on the path to the archive's "
                           f"newest timeline {spans[-1].timeline} at its stop LSN "
                           f"{format_lsn(base.stop_lsn)}")
        return verdict
    needed: list[tuple[int, int]] = []
    for span in spans[spans.index(own):]:
        start = max(span.begin, base.stop_lsn)
        if span.end is not None:
            # The segment holding the switch is read from the new timeline's copy.
            last = lsn_to_segno(span.end, segment_size) - 1
        else:
            # The archive's end; at least the segment the base backup's WAL continues in.
            on_newest = [w.segno for w in archive if w.timeline == span.timeline]
            last = max([*on_newest, lsn_to_segno(start, segment_size)])
        needed += [(span.timeline, segno)
                   for segno in range(lsn_to_segno(start, segment_size), last + 1)]
    verdict.damaged = [*damaged_history, *(broken[t, s] for t, s in needed if (t, s) in broken)]
    verdict.missing = [segment_name(t, s, segment_size) for t, s in needed
                       if (t, s) not in present and (t, s) not in broken]
    reached = [(t, s) for t, s in needed if (t, s) in present]
    if reached:
        verdict.reaches = segment_name(*reached[-1], segment_size)
    # A damaged partial is named under damaged already: one fault, said once.
    partial_inside = [w for w in archive if w.partial and (w.timeline, w.segno) in needed[:-1]
                      and not _complete(archive, w) and w.name not in damaged]
    if partial_inside:
        verdict.missing += [segment_name(w.timeline, w.segno, segment_size) + " (only partial)"
                            for w in partial_inside]
    verdict.pitr = not verdict.missing and not verdict.damaged
    problems = [f"{len(names)} WAL {noun}{'s' if len(names) != 1 else ''} {what}: "
                f"{describe_missing(names)}"
                for names, noun, what in ((verdict.damaged, "file", "damaged"),
                                          (verdict.missing, "segment", "missing")) if names]
    if problems:
        verdict.problem = "; ".join(problems)
    elif not verdict.consistent:
        what = "missing or damaged" if any(gap in broken for gap in gaps) else "missing"
        verdict.problem = f"WAL before its stop {what}: {describe_missing(before_stop)}"
    if not verdict.valid:
        verdict.problem = "; ".join(p for p in ("not verified", verdict.problem) if p)
    return verdict


def _complete(archive: Sequence[WalFileName], wal: WalFileName) -> bool:
    return any(w.timeline == wal.timeline and w.segno == wal.segno and not w.partial
               for w in archive)

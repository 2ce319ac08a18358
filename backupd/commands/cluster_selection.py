"""Which databases a whole-system restore of POSTGRES_DB='*' brings back (``restore
--latest``, commands.cluster_restore): every database with a backup in the repository (but
DB_BACKUP_EXCLUDE's), template1 by its own rule (storage.template1_runs). Leaving out a live
database loses it, restoring a dropped one loses nothing: every rule that left databases
out by a run's list was found to leave out live ones (another configuration sharing the
backups, clock skew, future-dated backups, an older version's globals). Which databases
LOOK dropped (not on the newest run of '*''s globals list, while that run is the newest of
'*'; with the globals off or turned off since, not in the newest run of '*') only decides a
warning naming each. A database on that list with no backup at all stops the restore before
any change (with those with no verified backup: one stop, cluster_restore), unless --skip
names it. Apart from the restore itself to keep each module readable."""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from backupd.commands.selection import is_local
from backupd.errors import ConfigError, JobFailed
from backupd.job import JobContext
from backupd.log import shown_utc
from backupd.manifest import Manifest
from backupd.naming import TIMESTAMP_FORMAT
from backupd.naming import run_id as run_id_at
from backupd.postgres.databases import TEMPLATE_DATABASE
from backupd.storage.base import BackupEntry, Repository, newest_verified
from backupd.storage.template1_runs import Template1InRun, template1_in_newest_run


@dataclass(frozen=True)
class Chosen:
    """The databases to restore (``names``) and, for each already warned of by name as
    looking dropped, what its restore notes instead (``notes``): the newest run was not
    incomplete for it, so saying so would be a second, wrong reason."""

    names: list[str]
    notes: dict[str, str] = field(default_factory=dict)
    # Those backed up in the newest run of '*' or later when a list's run is newer still:
    # not in the newest run because that list does not name them, so no "incomplete" note.
    current: frozenset[str] = frozenset()
    # Of those with no verified backup (the restore stops naming them), each that looks
    # dropped and the newest run of '*' it is not in: the stop says so.
    dropped: dict[str, str] = field(default_factory=dict)
    # On the newest run of '*''s list with no backup at all, and those globals' name: the
    # restore stops for them with those with no verified backup, in one stop naming all
    # (a second stop after the printed command was run would be no way through).
    never: list[str] = field(default_factory=list)
    never_run: str = ""
    # --skip: left out as asked; the printed command keeps them.
    skipped: tuple[str, ...] = ()


def choose_databases(ctx: JobContext, repository: Repository, database: str | None,
                     globals_entries: list[BackupEntry],
                     listed: Callable[[str], list[BackupEntry]],
                     skip: tuple[str, ...] = ()) -> Chosen:
    if database is not None:
        return Chosen([database])
    chosen = ctx.settings.database_selection
    if not chosen.every:
        return Chosen(list(chosen.names))
    everything = repository.databases()
    names = chosen.choose(everything)
    # A list configuration sharing the backups (POSTGRES_DB=a,b, globals on) writes globals
    # too: its list is not '*''s, so not what a database looking dropped is judged by.
    # Its globals still restore the roles (cluster_restore._globals): roles are cluster-wide.
    newest = newest_verified(e for e in globals_entries
                             if e.manifest is None or e.manifest.run_of_every is not False)
    manifest = newest.manifest if newest is not None else None
    run = manifest.run_databases if manifest is not None else None
    # The newest run of '*' the dumps' manifests know (every run of '*' records template1's
    # look, unless DB_BACKUP_EXCLUDE leaves template1 out), globals on or off.
    look = template1_in_newest_run(names, listed, globals_entries)
    if newest is not None and manifest is not None and look is not None and \
            look.run_id > _run_of(newest):
        # A run of '*' after the list's (DB_BACKUP_GLOBALS turned off since): the old list
        # would call a database dropped since incomplete, and stop every restore for good
        # once its backups are deleted. The globals-off rule judges by that newer run.
        run = None
    # What the newest run that looked did with template1, from its dumps' manifests: the
    # globals (run_databases) may be off, or from an older run. None: no run said; the
    # globals' run decides, as it always did for template1 (R16).
    said = look if TEMPLATE_DATABASE in names else None
    notes: dict[str, str] = {}
    dropped: dict[str, str] = {}
    listed_by_run = chosen.choose(run) if run is not None else []
    _check_skip(repository, skip, set(everything) | set(listed_by_run))
    if skip:
        # After template1's look was judged by every database's dumps: leaving one out of
        # the restore does not change what the runs did.
        names = [name for name in names if name not in skip]
        ctx.warn("not restored, as asked: " + skip_options(skip))
    never: list[str] = []
    if newest is not None and manifest is not None and run is not None:
        never = _never_backed_up(ctx, newest, listed_by_run, [*names, *skip])
        globals_run = _run_of(newest)
        dropped = _unverified_dropped(names, run, globals_run,
                                      f"{newest.name}, run {globals_run}", listed)
        if said is None and TEMPLATE_DATABASE in names and TEMPLATE_DATABASE not in run:
            names.remove(TEMPLATE_DATABASE)
            ctx.say(_template1_left_out(manifest.run_id or newest.name,
                                        empty=manifest.template1_empty is True))
        notes = _warn_not_on_list(ctx, repository, newest, manifest, sorted(
            set(names) - set(run) - {TEMPLATE_DATABASE}), listed)
    if said is not None and not said.took and TEMPLATE_DATABASE in names:
        names.remove(TEMPLATE_DATABASE)
        ctx.say(_template1_left_out(said.run_id, empty=said.empty))
    if run is None:
        notes = _warn_not_in_newest_run(ctx, repository, names, look, listed)
        dropped = ({} if look is None else _unverified_dropped(
            names, [], look.run_id, f"{_run_time(look.run_id)}, run {look.run_id}", listed))
    if not names and not never:
        left = " but those --skip names" if skip else ""
        raise JobFailed(f"POSTGRES_DB='*': no database{left} has a backup in "
                        f"{repository.description}; nothing was changed")
    return Chosen(names, notes, _current(names, newest, look, globals_entries, listed), dropped,
                  never, newest.name if newest is not None else "", skip)


def _check_skip(repository: Repository, skip: tuple[str, ...], known: set[str]) -> None:
    """A --skip name with no backup and not on the newest run's list is a typo: ignored, the
    restore would take what was meant to be left out, or stop again."""
    for name in skip:
        if name not in known:
            raise ConfigError(
                f"--skip: no backup of {name!r} in {repository.description}, nor is it in the "
                "newest backup run of every database; give the name as `backupd list` shows "
                "it; nothing was changed")


def _never_backed_up(ctx: JobContext, newest: BackupEntry, listed_by_run: list[str],
                     names: list[str]) -> list[str]:
    """Each database the newest run of '*' set out to back up with no backup at all (its
    dump failed before writing anything, or it was dropped during that run): live then, and
    nothing brings it back, so the restore stops before any change, naming it, rather than
    report success without it. template1 keeps its own rule: a warning, the server's own
    template1 staying."""
    never = sorted(set(listed_by_run) - set(names))
    if TEMPLATE_DATABASE in never:
        never.remove(TEMPLATE_DATABASE)
        ctx.warn(f"POSTGRES_DB='*': template1 in the newest backup run ({newest.name}) but "
                 "never backed up: not restored")
    return never


def never_backed_up_said(repository: Repository, chosen: Chosen) -> str:
    """Why the restore stops for chosen.never (the caller asks only when there are some)."""
    return (f"POSTGRES_DB='*': {', '.join(chosen.never)} in the newest backup run of every "
            f"database ({chosen.never_run}) but with no backup in {repository.description} "
            "(its dump failed before writing anything, or it was dropped during that run): a "
            "whole-system restore would not bring it back")


def skip_options(names: Iterable[str]) -> str:
    """``--skip NAME`` for each of ``names``, quoted for a shell: one name per option,
    since a name may hold a comma or edge spaces (DB_BACKUP_EXCLUDE's list cannot)."""
    return " ".join(f"--skip {shlex.quote(name)}" for name in names)


def way_through(repository: Repository, chosen: Chosen, stopped: list[str]) -> str:
    """The one command that restores every database of '*' but ``stopped`` (those this
    restore stopped for, of every kind at once) and those already skipped: at 3 a.m. the
    operator needs the others back first, not a fix for the one that cannot be. Options,
    not DB_BACKUP_EXCLUDE: a host's variable never reaches the compose container, which
    takes its settings from the env_file alone."""
    s3 = "" if is_local(repository) else " --from-s3"
    skip = skip_options(sorted(set(chosen.skipped) | set(stopped)))
    return (f"to restore every other database in one command: `backupd restore --latest{s3} "
            f"{skip}` (with this restore's other options)")


def _unverified_dropped(names: list[str], run: list[str], run_id: str, which: str,
                        listed: Callable[[str], list[BackupEntry]]) -> dict[str, str]:
    """Of ``names``, each with no verified backup that looks dropped: not on ``run`` (the
    deciding list; empty with the globals off) and no backup from run ``run_id`` or later
    (one dated in the future is no evidence); ``which`` describes that run."""
    dropped: dict[str, str] = {}
    for name in names:
        entries = listed(name)
        if name == TEMPLATE_DATABASE or name in run or newest_verified(entries) is not None:
            continue
        if max((_run_of(e) for e in entries if not e.from_the_future()), default="") < run_id:
            dropped[name] = which
    return dropped


def _current(names: list[str], decided_by: BackupEntry | None, look: Template1InRun | None,
             globals_entries: list[BackupEntry],
             listed: Callable[[str], list[BackupEntry]]) -> frozenset[str]:
    """Of ``names``, those whose newest verified backup is of the newest run of '*' (the
    deciding globals' run, or the newest that recorded template1's look) or later, when the
    newest globals are a list's run: that run, newer, names only its list. Empty when the
    newest globals are not a list's (cluster_restore's "incomplete" rule as before)."""
    top = newest_verified(globals_entries)
    if top is None or top.manifest is None or top.manifest.run_of_every is not False:
        return frozenset()
    runs = []
    if decided_by is not None and decided_by.manifest is not None \
            and decided_by.manifest.run_of_every and decided_by.manifest.run_id:
        runs.append(decided_by.manifest.run_id)
    if look is not None:
        runs.append(look.run_id)
    if not runs:
        return frozenset()
    every_run = max(runs)
    return frozenset(name for name in names if (entry := newest_verified(listed(name)))
                     is not None and _run_of(entry) >= every_run)


def _warn_not_on_list(ctx: JobContext, repository: Repository, globals_entry: BackupEntry,
                      manifest: Manifest, candidates: list[str],
                      listed: Callable[[str], list[BackupEntry]]) -> dict[str, str]:
    """Warn of each of ``candidates`` (not on the run list of ``globals_entry``, the newest
    verified globals of a run of '*'), restored all the same; their notes. One backed up in
    a later run (any backup's manifest shows that, one that failed verification too) was
    live after that list was made (DB_BACKUP_GLOBALS turned off since, or another
    configuration took those globals); one not looks dropped, but may be live too (another
    configuration sharing the backups takes it, or the machines' clocks disagree: run ids
    are wall-clock seconds). One with no verified backup is not warned of: the restore stops
    naming it (cluster_restore).

    Run ids count whole seconds (none recorded: the backup's own time, never earlier than
    its run's start). One equal to the globals' is another run started in that second: the
    globals' run dumps only databases it lists."""
    globals_run = _run_of(globals_entry)
    older = ("" if manifest.run_of_every is not None else
             "; those globals were written by an older backupd, which does not record whether "
             "its run was of every database or of a list")
    notes: dict[str, str] = {}
    for name in candidates:
        entries = listed(name)
        entry = newest_verified(entries)
        if entry is None:
            continue
        # A date in the future is no evidence of when the database was there.
        newest = max((e for e in entries if e.manifest is not None and not e.from_the_future()),
                     key=_run_of, default=entry)
        rid = _run_of(newest)
        failed = ("" if newest is entry else
                  f" (its newest, {newest.name}, did not pass verification)")
        if rid < globals_run:
            ctx.warn(f"POSTGRES_DB='*': {name} looks dropped: it is not in the newest backup "
                     f"run of every database ({globals_entry.name}, run {globals_run}){older}, "
                     f"and its newest backup, {newest.name}, is of "
                     f"{shown_utc(newest.parsed.taken_at)}, before that run; it is restored "
                     f"all the same from {entry.name} (another configuration sharing the "
                     "backups may take it, or the machines' clocks disagree); if "
                     f"{name} was dropped, drop it again after this restore, or restore the "
                     "other databases one by one with --database NAME, or delete its backups "
                     f"from {repository.description}")
            notes[name] = (f"not in the newest run of every database {globals_run}, so it "
                           f"looks dropped{failed}; taking its newest verified backup "
                           f"{entry.name}")
            continue
        which = ("a later run" if rid > globals_run
                 else "another run started in the same second")
        restored = (", so it is restored" if newest is entry else
                    " and did not pass verification, so its older verified backup, "
                    f"{entry.name}, is restored")
        ctx.warn(f"POSTGRES_DB='*': {name} is not in the newest globals backup's run "
                 f"({globals_entry.name}, run {globals_run}), but its newest backup, "
                 f"{newest.name}, is from {which} (run {rid}){restored}: those "
                 "globals' list of databases is older than that backup (DB_BACKUP_GLOBALS "
                 "was turned off since, or another configuration sharing the backups took "
                 f"them){older}; if {name} was dropped since, drop "
                 "it again after this restore, or restore the other databases one by one "
                 f"with --database NAME, or delete its backups from {repository.description}")
        notes[name] = (f"not in the newest globals backup's run {globals_run}, but backed up "
                       f"in {which} {rid}{failed}; taking its newest verified backup "
                       f"{entry.name}")
    return notes


def _run_of(entry: BackupEntry) -> str:
    """The run id ``entry`` records, or with none (older backups) its own time as one."""
    manifest = entry.manifest
    return (manifest.run_id if manifest is not None and manifest.run_id
            else run_id_at(entry.parsed.taken_at))


def _warn_not_in_newest_run(ctx: JobContext, repository: Repository, names: list[str],
                            newest: Template1InRun | None,
                            listed: Callable[[str], list[BackupEntry]]) -> dict[str, str]:
    """No globals manifest lists the newest run's databases (DB_BACKUP_GLOBALS=off, or off
    since: a run of '*' newer than the newest list), so all of ``names`` are restored:
    leaving one out by a guess lost live databases (an interrupted
    run, another configuration sharing the repository, DB_BACKUP_EXCLUDE, a rollback; the
    reverted 53f8786 and 3fbb1db). Each without a dump in the newest run of '*' (the newest
    that recorded template1's look: every run of '*' does, except one whose DB_BACKUP_EXCLUDE
    leaves template1 out, so with only such runs none) is said instead, one warning each: it
    may have been dropped since. A dump of that run that failed verification still shows
    the database was there; a dump that failed before writing anything does not. Returns
    the notes of those warned of. ``newest``: that run, as choose_databases found it."""
    notes: dict[str, str] = {}
    if newest is None:
        return notes  # no run of '*' recorded a look: nothing to compare with
    for name in names:
        entries = listed(name)
        entry = newest_verified(entries)
        # template1 is decided by what that run did with it (_template1_left_out); with no
        # verified backup, run_cluster fails naming the database.
        if name == TEMPLATE_DATABASE or entry is None or any(
                e.manifest is not None and e.manifest.run_id == newest.run_id
                for e in entries):
            continue
        ctx.warn(f"POSTGRES_DB='*': {name} has no backup from the newest run of every "
                 f"database, {_run_time(newest.run_id)} (run {newest.run_id}); its newest "
                 f"backup, {entry.name}, is of {shown_utc(entry.parsed.taken_at)}, and is "
                 "restored all the same (no globals manifest records which databases "
                 "that run took; its dump may also have failed, or another "
                 f"configuration sharing the backups left it out); if {name} was dropped "
                 "since, drop it again after this restore, or restore the other databases "
                 "one by one with --database NAME, or delete its backups from "
                 f"{repository.description}")
        notes[name] = (f"not in the newest run of every database {newest.run_id} (dropped "
                       "since, or its dump failed before writing anything, or another "
                       "configuration left it out); taking its newest verified backup "
                       f"{entry.name}")
    return notes


def _run_time(run_id: str) -> str:
    try:
        return shown_utc(datetime.strptime(run_id, TIMESTAMP_FORMAT).replace(tzinfo=UTC))
    except ValueError:
        return run_id  # a later version's id: shown as it is


def _template1_left_out(run: str, *, empty: bool) -> str:
    """Why a whole-system restore takes none of the template1 backups kept from older runs:
    the newest run took no dump of it (it held nothing of its own then, or was not looked
    into); the server's own template1 stays."""
    why = ("that run found it holding nothing of its own" if empty
           else "that run took no backup of it (left out, or it could not be looked into)")
    return (f"POSTGRES_DB='*': not restoring template1 from an older run: not in the newest "
            f"backup run ({run}), {why}; the server's own template1 stays as it is; "
            "restore an older one with --database template1")

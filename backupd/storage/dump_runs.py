"""Which databases the newest backup run took, read from the dumps' own manifests: what a
whole-system restore (``restore --latest`` of POSTGRES_DB='*') brings back when no globals
manifest lists the run's databases (DB_BACKUP_GLOBALS=off, or the globals of that run
missing). Every dump manifest of a run records its ``run_id``, unique per run (R19).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from backupd.storage.base import BackupEntry


@dataclass(frozen=True)
class DumpRun:
    """``run_id``: the newest run with a verified dump. ``databases``: those with a dump
    recorded in that run or a later one, verified or not: a dump that failed verification
    still records that its database was in the cluster then (restored from an older dump).
    A database whose dump failed before any file was written records nothing, so it looks
    the same as one dropped since: not in ``databases``."""

    run_id: str
    databases: frozenset[str]


def newest_dump_run(listings: Mapping[str, Iterable[BackupEntry]],
                    now: datetime | None = None) -> DumpRun | None:
    """From each database's dumps (``listings``, by database): the newest run that has a
    verified dump (never one dated in the future), and which databases it took. None when
    no verified dump records a run (older backups): nothing says which databases a run took.
    Dumps without a run id (older backups, a single-database configuration with the
    globals off) never make a run newest: they do not say what a run of '*' took."""
    runs = {name: [e for e in entries if e.manifest is not None and e.manifest.run_id]
            for name, entries in listings.items()}
    verified = [e.manifest.run_id for entries in runs.values() for e in entries
                if e.manifest is not None and e.manifest.run_id and e.proven_good(now)]
    if not verified:
        return None
    newest = max(verified)  # YYYYmmdd_HHMMSS: text order is time order
    took = frozenset(name for name, entries in runs.items()
                     if any(e.manifest is not None and (e.manifest.run_id or "") >= newest
                            for e in entries))
    return DumpRun(newest, took)

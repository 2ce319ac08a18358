"""Which databases the newest run of POSTGRES_DB='*' set out to take: what a whole-system
restore (``restore --latest`` of '*') brings back. Every manifest a run writes, its globals
and each dump, records the run's ``run_id`` (unique per run, R19), the databases it set out
to take (``run_databases``) and whether it was of '*' (``run_of_every``). So a run killed
part way, with no globals and dumps of its first databases only, still says it took them
all; and a run of another configuration sharing the repository (a list of databases, hourly)
is never taken for the cluster's content.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from backupd.storage.base import BackupEntry


@dataclass(frozen=True)
class EveryRun:
    """``run_id``: the newest run of '*' with a verified artifact (dump or globals).
    ``databases``: every database it set out to take, whether or not it got to each (one
    missing or unverified there is restored from its previous good backup).
    ``template1_empty``: what its globals recorded of template1, when there are any."""

    run_id: str
    databases: frozenset[str]
    template1_empty: bool | None = None


def newest_run_of_every(entries: Iterable[BackupEntry],
                        now: datetime | None = None) -> EveryRun | None:
    """From dumps and globals (``entries``): the newest run of '*' with a verified artifact
    (never one dated in the future), its list from whichever of its manifests records one.
    None when no manifest says it was of '*' (older backups): the caller falls back on the
    globals' run_databases as before."""
    of_every = [e for e in entries
                if e.manifest is not None and e.manifest.run_id and e.manifest.run_of_every
                and e.manifest.run_databases is not None]
    proven = [e.manifest.run_id for e in of_every
              if e.manifest is not None and e.manifest.run_id and e.proven_good(now)]
    if not proven:
        return None
    newest = max(proven)  # YYYYmmdd_HHMMSS: text order is time order
    # Every manifest of one run records the same list; an unverified one records it too.
    same = [e.manifest for e in of_every if e.manifest is not None
            and e.manifest.run_id == newest]
    listed = next(m.run_databases for m in same if m.run_databases is not None)
    empty = next((m.template1_empty for m in same if m.template1_empty is not None), None)
    return EveryRun(newest, frozenset(listed), empty)

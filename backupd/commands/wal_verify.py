"""``backupd verify --wal``: continuity of the WAL archive from every base backup to its end
(backupd.archive.continuity), locally or on S3 (``--remote``). Exits 1 on any gap or damaged
file, naming the missing segments and the damaged files (a stored size that is not its
manifest's)."""

from __future__ import annotations

from backupd.archive.basebackups import BaseBackupInfo, list_base_backups
from backupd.archive.continuity import (
    Continuity,
    check_base,
    describe_missing,
    path_to_newest,
)
from backupd.archive.walnames import DEFAULT_SEGMENT_SIZE
from backupd.archive.walstore import (
    WalArchive,
    local_wal_repository,
    offsite_wal_repository,
    spool_directory,
)
from backupd.configs import age_key_files
from backupd.errors import JobFailed
from backupd.job import JobContext
from backupd.outcomes import ContinuityOutcome, ContinuityReport


def wal_archive(ctx: JobContext, remote: bool) -> WalArchive:
    """The WAL archive beside the chosen repository (with the live spool, locally)."""
    keys = age_key_files(ctx.settings)
    if remote:
        return WalArchive(offsite_wal_repository(ctx.repos.require_offsite("--remote")), keys)
    local = local_wal_repository(ctx.store)
    return WalArchive(local, keys, spool=spool_directory(local))


def check(ctx: JobContext, remote: bool = False) -> list[Continuity]:
    repository = ctx.repos.choose(remote, "--remote")
    bases: list[BaseBackupInfo] = list_base_backups(repository)
    if not bases:
        raise JobFailed(f"no base backup in {repository.description}; take one with "
                        "`backupd basebackup` (WAL alone cannot be recovered)")
    archive = wal_archive(ctx, remote)
    files = archive.segments()
    for note in archive.left_out:
        ctx.warn(note)
    segment_size = bases[0].wal_segment_size or DEFAULT_SEGMENT_SIZE
    wal = [f.wal for f in files if not f.history]
    damaged = {f.name: f.damage for f in files if f.damage is not None and not f.history}
    damaged_history = [f"{f.name} ({f.damage})" for f in files
                       if f.damage is not None and f.history]
    spans = path_to_newest(files, archive.fetch_archived)
    # Every base backup carries the WAL from its start to its stop, checked when verified.
    return [check_base(base, base.verified, wal, spans, segment_size, damaged, damaged_history)
            for base in bases]


def run(ctx: JobContext, remote: bool = False) -> list[Continuity]:
    verdicts = check(ctx, remote)
    ctx.result.outcome = ContinuityOutcome(reports=[
        ContinuityReport(base_backup=v.base, valid=v.valid, consistent=v.consistent,
                         pitr=v.pitr, reaches=v.reaches, missing=v.missing,
                         damaged=v.damaged, problem=v.problem)
        for v in verdicts])
    for verdict in verdicts:
        ctx.say(verdict.line())
    failed = [v for v in verdicts if not v.ok]
    if failed:
        damaged = sorted({name for v in failed for name in v.damaged})
        missing = sorted({name for v in failed for name in v.missing})
        said = [f"{what} {describe_missing(names)}"
                for what, names in (("damaged", damaged), ("missing", missing)) if names]
        raise JobFailed(
            f"WAL archive: {len(failed)} of {len(verdicts)} base backups cannot be recovered "
            "to the archive's end"
            + (f"; {'; '.join(said)}" if said else f"; {failed[0].base}: {failed[0].problem}"))
    return verdicts

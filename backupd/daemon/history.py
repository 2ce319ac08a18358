"""A bounded history of backup and drill runs, kept in the daemon's state file.

The status page charts backup size and duration over the last runs and drill RTO over
time. The manifests cannot give that: retention deletes them with their backups, and a
manifest records only the last drill of its backup. So each backup and drill result is
recorded here once, by whoever records the result in the state file (the daemon, or a
one-off command), and the oldest runs fall off past ``RUNS_KEPT`` per job.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from backupd.outcomes import BackupRunOutcome, DrillOutcome
from backupd.result import JobResult, Status, UtcDateTime

# Jobs whose runs are charted, and how many runs of each are kept (the page shows 30).
CHARTED_JOBS = frozenset({"backup", "drill"})
RUNS_KEPT = 60


class RunFigures(BaseModel):
    """What every summary of a run shows (here, and ``backupd status``'s ResultBrief)."""

    status: str
    started_at: UtcDateTime
    finished_at: UtcDateTime | None = None
    duration_seconds: float | None = None
    backup_name: str | None = None
    size_bytes: int | None = None


class RunRecord(RunFigures):
    """One finished run, reduced to what the charts and the drill table show."""

    model_config = ConfigDict(extra="ignore")

    job: str
    database: str
    # A drill's measured restore time: the whole cluster's onto a drill server (the RTO).
    restore_seconds: float | None = None
    drill_server: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == Status.SUCCESS.value

    @classmethod
    def of(cls, result: JobResult) -> RunRecord:
        outcome = result.outcome
        size = result.size_bytes
        if size is None and isinstance(outcome, BackupRunOutcome):
            # A run of several databases: what the run stored, all databases together.
            sizes = [d.size_bytes for d in outcome.databases if d.size_bytes is not None]
            size = sum(sizes) if sizes else None
        drill = outcome if isinstance(outcome, DrillOutcome) else None
        return cls(job=result.job, database=result.database, status=result.status.value,
                   started_at=result.started_at, finished_at=result.finished_at,
                   duration_seconds=result.duration_seconds, backup_name=result.backup_name,
                   size_bytes=size,
                   restore_seconds=drill.restore_seconds if drill is not None else None,
                   drill_server=drill.drill_server if drill is not None else None)


def add_run(history: list[RunRecord], result: JobResult) -> None:
    """Record a finished backup or drill once (a result delivered twice is kept once)."""
    if result.job not in CHARTED_JOBS or result.finished_at is None \
            or result.status in (Status.SKIPPED, Status.MISSED, Status.RUNNING):
        return
    record = RunRecord.of(result)
    if any(r.job == record.job and r.started_at == record.started_at
           and r.database == record.database for r in history):
        return
    history.append(record)
    history.sort(key=lambda r: r.started_at)
    same_job = [r for r in history if r.job == record.job]
    for old in same_job[:max(0, len(same_job) - RUNS_KEPT)]:
        history.remove(old)


def runs_of(history: list[RunRecord], job: str, last: int) -> list[RunRecord]:
    """The last ``last`` runs of ``job``, oldest first."""
    return [r for r in history if r.job == job][-last:]

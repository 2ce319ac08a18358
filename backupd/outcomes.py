"""What each command found out, typed: the part of a JobResult that differs per command.

A command sets ``ctx.result.outcome`` to one of these; the CLI, the notifiers and the
state file read its fields (never a dict of loosely named keys). ``kind`` tells them
apart when a result is read back from JSON (the state file).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, computed_field

if TYPE_CHECKING:
    from backupd.pipeline.verification import VerifyReport


class _Model(BaseModel):
    # defer_build: the schema is built at first use, so a command pays only for the outcomes
    # it produces (~14 ms of start-up for all of them, issue 18).
    model_config = ConfigDict(extra="ignore", defer_build=True)


class CheckRecord(_Model):
    check: str
    ok: bool
    detail: str = ""


class FileReport(_Model):
    """One backup file's verification, as ``backupd verify --json`` prints it."""

    name: str
    ok: bool
    content_checked: bool = True
    content_note: str = ""
    checks: list[CheckRecord] = Field(default_factory=list)

    @classmethod
    def of(cls, report: VerifyReport) -> FileReport:
        return cls(name=report.name, ok=report.ok, content_checked=report.content_checked,
                   content_note=report.content_note,
                   checks=[CheckRecord(check=c.name, ok=c.ok, detail=c.detail)
                           for c in report.checks])


class UploadReport(_Model):
    """One pass of offsite uploads: what went to S3, what is still pending, and why."""

    target: str
    uploaded: list[str] = Field(default_factory=list)
    pending: list[str] = Field(default_factory=list)
    error: str | None = None


class BackupOutcome(_Model):
    kind: Literal["backup"] = "backup"
    verify: FileReport | None = None
    upload: UploadReport | None = None
    # The retention sweep ran after this backup (no RETENTION_SCHEDULE, no --no-prune).
    retention_ran: bool = False


class GlobalsBackup(_Model):
    """The cluster's globals (pg_dumpall --globals-only) of one backup run."""

    name: str | None = None
    ok: bool = False
    skipped: bool = False  # another backupd's run already covers this slot
    # False: taken without the roles' password hashes (the role is not a superuser).
    role_passwords: bool = True
    error: str | None = None
    verify: FileReport | None = None
    upload: UploadReport | None = None


class DatabaseBackup(_Model):
    """One database of a backup run (its full result went to the notifiers on its own)."""

    database: str
    status: str
    backup_name: str | None = None
    size_bytes: int | None = None
    duration_seconds: float | None = None
    error: str | None = None


class BackupRunOutcome(_Model):
    """A backup run of several databases (POSTGRES_DB a list or `*`): one globals artifact
    and one dump per database, all sharing ``run_id`` (manifest.run_id)."""

    kind: Literal["backup_run"] = "backup_run"
    run_id: str
    databases: list[DatabaseBackup] = Field(default_factory=list)
    globals: GlobalsBackup | None = None

    @property
    def failed(self) -> list[str]:
        return [d.database for d in self.databases if d.status == "failed"]


class BaseBackupOutcome(_Model):
    """``backupd basebackup``: the base backup taken, where its WAL starts and ends."""

    kind: Literal["basebackup"] = "basebackup"
    name: str | None = None
    timeline: int | None = None
    start_lsn: str | None = None
    stop_lsn: str | None = None
    stored_bytes: int | None = None
    verify: FileReport | None = None
    upload: UploadReport | None = None


class ContinuityReport(_Model):
    """One base backup's verdict in ``backupd verify --wal`` (backupd.archive.continuity)."""

    base_backup: str
    valid: bool
    consistent: bool
    pitr: bool
    reaches: str = ""
    missing: list[str] = Field(default_factory=list)
    damaged: list[str] = Field(default_factory=list)  # "NAME (why)": there but unusable
    problem: str = ""


class ContinuityOutcome(_Model):
    kind: Literal["wal-verify"] = "wal-verify"
    reports: list[ContinuityReport] = Field(default_factory=list)


class UploadOutcome(_Model):
    kind: Literal["upload"] = "upload"
    upload: UploadReport | None = None


class VerifyOutcome(_Model):
    kind: Literal["verify"] = "verify"
    reports: list[FileReport] = Field(default_factory=list)


class PruneDecision(_Model):
    """One backup as retention judged it: kept (and by which rules) or not."""

    name: str
    repository: str  # where it is (the local directory, s3://bucket/prefix)
    kept: bool
    # Every rule that keeps it: age, DB_BACKUP_KEEP_MIN, last good before, a calendar tier.
    reasons: list[str] = Field(default_factory=list)


class PruneOutcome(_Model):
    kind: Literal["prune"] = "prune"
    dry_run: bool = False
    # A dry run's candidates: never in JobResult.deleted, which counts real deletions.
    would_delete: list[str] = Field(default_factory=list)
    decisions: list[PruneDecision] = Field(default_factory=list)


class RestoreOutcome(_Model):
    kind: Literal["restore"] = "restore"
    target_database: str
    restore_seconds: float | None = None
    previous_database_kept_as: str | None = None
    verify: FileReport | None = None


class DatabaseDrill(_Model):
    """One database of a whole-cluster drill onto the drill server."""

    # tablespaces_unusable goes out under its published name (webhook schema v1), at every
    # dump. serialize_by_alias needs pydantic 2.11 (older ones ignore it): pyproject's floor.
    model_config = ConfigDict(extra="ignore", defer_build=True, serialize_by_alias=True)

    database: str
    backup_name: str
    ok: bool = False
    restore_seconds: float | None = None
    comparison_summary: str | None = None
    # Tablespaces of the backup (the database's, its objects') the drill server lacks, or the
    # drill's role may not create in: what was in them was restored into the default
    # tablespace, and where is not compared. Published as tablespaces_missing, a name from
    # before the role's CREATE was looked at: kept, as schema v1 is only ever added to.
    tablespaces_unusable: list[str] = Field(
        default_factory=list, serialization_alias="tablespaces_missing",
        # Records written under either name (the state file, older ones) read back.
        validation_alias=AliasChoices("tablespaces_unusable", "tablespaces_missing"),
        title="Tablespaces Missing")


ROLES_NOT_PROVEN = ("roles not proven: drilled beside the live database, where the roles "
                    "already exist; set DRILL_POSTGRES_HOST to a scratch server for a drill "
                    "that restores them")


class GlobalsOutcome(_Model):
    """A cluster's globals (roles, memberships, role settings, tablespaces) put onto a
    server (backupd.commands.cluster_restore.restore_globals). Names unquoted."""

    kind: Literal["globals"] = "globals"
    name: str  # the globals artifact
    roles_created: list[str] = Field(default_factory=list)
    roles_kept: list[str] = Field(default_factory=list)  # already on the server, unchanged
    memberships_granted: int = 0
    tablespaces_created: list[str] = Field(default_factory=list)
    tablespaces_kept: list[str] = Field(default_factory=list)
    tablespaces_not_created: list[str] = Field(default_factory=list)  # (no directory here)
    # What was not restored, one line each, with what to do (never a statement's SQL).
    problems: list[str] = Field(default_factory=list)
    restore_seconds: float | None = None
    verify: FileReport | None = None


class DatabaseRestore(_Model):
    """One database of a whole-cluster restore."""

    database: str
    backup_name: str | None = None
    run_id: str | None = None
    ok: bool = False
    # Not restored, and rightly so: template1 holding objects of its own on the server (the
    # note says what; backupd.commands.template1).
    skipped: bool = False
    restore_seconds: float | None = None
    error: str | None = None
    # Why this backup and not the newest run's (an incomplete run), or what was kept.
    note: str | None = None


class ClusterRestoreOutcome(_Model):
    """``restore --latest`` onto a server: the globals first, then each database."""

    kind: Literal["cluster_restore"] = "cluster_restore"
    run_id: str | None = None  # the newest run restored from
    globals: GlobalsOutcome | None = None
    databases: list[DatabaseRestore] = Field(default_factory=list)
    total_seconds: float | None = None

    @property
    def failed(self) -> list[str]:
        return [d.database for d in self.databases if not d.ok]


class RecoverOutcome(_Model):
    """What ``backupd recover`` chose and wrote (also a PITR drill's recovery)."""

    kind: Literal["recover"] = "recover"
    target_dir: str
    target: str  # as people read it: "time ...", "LSN ...", "the end of the archive ..."
    base_backup: str | None = None
    wal_first: str | None = None
    wal_last: str | None = None
    wal_segments: int = 0
    wal_bytes: int = 0
    recover_seconds: float | None = None
    # A PITR drill's measurements: the recovered server's start to promotion, and all of it.
    replay_seconds: float | None = None
    rto_seconds: float | None = None


class DrillOutcome(_Model):
    kind: Literal["drill"] = "drill"
    scratch_database: str
    restore: RestoreOutcome
    differences: list[str] = Field(default_factory=list)
    drift: list[str] = Field(default_factory=list)
    drift_rows: int | None = None
    objects_compared: dict[str, int] = Field(default_factory=dict)  # kind -> how many
    comparison_summary: str | None = None
    # Onto a drill server (DRILL_POSTGRES_HOST), the whole run: its globals and every
    # database; beside the live database the roles it uses already exist, so nothing about
    # them is proven there.
    drill_server: str | None = None  # host:port, None = beside the live database
    roles_proven: bool = False
    databases: list[DatabaseDrill] = Field(default_factory=list)
    globals_restore: GlobalsOutcome | None = None  # what the globals restore created and kept
    # Measured whole-cluster recovery time: globals plus every database, restored in turn.
    cluster_restore_seconds: float | None = None
    # WAL_ARCHIVE=on: the PITR drill's recovery of the newest base backup and all its WAL.
    pitr: RecoverOutcome | None = None
    pitr_error: str | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def restore_seconds(self) -> float | None:
        # Onto a drill server: the whole cluster's (the RTO), not the last database's.
        if self.cluster_restore_seconds is not None:
            return self.cluster_restore_seconds
        return self.restore.restore_seconds


class MarkOutcome(_Model):
    kind: Literal["mark"] = "mark"
    name: str
    lsn: str
    server_time: datetime


Outcome = Annotated[
    BackupOutcome | UploadOutcome | VerifyOutcome | PruneOutcome | RestoreOutcome
    | DrillOutcome | BackupRunOutcome | ClusterRestoreOutcome
    | RecoverOutcome | MarkOutcome | BaseBackupOutcome | ContinuityOutcome,
    Field(discriminator="kind"),
]


def written_database(outcome: Outcome | None) -> str | None:
    """The database a restore or drill wrote into (what people must not misread)."""
    if isinstance(outcome, RestoreOutcome):
        return outcome.target_database
    if isinstance(outcome, DrillOutcome):
        return outcome.scratch_database
    return None


def summary_parts(outcome: Outcome | None) -> list[str]:
    """What the one-line summary adds for this kind of outcome."""
    if isinstance(outcome, BackupRunOutcome):
        parts = [f"run_id={outcome.run_id}", "databases=" + ",".join(
            f"{d.database}:{d.status}" for d in outcome.databases)]
        if outcome.globals is not None:
            state = ("skipped" if outcome.globals.skipped else "ok" if outcome.globals.ok
                     else "failed")
            if outcome.globals.ok and not outcome.globals.role_passwords:
                state += "(no-role-passwords)"
            parts.append(f"globals={state}")
        return parts
    if isinstance(outcome, BaseBackupOutcome) and outcome.name is not None:
        return [f"base_backup={outcome.name}",
                f"wal={outcome.start_lsn}..{outcome.stop_lsn} (timeline {outcome.timeline})"]
    if isinstance(outcome, PruneOutcome) and outcome.dry_run:
        return [f"would_delete={len(outcome.would_delete)} (dry run, nothing deleted)"]
    if isinstance(outcome, DrillOutcome):
        pitr = ([f"pitr_rto={outcome.pitr.rto_seconds:.1f}s"]
                if outcome.pitr is not None and outcome.pitr.rto_seconds is not None else [])
        if outcome.drill_server is None:
            return ["roles=not-proven (drilled beside the live database)", *pitr]
        parts = [f"drill_server={outcome.drill_server}", f"databases={len(outcome.databases)}"]
        if outcome.cluster_restore_seconds is not None:
            parts.append(f"rto={outcome.cluster_restore_seconds:.1f}s")
        return parts + pitr
    if isinstance(outcome, RecoverOutcome):
        parts = [f"base_backup={outcome.base_backup}", f"wal_segments={outcome.wal_segments}"]
        if outcome.rto_seconds is not None:
            parts.append(f"rto={outcome.rto_seconds:.1f}s")
        return parts
    if isinstance(outcome, ClusterRestoreOutcome):
        parts = ["databases=" + ",".join(
            f"{d.database}:{'failed' if not d.ok else 'skipped' if d.skipped else 'ok'}"
            for d in outcome.databases)]
        if outcome.globals is not None:
            parts.append(f"roles_created={len(outcome.globals.roles_created)}")
        if outcome.total_seconds is not None:
            parts.append(f"total={outcome.total_seconds:.1f}s")
        return parts
    return []

"""The JSON manifest beside each backup: what it is, and what has been proven about it.

The manifest is written after the data file, so it doubles as the commit marker
(pgBackRest's habit): a data file without a manifest is an old-script backup locally,
and an incomplete upload in S3.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, PositiveInt, ValidationError

from backupd.database_properties import DatabaseProperties

MANIFEST_VERSION = 1

# Manifest.template1_look: the run dumped template1 (it held objects, or '*' took it as any
# database: not marked a template); looked into, it held nothing (no dump); it could not be
# looked into (no dump, a warning).
TEMPLATE1_DUMPED = "dumped"
TEMPLATE1_EMPTY = "empty"
TEMPLATE1_FAILED = "failed"

# A manifest is rewritten by every version that records something in it (a verify verdict,
# an upload, a drill): what a later version added must survive this one's rewrite (dropped,
# a field such as run_of_every, which decides what a restore of `*` brings back, would be
# undone by an older version's verify). Kept as parsed, written back after the known fields,
# never read nor published (list --json, the webhook and status have their own models).
_KEEPS_UNKNOWN = ConfigDict(extra="allow")


class WalRecord(BaseModel):
    """What a WAL artifact (kind "wal", backupd.archive.walstore) holds: one of PostgreSQL's
    WAL files, whose raw bytes have ``raw_sha256`` (checked on every fetch)."""

    model_config = _KEEPS_UNKNOWN

    wal_file: str  # PostgreSQL's name: a segment, a segment's .partial, a timeline's .history
    timeline: int
    start_lsn: str  # where the file starts ("0/3000000"); "0/0" for a history file
    segment_size: int
    system_identifier: str  # the cluster's (pg_control_system()), as text: it is a uint64
    raw_sha256: str


class BaseBackupFacts(BaseModel):
    """What a base backup (kind "base") is, read from its own tar stream as it was taken:
    PostgreSQL's backup_label, backup_manifest and pg_control (backupd.archive)."""

    model_config = _KEEPS_UNKNOWN

    system_identifier: int
    timeline: int  # the timeline at the stop LSN (the one recovery starts on)
    start_timeline: int
    start_lsn: str  # as PostgreSQL prints it, "0/2000028"
    stop_lsn: str
    wal_segment_size: int
    start_time: datetime | None = None  # backup_label's START TIME (the server's clock)
    label: str = ""
    files: int = 0  # files in PostgreSQL's backup_manifest
    # The WAL segments from the start to the stop LSN, inside the backup's pg_wal/.
    wal_files: list[str] = []
    backup_manifest_sha256: str = ""


class Manifest(BaseModel):
    """One artifact: its kind, database, times, stored file (size, SHA-256) and what has
    been proven about it. New fields always have defaults, so every older manifest loads.
    Fields this version does not know, here and in ``wal`` and ``base_backup``, are kept so
    a later version's survive a rewrite: as parsed, not as written (JSON values as Python
    reads them, so a number past a float's range such as 1e400 comes back null, 1.10 as
    1.1), after the known fields. Not those inside ``database_properties``, read as this
    version knows them: a rewrite drops them."""

    model_config = _KEEPS_UNKNOWN

    manifest_version: int = MANIFEST_VERSION
    # What the artifact is (docs/architecture.md): "dump" is a pg_dump of one database,
    # "globals" the cluster's roles and tablespaces (pg_dumpall --globals-only).
    kind: str = "dump"
    name: str
    database: str
    # The backup run it belongs to (naming.run_id: the run's start, UTC, YYYYmmdd_HHMMSS),
    # the same in every manifest of one run: one globals artifact and a dump per database.
    # None in manifests of older backups.
    run_id: str | None = None
    # The globals only: False when they were taken without the roles' password hashes (a
    # role that is not a superuser cannot read them: pg_dumpall --no-role-passwords).
    role_passwords: bool | None = None
    # The globals only: every database the run set out to back up (POSTGRES_DB as resolved
    # then). Restoring `*` brings back every database with a backup whatever the list: it
    # decides only which are warned of as looking dropped, and the stop for one on it with
    # no backup at all, while its run is the newest of `*` (commands.cluster_selection).
    # None in manifests of older backups.
    run_databases: list[str] | None = None
    # The globals only: True when the run was of every database (POSTGRES_DB='*'), False for
    # a list or one database. Only a run of '*''s list decides a restore of '*''s warnings
    # and its no-backup stop: a list configuration sharing the backups writes globals too.
    # None in manifests of older backups (their newest globals decide, whichever run wrote
    # them, and the warning says they may be a list's).
    run_of_every: bool | None = None
    # The globals only: True when the run of '*' looked into template1 and found nothing of
    # its own (so took no dump of it: its older dumps are no longer judged by health and
    # metrics), False when it dumped it (it held objects, or was taken as any database);
    # None when not looked into (not '*', left out, the look failed) and in manifests of
    # older backups. Kept for runs written before template1_look (below).
    template1_empty: bool | None = None
    # The dumps of a run of '*': what that run did with template1 (TEMPLATE1_DUMPED, _EMPTY,
    # _FAILED below), so that restore --latest and health know it without a globals manifest
    # (DB_BACKUP_GLOBALS=off) and from S3 alone (backupd.storage.template1_runs). None when
    # the run said nothing: not '*', DB_BACKUP_EXCLUDE left template1 out (so a config that
    # leaves it out never undoes another's finding), older backups. Text, not a Literal: a
    # value a later version adds must not make this version reject the whole manifest.
    template1_look: str | None = None
    server_version: str | None = None
    pg_dump_version: str | None = None
    started_at: datetime
    finished_at: datetime
    # The server's view when the dump's snapshot was taken: its clock (now()) and its WAL
    # position. Neither depends on backupd's clock, so a wrong clock shows (issue 13).
    server_time: datetime | None = None
    wal_lsn: str | None = None
    format: str = "plain"
    compression: str = "gzip"
    compression_level: int | None = None
    encrypted: bool = False
    age_recipients: list[str] = []
    raw_bytes: int
    stored_bytes: int
    sha256: str
    verified: bool = False
    verified_at: datetime | None = None
    verify_error: str | None = None
    # Offsite state (issue 4): set when the upload has been committed.
    uploaded_at: datetime | None = None
    upload_error: str | None = None
    # Restore drills (issue 7).
    drilled_at: datetime | None = None
    drill_ok: bool | None = None
    drill_restore_seconds: float | None = None
    # Rows per table ("schema.table") when the backup was taken: exact for small tables,
    # estimated for large ones (backupd.postgres.compare). A drill fails a table that had
    # rows then and is empty in the restore. None in manifests of older backups.
    table_rows: dict[str, int] | None = None
    # Compressed size of every gzip member of the file, in order (plain gzip backups written
    # as independent members): verify inflates them in parallel. None: one stream, read
    # sequentially (older backups, other tools, zstd, encrypted files).
    gzip_members: list[PositiveInt] | None = None
    # Owner, encoding/locale, connection limit, settings, privileges and comment of the
    # database when the backup was taken: a restore puts them back (the SQL file carries
    # none of them). None in manifests of older backups.
    database_properties: DatabaseProperties | None = None
    # Tablespaces other than the database's default that its tables and indexes were in
    # when the backup was taken: a restore onto a server without one of them restores a
    # custom or directory archive with pg_restore --no-tablespaces (plain SQL needs no list:
    # backupd.pipeline.tablespace_sets). None in manifests of older backups.
    object_tablespaces: list[str] | None = None
    # A WAL artifact (kind "wal"): which WAL file of which cluster. None for other kinds.
    wal: WalRecord | None = None


    # A base backup (kind "base"): its LSNs, timeline and cluster. None for other kinds.
    base_backup: BaseBackupFacts | None = None

    def to_json(self) -> bytes:
        return self.model_dump_json(indent=2).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        return cls.model_validate_json(data)


class ManifestError(ValueError):
    """A manifest that exists but cannot be trusted (not JSON, wrong schema)."""


def manifest_for(name: str, data: bytes) -> tuple[Manifest | None, str | None]:
    """(manifest, None) when ``data`` is a valid manifest of backup ``name``, else (None, why).

    Every store reads manifests through this: a manifest that is not JSON, has the wrong
    shape, or describes another file is a problem to report, never a manifest to trust.
    """
    try:
        manifest = parse_manifest(data)
    except ManifestError as exc:
        return None, str(exc)
    if manifest.name != name:
        return None, f"manifest describes {manifest.name}, not {name}"
    return manifest, None


def parse_manifest(data: bytes) -> Manifest:
    try:
        return Manifest.from_json(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "document"
        raise ManifestError(f"manifest is not valid ({where}: {first.get('msg')})") from None

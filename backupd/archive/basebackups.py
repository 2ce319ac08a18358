"""Base backups as stored in a repository (kind ``"base"``): listing, verifying, extracting.

A base backup is one artifact: ``base_<YYYYmmdd_HHMMSS>.tar.gz`` (``.tar.zst``; ``.age`` when
encrypted), pg_basebackup's tar stream with the WAL from its start to its stop LSN and
PostgreSQL's ``backup_manifest`` inside (backupd.archive.take), and backupd's JSON manifest
beside it, whose ``base_backup`` records the LSNs, timeline and cluster. Every read goes
through one stream: stored bytes (hashed) -> age -> decompress -> tar -> the checks against
``backup_manifest`` (backupd.archive.backup_manifest), and, when extracting, the files.
Written once for every repository: the local directory and S3 alike.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import BinaryIO, cast

from pyrage import x25519

from backupd.archive.backup_manifest import BackupContentCheck, BackupContentError
from backupd.archive.dirwriter import DirectoryWriter
from backupd.archive.tarstream import MemberHandler, MemberSink, TarError, TarMember, TarReader
from backupd.archive.walnames import parse_lsn
from backupd.cancel import CancelToken
from backupd.errors import ConfigError, JobFailed
from backupd.manifest import BaseBackupFacts
from backupd.naming import BASE_DATABASE, BASE_KIND
from backupd.pipeline.compress import open_checker
from backupd.pipeline.encrypt import AgeError, decrypt_into
from backupd.pipeline.verification import READ_SIZE, VerifyReport
from backupd.storage.base import BackupEntry, Repository


@dataclass(frozen=True)
class BaseBackupInfo:
    """One committed base backup, as ``recover`` and ``verify --wal`` choose from."""

    name: str
    system_identifier: int
    timeline: int
    start_timeline: int
    start_lsn: int
    stop_lsn: int
    start_time: datetime  # backupd's clock when it started (the name's time)
    stop_time: datetime
    wal_segment_size: int
    verified: bool
    size: int
    encrypted: bool


class BaseBackupDamaged(JobFailed):
    """A stored base backup does not match its manifests; one line naming it and what."""


def base_entries(repository: Repository) -> list[BackupEntry]:
    """The committed base backups of ``repository`` (manifest present), newest first."""
    return repository.list_backups(BASE_DATABASE, BASE_KIND)


def info_of(entry: BackupEntry) -> BaseBackupInfo | None:
    manifest = entry.manifest
    if manifest is None or manifest.base_backup is None:
        return None
    facts = manifest.base_backup
    return BaseBackupInfo(
        name=entry.name, system_identifier=facts.system_identifier, timeline=facts.timeline,
        start_timeline=facts.start_timeline, start_lsn=parse_lsn(facts.start_lsn),
        stop_lsn=parse_lsn(facts.stop_lsn), start_time=manifest.started_at,
        stop_time=manifest.finished_at, wal_segment_size=facts.wal_segment_size,
        verified=entry.verified, size=entry.size, encrypted=entry.parsed.encrypted)


def list_base_backups(repository: Repository) -> list[BaseBackupInfo]:
    """Every committed base backup whose manifest records its facts, newest first (verified
    or not: ``verified`` says)."""
    return [info for entry in base_entries(repository)
            if entry.committed and (info := info_of(entry)) is not None]


# --- the one read ---------------------------------------------------------------------------

class _HashingSource:
    """The stored bytes, hashed as they are read (by us, or by age's decryptor)."""

    def __init__(self, raw: BinaryIO, cancel: CancelToken | None) -> None:
        self._raw = raw
        self._cancel = cancel
        self.digest = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        if self._cancel is not None:
            self._cancel.raise_if_cancelled()
        block = self._raw.read(READ_SIZE if size < 0 else size)
        self.digest.update(block)
        self.size += len(block)
        if self._cancel is not None:
            self._cancel.progress.touch()  # the stall watchdog's view of a base backup read
        return block

    def drain(self) -> None:
        while self.read(READ_SIZE):
            pass


class _Plaintext:
    """age's plaintext (or the stored bytes) -> decompress -> tar."""

    def __init__(self, compression: str, tar: TarReader) -> None:
        self._checker = open_checker(compression)
        self._tar = tar

    def write(self, data: bytes) -> int:
        for piece in self._checker.feed(data):
            self._tar.feed(piece)
        return len(data)

    def finish(self) -> None:
        self._checker.finish()
        self._tar.finish()


@dataclass(frozen=True)
class StreamCheck:
    facts: BaseBackupFacts
    sha256: str
    stored_bytes: int


def read_base_backup(repository: Repository, entry: BackupEntry,
                     identities: list[x25519.Identity] | None, *,
                     extract_to: MemberHandler | None = None,
                     cancel: CancelToken | None = None) -> StreamCheck:
    """Read ``entry`` once, checking every file against its ``backup_manifest`` (and handing
    each member to ``extract_to``); BaseBackupDamaged naming what does not match."""
    manifest = entry.manifest
    if manifest is None or manifest.base_backup is None:
        raise BaseBackupDamaged(f"{entry.name} has no manifest recording a base backup")
    if entry.parsed.encrypted and not identities:
        raise ConfigError(f"DB_BACKUP_AGE_IDENTITY_FILE: {entry.name} is encrypted; set it to "
                          "the age identity file to read it")
    check = BackupContentCheck()
    handler: MemberHandler = check if extract_to is None else _tee(check, extract_to)
    plaintext = _Plaintext(entry.parsed.compression, TarReader(handler))
    try:
        with repository.open(entry.name) as raw:
            source = _HashingSource(raw, cancel)
            if entry.parsed.encrypted:
                assert identities is not None
                decrypt_into(cast(BinaryIO, source), plaintext, identities)
            else:
                while block := source.read(READ_SIZE):
                    plaintext.write(block)
            source.drain()
        plaintext.finish()
        facts = check.finish()
    except AgeError as exc:
        if exc.key_mismatch:  # says nothing about the file
            raise ConfigError(f"DB_BACKUP_AGE_IDENTITY_FILE: {entry.name}: {exc}") from None
        raise BaseBackupDamaged(f"{entry.name}: {exc}") from None
    except (TarError, BackupContentError, ValueError) as exc:
        raise BaseBackupDamaged(f"{entry.name}: {exc}") from None
    if source.digest.hexdigest() != manifest.sha256 or source.size != manifest.stored_bytes:
        raise BaseBackupDamaged(f"{entry.name}: the stored file does not match the SHA-256 "
                                "and size its manifest records")
    if facts.backup_manifest_sha256 != manifest.base_backup.backup_manifest_sha256:
        raise BaseBackupDamaged(f"{entry.name}: its backup_manifest is not the one recorded "
                                "when it was taken")
    return StreamCheck(facts, source.digest.hexdigest(), source.size)


def _tee(first: MemberHandler, second: MemberHandler) -> MemberHandler:
    def handle(member: TarMember) -> MemberSink | None:
        sinks = [s for s in (first(member), second(member)) if s is not None]
        return _Both(sinks) if sinks else None
    return handle


class _Both:
    def __init__(self, sinks: list[MemberSink]) -> None:
        self._sinks = sinks

    def write(self, data: bytes) -> int:
        for sink in self._sinks:
            sink.write(data)
        return len(data)

    def close(self) -> None:
        for sink in self._sinks:
            sink.close()


# --- verifying ------------------------------------------------------------------------------

def verify_base_backup(repository: Repository, entry: BackupEntry,
                       identities: list[x25519.Identity] | None,
                       cancel: CancelToken | None = None) -> VerifyReport:
    """The verify report of one base backup: every file against PostgreSQL's
    backup_manifest, the WAL it needs, the stored SHA-256. Encrypted without the identity:
    the stored SHA-256 and size only (content not checked, said so)."""
    report = VerifyReport(entry.name)
    if entry.manifest is None or entry.manifest.base_backup is None:
        report.add("manifest", False, entry.manifest_error or "no manifest recording a base "
                   "backup (an interrupted upload?)")
        return report
    report.add("manifest", True)
    if entry.parsed.encrypted and not identities:
        digest, size = _stored_digest(repository, entry.name, cancel)
        report.add("sha256", digest == entry.manifest.sha256
                   and size == entry.manifest.stored_bytes,
                   "" if digest == entry.manifest.sha256 else "stored bytes do not match")
        report.content_checked = False
        report.content_note = ("encrypted; set DB_BACKUP_AGE_IDENTITY_FILE to check every file "
                               "against backup_manifest")
        return report
    try:
        read_base_backup(repository, entry, identities, cancel=cancel)
    except ConfigError as exc:  # a wrong identity: inconclusive, never recorded
        report.add("age", False, str(exc))
        report.inconclusive = True
        return report
    except BaseBackupDamaged as exc:
        report.add("backup_manifest", False, str(exc).split(": ", 1)[-1])
        return report
    report.add("sha256", True)
    report.add("backup_manifest", True)
    report.add("wal", True)
    return report


def _stored_digest(repository: Repository, name: str,
                   cancel: CancelToken | None) -> tuple[str, int]:
    with repository.open(name) as raw:
        source = _HashingSource(raw, cancel)
        source.drain()
    return source.digest.hexdigest(), source.size


# --- extracting -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Extracted:
    facts: BaseBackupFacts
    # Entries of ``beside`` the base backup held too: checked, but not unpacked.
    left_out: frozenset[str]


def extract_base_backup(repository: Repository, name: str, target_dir: Path,
                        identities: list[x25519.Identity] | None,
                        cancel: CancelToken | None = None, *,
                        sync_each_file: bool = True,
                        beside: frozenset[str] = frozenset()) -> Extracted:
    """Unpack base backup ``name`` into ``target_dir`` (absent or empty), checking every file
    against PostgreSQL's ``backup_manifest`` on the way. On any mismatch (or a cancel)
    whatever was written is removed and BaseBackupDamaged (or Cancelled) raised.
    ``identities``: as ``load_identities`` gave them, loaded once by the caller (a recover
    reads the identity file once for its checks, its WAL and this).

    ``beside``: entries of ``target_dir`` that the caller owns (recover's WAL copy). They may
    be there already and are left alone, and the base backup's own entries of those names are
    checked but not unpacked: a data directory recovered earlier and never cleaned up carries
    that recover's stale WAL copy into its base backups.

    ``sync_each_file=False``: the caller makes the files durable itself, all at once (recover
    syncs the filesystem before its last step; an fsync per file of a data directory's
    thousands costs more than the unpacking)."""
    entry = repository.entry(name)
    if target_dir.exists() and any(p.name not in beside for p in target_dir.iterdir()):
        raise ConfigError(f"{target_dir} is not empty; extract a base backup into an empty or "
                          "new directory")
    target_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    target_dir.chmod(0o700)
    writer = DirectoryWriter(target_dir, sync_each_file=sync_each_file)
    left_out: set[str] = set()

    def unpack(member: TarMember) -> MemberSink | None:
        top = PurePosixPath(member.path).parts[:1]
        if top and top[0] in beside:
            left_out.add(top[0])
            return None
        return writer(member)

    try:
        checked = read_base_backup(repository, entry, identities, extract_to=unpack,
                                   cancel=cancel)
        writer.finish()
    except BaseException as exc:
        writer.abort()
        for child in target_dir.iterdir():
            if child.name in beside:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    child.unlink()
        if isinstance(writer.error, OSError) and writer.error is not exc:
            # Writing failed first (a full disk); what the reading made of it (age's
            # decryption reports its sink's failure as its own) is not the cause.
            raise writer.error from None
        raise
    return Extracted(checked.facts, frozenset(left_out))

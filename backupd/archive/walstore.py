"""The WAL archive as stored in a Repository (DB_BACKUP_DIR/wal locally, ``<prefix>wal/`` on
S3): one artifact per WAL file, compressed, encrypted when age is on, with a manifest each.

Every artifact's manifest (kind "wal") records which cluster and timeline it belongs to,
where it starts, the segment size and the SHA-256 of the raw WAL, which ``fetch`` checks on
the way out. Locally, the segment pg_receivewal is writing (the spool's ``.partial``) is
part of the archive too: recovery replays it, so the local RPO is seconds, not a segment.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from pyrage import x25519

from backupd.archive.walcodec import RawSink, WalFetchError, encode, read_block, unreadable
from backupd.archive.walfiles import ArchivedWal, committed, current
from backupd.archive.walnames import (
    DEFAULT_SEGMENT_SIZE,
    SPOOL_SUBDIRECTORY,
    WAL_SUBDIRECTORY,
    WalFileName,
    format_lsn,
    parse_wal_name,
)
from backupd.errors import naming
from backupd.manifest import Manifest, WalRecord
from backupd.naming import (
    ENCRYPTED_SUFFIX,
    WAL_DATABASE,
    WAL_KIND,
    partial_name,
    wal_artifact_name,
)
from backupd.pipeline.config import AgeKeyFiles
from backupd.pipeline.encrypt import (
    AgeError,
    decrypt_into,
    encryptor_for,
    load_identities,
    recipient_strings,
)
from backupd.storage.atomic import atomic_write
from backupd.storage.base import BackupEntry, Repository, UnknownBackup
from backupd.storage.local import LocalRepository

__all__ = ["SPOOL_SUBDIRECTORY", "WAL_SUBDIRECTORY", "ArchivedWal", "WalArchive",
           "WalFetchError", "WalOrigin", "local_wal_repository", "offsite_wal_repository",
           "spool_directory"]


@dataclass(frozen=True)
class WalOrigin:
    """The cluster a WAL file comes from, as every manifest records it."""

    system_identifier: str
    segment_size: int = DEFAULT_SEGMENT_SIZE


def local_wal_repository(local: LocalRepository) -> LocalRepository:
    """The local archive: DB_BACKUP_DIR/wal."""
    return LocalRepository(local.directory / WAL_SUBDIRECTORY)


def offsite_wal_repository(offsite: Repository) -> Repository:
    """The offsite archive: ``wal/`` under the offsite repository's prefix (same bucket,
    same client), so `list --remote` and retention of dumps never see WAL."""
    from backupd.storage.s3 import S3Repository  # boto3 only when S3 is set

    if isinstance(offsite, S3Repository):
        config = replace(offsite.config, prefix=offsite.config.prefix + WAL_SUBDIRECTORY + "/")
        return S3Repository(config, client=offsite.client)
    if isinstance(offsite, LocalRepository):
        return local_wal_repository(offsite)
    raise TypeError(f"no WAL archive layout for {type(offsite).__name__}")


def spool_directory(local_archive: LocalRepository) -> Path:
    return local_archive.directory / SPOOL_SUBDIRECTORY


class WalArchive:
    """The WAL archive in ``repository``; ``spool``: pg_receivewal's directory, whose files
    (the live ``.partial``, a completed segment not archived yet) count as archived too.
    ``identities``: loaded from ``crypto`` already (a recover's, read once for all it
    decrypts; retention's offsite archive gets its local one's); None: loaded from
    ``crypto`` on the first encrypted file read, and kept for the next (not before: a
    command reading no encrypted file never needs DB_BACKUP_AGE_IDENTITY_FILE readable)."""

    def __init__(self, repository: Repository, crypto: AgeKeyFiles | None = None, *,
                 spool: Path | None = None,
                 identities: list[x25519.Identity] | None = None) -> None:
        self.repository = repository
        self.crypto = crypto
        self.spool = spool
        self.identities = identities
        # What the last segments() left out as a write in progress, one line each.
        self.left_out: list[str] = []

    # --- reading --------------------------------------------------------------------
    def entries(self) -> list[BackupEntry]:
        return self.repository.list_backups(WAL_DATABASE, WAL_KIND)

    def segments(self) -> list[ArchivedWal]:
        """Every WAL file of the archive, ordered by (timeline, position); history files
        before their timeline's segments. A file both archived and in the spool is listed
        once (the archived one); an archived ``.partial`` superseded by its complete
        segment is not listed.

        A committed file whose stored size is not its manifest's is listed with ``damage``
        (and fetching it fails so), unless it is a write in progress (:meth:`_settle`):
        stored again from the spool (the spool's copy is listed), or, offsite, the live
        partial (the newest file) uploaded again (left out, and said in ``left_out``)."""
        self.left_out = []
        found = committed(self.entries(), self.repository.location)
        segment_size = next((w.wal.segment_size for w in reversed(found.values())),
                            DEFAULT_SEGMENT_SIZE)
        spooled: list[ArchivedWal] = []
        moved = False
        for path in self.spool_files(segment_size):
            wal = parse_wal_name(path.name, segment_size)
            if wal is None or (wal.name in found and found[wal.name].damage is None):
                continue
            try:
                spooled.append(ArchivedWal(wal, None, path.stat().st_size, None,
                                           spool_path=path))
            except FileNotFoundError:
                moved = True
        if moved:
            # Committed (moved out of the spool) since the listing above: it is in the
            # repository now, so list the repository again, once, rather than show a gap.
            found = committed(self.entries(), self.repository.location)
        for wal_file in spooled:
            archived = found.get(wal_file.name)
            if archived is None or archived.damage is not None:
                # Being stored again (a crash left it in the spool after its commit): the
                # new data is in place before its manifest. The spool's copy is the file.
                found[wal_file.name] = wal_file
        self._settle(found)
        return sorted(current(found), key=lambda w: w.wal.sort_key)

    def _settle(self, found: dict[str, ArchivedWal]) -> None:
        """Each file in ``found`` with ``damage`` looked at once more: caught between a write
        of its data and its manifest, it matches now (its spool copy was stored and left the
        spool after the listing above). Without a spool (offsite), the archive's newest file,
        a ``.partial`` that still does not match, is the live partial the daemon uploads
        again every WAL_S3_PARTIAL_SECONDS (the data, then its manifest): left out, said in
        ``left_out``; the archive ends before it until its manifest follows. An older
        ``.partial`` is never uploaded again (only the newest is, once every completed
        segment is up): one that does not match is damage."""
        # A superseded partial (a kill between uploading N and deleting it) is never newest.
        newest = max((w.wal.sort_key for w in current(found) if not w.history), default=None)
        for name, wal in list(found.items()):
            if wal.damage is None or wal.artifact is None:
                continue
            try:
                entry = self.repository.entry(wal.artifact)
            except (UnknownBackup, FileNotFoundError):
                entry = None  # deleted since (retention, a superseded partial)
            again = committed([entry], self.repository.location).get(name) if entry else None
            if again is None:
                del found[name]
            elif again.damage is not None and again.partial and self.spool is None \
                    and again.wal.sort_key == newest:
                del found[name]
                self.left_out.append(
                    f"WAL file {name} left out: {again.damage}; the archive's newest file, "
                    "the live partial uploaded again before its manifest, so the archive "
                    "ends before it: while the daemon runs, that manifest follows within "
                    "WAL_S3_PARTIAL_SECONDS (run again to include it); if the daemon is not "
                    "running, that upload was cut off and this archive cannot give the WAL "
                    "in it")
            else:
                found[name] = again

    def spool_files(self, segment_size: int = DEFAULT_SEGMENT_SIZE) -> list[Path]:
        """The spool's WAL files (pg_receivewal's names), in WAL order."""
        if self.spool is None:
            return []
        try:
            items = list(os.scandir(self.spool))
        except FileNotFoundError:
            return []
        named = [(wal, Path(item.path)) for item in items
                 if item.is_file(follow_symlinks=False)
                 and (wal := parse_wal_name(item.name, segment_size)) is not None]
        return [path for _, path in sorted(named, key=lambda pair: pair[0].sort_key)]

    def find(self, name: str) -> ArchivedWal:
        for wal in self.segments():
            if wal.name == name:
                return wal
        raise WalFetchError(f"WAL file {name} is not in the archive at "
                            f"{self.repository.description}")

    def fetch(self, name: str, dest: Path) -> None:
        """Write WAL file ``name`` (raw: decrypted, decompressed) to ``dest`` atomically,
        checking its SHA-256 on the way; WalFetchError naming the file when it cannot."""
        self.fetch_archived(self.find(name), dest)

    def fetch_archived(self, wal: ArchivedWal, dest: Path) -> None:
        """:meth:`fetch` of a file as :meth:`segments` listed it (no listing per file). A
        spool file that moved since (completed, or committed) is looked up again."""
        name = wal.name
        # The daemon streams while this copies: a listed spool file moves at most twice (the
        # live .partial completed in the spool, then committed out of it).
        for _ in range(3):
            if wal.spool_path is None:
                break
            try:
                _copy_spool_file(wal.spool_path, dest)
                return
            except FileNotFoundError:
                wal = self._moved(wal)
        if wal.spool_path is not None:
            raise WalFetchError(f"WAL file {name} kept moving in the spool while it was "
                                "copied; try again")
        if wal.damage is not None:
            raise WalFetchError(f"WAL file {name} is damaged: {wal.damage}")
        try:
            self._copy_stored(wal, dest)
        except OSError as exc:  # reading the archive raises WalFetchError: this is ``dest``
            raise naming(exc, dest) from None

    def _copy_stored(self, wal: ArchivedWal, dest: Path) -> None:
        name = wal.name
        with atomic_write(dest) as out, contextlib.ExitStack() as reading:
            assert wal.artifact is not None
            digest = hashlib.sha256()
            raw_sink = RawSink(out, digest, wal.artifact)
            where = self.repository.location(wal.artifact)
            try:
                stored = reading.enter_context(self.repository.open(wal.artifact))
            except OSError as exc:  # only the opening: a failed write of ``dest`` is no read
                raise unreadable(name, where, exc) from None
            try:
                self._decode(wal, where, stored, raw_sink)
                raw_sink.finish()
            except AgeError as exc:
                if raw_sink.write_error is not None:  # age reports its sink's failure too
                    raise raw_sink.write_error from None
                raise WalFetchError(f"WAL file {name} ({wal.artifact}): {exc}") from None
            if digest.hexdigest() != wal.sha256:
                raise WalFetchError(f"WAL file {name} ({wal.artifact}) is corrupt: its "
                                    "content does not match the checksum in its manifest")

    def _moved(self, gone: ArchivedWal) -> ArchivedWal:
        """Spool file ``gone`` where it is now, looked up by segment: its completed segment
        (in the spool, else committed), else the file itself committed. A completed
        segment holds everything its .partial did."""
        names = [gone.wal.segment, gone.name] if gone.partial else [gone.name]
        listed = {w.name: w for w in self.segments()}
        for name in names:
            found = listed.get(name)
            if found is not None and found.spool_path != gone.spool_path:
                return found
        raise WalFetchError(f"WAL file {gone.name} left the spool while it was copied and is "
                            f"not in the archive at {self.repository.description}")

    def _decode(self, wal: ArchivedWal, where: str, stored: BinaryIO, sink: RawSink) -> None:
        artifact = wal.artifact or wal.name
        if not artifact.endswith(ENCRYPTED_SUFFIX):
            while chunk := read_block(stored, wal.name, where):
                sink.write(chunk)
            return
        identities = self.identities
        if identities is None and self.crypto is not None:
            identities = self.identities = load_identities(self.crypto)
        if not identities:
            raise WalFetchError(f"{artifact} is encrypted; set DB_BACKUP_AGE_IDENTITY_FILE to "
                                "the age identity that can decrypt it")
        decrypt_into(stored, sink, identities)  # its OSError is an AgeError

    # --- writing --------------------------------------------------------------------
    def store(self, source: Path, wal: WalFileName, origin: WalOrigin, *, compression: str,
              level: int | None, scratch: Path) -> Manifest:
        """Compress (and encrypt) WAL file ``source`` as ``wal`` into the repository, with
        its manifest last; the manifest. ``scratch``: for the file a remote put uploads."""
        encryptor = encryptor_for(self.crypto) if self.crypto is not None else None
        artifact = wal_artifact_name(wal.name, compression, encryptor is not None)
        started = datetime.now(UTC)
        local = self.repository if isinstance(self.repository, LocalRepository) else None
        target = (local.directory / artifact) if local is not None \
            else scratch / partial_name(artifact + ".upload")
        try:
            with atomic_write(target) as out:
                raw_bytes, raw_sha, stored_bytes, stored_sha = encode(
                    source, out, compression, level, encryptor)
            manifest = Manifest(
                kind=WAL_KIND, name=artifact, database=WAL_DATABASE, started_at=started,
                finished_at=datetime.now(UTC), format="wal", compression=compression,
                compression_level=level, encrypted=encryptor is not None,
                age_recipients=recipient_strings(self.crypto)
                if encryptor is not None and self.crypto is not None else [],
                raw_bytes=raw_bytes, stored_bytes=stored_bytes, sha256=stored_sha,
                verified=True, verified_at=datetime.now(UTC),
                wal=WalRecord(wal_file=wal.name, timeline=wal.timeline,
                              start_lsn=format_lsn(wal.start_lsn),
                              segment_size=origin.segment_size,
                              system_identifier=origin.system_identifier,
                              raw_sha256=raw_sha))
            if local is not None:
                local.commit(manifest)
            else:
                self.repository.put(manifest, target)
        finally:
            if local is None:
                target.unlink(missing_ok=True)
        return manifest

    def delete(self, artifact: str) -> None:
        self.repository.delete(artifact)


def _copy_spool_file(path: Path, dest: Path) -> None:
    """FileNotFoundError (and nothing at ``dest``) when ``path`` is gone; once open, a
    rename or unlink of it does not stop the copy. WalFetchError when it cannot be read."""
    try:
        source = open(path, "rb")  # noqa: SIM115 (closed below: only opening is translated)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise unreadable(path.name, str(path), exc) from None
    try:
        with source, atomic_write(dest) as out:
            while chunk := read_block(source, path.name, str(path)):
                out.write(chunk)
    except OSError as exc:  # reading it raises WalFetchError: this is writing ``dest``
        raise naming(exc, dest) from None

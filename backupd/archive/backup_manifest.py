"""PostgreSQL's ``backup_manifest`` checked against a base backup's tar stream as it passes.

``pg_verifybackup`` (PostgreSQL 15) needs a plain directory on disk; a base backup here is one
compressed (often encrypted) tar stream, and its plaintext must never stay on disk. So the
check runs on the stream itself, the same code wherever the stream is read (while
``pg_basebackup`` writes it, when ``verify`` reads it back, while ``recover`` extracts it):

* every regular file's size and SHA-256 (``--manifest-checksums=SHA256``) against the
  manifest's, every manifest file present, no file the manifest does not know (the same
  exceptions as pg_verifybackup: ``pg_wal/``, ``backup_manifest`` itself, the recovery
  signal files and ``postgresql.auto.conf``);
* the manifest's own checksum (``Manifest-Checksum``);
* the WAL the backup needs (``WAL-Ranges``, from its start to its stop LSN) is in the tar's
  ``pg_wal/``: every segment whole, of the cluster's segment size, and written by this
  cluster (the system identifier in each segment's first page equals ``pg_control``'s).
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime

from backupd.archive.tarstream import MemberSink, TarMember
from backupd.archive.walnames import lsn_to_segno, parse_lsn, segment_name
from backupd.manifest import BaseBackupFacts

MANIFEST_PATH = "backup_manifest"
LABEL_PATH = "backup_label"
CONTROL_PATH = "global/pg_control"
WAL_DIRECTORY = "pg_wal/"
# What pg_verifybackup does not expect in the manifest either.
NOT_IN_MANIFEST = ("backup_manifest", "postgresql.auto.conf", "recovery.signal",
                   "standby.signal")
# XLogLongPageHeaderData: system identifier at 24, segment size at 32 (native byte order:
# a physical backup only ever restores on the architecture that wrote it).
_WAL_HEADER_BYTES = 40
_SEGMENT_NAME = re.compile(r"[0-9A-F]{24}")


class BackupContentError(ValueError):
    """The tar stream does not match its backup_manifest; one line naming what."""


def segments_between(timeline: int, start_lsn: int, end_lsn: int,
                     segment_size: int) -> list[str]:
    """The WAL segments holding the bytes from ``start_lsn`` up to ``end_lsn``."""
    last = lsn_to_segno(max(start_lsn, end_lsn - 1), segment_size)
    return [segment_name(timeline, segno, segment_size)
            for segno in range(lsn_to_segno(start_lsn, segment_size), last + 1)]


@dataclass
class _Seen:
    size: int
    sha256: str
    head: bytes


class _HashingSink:
    """One member's data: hashed, sized, its first bytes kept (whole for small text files)."""

    def __init__(self, on_close: _ContentCheck, member: TarMember, keep: int) -> None:
        self._owner = on_close
        self._member = member
        self._keep = keep
        self._hash = hashlib.sha256()
        self._head = bytearray()
        self._size = 0

    def write(self, data: bytes) -> int:
        self._hash.update(data)
        self._size += len(data)
        if len(self._head) < self._keep:
            self._head += data[: self._keep - len(self._head)]
        return len(data)

    def close(self) -> None:
        self._owner.seen[self._member.path] = _Seen(self._size, self._hash.hexdigest(),
                                                    bytes(self._head))


@dataclass
class _ContentCheck:
    seen: dict[str, _Seen] = field(default_factory=dict)


class BackupContentCheck:
    """The MemberHandler that checks a base backup's tar stream; ``finish`` gives its facts
    or raises BackupContentError."""

    def __init__(self) -> None:
        self._state = _ContentCheck()
        self.other_members: list[str] = []

    def __call__(self, member: TarMember) -> MemberSink | None:
        if member.kind == "directory":
            return None
        if member.kind != "file":
            self.other_members.append(member.path)
            return None
        keep = (member.size if member.path in (MANIFEST_PATH, LABEL_PATH)
                else _WAL_HEADER_BYTES if member.path.startswith(WAL_DIRECTORY)
                else 8 if member.path == CONTROL_PATH else 0)
        return _HashingSink(self._state, member, keep)

    @property
    def bytes_seen(self) -> int:
        return sum(item.size for item in self._state.seen.values())

    def finish(self) -> BaseBackupFacts:
        seen = self._state.seen
        if self.other_members:
            raise BackupContentError(
                f"holds {self.other_members[0]!r}, which is not a file or a directory "
                "(a tablespace link? base backups of clusters with tablespaces are not "
                "supported)")
        if MANIFEST_PATH not in seen:
            raise BackupContentError("the tar stream holds no backup_manifest")
        text = seen[MANIFEST_PATH].head
        document = _manifest_document(text)
        problems = _file_problems(document, seen)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise BackupContentError(problems[0] + more)
        return _facts(document, seen, text)


def _manifest_document(text: bytes) -> dict[str, object]:
    marker = text.rfind(b'"Manifest-Checksum"')
    if marker < 0:
        raise BackupContentError("backup_manifest has no Manifest-Checksum (truncated?)")
    try:
        document = json.loads(text)
    except ValueError:
        raise BackupContentError("backup_manifest is not valid JSON") from None
    if not isinstance(document, dict):
        raise BackupContentError("backup_manifest is not a JSON object")
    recorded = document.get("Manifest-Checksum")
    if hashlib.sha256(text[:marker]).hexdigest() != recorded:
        raise BackupContentError("backup_manifest does not match its own Manifest-Checksum")
    return document


def _manifest_files(document: dict[str, object]) -> list[dict[str, object]]:
    files = document.get("Files")
    if not isinstance(files, list):
        raise BackupContentError("backup_manifest lists no Files")
    return [f for f in files if isinstance(f, dict)]


def _path_of(entry: dict[str, object]) -> str:
    if "Encoded-Path" in entry:
        return bytes.fromhex(str(entry["Encoded-Path"])).decode("utf-8", "surrogateescape")
    return str(entry.get("Path"))


def _file_problems(document: dict[str, object], seen: dict[str, _Seen]) -> list[str]:
    problems: list[str] = []
    listed: set[str] = set()
    for entry in _manifest_files(document):
        path = _path_of(entry)
        listed.add(path)
        found = seen.get(path)
        if found is None:
            problems.append(f"{path} is in backup_manifest but missing from the backup")
        elif found.size != entry.get("Size"):
            problems.append(f"{path} has {found.size} bytes, backup_manifest says "
                            f"{entry.get('Size')}")
        elif (entry.get("Checksum-Algorithm") == "SHA256"
              and found.sha256 != entry.get("Checksum")):
            problems.append(f"{path} does not match its SHA-256 in backup_manifest")
    for path in seen:
        if (path not in listed and not path.startswith(WAL_DIRECTORY)
                and path not in NOT_IN_MANIFEST):
            problems.append(f"{path} is in the backup but not in backup_manifest")
    return problems


def _label_fields(seen: dict[str, _Seen]) -> dict[str, str]:
    label = seen.get(LABEL_PATH)
    if label is None:
        raise BackupContentError("the tar stream holds no backup_label")
    fields: dict[str, str] = {}
    for line in label.head.decode("utf-8", "replace").splitlines():
        key, _, value = line.partition(": ")
        fields[key] = value
    return fields


def _facts(document: dict[str, object], seen: dict[str, _Seen], text: bytes) -> BaseBackupFacts:
    label = _label_fields(seen)
    control = seen.get(CONTROL_PATH)
    if control is None or len(control.head) < 8:
        raise BackupContentError("the tar stream holds no global/pg_control")
    system_identifier = int.from_bytes(control.head[:8], sys.byteorder)
    ranges = document.get("WAL-Ranges")
    if not isinstance(ranges, list) or not ranges:
        raise BackupContentError("backup_manifest records no WAL-Ranges")
    wal = {path[len(WAL_DIRECTORY):]: item for path, item in seen.items()
           if path.startswith(WAL_DIRECTORY)
           and _SEGMENT_NAME.fullmatch(path[len(WAL_DIRECTORY):])}
    if not wal:
        raise BackupContentError("the backup holds no WAL (pg_wal/ is empty); it could never "
                                 "reach consistency on its own")
    segment_size = _segment_size(wal, system_identifier)
    needed: list[str] = []
    for item in ranges:
        needed += segments_between(int(item["Timeline"]), parse_lsn(item["Start-LSN"]),
                                   parse_lsn(item["End-LSN"]), segment_size)
    missing = [name for name in needed if name not in wal]
    if missing:
        raise BackupContentError(f"WAL segment {missing[0]} that the backup needs (from its "
                                 "start to its stop LSN) is missing from pg_wal/")
    first, last = ranges[0], ranges[-1]
    return BaseBackupFacts(
        system_identifier=system_identifier, timeline=int(last["Timeline"]),
        start_timeline=int(first["Timeline"]), start_lsn=first["Start-LSN"],
        stop_lsn=last["End-LSN"], wal_segment_size=segment_size,
        start_time=_label_time(label.get("START TIME")), label=label.get("LABEL", ""),
        files=len(_manifest_files(document)), wal_files=sorted(needed),
        backup_manifest_sha256=hashlib.sha256(text).hexdigest())


def _segment_size(wal: dict[str, _Seen], system_identifier: int) -> int:
    sizes = set()
    for name, item in wal.items():
        head = item.head
        if len(head) < _WAL_HEADER_BYTES:
            raise BackupContentError(f"WAL segment {name} in pg_wal/ is truncated")
        sysid = int.from_bytes(head[24:32], sys.byteorder)
        recorded = int.from_bytes(head[32:36], sys.byteorder)
        if sysid != system_identifier:
            raise BackupContentError(f"WAL segment {name} in pg_wal/ was written by another "
                                     f"cluster (system identifier {sysid}, the backup's is "
                                     f"{system_identifier})")
        if item.size != recorded:
            raise BackupContentError(f"WAL segment {name} in pg_wal/ has {item.size} bytes, "
                                     f"not the {recorded} of a whole segment")
        sizes.add(recorded)
    if len(sizes) != 1:
        raise BackupContentError("WAL segments of different sizes in pg_wal/")
    return sizes.pop()


def _label_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        stamp = datetime.strptime(text.rsplit(" ", 1)[0], "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return None
    # pg_basebackup writes the server's log_timezone; only UTC is taken as it stands.
    return stamp.replace(tzinfo=UTC) if text.endswith((" UTC", " GMT")) else None

"""Verifying a backup file: everything that can be proven without a database.

One pass over the file feeds both the SHA-256 and the decompressor, so a verify
reads each byte once. Used after every backup, by ``backupd verify``, before
every restore, and for downloads from S3.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import os
import stat
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyrage import x25519

from backupd.configs import age_key_files
from backupd.manifest import Manifest
from backupd.naming import ParsedName
from backupd.pipeline.compress import BLOCK_SIZE, MemberCheck, check_gzip_member, open_checker
from backupd.pipeline.custom import check_archive
from backupd.pipeline.encrypt import AgeError, decrypt_into, load_identities
from backupd.pipeline.growing import GrowingFile, WriteAbandoned
from backupd.pipeline.sqlcheck import TAIL_BYTES, HeadTail
from backupd.settings import Settings

# Sequential reads of a few MiB: few system calls, little memory.
READ_SIZE = 2 * BLOCK_SIZE


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class VerifyReport:
    name: str
    checks: list[Check] = field(default_factory=list)
    content_checked: bool = True
    content_note: str = ""  # why the content was not checked, when it was not
    # The failure says nothing about the file (a wrong age identity): not to be recorded.
    inconclusive: bool = False

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(check.ok for check in self.checks)

    @property
    def problem(self) -> str | None:
        failed = [c for c in self.checks if not c.ok]
        return "; ".join(f"{c.name}: {c.detail}" for c in failed) if failed else None

    def add(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append(Check(name, ok, detail))
        return ok

    def clear_passing_details(self) -> None:
        """The "ok" detail text of passing checks only describes failures: drop it."""
        for check in self.checks:
            if check.ok:
                check.detail = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ok": self.ok,
            "content_checked": self.content_checked,
            "content_note": self.content_note,
            "checks": [{"check": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks],
        }


# A content checker for formats other than plain SQL (issue 6: custom format, age):
# given the path and the parsed name, add its checks to the report.
ContentChecker = Callable[[Path, ParsedName, VerifyReport], None]


def verify_file(
    path: Path,
    parsed: ParsedName,
    manifest: Manifest | None,
    manifest_error: str | None = None,
    content_checker: ContentChecker | None = None,
    *,
    read_back: FileScan | None = None,
) -> VerifyReport:
    """Every check on one backup file. ``read_back``: the scan the backup already made of
    this file while writing it (``follow_growing_file``), used instead of reading it again."""
    report = VerifyReport(parsed.name)
    if not check_file_shape(report, path, manifest, manifest_error):
        return report
    plain = parsed.backup_format == "plain" and not parsed.encrypted
    members = manifest.gzip_members if manifest is not None and plain else None
    try:
        if read_back is None:
            result = scan_file(path, parsed.compression if plain else None, members)
        else:
            result = read_back
            result.raise_problem()
            info = path.lstat()
            if (info.st_dev, info.st_ino) != result.identity or info.st_size != result.size:
                raise OSError(0, f"the read-back covered {result.size} bytes of another file")
    except OSError as exc:
        report.add("readable", False, exc.strerror or str(exc))
        return report
    report.add("readable", True)
    content = result.content
    if content is not None:
        stream_ok = content.add_checks(report)
        if not stream_ok and isinstance(content, ParallelGzipCheck):
            # Corrupt data, or a manifest whose member sizes are wrong? Read the file as
            # one stream, as `gzip -t` would, to report which (failures only).
            report.checks.pop()
            content = scan_file(path, parsed.compression).content
            assert content is not None
            stream_ok = content.add_checks(report)
        if members is not None and stream_ok:
            check_gzip_members(report, content.member_sizes, members)
    if manifest is not None:
        report.add("sha256", result.sha256 == manifest.sha256,
                   "checksum does not match the manifest (the file changed after it was written)")
    if not plain:
        # Unencrypted custom archives need no key, so they are always checked.
        (content_checker or check_other_content)(path, parsed, report)
    report.clear_passing_details()
    return report


def check_gzip_members(report: VerifyReport, found: list[int], recorded: list[int]) -> None:
    """The file's gzip members are the ones the manifest records (after an intact stream)."""
    report.add("gzip members", found == recorded,
               "the member sizes recorded in the manifest do not match the file's "
               f"gzip members ({len(recorded)} recorded, {len(found)} in the file)")


def check_file_shape(report: VerifyReport, path: Path, manifest: Manifest | None,
                     manifest_error: str | None) -> bool:
    """The checks before any byte is read: manifest, regular non-empty file, size."""
    if manifest_error is not None:
        report.add("manifest", False, manifest_error)
    try:
        info = path.lstat()
    except OSError as exc:
        return report.add("readable", False, exc.strerror or "cannot stat")
    if not stat.S_ISREG(info.st_mode):
        return report.add("readable", False, "not a regular file (symbolic links are refused)")
    if not report.add("non-empty", info.st_size > 0, "the file is empty"):
        return False
    if manifest is not None:
        report.add("size", info.st_size == manifest.stored_bytes,
                   f"{info.st_size} bytes on disk, manifest says {manifest.stored_bytes}")
    return True


class FileScan:
    """What one sequential read of the stored bytes proves: their SHA-256 and size and, for
    plain SQL, the content checks. Fed by a finished file (``scan_file``) or by one still
    being written (``follow_growing_file``): the same code checks both."""

    def __init__(self, compression: str | None, members: list[int] | None = None,
                 forward: Callable[[bytes], object] | None = None) -> None:
        self._digest = hashlib.sha256()
        self.size = 0
        self.identity: tuple[int, int] = (0, 0)  # (st_dev, st_ino) of the file read
        self.content: PlainSqlCheck | ParallelGzipCheck | None = None
        if members is not None and compression == "gzip" and forward is None:
            self.content = ParallelGzipCheck(members)
        elif compression is not None:
            self.content = PlainSqlCheck(compression, forward)
        self._problem: OSError | None = None

    def read(self, fd: int, chunks: Iterable[bytes]) -> FileScan:
        info = os.fstat(fd)
        self.identity = (info.st_dev, info.st_ino)
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        for chunk in chunks:
            self._digest.update(chunk)
            self.size += len(chunk)
            if self.content is not None:
                self.content.write(chunk)
        return self

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()

    def fail(self, problem: OSError) -> None:
        self._problem = problem
        if isinstance(self.content, ParallelGzipCheck):
            self.content.close()

    def raise_problem(self) -> None:
        if self._problem is not None:
            raise self._problem


def _open_no_follow(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_NOFOLLOW)


def scan_file(path: Path, compression: str | None, members: list[int] | None = None,
              forward: Callable[[bytes], object] | None = None) -> FileScan:
    """Read a finished file once (raises OSError)."""
    result = FileScan(compression, members, forward)
    fd = _open_no_follow(path)
    try:
        result.read(fd, iter(lambda: os.read(fd, READ_SIZE), b""))
    except BaseException:
        if isinstance(result.content, ParallelGzipCheck):
            result.content.close()
        raise
    finally:
        os.close(fd)
    return result


def scan(path: Path, compression: str | None,
         forward: Callable[[bytes], object] | None = None) -> tuple[str, PlainSqlCheck | None]:
    """SHA-256 of the file and, for plain SQL, the content check fed with every byte in order
    (``forward`` gets the decompressed SQL: restore streams it on to psql)."""
    result = scan_file(path, compression, forward=forward)
    assert not isinstance(result.content, ParallelGzipCheck)
    return result.sha256, result.content


def follow_growing_file(path: Path, growing: GrowingFile, compression: str | None,
                        writer_identity: tuple[int, int]) -> FileScan:
    """The backup's read-back: read ``path`` back from the file while it is being written.

    Never raises: a failure is kept in the result and reported by ``verify_file``.
    """
    result = FileScan(compression)
    try:
        fd = _open_no_follow(path)
    except OSError as exc:
        result.fail(exc)
        return result
    try:
        result.read(fd, growing.chunks(fd, READ_SIZE))
        if result.identity != writer_identity:
            raise OSError(0, "the read-back opened another file than the one written")
    except OSError as exc:
        result.fail(exc)
    except WriteAbandoned:
        result.fail(OSError(0, "the write was abandoned"))
    finally:
        os.close(fd)
    return result


class PlainSqlCheck:
    """Decompresses a plain-SQL backup fed in chunks and checks pg_dump's first and last lines.

    Also the sink for decrypted ``.age`` content, so both paths run the same checks.
    ``forward``, if given, receives the decompressed SQL in order (restore).
    """

    def __init__(self, compression: str,
                 forward: Callable[[bytes], object] | None = None) -> None:
        self.compression = compression
        self._checker = open_checker(compression)
        self._head_tail = HeadTail()
        self._forward = forward
        self._stream_problem: str | None = None

    @property
    def member_sizes(self) -> list[int]:
        return self._checker.member_sizes

    def write(self, chunk: bytes) -> int:
        if self._stream_problem is None:
            pieces = self._checker.feed(chunk)
            while True:
                try:
                    piece = next(pieces, None)
                except (ValueError, OSError) as exc:
                    self._stream_problem = _describe_stream_error(exc)
                    break
                if piece is None:
                    break
                self._head_tail.feed(piece)
                # Outside the try: a failing consumer (psql gone) says nothing about the file.
                if self._forward is not None:
                    self._forward(piece)
        return len(chunk)

    def add_checks(self, report: VerifyReport) -> bool:
        """Add the stream and SQL checks; False when the stream itself failed."""
        if self._stream_problem is None:
            try:
                self._checker.finish()
            except ValueError as exc:
                self._stream_problem = str(exc)
        return _add_content_checks(report, self.compression, self._stream_problem,
                                   self._head_tail)


def _add_content_checks(report: VerifyReport, compression: str, stream_problem: str | None,
                        head_tail: HeadTail) -> bool:
    if not report.add(f"{compression} integrity", stream_problem is None, stream_problem or ""):
        return False
    problem = head_tail.problem()
    report.add("sql content", problem is None, problem or "")
    return True


class ParallelGzipCheck:
    """The checks of PlainSqlCheck for a gzip file whose member sizes the manifest records:
    members are cut from the stream as it is read and inflated on all cores, a few in
    flight (memory stays flat), their first and last bytes summed up in order."""

    def __init__(self, members: list[int]) -> None:
        self.compression = "gzip"
        self.member_sizes = members
        self._next = 0  # index of the member being gathered
        self._gathered: list[bytes | memoryview] = []
        self._gathered_bytes = 0
        self._offset = 0  # file offset where the member being gathered starts
        self._extra = 0  # bytes beyond the recorded members
        workers = max(1, min(4, os.cpu_count() or 1))
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="inflate")
        self._in_flight: collections.deque[tuple[int, int, Future[MemberCheck]]] = (
            collections.deque())
        self._max_in_flight = workers * 2
        self._head_tail = HeadTail()
        self._problem: str | None = None

    def write(self, chunk: bytes) -> int:
        view = memoryview(chunk)
        while view:
            if self._next >= len(self.member_sizes):
                self._extra += len(view)
                break
            want = self.member_sizes[self._next] - self._gathered_bytes
            self._gathered.append(view[:want])
            self._gathered_bytes += len(self._gathered[-1])
            view = view[want:]
            if self._gathered_bytes == self.member_sizes[self._next]:
                self._submit()
        return len(chunk)

    def _submit(self) -> None:
        parts = self._gathered
        member = parts[0] if len(parts) == 1 else b"".join(parts)
        if self._problem is None:
            future = self._pool.submit(check_gzip_member, member, TAIL_BYTES)
            self._in_flight.append((self._next, self._offset, future))
        self._offset += self._gathered_bytes
        self._next += 1
        self._gathered, self._gathered_bytes = [], 0
        while len(self._in_flight) > self._max_in_flight:
            self._collect_oldest()

    def _collect_oldest(self) -> None:
        index, offset, future = self._in_flight.popleft()
        result = future.result()
        if self._problem is not None:
            return
        if result.problem is not None:
            end = offset + self.member_sizes[index]
            problem = _describe_stream_error(ValueError(result.problem))
            self._problem = (f"gzip member {index + 1} of {len(self.member_sizes)} (bytes "
                             f"{offset}-{end}): {problem}")
        else:
            self._head_tail.feed_part(result.head, result.tail, result.raw_bytes)

    def close(self) -> None:
        while self._in_flight:
            self._collect_oldest()
        self._pool.shutdown(wait=True)

    def add_checks(self, report: VerifyReport) -> bool:
        self.close()
        if self._problem is None:
            recorded = sum(self.member_sizes)
            if self._extra or self._next < len(self.member_sizes) or not self.member_sizes:
                self._problem = (f"the file has {self._offset + self._gathered_bytes + self._extra}"
                                 f" bytes where the manifest's gzip members add up to {recorded}")
        return _add_content_checks(report, "gzip", self._problem, self._head_tail)


def _describe_stream_error(exc: BaseException) -> str:
    text = str(exc)
    if "incorrect header" in text or "Error -3" in text or "invalid" in text.lower():
        return f"not a valid compressed stream ({text})"
    return text


# --- content of custom archives and encrypted backups (issue 6) ----------------------------

def content_checker_for(settings: Settings) -> ContentChecker:
    """The content checker for this machine: decrypts ``.age`` files when it holds an identity.

    Raises ConfigError when DB_BACKUP_AGE_IDENTITY_FILE is set but unusable.
    """
    identities = load_identities(age_key_files(settings))
    return lambda path, parsed, report: check_other_content(path, parsed, report, identities)


def check_other_content(path: Path, parsed: ParsedName, report: VerifyReport,
                        identities: list[x25519.Identity] | None = None) -> None:
    """Custom archives: pg_restore reads the TOC and all data; ``.age``: decrypt, then check."""
    if parsed.encrypted and identities is None:
        report.content_checked = False
        report.content_note = ("encrypted: size and SHA-256 were checked, the content was not "
                               "(set DB_BACKUP_AGE_IDENTITY_FILE to check it)")
        return
    keys = identities if parsed.encrypted else None
    try:
        if parsed.backup_format == "custom":
            archive = check_archive(path, keys)
            if keys is not None:
                report.add("age decryption", True)
            if report.add("pg_restore --list", archive.toc_problem is None,
                          archive.toc_problem or ""):
                report.add("archive data", archive.data_problem is None,
                           archive.data_problem or "")
        else:
            assert keys is not None
            content = PlainSqlCheck(parsed.compression)
            with open(path, "rb") as source:
                decrypt_into(source, content, keys)
            report.add("age decryption", True)
            content.add_checks(report)
    except AgeError as exc:
        report.add("age decryption", False, str(exc))
        report.inconclusive = exc.key_mismatch
    except OSError as exc:
        report.add("readable", False, exc.strerror or str(exc))

"""Every check on one stored backup file, in one order, for every caller.

One pass over the file feeds both the SHA-256 and the decompressor (and, for an encrypted
backup with its key at hand, the decryptor), so a verify reads each byte once. Used after
every backup (on the read-back), by ``backupd verify``, before every restore, and while
restoring: restore passes ``forward`` and receives the SQL as it is checked.
"""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path

from pyrage import x25519

from backupd.manifest import Manifest
from backupd.naming import GLOBALS_KIND, ParsedName
from backupd.pipeline.custom import check_archive
from backupd.pipeline.directory import Extractor
from backupd.pipeline.encrypt import AgeError, decrypt_into
from backupd.pipeline.verification.content import (
    CustomArchiveCheck,
    ParallelGzipCheck,
    PlainSqlCheck,
)
from backupd.pipeline.verification.directory import DirectoryArchiveCheck
from backupd.pipeline.verification.report import VerifyReport
from backupd.pipeline.verification.scan import DecryptingScan, FileScan, scan_file
from backupd.progress import Progress, Stream, counted

Identities = list[x25519.Identity] | None


def verify_file(
    path: Path,
    parsed: ParsedName,
    manifest: Manifest | None,
    manifest_error: str | None = None,
    identities: Identities = None,
    *,
    read_back: FileScan | None = None,
    forward: Callable[[bytes], object] | None = None,
    forward_ahead: bool = False,
    extract: Extractor | None = None,
    progress: Progress | None = None,
) -> VerifyReport:
    """Every check on one backup file.

    ``identities``: age keys, to check an encrypted backup's content (without them only
    its size and SHA-256 are checked). ``read_back``: the scan the backup already made of
    this file while writing it (``follow_growing_file``), used instead of reading it again.
    ``forward``: receives the decompressed SQL of a plain backup, in order, as it is checked;
    ``forward_ahead``: as fast as it comes (gzip members inflated on all cores), not at the
    pace of a consumer such as psql.
    ``extract``: receives the members of a directory-format backup as they are checked.
    ``progress``: the job's, to count the bytes read (the stall watchdog, displays).
    """
    report = VerifyReport(parsed.name)
    cluster = parsed.kind == GLOBALS_KIND  # pg_dumpall's SQL, not pg_dump's
    if not check_file_shape(report, path, manifest, manifest_error):
        return report
    plain = parsed.backup_format == "plain"
    directory = parsed.backup_format == "directory"
    unencrypted_sql = plain and not parsed.encrypted
    # Plain SQL and directory tars are checked in the one pass over the stored bytes.
    decrypting = ((plain or directory) and parsed.encrypted and identities is not None
                  and read_back is None)
    archive: DirectoryArchiveCheck | CustomArchiveCheck | None = None
    if directory:
        archive = DirectoryArchiveCheck(extract)
    elif parsed.backup_format == "custom" and not parsed.encrypted and read_back is None:
        archive = CustomArchiveCheck()  # pg_restore reads the archive in the same pass
    members = manifest.gzip_members if manifest is not None and unencrypted_sql else None
    result: FileScan | DecryptingScan
    try:
        if read_back is not None:
            result = read_back
            result.raise_problem()
            info = path.lstat()
            if (info.st_dev, info.st_ino) != result.identity or info.st_size != result.size:
                raise OSError(0, f"the read-back covered {result.size} bytes of another file")
        else:
            # Of the stored size: a display shows a percentage and the time left (a restore
            # feeds psql from this same read).
            with (progress or Progress()).stream(f"verify read of {parsed.name}",
                                                 total=_stored_size(path)) as stream:
                if decrypting:
                    assert identities is not None
                    assert not isinstance(archive, CustomArchiveCheck)
                    result = DecryptingScan(parsed.compression, forward, archive).read(
                        path, identities, stream)
                else:
                    result = scan_file(path, parsed.compression if unencrypted_sql else None,
                                       members, forward,
                                       archive if not parsed.encrypted else None, stream,
                                       forward_ahead=forward_ahead)
    except OSError as exc:
        report.add("readable", False, exc.strerror or str(exc))
        return report
    report.add("readable", True)
    if isinstance(result, FileScan):
        _check_stream(report, path, parsed, result, members, cluster=cluster)
    if manifest is not None:
        report.add("sha256", result.sha256 == manifest.sha256,
                   "checksum does not match the manifest (the file changed after it was written)")
    if isinstance(result, DecryptingScan):
        _add_age_outcome(report, result.age_problem)
        if result.age_problem is None:
            result.content.add_checks(report, cluster=cluster)
    elif not unencrypted_sql and not isinstance(result.content,
                                                (DirectoryArchiveCheck, CustomArchiveCheck)):
        # Unencrypted custom archives need no key, so they are always checked.
        check_other_content(path, parsed, report, identities, progress)
    report.clear_passing_details()
    return report


def _stored_size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None  # the read below reports it


def _check_stream(report: VerifyReport, path: Path, parsed: ParsedName, result: FileScan,
                  members: list[int] | None, *, cluster: bool) -> None:
    content = result.content
    if content is None:
        return
    stream_ok = content.add_checks(report, cluster=cluster)
    if not stream_ok and isinstance(content, ParallelGzipCheck):
        # Corrupt data, or a manifest whose member sizes are wrong? Read the file as
        # one stream, as `gzip -t` would, to report which (failures only).
        report.checks.pop()
        content = scan_file(path, parsed.compression).content
        assert content is not None
        stream_ok = content.add_checks(report, cluster=cluster)
    if members is not None and stream_ok:
        check_gzip_members(report, content.member_sizes, members)


def _add_age_outcome(report: VerifyReport, problem: AgeError | None) -> None:
    report.add("age decryption", problem is None, str(problem or ""))
    if problem is not None:
        # A wrong key says nothing about the file: such a verdict is never recorded.
        report.inconclusive = problem.key_mismatch


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


def check_other_content(path: Path, parsed: ParsedName, report: VerifyReport,
                        identities: Identities = None, progress: Progress | None = None) -> None:
    """Custom archives: pg_restore reads the TOC and all data; ``.age``: decrypt, then check
    (plain SQL, directory tars)."""
    if parsed.encrypted and identities is None:
        report.content_checked = False
        report.content_note = ("encrypted: size and SHA-256 were checked, the content was not "
                               "(set DB_BACKUP_AGE_IDENTITY_FILE to check it)")
        return
    keys = identities if parsed.encrypted else None
    with (progress or Progress()).stream(f"content check of {parsed.name}") as stream:
        _check_other_content(path, parsed, report, keys, stream)


def _check_other_content(path: Path, parsed: ParsedName, report: VerifyReport,
                         keys: Identities, stream: Stream) -> None:
    try:
        if parsed.backup_format == "custom":
            archive = check_archive(path, keys, stream)
            if keys is not None:
                report.add("age decryption", True)
            if report.add("pg_restore --list", archive.toc_problem is None,
                          archive.toc_problem or ""):
                report.add("archive data", archive.data_problem is None,
                           archive.data_problem or "")
        else:
            assert keys is not None
            content: PlainSqlCheck | DirectoryArchiveCheck = (
                DirectoryArchiveCheck() if parsed.backup_format == "directory"
                else PlainSqlCheck(parsed.compression))
            with open(path, "rb") as source:
                decrypt_into(source, counted(content, stream), keys)
            report.add("age decryption", True)
            content.add_checks(report, cluster=parsed.kind == GLOBALS_KIND)
    except AgeError as exc:
        _add_age_outcome(report, exc)
    except OSError as exc:
        report.add("readable", False, exc.strerror or str(exc))

"""Verifying a backup file: everything that can be proven without a database.

One pass over the file feeds both the SHA-256 and the decompressor, so a verify
reads each byte once. Used after every backup, by ``backupd verify``, before
every restore, and for downloads from S3.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyrage import x25519

from backupd.manifest import Manifest
from backupd.naming import ParsedName
from backupd.pipeline.compress import BLOCK_SIZE, open_checker
from backupd.pipeline.custom import check_archive
from backupd.pipeline.encrypt import AgeError, decrypt_into, load_identities
from backupd.pipeline.sqlcheck import HeadTail
from backupd.settings import Settings

READ_SIZE = 4 * BLOCK_SIZE


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
) -> VerifyReport:
    report = VerifyReport(parsed.name)
    if not check_file_shape(report, path, manifest, manifest_error):
        return report

    plain = parsed.backup_format == "plain" and not parsed.encrypted
    try:
        digest, content = scan(path, parsed.compression if plain else None)
    except OSError as exc:
        report.add("readable", False, exc.strerror or str(exc))
        return report
    report.add("readable", True)
    if content is not None:
        content.add_checks(report)
    if manifest is not None:
        report.add("sha256", digest == manifest.sha256,
                   "checksum does not match the manifest (the file changed after it was written)")
    if not plain:
        # Unencrypted custom archives need no key, so they are always checked.
        (content_checker or check_other_content)(path, parsed, report)
    report.clear_passing_details()
    return report


def check_file_shape(report: VerifyReport, path: Path, manifest: Manifest | None,
                     manifest_error: str | None) -> bool:
    """The checks that read no content: manifest usable, a non-empty regular file, size as
    the manifest says. False when the content cannot be read at all (stop there).

    Restore runs these before touching the database, then the content checks in its pass.
    """
    if manifest_error is not None:
        report.add("manifest", False, manifest_error)
    try:
        info = path.lstat()
    except OSError as exc:
        report.add("readable", False, exc.strerror or "cannot stat")
        return False
    if not stat.S_ISREG(info.st_mode):
        report.add("readable", False, "not a regular file (symbolic links are refused)")
        return False
    if not report.add("non-empty", info.st_size > 0, "the file is empty"):
        return False
    if manifest is not None:
        report.add("size", info.st_size == manifest.stored_bytes,
                   f"{info.st_size} bytes on disk, manifest says {manifest.stored_bytes}")
    return True


def scan(path: Path, compression: str | None,
         forward: Callable[[bytes], object] | None = None) -> tuple[str, PlainSqlCheck | None]:
    """SHA-256 of the file and, for plain SQL, the finished content check.

    ``forward`` (plain SQL only) receives the decompressed content, in order, as it is
    checked: restore streams it into psql in the same pass and commits only if it verified.
    """
    digest = hashlib.sha256()
    content = PlainSqlCheck(compression, forward) if compression else None
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb", buffering=0) as handle:
        while chunk := handle.read(READ_SIZE):
            digest.update(chunk)
            if content is not None:
                content.write(chunk)
    return digest.hexdigest(), content


class PlainSqlCheck:
    """Decompresses a plain-SQL backup fed in chunks and checks pg_dump's first and last lines.

    Also the sink for decrypted ``.age`` content, so both paths run the same checks.
    """

    def __init__(self, compression: str,
                 forward: Callable[[bytes], object] | None = None) -> None:
        self.compression = compression
        self._checker = open_checker(compression)
        self._head_tail = HeadTail()
        self._stream_problem: str | None = None
        self._forward = forward  # gets the decompressed content (restore's single pass)

    def write(self, chunk: bytes) -> int:
        if self._stream_problem is None:
            try:
                data = self._checker.feed(chunk)
            except (ValueError, OSError) as exc:
                self._stream_problem = _describe_stream_error(exc)
                return len(chunk)
            self._head_tail.feed(data)
            # Outside the try: a failing consumer (psql gone) says nothing about the file.
            if self._forward is not None and data:
                self._forward(data)
        return len(chunk)

    def add_checks(self, report: VerifyReport) -> None:
        if self._stream_problem is None:
            try:
                self._checker.finish()
            except ValueError as exc:
                self._stream_problem = str(exc)
        if report.add(f"{self.compression} integrity", self._stream_problem is None,
                      self._stream_problem or ""):
            problem = self._head_tail.problem()
            report.add("sql content", problem is None, problem or "")


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
    identities = load_identities(settings)
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

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

from backupd.manifest import Manifest
from backupd.naming import ParsedName
from backupd.pipeline.compress import BLOCK_SIZE, open_checker
from backupd.pipeline.sqlcheck import HeadTail

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

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ok": self.ok,
            "content_checked": self.content_checked,
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
    if manifest_error is not None:
        report.add("manifest", False, manifest_error)
    try:
        info = path.lstat()
    except OSError as exc:
        report.add("readable", False, exc.strerror or "cannot stat")
        return report
    if not stat.S_ISREG(info.st_mode):
        report.add("readable", False, "not a regular file (symbolic links are refused)")
        return report
    if not report.add("non-empty", info.st_size > 0, "the file is empty"):
        return report
    if manifest is not None:
        report.add("size", info.st_size == manifest.stored_bytes,
                   f"{info.st_size} bytes on disk, manifest says {manifest.stored_bytes}")

    plain = parsed.backup_format == "plain" and not parsed.encrypted
    try:
        digest, problems = _scan(path, parsed.compression if plain else None)
    except OSError as exc:
        report.add("readable", False, exc.strerror or str(exc))
        return report
    report.add("readable", True)
    if plain:
        report.add(f"{parsed.compression} integrity", problems[0] is None, problems[0] or "")
        if problems[0] is None:
            report.add("sql content", problems[1] is None, problems[1] or "")
    if manifest is not None:
        report.add("sha256", digest == manifest.sha256,
                   "checksum does not match the manifest (the file changed after it was written)")
    if not plain:
        if content_checker is not None:
            content_checker(path, parsed, report)
        else:
            report.content_checked = False
    # Clear the "ok" detail text of passing checks: it only describes failures.
    for check in report.checks:
        if check.ok:
            check.detail = ""
    return report


def _scan(path: Path, compression: str | None) -> tuple[str, tuple[str | None, str | None]]:
    """SHA-256 of the file and, for plain SQL, (stream problem, SQL problem)."""
    digest = hashlib.sha256()
    checker = open_checker(compression) if compression else None
    head_tail = HeadTail()
    stream_problem: str | None = None
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb", buffering=0) as handle:
        while chunk := handle.read(READ_SIZE):
            digest.update(chunk)
            if checker is not None and stream_problem is None:
                try:
                    head_tail.feed(checker.feed(chunk))
                except (ValueError, OSError) as exc:
                    stream_problem = _describe_stream_error(exc)
    if checker is None:
        return digest.hexdigest(), (None, None)
    if stream_problem is None:
        try:
            checker.finish()
        except ValueError as exc:
            stream_problem = str(exc)
    sql_problem = head_tail.problem() if stream_problem is None else None
    return digest.hexdigest(), (stream_problem, sql_problem)


def _describe_stream_error(exc: BaseException) -> str:
    text = str(exc)
    if "incorrect header" in text or "Error -3" in text or "invalid" in text.lower():
        return f"not a valid compressed stream ({text})"
    return text

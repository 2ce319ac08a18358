"""The content checks of a directory-format backup (``.dir.tar``, see pipeline/directory.py),
fed with the stored (or decrypted) bytes in order, like PlainSqlCheck.

In one pass: the tar's structure (ustar headers and their checksums, regular files with the
names pg_dump -Fd writes, each once, the end-of-archive marker), every compressed data file's
integrity (gzip CRCs and lengths, zstd checksums), then ``pg_restore --list`` on the table of
contents, and every data file the table of contents and ``blobs.toc`` name being there.
A damaged, missing or truncated member fails; nothing touches a database.
"""

from __future__ import annotations

import re
import subprocess
import tarfile
import tempfile
from pathlib import Path

from backupd.pipeline.compress import GzipStreamChecker, ZstdStreamChecker
from backupd.pipeline.directory import BLOCK, DATA_EXTENSIONS, TOC, Extractor
from backupd.pipeline.supervisor import Child, tool_path
from backupd.pipeline.verification.report import VerifyReport

# Large objects: "blobs.toc" (pg_dump 15-16), "blobs_<id>.toc" per group (17 and later).
_BLOBS_TOC = re.compile(r"blobs(?:_\d+)?\.toc")
_MEMBER_NAME = re.compile(
    r"toc\.dat|blobs(?:_\d+)?\.toc|(?:\d+|blob_\d+)\.dat(?:\.gz|\.zst|\.lz4)?")
# pg_restore --list: "3340; 0 16747 TABLE DATA public t postgres"
_TABLE_DATA = re.compile(r"(\d+); \d+ \d+ TABLE DATA ")
# blobs.toc: "<oid> blob_<oid>.dat" (the file itself may have a compression suffix)
_BLOB_LINE = re.compile(r"\d+ (blob_\d+\.dat)(?:\.gz|\.zst|\.lz4)?")


class DirectoryArchiveCheck:
    """A writer fed with a ``.dir.tar``'s bytes; ``add_checks`` reports what they prove.
    ``extract``: also write every member there (restore), as it is checked."""

    compression = "directory"

    def __init__(self, extract: Extractor | None = None) -> None:
        self._extract = extract
        self._pending = bytearray()
        self._member: str | None = None
        self._left = 0  # bytes of the current member still to come
        self._padding = 0  # zero bytes after it, to the next 512-byte block
        self._checker: GzipStreamChecker | ZstdStreamChecker | None = None
        self._kept: dict[str, bytearray] = {}
        self.members: list[str] = []
        self._zero_blocks = 0
        self._ended = False
        self.tar_problem: str | None = None
        self.data_problem: str | None = None

    @property
    def member_sizes(self) -> list[int]:
        return []  # one stream, not gzip members: nothing for check_gzip_members

    def write(self, chunk: bytes | memoryview) -> int:
        if self.tar_problem is None:
            try:
                self._feed(memoryview(chunk))
            except (ValueError, tarfile.TarError) as exc:
                self.tar_problem = str(exc)
        return len(chunk)

    def _feed(self, view: memoryview) -> None:
        while view:
            if self._left:
                piece, view = view[:self._left], view[self._left:]
                self._left -= len(piece)
                self._member_data(piece)
                if not self._left:
                    self._member_end()
            elif self._padding:
                piece, view = view[:self._padding], view[self._padding:]
                self._padding -= len(piece)
            else:
                want = BLOCK - len(self._pending)
                self._pending += view[:want]
                view = view[want:]
                if len(self._pending) == BLOCK:
                    block, self._pending = bytes(self._pending), bytearray()
                    self._header(block)

    def _header(self, block: bytes) -> None:
        if block == bytes(BLOCK):
            self._zero_blocks += 1
            self._ended = self._zero_blocks >= 2
            return
        if self._zero_blocks:
            raise ValueError("data after the end-of-archive marker")
        info = tarfile.TarInfo.frombuf(block, "utf-8", "strict")  # checks the header checksum
        name = info.name
        if not info.isreg() or _MEMBER_NAME.fullmatch(name) is None:
            raise ValueError(f"{name!r} is not a file pg_dump -Fd writes")
        if name in self.members:
            raise ValueError(f"{name!r} is in the archive twice")
        self.members.append(name)
        self._member, self._left, self._padding = name, info.size, -info.size % BLOCK
        self._checker = (GzipStreamChecker() if name.endswith(".gz")
                         else ZstdStreamChecker() if name.endswith(".zst") else None)
        # The tables of contents are kept in memory: they hold the schema, not the data.
        if name == TOC or _BLOBS_TOC.fullmatch(name):
            self._kept[name] = bytearray()
        if self._extract is not None:
            self._extract.begin(name)
        if not self._left:
            self._member_end()

    def _member_data(self, piece: memoryview) -> None:
        assert self._member is not None
        if self._extract is not None:
            self._extract.write(piece)
        if self._member in self._kept:
            self._kept[self._member] += piece
        if self._checker is not None and self.data_problem is None:
            try:
                for _ in self._checker.feed(bytes(piece)):
                    pass  # inflated only to prove it inflates: CRC and length
            except ValueError as exc:
                self.data_problem = f"{self._member}: {exc}"

    def _member_end(self) -> None:
        if self._checker is not None and self.data_problem is None:
            try:
                self._checker.finish()
            except ValueError as exc:
                self.data_problem = f"{self._member}: {exc}"
        if self._extract is not None:
            self._extract.end()
        self._checker, self._member = None, None

    def add_checks(self, report: VerifyReport, *, cluster: bool = False) -> bool:
        """The tar, its data files, its table of contents; False when the tar itself failed."""
        del cluster  # a directory-format backup is always one database's pg_dump
        if self._extract is not None:
            self._extract.end()
        problem = self.tar_problem
        if problem is None and not self._ended:
            problem = ("the tar archive is truncated (no end-of-archive marker)"
                       if self.members else "the file is not a tar archive of pg_dump -Fd")
        if problem is None and TOC not in self.members:
            problem = "the archive holds no toc.dat (not a pg_dump directory)"
        if not report.add("tar archive", problem is None, problem or ""):
            return False
        report.add("data files", self.data_problem is None, self.data_problem or "")
        toc_problem = self._check_toc()
        report.add("pg_restore --list", toc_problem is None, toc_problem or "")
        return True

    def _check_toc(self) -> str | None:
        """pg_restore reads the table of contents; every data file it names is there."""
        with tempfile.TemporaryDirectory(prefix="backupd-toc-") as directory:
            (Path(directory) / TOC).write_bytes(self._kept[TOC])
            lines: list[str] = []
            with Child([tool_path("pg_restore"), "--list", directory],
                       stdout=subprocess.PIPE) as child:
                child.follow(child.stdout, lines.append)
                code = child.wait()
        if code != 0:
            return f"pg_restore cannot read toc.dat: {child.error_line or f'exit code {code}'}"
        present = set(self.members)
        wanted = [f"{match[1]}.dat" for line in lines if (match := _TABLE_DATA.match(line))]
        for name, listing in self._kept.items():
            if name == TOC:
                continue
            for line in filter(None, listing.decode("utf-8", "replace").splitlines()):
                match = _BLOB_LINE.fullmatch(line.strip())
                wanted.append(match[1] if match else f"{name} line {line!r}")
        missing = [name for name in wanted
                   if not any(name + ext in present for ext in DATA_EXTENSIONS)]
        if missing:
            return (f"{len(missing)} data file(s) the table of contents names are missing "
                    f"({', '.join(missing[:3])})")
        return None

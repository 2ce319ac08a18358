"""The speed-ups of backup and verify must not weaken what they prove.

* gzip backups are independent gzip members (compressed in parallel): still one valid gzip
  file for plain ``gunzip``/``gzip -t``, with the members' sizes in the manifest;
* verify inflates those members in parallel: a damaged member, or a manifest whose member
  sizes do not match the file, is caught;
* the backup's read-back follows the file while it is written, from the file itself: a byte
  changed in the file before it was read back is caught;
* decompression works in bounded steps, whatever the compression ratio.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import io
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from helpers.backups import flip_byte, read_manifest, take_backup
from helpers.cli import EnvFactory
from helpers.pg import ServerAddress, load_fixture

from backupd.cancel import CancelToken
from backupd.manifest import Manifest
from backupd.naming import ParsedName, parse_backup_name
from backupd.pipeline import run as run_module
from backupd.pipeline.compress import (
    INFLATE_STEP,
    MEMBER_SIZE,
    GzipStreamChecker,
    MemberGzipWriter,
    check_gzip_member,
)
from backupd.pipeline.dump import enlarge_pipe
from backupd.pipeline.growing import GrowingFile
from backupd.pipeline.run import GATHER_RATE, _gathering, pump
from backupd.pipeline.supervisor import Child
from backupd.pipeline.verification import FileScan, follow_growing_file, verify_file

NAME = "db_20260101_000000.sql.gz"
HEADER = b"--\n-- PostgreSQL database dump\n--\n\n"
FOOTER = b"\n--\n-- PostgreSQL database dump complete\n--\n\n"


def fake_dump(size: int) -> bytes:
    row = b"INSERT INTO t VALUES (%d, 'row number %d of a fake dump');\n"
    body = b"".join(row % (i, i * 7919) for i in range(size // 50))
    return HEADER + body + FOOTER


def write_members(path: Path, sql: bytes) -> list[int]:
    with path.open("wb") as sink:
        writer = MemberGzipWriter(sink, level=1)
        for start in range(0, len(sql), 300_000):  # pieces unaligned with the members
            writer.write(sql[start:start + 300_000])
        writer.close()
    return writer.member_sizes


def manifest_for(path: Path, members: list[int] | None) -> Manifest:
    data = path.read_bytes()
    now = datetime.now(UTC)
    return Manifest(name=path.name, database="db", started_at=now, finished_at=now,
                    raw_bytes=0, stored_bytes=len(data),
                    sha256=hashlib.sha256(data).hexdigest(), gzip_members=members)


def parsed() -> ParsedName:
    result = parse_backup_name(NAME)
    assert result is not None
    return result


def failed(report_checks: list[tuple[str, bool]]) -> set[str]:
    return {name for name, ok in report_checks if not ok}


def checks_of(path: Path, manifest: Manifest, read_back: FileScan | None = None) -> set[str]:
    report = verify_file(path, parsed(), manifest, read_back=read_back)
    return failed([(c.name, c.ok) for c in report.checks])


@pytest.fixture(scope="module")
def sql() -> bytes:
    return fake_dump(3 * MEMBER_SIZE + 12345)


@pytest.fixture
def members_file(tmp_path: Path, sql: bytes) -> tuple[Path, Manifest]:
    path = tmp_path / NAME
    members = write_members(path, sql)
    return path, manifest_for(path, members)


def test_member_file_is_plain_gzip_and_verifies(members_file: tuple[Path, Manifest],
                                                 sql: bytes) -> None:
    path, manifest = members_file
    assert manifest.gzip_members is not None
    assert len(manifest.gzip_members) == -(-len(sql) // MEMBER_SIZE) >= 4
    assert sum(manifest.gzip_members) == path.stat().st_size
    assert subprocess.run(["gzip", "-t", str(path)], check=False).returncode == 0
    assert subprocess.run(["gunzip", "-c", str(path)], capture_output=True,
                          check=True).stdout == sql
    report = verify_file(path, parsed(), manifest)
    assert report.ok, report.problem
    assert "gzip members" in {c.name for c in report.checks}


def test_empty_input_is_still_one_valid_member(tmp_path: Path) -> None:
    path = tmp_path / NAME
    assert len(write_members(path, b"")) == 1
    assert gzip.decompress(path.read_bytes()) == b""


@pytest.mark.parametrize("member", range(4))
def test_a_flipped_byte_in_any_member_is_caught(members_file: tuple[Path, Manifest],
                                                member: int) -> None:
    path, manifest = members_file
    assert manifest.gzip_members is not None
    start = sum(manifest.gzip_members[:member])
    flip_byte(path, start + manifest.gzip_members[member] // 2)
    assert checks_of(path, manifest) == {"gzip integrity", "sha256"}


def test_sql_forwarded_ahead_is_the_whole_dump_in_order(
        members_file: tuple[Path, Manifest], sql: bytes) -> None:
    """A restore's pre-verify hands the SQL to its capture of the early entries as fast as
    it comes: members inflated on all cores, handed on in file order."""
    path, manifest = members_file
    forwarded: list[bytes] = []
    report = verify_file(path, parsed(), manifest, forward=forwarded.append, forward_ahead=True)

    assert report.ok, report.problem
    assert b"".join(forwarded) == sql


def test_sql_forwarded_ahead_stops_before_a_damaged_member(
        members_file: tuple[Path, Manifest], sql: bytes) -> None:
    path, manifest = members_file
    assert manifest.gzip_members is not None
    flip_byte(path, sum(manifest.gzip_members[:2]) + manifest.gzip_members[2] // 2)
    forwarded: list[bytes] = []
    report = verify_file(path, parsed(), manifest, forward=forwarded.append, forward_ahead=True)

    assert not report.ok
    assert b"".join(forwarded) == sql[:2 * MEMBER_SIZE]  # the intact members before it, only


def test_a_forward_that_raises_gets_nothing_more(members_file: tuple[Path, Manifest]) -> None:
    """The members still in flight are collected on the way out, but not handed on: the
    first error is the one raised."""
    path, manifest = members_file
    calls: list[int] = []

    def forward(piece: bytes) -> None:
        calls.append(len(piece))
        if len(calls) == 2:
            raise RuntimeError("the consumer failed")

    with pytest.raises(RuntimeError, match="the consumer failed"):
        verify_file(path, parsed(), manifest, forward=forward, forward_ahead=True)
    assert len(calls) == 2


def test_a_member_larger_than_backupd_writes_is_forwarded_in_steps(
        tmp_path: Path, sql: bytes) -> None:
    """Memory never depends on the compression ratio: a member of more SQL than MEMBER_SIZE
    (not one backupd wrote) is not kept whole by its inflating thread; its SQL is inflated
    again, in steps, as it is handed on."""
    path = tmp_path / NAME
    path.write_bytes(gzip.compress(sql, compresslevel=1))
    manifest = manifest_for(path, [path.stat().st_size])
    assert check_gzip_member(path.read_bytes(), 16, keep_up_to=MEMBER_SIZE).content is None
    forwarded: list[bytes] = []
    report = verify_file(path, parsed(), manifest, forward=forwarded.append, forward_ahead=True)

    assert report.ok, report.problem
    assert b"".join(forwarded) == sql
    assert max(map(len, forwarded)) <= INFLATE_STEP


def _merged(sizes: list[int]) -> list[int]:
    return [sizes[0] + sizes[1], *sizes[2:]]


def _split(sizes: list[int]) -> list[int]:
    return [sizes[0] // 2, sizes[0] - sizes[0] // 2, *sizes[1:]]


def _shifted(sizes: list[int]) -> list[int]:
    return [sizes[0] + 1, sizes[1] - 1, *sizes[2:]]


def _too_long(sizes: list[int]) -> list[int]:
    return [*sizes[:-1], sizes[-1] + 10]


def _too_short(sizes: list[int]) -> list[int]:
    return sizes[:-1]


@pytest.mark.parametrize("wrong", [_merged, _split, _shifted, _too_long, _too_short])
def test_manifest_with_wrong_member_sizes_is_caught(
    members_file: tuple[Path, Manifest], wrong: Callable[[list[int]], list[int]],
) -> None:
    """The file itself is intact (gzip and SHA-256 fine): only the member record is wrong."""
    path, manifest = members_file
    assert manifest.gzip_members is not None
    bad = manifest.model_copy(update={"gzip_members": wrong(manifest.gzip_members)})
    assert checks_of(path, bad) == {"gzip members"}


def test_single_stream_file_without_member_record_verifies(tmp_path: Path, sql: bytes) -> None:
    """Old scripts' backups (one gzip stream, no record) take the sequential path."""
    path = tmp_path / NAME
    path.write_bytes(gzip.compress(sql))
    assert checks_of(path, manifest_for(path, None)) == set()
    flip_byte(path)
    assert checks_of(path, manifest_for(path, None)) == {"gzip integrity"}


def test_inflating_works_in_bounded_steps() -> None:
    """Memory must not depend on the compression ratio: 64 MiB of zeros (~64 KiB of gzip)
    come out in pieces of at most INFLATE_STEP."""
    compressed = gzip.compress(bytes(64 * 2**20), compresslevel=1)
    checker = GzipStreamChecker()
    pieces = [len(piece) for piece in checker.feed(compressed)]
    checker.finish()
    assert sum(pieces) == 64 * 2**20
    assert max(pieces) <= INFLATE_STEP
    assert checker.member_sizes == [len(compressed)]


def _follow(path: Path, growing: GrowingFile, identity: tuple[int, int],
            results: list[FileScan]) -> threading.Thread:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)  # as dump_to_file does, before the thread

    def follow() -> None:
        try:
            results.append(follow_growing_file(fd, growing, "gzip", identity))
        finally:
            os.close(fd)

    thread = threading.Thread(target=follow)
    thread.start()
    return thread


def test_read_back_follows_a_growing_file(tmp_path: Path, members_file: tuple[Path, Manifest]
                                          ) -> None:
    """Written in pieces while the read-back waits at the end of the file: same verdict as
    reading the finished file."""
    source, manifest = members_file
    data = source.read_bytes()
    path = tmp_path / "growing" / NAME
    path.parent.mkdir()
    growing, results = GrowingFile(), list[FileScan]()
    with path.open("wb", buffering=0) as out:
        info = os.fstat(out.fileno())
        thread = _follow(path, growing, (info.st_dev, info.st_ino), results)
        for start in range(0, len(data), 100_000):
            out.write(data[start:start + 100_000])
            growing.grew()
        os.fsync(out.fileno())
    growing.done(len(data))
    thread.join(30)
    assert checks_of(path, manifest, read_back=results[0]) == set()


def test_read_back_catches_a_byte_changed_before_it_was_read(
    tmp_path: Path, members_file: tuple[Path, Manifest],
) -> None:
    """The writer's checksum covers what it wrote; the read-back reads the file. A byte that
    changes on disk in between (bad disk, another process) fails the backup's verification."""
    source, manifest = members_file  # manifest: the writer's size, SHA-256 and members
    data = source.read_bytes()
    path = tmp_path / "growing" / NAME
    path.parent.mkdir()
    growing, results = GrowingFile(), list[FileScan]()
    with path.open("wb", buffering=0) as out:
        half = len(data) // 2
        out.write(data[:half])
        os.pwrite(out.fileno(), bytes([data[1000] ^ 0xFF]), 1000)  # changed after writing
        info = os.fstat(out.fileno())
        thread = _follow(path, growing, (info.st_dev, info.st_ino), results)
        out.write(data[half:])
        growing.grew()
    growing.done(len(data))
    thread.join(30)
    assert checks_of(path, manifest, read_back=results[0]) == {"gzip integrity", "sha256"}


def test_abandoned_write_ends_the_read_back(tmp_path: Path) -> None:
    path = tmp_path / NAME
    growing, results = GrowingFile(), list[FileScan]()
    with path.open("wb") as out:
        info = os.fstat(out.fileno())
        thread = _follow(path, growing, (info.st_dev, info.st_ino), results)
        growing.abandon()
        thread.join(30)
    assert not thread.is_alive()
    with pytest.raises(OSError, match="abandoned"):
        results[0].raise_problem()


def test_backup_is_members_recorded_in_manifest_and_gunzip_readable(
    pg_server: ServerAddress, make_db: Callable[..., str], backupd_env: EnvFactory,
) -> None:
    """A real backup: members recorded, verified by the read-back, readable by plain gzip."""
    db = make_db()
    load_fixture(pg_server, db, scale=0.5)  # ~5.7 MiB of SQL: several MEMBER_SIZE members
    backup = take_backup(backupd_env(db))
    manifest = read_manifest(backup)
    assert manifest["verified"] is True
    assert manifest["raw_bytes"] > 2 * MEMBER_SIZE
    members = manifest["gzip_members"]
    assert len(members) >= 2 and sum(members) == backup.stat().st_size
    assert subprocess.run(["gzip", "-t", str(backup)], check=False).returncode == 0
    sql = subprocess.run(["gunzip", "-c", str(backup)], capture_output=True, check=True).stdout
    assert len(sql) == manifest["raw_bytes"]
    assert sql.startswith(b"--\n-- PostgreSQL database dump\n")
    assert b"-- PostgreSQL database dump complete" in sql[-4096:]


def test_pump_gathers_a_slow_writers_small_writes_without_losing_a_byte(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """pg_dump writes 4 KiB at a time, slower than the pump reads: reading at every write cost
    a wake-up and a trip through the writers per 4 KiB (22,317 reads for a scale-20 dump). The
    pump naps after a short read, so reads gather several writes; every byte still arrives, in
    order, and the writer's exit ends the pump. (The nap is made 20 ms here, so that a loaded
    machine's timers cannot make one nap shorter than two of the writer's pauses; its real
    length is the next test's.)"""
    real = run_module._gathering
    monkeypatch.setattr(run_module, "_gathering", lambda capacity: (0.02, real(capacity)[1]))
    writes = 256
    script = ("import os, time\n"
              f"for i in range({writes}):\n"
              "    os.write(1, bytes([i % 251]) * 4096)\n"
              "    time.sleep(0.0002)\n")
    received: list[bytes] = []
    sink = io.BytesIO()
    cancel = CancelToken()
    child = Child([sys.executable, "-c", script], stdout=subprocess.PIPE, cancel=cancel)
    with cancel.progress.stream("test") as stream:
        code = pump(child, sink, sink, None, received.append, stream)
    assert code == 0
    expected = b"".join(bytes([i % 251]) * 4096 for i in range(writes))
    assert sink.getvalue() == expected
    assert b"".join(received) == expected
    # At least two writes per read on average (about one read per ms of writing at the most).
    assert len(received) <= writes // 2


def test_the_nap_never_lets_a_pipe_fill() -> None:
    """The nap after a short read: a producer at GATHER_RATE fills half the pipe meanwhile;
    a pipe that could not be enlarged gets no nap at all. The capacity is the real pipe's,
    as pg_dump's start reports it."""
    read_end, write_end = os.pipe()
    try:
        default = fcntl.fcntl(read_end, fcntl.F_GETPIPE_SZ)
        assert _gathering(default) == (0.0, 0)  # the default 64 KiB pipe
        capacity = enlarge_pipe(read_end)
        assert capacity == fcntl.fcntl(read_end, fcntl.F_GETPIPE_SZ) == 1024 * 1024
        nap, short = _gathering(capacity)
        assert nap * GATHER_RATE == pytest.approx(512 * 1024)
        assert short == 256 * 1024
    finally:
        os.close(read_end)
        os.close(write_end)

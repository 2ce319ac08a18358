"""The extraction's writer threads: order kept, errors raised in the reader, abort stops."""

from __future__ import annotations

from pathlib import Path

import pytest

from backupd.archive.dirwriter import DirectoryWriter
from backupd.archive.tarstream import TarError, TarMember


def _file(path: str, size: int) -> TarMember:
    return TarMember(path=path, size=size, kind="file", mode=0o600)


def test_writes_every_member_in_order_across_lanes(tmp_path: Path) -> None:
    writer = DirectoryWriter(tmp_path, sync_each_file=False)
    writer(TarMember(path="base/1", size=0, kind="directory", mode=0o700))
    for number in range(20):
        sink = writer(_file(f"base/1/{number}", 3000))
        assert sink is not None
        for piece in (b"a" * 1000, b"b" * 1000, b"c" * 1000):
            sink.write(piece)
        sink.close()
    writer.finish()
    for number in range(20):
        assert (tmp_path / "base/1" / str(number)).read_bytes() == (
            b"a" * 1000 + b"b" * 1000 + b"c" * 1000)


def test_a_write_error_reaches_the_reader(tmp_path: Path) -> None:
    (tmp_path / "taken").write_bytes(b"already here")
    writer = DirectoryWriter(tmp_path, sync_each_file=False)
    sink = writer(_file("taken", 4))
    assert sink is not None
    sink.write(b"data")
    sink.close()
    with pytest.raises(FileExistsError):
        writer.finish()
    assert (tmp_path / "taken").read_bytes() == b"already here"


def test_a_path_outside_is_refused_at_once(tmp_path: Path) -> None:
    writer = DirectoryWriter(tmp_path / "data", sync_each_file=False)
    with pytest.raises(TarError, match="outside"):
        writer(_file("../escape", 1))
    writer.abort()
    assert not (tmp_path / "escape").exists()

"""Corrupted backups in every form found so far: verify reports each, restore refuses each,
prune never counts one as a good backup (so it never deletes the last good one because of it).

One real backup is taken per module; each case copies it twice into a fresh directory, as an
old good backup G (2020-01-01) and a newer one C (2020-01-02), and damages C.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers.cli import run_backupd, server_env
from helpers.faults import place_copy
from helpers.pg import (
    ServerAddress,
    create_database,
    database_exists,
    drop_database,
    psql,
    unique_db_name,
)

G_STAMP, C_STAMP = "20200101_000000", "20200102_000000"


@dataclass
class Taken:
    database: str
    path: Path
    manifest: dict[str, object]


@pytest.fixture(scope="module")
def taken(pg_server: ServerAddress, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Taken]:
    database = unique_db_name("corrupt")
    create_database(pg_server, database)
    try:
        psql(pg_server, database,
             "CREATE TABLE t (id int PRIMARY KEY, v text);"
             "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 500) g;")
        directory = tmp_path_factory.mktemp("corrupt-src")
        proc = run_backupd(["backup"], server_env(pg_server, database, directory))
        assert proc.returncode == 0, proc.stderr
        (data,) = [p for p in directory.iterdir() if p.name.endswith(".sql.gz")]
        manifest = json.loads(Path(f"{data}.manifest.json").read_text())
        assert manifest["verified"] is True
        yield Taken(database, data, manifest)
    finally:
        drop_database(pg_server, database)


@dataclass
class Scene:
    directory: Path
    outside: Path
    good: Path
    corrupt: Path

    @property
    def corrupt_manifest(self) -> Path:
        return Path(f"{self.corrupt}.manifest.json")


def _rewrite_manifest(scene: Scene, **changes: object) -> None:
    data = json.loads(scene.corrupt_manifest.read_text())
    scene.corrupt_manifest.write_text(json.dumps({**data, **changes}))


def truncated(s: Scene) -> None:
    data = s.corrupt.read_bytes()
    s.corrupt.write_bytes(data[: len(data) // 2])


def flipped_byte(s: Scene) -> None:
    data = bytearray(s.corrupt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    s.corrupt.write_bytes(bytes(data))


def wrong_checksum(s: Scene) -> None:
    _rewrite_manifest(s, sha256="0" * 64)


def missing_manifest_and_truncated(s: Scene) -> None:
    truncated(s)
    s.corrupt_manifest.unlink()


def manifest_for_another_file(s: Scene) -> None:
    shutil.copyfile(f"{s.good}.manifest.json", s.corrupt_manifest)


def manifest_not_json(s: Scene) -> None:
    s.corrupt_manifest.write_text("{not json")


def symlink_out_of_the_directory(s: Scene) -> None:
    target = s.outside / "elsewhere.sql.gz"
    shutil.move(s.corrupt, target)  # an intact backup, but outside DB_BACKUP_DIR
    s.corrupt.symlink_to(target)


def empty_file(s: Scene) -> None:
    s.corrupt.write_bytes(b"")
    _rewrite_manifest(s, stored_bytes=0, sha256=hashlib.sha256(b"").hexdigest())


def not_a_pg_dump(s: Scene) -> None:
    # Valid gzip, consistent manifest, but not a complete pg_dump: only the SQL check sees it.
    data = gzip.compress(b"SELECT 1;\n")
    s.corrupt.write_bytes(data)
    _rewrite_manifest(s, stored_bytes=len(data), sha256=hashlib.sha256(data).hexdigest())


CORRUPTIONS: dict[str, Callable[[Scene], None]] = {
    f.__name__: f for f in (
        truncated, flipped_byte, wrong_checksum, missing_manifest_and_truncated,
        manifest_for_another_file, manifest_not_json, symlink_out_of_the_directory,
        empty_file, not_a_pg_dump,
    )
}


@pytest.fixture(params=sorted(CORRUPTIONS))
def scene(request: pytest.FixtureRequest, taken: Taken, tmp_path: Path) -> Scene:
    directory, outside = tmp_path / "backups", tmp_path / "outside"
    directory.mkdir(mode=0o700)
    outside.mkdir()
    scene = Scene(directory, outside, place_copy(taken.path, directory, G_STAMP),
                  place_copy(taken.path, directory, C_STAMP))
    CORRUPTIONS[request.param](scene)
    return scene


def _snapshot(paths: list[Path]) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def test_verify_restore_prune_refuse_the_corrupt_backup(
    scene: Scene, taken: Taken, pg_server: ServerAddress
) -> None:
    env = server_env(pg_server, taken.database, scene.directory,
               DB_BACKUP_RETENTION_DAYS="1", DB_BACKUP_KEEP_MIN="1")
    outside_before = _snapshot(list(scene.outside.iterdir()))
    name = scene.corrupt.name

    verify = run_backupd(["verify", name], env)
    assert verify.returncode in (1, 2), verify.stdout + verify.stderr
    if verify.returncode == 1:
        assert f"FAILED {name}" in verify.stdout
    else:  # refused before reading: the one-line reason says why
        assert "symbolic link" in verify.stderr

    # After a verify, nothing lists the damaged file as a good backup (a symlink not at all).
    listed = {r["name"]: r for r in json.loads(run_backupd(["list", "--json"], env).stdout)}
    assert scene.good.name in listed
    if scene.corrupt.is_symlink():
        assert name not in listed
    else:
        assert not listed[name]["verified"] and listed[name]["state"] != "verified"

    target = unique_db_name("refused")
    restore = run_backupd(["restore", name, "--yes", "--target-db", target], env)
    assert restore.returncode in (1, 2)
    assert "refusing to restore" in restore.stderr or "symbolic link" in restore.stderr
    assert not database_exists(pg_server, target), \
        "restore touched the database although the backup is corrupt"

    prune = run_backupd(["prune"], env)
    assert prune.returncode == 0, prune.stderr
    # G is the only good backup: counting C as good would have let retention delete it.
    assert scene.good.is_file() and Path(f"{scene.good}.manifest.json").is_file()
    assert _snapshot(list(scene.outside.iterdir())) == outside_before


def test_backup_without_manifest_is_never_counted_good(
    taken: Taken, pg_server: ServerAddress, tmp_path: Path
) -> None:
    """An intact file without a manifest is a legacy (shell-script) backup: listed as such,
    never "verified", never chosen by --latest, and counted by retention only after backupd's
    own verified backups (so it never pushes a verified backup out of the minimum kept)."""
    directory = tmp_path / "backups"
    directory.mkdir(mode=0o700)
    good = place_copy(taken.path, directory, G_STAMP)
    legacy = place_copy(taken.path, directory, C_STAMP)
    Path(f"{legacy}.manifest.json").unlink()
    env = server_env(pg_server, taken.database, directory,
               DB_BACKUP_RETENTION_DAYS="1", DB_BACKUP_KEEP_MIN="1")

    rows = {r["name"]: r for r in json.loads(run_backupd(["list", "--json"], env).stdout)}
    assert rows[legacy.name]["state"] == "no manifest" and not rows[legacy.name]["verified"]
    assert run_backupd(["prune"], env).returncode == 0
    assert good.is_file()

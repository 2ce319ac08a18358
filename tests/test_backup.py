"""``backupd backup`` against the real PostgreSQL: the data comes back identical, the file is
what the issue promises, odd database names stay inside DB_BACKUP_DIR, and a failed dump
leaves nothing that looks like a backup.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import stat
import subprocess
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from helpers.backups import (
    backup_files,
    killing_pg_dump,
    only_backup,
    path_with,
    read_manifest,
    sha256_file,
    take_backup,
)
from helpers.cli import EnvFactory, run_backupd
from helpers.pg import ServerAddress, drop_database, fingerprint, pg_binary, psql

NAME_RE = re.compile(r"^(?P<db>.+)_(?P<ts>\d{8}_\d{6})\.sql\.gz$")


def test_round_trip_backup_drop_restore_is_identical(
    pg_server: ServerAddress, fixture_db: str, make_db: Callable[..., str],
    backupd_env: EnvFactory,
) -> None:
    """The certificates fixture survives backup -> drop -> restore, and the file is an
    ordinary ``pg_dump | gzip``: a plain shell pipeline restores the very same data."""
    env = backupd_env(fixture_db)
    before = fingerprint(pg_server, fixture_db)
    backup = take_backup(env)

    by_hand = make_db()
    subprocess.run(
        ["sh", "-c", 'gunzip -c "$1" | psql -X -q -v ON_ERROR_STOP=1 -o /dev/null', "sh",
         str(backup)],
        env={**os.environ, **pg_server.env(by_hand)}, check=True, capture_output=True,
    )
    drop_database(pg_server, fixture_db)
    proc = run_backupd(["restore", backup.name, "--yes"], env)

    assert proc.returncode == 0, proc.stderr
    assert fingerprint(pg_server, fixture_db) == before
    assert fingerprint(pg_server, by_hand) == before


def test_backup_file_name_mode_and_manifest(
    pg_server: ServerAddress, small_db: str, backupd_env: EnvFactory, backup_dir: Path
) -> None:
    started = datetime.now().astimezone()
    proc = run_backupd(["backup", "--no-prune"], backupd_env(small_db))
    finished = datetime.now().astimezone()
    assert proc.returncode == 0, proc.stderr

    backup = only_backup(backup_dir)
    match = NAME_RE.match(backup.name)
    assert match and match["db"] == small_db
    taken = datetime.strptime(match["ts"] + "+0000", "%Y%m%d_%H%M%S%z")
    assert started - timedelta(seconds=1) <= taken <= finished
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    assert stat.S_IMODE(backup_dir.stat().st_mode) == 0o700

    manifest = read_manifest(backup)
    server_version = psql(pg_server, small_db, "SHOW server_version").strip()
    dump_version = subprocess.run(["pg_dump", "--version"], capture_output=True, text=True,
                                  check=True).stdout
    assert manifest["name"] == backup.name
    assert manifest["database"] == small_db
    assert manifest["server_version"] == server_version
    assert manifest["pg_dump_version"] and manifest["pg_dump_version"] in dump_version
    manifest_start = datetime.fromisoformat(manifest["started_at"])
    manifest_end = datetime.fromisoformat(manifest["finished_at"])
    assert started - timedelta(seconds=1) <= manifest_start <= manifest_end <= finished
    assert manifest["stored_bytes"] == backup.stat().st_size
    assert manifest["raw_bytes"] == len(gzip.decompress(backup.read_bytes()))
    assert manifest["raw_bytes"] > manifest["stored_bytes"] > 0
    assert manifest["sha256"] == sha256_file(backup)
    assert manifest["verified"] is True
    assert stat.S_IMODE(backup.with_name(backup.name + ".manifest.json").stat().st_mode) == 0o600
    assert backup.name in (backup_dir / "backup_log.txt").read_text()
    listed = run_backupd(["list", "--json"], backupd_env(small_db))
    assert listed.returncode == 0, listed.stderr
    [row] = json.loads(listed.stdout)
    assert (row["name"], row["state"], row["verified"], row["sha256"], row["size_bytes"]) == (
        backup.name, "verified", True, manifest["sha256"], backup.stat().st_size)


def test_database_name_with_odd_characters_stays_inside_and_round_trips(
    pg_server: ServerAddress, make_db: Callable[..., str], backupd_env: EnvFactory,
    backup_dir: Path, tmp_path: Path,
) -> None:
    name = "we'ird \"db\" /../ näme"
    make_db(name)
    psql(pg_server, name, "CREATE TABLE t (id int PRIMARY KEY, x text);"
                          "INSERT INTO t VALUES (1, 'ä'), (2, 'b');")
    before = fingerprint(pg_server, name)
    env = backupd_env(name)

    backup = take_backup(env)

    # Nothing was written anywhere but directly inside DB_BACKUP_DIR.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backups"]
    assert all(p.is_file() for p in backup_dir.iterdir())
    assert backup.parent == backup_dir
    assert "/" not in backup.name and not backup.name.startswith((".", "-"))
    # Recognisable: the ordinary parts of the name are kept as they are.
    assert backup.name.startswith("we") and "ird" in backup.name and "näme" in backup.name
    assert read_manifest(backup)["database"] == name

    drop_database(pg_server, name)
    proc = run_backupd(["restore", backup.name, "--yes"], env)
    assert proc.returncode == 0, proc.stderr
    assert fingerprint(pg_server, name) == before


def _assert_failed_without_leftovers(
    proc: subprocess.CompletedProcess[str], backup_dir: Path, reason: str
) -> None:
    assert proc.returncode == 1, proc.stderr
    leftovers = [p.name for p in backup_dir.iterdir()] if backup_dir.exists() else []
    assert backup_files(backup_dir) == []
    assert not [n for n in leftovers if "partial" in n or ".sql" in n], leftovers
    log = (backup_dir / "backup_log.txt").read_text()
    assert "backup failed" in log
    assert reason in log


def test_backup_of_missing_database_fails_and_leaves_nothing(
    backupd_env: EnvFactory, backup_dir: Path
) -> None:
    proc = run_backupd(["backup"], backupd_env("bk_no_such_database_xyz"))
    _assert_failed_without_leftovers(proc, backup_dir, "bk_no_such_database_xyz")
    assert "does not exist" in (backup_dir / "backup_log.txt").read_text()


def test_pg_dump_killed_mid_dump_fails_and_leaves_nothing(
    small_db: str, backupd_env: EnvFactory, backup_dir: Path, tmp_path: Path
) -> None:
    tools = killing_pg_dump(tmp_path / "bin", after_bytes=4096)
    proc = run_backupd(["backup"], backupd_env(small_db, PATH=path_with(tools)))
    _assert_failed_without_leftovers(proc, backup_dir, "pg_dump failed")


def test_dump_that_ends_early_with_exit_zero_is_rejected(
    small_db: str, backupd_env: EnvFactory, backup_dir: Path, tmp_path: Path
) -> None:
    """pg_dump "succeeding" without its closing line is not a backup either."""
    directory = tmp_path / "bin"
    directory.mkdir()
    script = directory / "pg_dump"
    script.write_text(
        "#!/bin/sh\n"
        # --version must still answer as the real pg_dump does.
        f'case "$1" in --version) exec \'{pg_binary("pg_dump")}\' "$@";; esac\n'
        "printf -- '--\\n-- PostgreSQL database dump\\n--\\n\\nCREATE TABLE x (a int);\\n'\n"
    )
    script.chmod(0o755)
    proc = run_backupd(["backup"], backupd_env(small_db, PATH=path_with(directory)))
    _assert_failed_without_leftovers(proc, backup_dir, "incomplete")

"""``backupd verify`` notices every way a backup file can be broken, and still accepts the
old scripts' files (no manifest) by their content.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers.backups import (
    flip_byte,
    manifest_path,
    name_at,
    read_manifest,
    redate,
    refresh_manifest,
    sql_of,
    truncate,
    write_gzip_sql,
    write_manifest,
)
from helpers.cli import run_backupd
from helpers.pg import ServerAddress, pg_binary


def verify_json(env: dict[str, str], *args: str) -> tuple[int, list[dict[str, Any]]]:
    proc = run_backupd(["verify", "--json", *args], env)
    assert proc.stdout.strip(), proc.stderr
    reports: list[dict[str, Any]] = json.loads(proc.stdout)
    return proc.returncode, reports


def failed_checks(report: dict[str, Any]) -> set[str]:
    return {check["check"] for check in report["checks"] if not check["ok"]}


def _truncated(path: Path) -> None:
    truncate(path, 0.5)


def _flipped(path: Path) -> None:
    flip_byte(path)


def _not_gzip(path: Path) -> None:
    path.write_bytes(b"-- PostgreSQL database dump, but not compressed at all\n" * 50)
    manifest_path(path).unlink()


def _tiny_not_gzip(path: Path) -> None:
    path.write_bytes(b"junk\n")


def _empty(path: Path) -> None:
    path.write_bytes(b"")
    manifest_path(path).unlink()


def _cut_short_valid_gzip(path: Path) -> None:
    """A dump that stops half-way yet is a perfectly valid gzip stream, vouched for by a
    manifest whose size and checksum match: only the SQL content check can catch it."""
    sql = sql_of(path)
    write_gzip_sql(path, sql[: len(sql) // 2])
    refresh_manifest(path)


def _cut_short_without_manifest(path: Path) -> None:
    sql = sql_of(path)
    write_gzip_sql(path, sql[: len(sql) // 2])
    manifest_path(path).unlink()


def _checksum_mismatch(path: Path) -> None:
    manifest = read_manifest(path)
    manifest["sha256"] = "0" * 64
    write_manifest(path, manifest)


CORRUPTIONS: list[tuple[Callable[[Path], None], set[str]]] = [
    # (damage, exactly the checks that must fail)
    (_truncated, {"size", "gzip integrity", "sha256"}),
    (_flipped, {"gzip integrity", "sha256"}),
    (_not_gzip, {"gzip integrity"}),
    (_tiny_not_gzip, {"size", "gzip integrity", "sha256"}),
    (_empty, {"non-empty"}),
    (_cut_short_valid_gzip, {"sql content"}),
    (_cut_short_without_manifest, {"sql content"}),
    (_checksum_mismatch, {"sha256"}),
]


@pytest.mark.parametrize(("damage", "expected"), CORRUPTIONS,
                         ids=[c[0].__name__.strip("_") for c in CORRUPTIONS])
def test_verify_detects_damage(
    env: dict[str, str], backup: Path, damage: Callable[[Path], None],
    expected: set[str],
) -> None:
    had_manifest = manifest_path(backup).exists()
    damage(backup)

    code, reports = verify_json(env, backup.name)

    assert code == 1
    assert [r["name"] for r in reports] == [backup.name]
    assert reports[0]["ok"] is False
    assert failed_checks(reports[0]) == expected
    if damage in (_not_gzip, _tiny_not_gzip):
        [gzip_check] = [c for c in reports[0]["checks"] if c["check"] == "gzip integrity"]
        assert "not a gzip file" in gzip_check["detail"]
    if had_manifest and manifest_path(backup).exists():
        # The verdict is written down, so list/prune/restore --latest stop trusting it.
        manifest = read_manifest(backup)
        assert manifest["verified"] is False and manifest["verify_error"]


def test_old_script_backup_without_manifest_verifies_by_content(
    pg_server: ServerAddress, small_db: str, env: dict[str, str], backup_dir: Path
) -> None:
    backup_dir.mkdir()
    name = name_at(small_db, datetime.now(UTC) - timedelta(days=1))
    # Exactly what the old shell scripts ran.
    subprocess.run(
        ["sh", "-c", f"'{pg_binary('pg_dump')}' | gzip > \"$1\"", "sh", str(backup_dir / name)],
        env={**os.environ, **pg_server.env(small_db)}, check=True,
    )

    code, reports = verify_json(env, name)

    assert code == 0
    assert reports[0]["ok"] is True
    checks = {c["check"] for c in reports[0]["checks"]}
    assert {"gzip integrity", "sql content"} <= checks
    assert "sha256" not in checks  # nothing to compare against, and the report says so
    assert not manifest_path(backup_dir / name).exists()


def test_verify_all_reports_each_file_and_fails_if_any_fails(
    env: dict[str, str], backup: Path
) -> None:
    bad = redate(backup, datetime.now(UTC) - timedelta(days=2))
    flip_byte(bad)

    proc = run_backupd(["verify", "--all"], env)

    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert f"OK     {backup.name}" in lines
    assert f"FAILED {bad.name}" in lines
    assert any(line.split()[:2] == ["FAIL", "gzip"] for line in lines)
    assert "1 of 2 backups failed verification" in proc.stderr


def test_verify_good_backup_passes(env: dict[str, str], backup: Path) -> None:
    code, reports = verify_json(env)
    assert code == 0
    assert [r["name"] for r in reports] == [backup.name]
    assert reports[0]["ok"] and not failed_checks(reports[0])
    assert {c["check"] for c in reports[0]["checks"]} >= {"size", "gzip integrity",
                                                           "sql content", "sha256"}


@pytest.mark.parametrize("name", ["../elsewhere.sql.gz", "db_20240101_000000.sql.gz", "notes.txt"])
def test_verify_of_a_name_that_is_not_a_backup_here_is_exit_2(
    env: dict[str, str], backup: Path, name: str
) -> None:
    proc = run_backupd(["verify", name], env)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("backupd: error:")]
    assert len(errors) == 1 and "NAME" in errors[0], proc.stderr


def test_a_name_with_a_trailing_newline_is_not_a_backup(env: dict[str, str],
                                                        backup: Path) -> None:
    """Issue 13: `$` matched before a trailing newline, so such a file was listed and
    verified as a backup, breaking the one-line-per-backup output."""
    odd = backup.with_name(backup.name + "\n")
    shutil.copyfile(backup, odd)
    write_manifest(odd, {**read_manifest(backup), "name": odd.name})

    listed = run_backupd(["list", "--json"], env)
    assert listed.returncode == 0, listed.stderr
    assert [row["name"] for row in json.loads(listed.stdout)] == [backup.name]
    code, reports = verify_json(env, "--all")
    assert code == 0 and [r["name"] for r in reports] == [backup.name]
    named = run_backupd(["verify", odd.name], env)
    assert named.returncode == 2 and "NAME" in named.stderr, named.stderr

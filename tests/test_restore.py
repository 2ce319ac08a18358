"""``backupd restore`` refuses what it must refuse, and never leaves a half-restored database."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from helpers.backups import (
    flip_byte,
    manifest_path,
    read_manifest,
    redate,
    refresh_manifest,
    sql_of,
    take_backup,
    write_gzip_sql,
    write_manifest,
)
from helpers.cli import build_env, one_error_line, run_backupd
from helpers.pg import ServerAddress, database_exists, fingerprint, psql, unique_db_name

# --- names that point elsewhere ------------------------------------------------------------------


def _dotdot(backup: Path, tmp_path: Path) -> str:
    outside = tmp_path / backup.name
    outside.write_bytes(backup.read_bytes())
    return f"../{backup.name}"


def _absolute_elsewhere(backup: Path, tmp_path: Path) -> str:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / backup.name).write_bytes(backup.read_bytes())
    return str(elsewhere / backup.name)


def _symlink_out(backup: Path, tmp_path: Path) -> str:
    outside = tmp_path / "outside.sql.gz"
    outside.write_bytes(backup.read_bytes())
    link = redate(backup, datetime.now(UTC) - timedelta(days=1))
    link.unlink()
    link.symlink_to(outside)
    return link.name


@pytest.mark.parametrize("make_name", [_dotdot, _absolute_elsewhere, _symlink_out],
                         ids=["dotdot", "absolute", "symlink"])
def test_restore_refuses_paths_outside_the_backup_dir(
    pg_server: ServerAddress, env: dict[str, str], backup: Path, tmp_path: Path,
    make_name: Callable[[Path, Path], str],
) -> None:
    target = unique_db_name("target")
    name = make_name(backup, tmp_path)

    proc = run_backupd(["restore", name, "--yes", "--target-db", target], env)

    assert proc.returncode == 2
    assert "NAME" in one_error_line(proc.stderr)
    assert not database_exists(pg_server, target)


def test_restore_refuses_a_backup_that_fails_verification(
    pg_server: ServerAddress, small_db: str, env: dict[str, str], backup: Path
) -> None:
    flip_byte(backup)
    target = unique_db_name("target")
    before = fingerprint(pg_server, small_db)

    into_new = run_backupd(["restore", backup.name, "--yes", "--target-db", target], env)
    over_existing = run_backupd(["restore", backup.name, "--yes", "--replace"], env)

    for proc in (into_new, over_existing):
        assert proc.returncode == 1
        assert "failed verification" in proc.stderr
    assert not database_exists(pg_server, target)
    assert fingerprint(pg_server, small_db) == before


def test_restore_without_terminal_needs_yes(
    pg_server: ServerAddress, env: dict[str, str], backup: Path
) -> None:
    target = unique_db_name("target")
    proc = run_backupd(["restore", backup.name, "--target-db", target], env)
    assert proc.returncode == 2
    assert "--yes" in one_error_line(proc.stderr)
    assert not database_exists(pg_server, target)


# --- a dump whose SQL fails half-way -------------------------------------------------------------


def _break_in_the_middle(backup: Path, *, keep_manifest: bool) -> None:
    """Valid gzip, complete pg_dump header and footer, and a failing statement right after
    the first table's data, so psql has already created and filled things when it fails."""
    sql = sql_of(backup)
    copy_end = sql.index(b"\n\\.\n") + len(b"\n\\.\n")
    broken = sql[:copy_end] + b"\nSELECT * FROM no_such_table_backupd_test;\n" + sql[copy_end:]
    write_gzip_sql(backup, broken)
    if keep_manifest:
        refresh_manifest(backup)  # the manifest vouches for the file: only psql can object
    else:
        manifest_path(backup).unlink()


@pytest.mark.parametrize("keep_manifest", [True, False], ids=["manifest", "no-manifest"])
def test_failing_sql_drops_the_created_target(
    pg_server: ServerAddress, env: dict[str, str], backup: Path, keep_manifest: bool
) -> None:
    _break_in_the_middle(backup, keep_manifest=keep_manifest)
    target = unique_db_name("target")

    proc = run_backupd(["restore", backup.name, "--yes", "--target-db", target], env)

    assert proc.returncode == 1
    assert "no_such_table_backupd_test" in proc.stderr
    assert not database_exists(pg_server, target)


def test_failing_sql_into_existing_empty_database_leaves_it_empty(
    pg_server: ServerAddress, env: dict[str, str], backup: Path, make_db: Callable[..., str]
) -> None:
    """A target we did not create is not dropped: one transaction means nothing stays."""
    _break_in_the_middle(backup, keep_manifest=True)
    target = make_db()
    empty = fingerprint(pg_server, target)

    proc = run_backupd(["restore", backup.name, "--yes", "--target-db", target], env)

    assert proc.returncode == 1
    assert database_exists(pg_server, target)
    assert fingerprint(pg_server, target) == empty


def test_restore_refuses_a_target_that_holds_tables(
    pg_server: ServerAddress, small_db: str, env: dict[str, str], backup: Path
) -> None:
    psql(pg_server, small_db, "UPDATE owners SET name = name || ' changed'")
    before = fingerprint(pg_server, small_db)
    proc = run_backupd(["restore", backup.name, "--yes"], env)
    assert proc.returncode == 2
    assert "--replace" in one_error_line(proc.stderr)
    assert fingerprint(pg_server, small_db) == before


# --- --latest ------------------------------------------------------------------------------------


def test_latest_picks_the_newest_verified_backup(
    pg_server: ServerAddress, small_db: str, env: dict[str, str], backup: Path
) -> None:
    # The wanted one: newest verified. An older one holds other data.
    older = redate(backup, datetime.now(UTC) - timedelta(days=3), keep_source=False)
    psql(pg_server, small_db, "DELETE FROM items WHERE id > 200")
    wanted_state = fingerprint(pg_server, small_db)
    newest_good = take_backup(env)
    # Newer than both, but not verified: a failed verify, and an old-script file.
    psql(pg_server, small_db, "DELETE FROM items WHERE id > 100")
    unverified = take_backup(env)
    manifest = read_manifest(unverified)
    manifest.update(verified=False, verify_error="sha256: checksum does not match")
    write_manifest(unverified, manifest)
    old_script = redate(unverified, datetime.now(UTC) + timedelta(minutes=5))
    manifest_path(old_script).unlink()  # an intact file with no manifest: never "--latest"
    assert older.name < newest_good.name < unverified.name < old_script.name
    target = unique_db_name("latest")

    proc = run_backupd(["restore", "--latest", "--yes", "--target-db", target], env)

    assert proc.returncode == 0, proc.stderr
    try:
        assert newest_good.name in proc.stdout
        assert fingerprint(pg_server, target) == wanted_state
    finally:
        psql(pg_server, "postgres", f'DROP DATABASE IF EXISTS "{target}" WITH (FORCE)')


# --- interactive confirmation --------------------------------------------------------------------


def _restore_on_terminal(env: dict[str, str], args: list[str], answer: str) -> tuple[int, str]:
    """Run restore with a pseudo-terminal as stdin; type ``answer`` at the prompt."""
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "backupd", "restore", *args], env=build_env(env),
        stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    os.close(terminal)
    try:
        # The prompt goes to stderr (a pipe): type once backupd has written something there,
        # i.e. once it has verified the file and is asking. Typed-ahead input would work too.
        assert proc.stderr is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            ready, _, _ = select.select([proc.stderr], [], [], 0.1)
            if ready:
                break
        os.write(controller, answer.encode() + b"\n")
        _, stderr = proc.communicate(timeout=60)
    finally:
        os.close(controller)
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, stderr


def test_typing_the_wrong_name_refuses(
    pg_server: ServerAddress, env: dict[str, str], backup: Path
) -> None:
    target = unique_db_name("typed")
    code, stderr = _restore_on_terminal(env, [backup.name, "--target-db", target], "wrong")
    assert code == 2, stderr
    assert "not confirmed" in stderr
    assert not database_exists(pg_server, target)


def test_typing_the_right_name_restores(
    pg_server: ServerAddress, small_db: str, env: dict[str, str], backup: Path
) -> None:
    target = unique_db_name("typed")
    code, stderr = _restore_on_terminal(env, [backup.name, "--target-db", target], target)
    try:
        assert code == 0, stderr
        assert fingerprint(pg_server, target) == fingerprint(pg_server, small_db)
    finally:
        psql(pg_server, "postgres", f'DROP DATABASE IF EXISTS "{target}" WITH (FORCE)')


def test_replace_swaps_in_the_backup_and_keeps_the_old_database(
    pg_server: ServerAddress, small_db: str, env: dict[str, str], backup: Path
) -> None:
    backed_up = fingerprint(pg_server, small_db)
    psql(pg_server, small_db, "DELETE FROM items WHERE id > 10")
    changed = fingerprint(pg_server, small_db)

    proc = run_backupd(["restore", backup.name, "--yes", "--replace"], env)

    assert proc.returncode == 0, proc.stderr
    kept = psql(pg_server, "postgres",
                "SELECT datname FROM pg_database WHERE datname LIKE "
                f"'{small_db}_before_restore_%'").split()
    try:
        assert fingerprint(pg_server, small_db) == backed_up
        assert len(kept) == 1
        assert fingerprint(pg_server, kept[0]) == changed
        assert kept[0] in (Path(env["DB_BACKUP_DIR"]) / "restore_log.txt").read_text()
    finally:
        for name in kept:
            psql(pg_server, "postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

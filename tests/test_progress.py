"""The live progress display, on a real pseudo-terminal: a restore shows a moving percentage
of the backup file fed, a rate, then "building indexes" while psql still works; its prompt is
seen; the same command piped shows nothing of it; --progress/--no-progress override; S3
uploads and downloads show their share of the object's size."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from helpers.backups import path_with, take_backup
from helpers.cli import run_backupd
from helpers.pg import ServerAddress, drop_database, unique_db_name
from helpers.s3server import S3Server
from helpers.slow_restore import throttled_psql
from helpers.terminal import plain, run_in_terminal

from backupd.result import human_bytes

PERCENT = re.compile(r"(\d{1,3}\.\d)%")
RATE = re.compile(r"\d+(\.\d)? (B|KiB|MiB|GiB)/s")
PROMPT = "Type the database name to continue"


def test_a_restore_on_a_terminal_shows_its_progress_and_piped_shows_none(
    fixture_db: str, backupd_env: Callable[..., dict[str, str]], pg_server: ServerAddress,
    tmp_path: Path,
) -> None:
    env = backupd_env(fixture_db, BACKUPD_LOG_FORMAT="auto")
    backup = take_backup(env)
    slow = {**env, "PATH": path_with(throttled_psql(tmp_path / "bin", chunk=32 * 1024))}
    on_terminal, piped = unique_db_name("progress_tty"), unique_db_name("progress_pipe")
    try:
        code, transcript = run_in_terminal(["restore", backup.name, "--target-db", on_terminal],
                                           slow, answers={PROMPT: on_terminal})
        screen = plain(transcript)
        assert code == 0, screen
        shown = [float(value) for value in PERCENT.findall(screen)]
        assert len(set(shown)) >= 3 and min(shown) < 50 and max(shown) == 100.0, shown
        assert RATE.search(screen), screen
        assert "building indexes" in screen
        assert PROMPT in screen  # asked with the display paused, and answered
        assert screen.rindex("restore success") > screen.rindex("%")  # summary after it

        proc = run_backupd(["restore", backup.name, "--target-db", piped, "--yes"], env)
        assert proc.returncode == 0, proc.stderr
        output = proc.stdout + proc.stderr
        assert "restore success" in output
        assert not PERCENT.search(output) and not RATE.search(output)
        assert "\x1b[" not in output and "building indexes" not in output
    finally:
        drop_database(pg_server, on_terminal)
        drop_database(pg_server, piped)


def test_a_job_failing_before_any_data_moved_shows_no_display_on_a_terminal(
        env: dict[str, str]) -> None:
    """No stream moved a byte: the display writes nothing (not even the cursor-hide escape),
    and the failure is the one line on the terminal."""
    unreachable = {**env, "BACKUPD_LOG_FORMAT": "auto", "POSTGRES_PORT": "1",
                   "POSTGRES_CONNECT_TIMEOUT": "2"}
    code, transcript = run_in_terminal(["backup", "--no-prune"], unreachable)
    assert code == 1, transcript
    assert "\x1b[" not in transcript, repr(transcript)
    lines = [line for line in transcript.splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot connect" in lines[0], lines


def test_progress_options_override_the_terminal_detection(
        env: dict[str, str]) -> None:
    code, transcript = run_in_terminal(["--no-progress", "backup", "--no-prune"], env)
    assert code == 0 and "backup success" in plain(transcript)
    assert "pg_dump output" not in plain(transcript) and not RATE.search(plain(transcript))

    forced = run_backupd(["--progress", "backup", "--no-prune"], env)
    assert forced.returncode == 0, forced.stderr
    assert "pg_dump output" in forced.stderr and "backup success" in forced.stdout


def test_s3_transfers_show_their_progress_of_the_objects_size(
        env: dict[str, str], s3_server: S3Server, s3_bucket: str) -> None:
    """Upload, then a verify of the S3 copy (a download): each a line of the object's size."""
    backup = take_backup(env)  # S3 not configured yet: the upload is pending
    size = human_bytes(backup.stat().st_size)
    with_s3 = {**env, **s3_server.env(), "DB_BACKUP_S3_BUCKET": s3_bucket, "COLUMNS": "200"}
    upload = run_backupd(["--progress", "upload"], with_s3)
    assert upload.returncode == 0, upload.stderr
    assert re.search(rf"S3 upload of {re.escape(backup.name)}.*100\.0% +{size} of {size}",
                     plain(upload.stderr)), plain(upload.stderr)
    download = run_backupd(["--progress", "verify", "--remote", backup.name], with_s3)
    assert download.returncode == 0, download.stderr
    assert re.search(rf"S3 download of {re.escape(backup.name)}.*100\.0% +{size} of {size}",
                     plain(download.stderr)), plain(download.stderr)

"""The bad-input table: every wrong setting or argument is exit 2 and one line naming it.

Each case runs the real CLI as a subprocess. Besides the one ``backupd: error:`` line, stderr
may only hold structured JSON log lines (the failed job's record for log shippers); stdout
must be empty, the secret password must not appear anywhere, and nothing may be created in
DB_BACKUP_DIR. The table is listed in docs/reliability.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers.cli import NOT_UTF8, NOT_UTF8_SHOWN, run_backupd
from helpers.leakcheck import SECRET_PASSWORD
from helpers.logs import human_lines

pytestmark = pytest.mark.faults

@dataclass(frozen=True)
class Case:
    id: str
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    names: str = ""  # what the one error line must name


SETTINGS_CASES = [
    Case("port-not-a-number", ["list"], {"POSTGRES_PORT": "abc"}, "POSTGRES_PORT"),
    Case("port-too-large", ["list"], {"POSTGRES_PORT": "70000"}, "POSTGRES_PORT"),
    Case("port-zero", ["list"], {"POSTGRES_PORT": "0"}, "POSTGRES_PORT"),
    Case("connect-timeout-zero", ["list"], {"POSTGRES_CONNECT_TIMEOUT": "0"},
         "POSTGRES_CONNECT_TIMEOUT"),
    Case("retention-negative", ["prune"], {"DB_BACKUP_RETENTION_DAYS": "-1"},
         "DB_BACKUP_RETENTION_DAYS"),
    Case("retention-word", ["prune"], {"DB_BACKUP_RETENTION_DAYS": "seven"},
         "DB_BACKUP_RETENTION_DAYS"),
    Case("keep-min-zero", ["prune"], {"DB_BACKUP_KEEP_MIN": "0"}, "DB_BACKUP_KEEP_MIN"),
    Case("compression-unknown", ["backup"], {"DB_BACKUP_COMPRESSION": "lzma"},
         "DB_BACKUP_COMPRESSION"),
    Case("compression-level-99", ["backup"], {"DB_BACKUP_COMPRESSION_LEVEL": "99"},
         "DB_BACKUP_COMPRESSION_LEVEL"),
    # Within 0-22 but beyond what the chosen compressor takes (gzip was clamped to 3).
    Case("gzip-level-15", ["backup"], {"DB_BACKUP_COMPRESSION_LEVEL": "15"},
         "DB_BACKUP_COMPRESSION_LEVEL"),
    Case("zstd-level-0", ["backup"],
         {"DB_BACKUP_COMPRESSION": "zstd", "DB_BACKUP_COMPRESSION_LEVEL": "0"},
         "DB_BACKUP_COMPRESSION_LEVEL"),
    Case("custom-level-10", ["backup"],
         {"DB_BACKUP_FORMAT": "custom", "DB_BACKUP_COMPRESSION_LEVEL": "10"},
         "DB_BACKUP_COMPRESSION_LEVEL"),
    Case("format-tar", ["backup"], {"DB_BACKUP_FORMAT": "tar"}, "DB_BACKUP_FORMAT"),
    Case("jobs-zero", ["backup"], {"DB_BACKUP_FORMAT": "directory", "DB_BACKUP_JOBS": "0"},
         "DB_BACKUP_JOBS"),
    Case("jobs-65", ["backup"], {"DB_BACKUP_FORMAT": "directory", "DB_BACKUP_JOBS": "65"},
         "DB_BACKUP_JOBS"),
    Case("jobs-word", ["backup"], {"DB_BACKUP_FORMAT": "directory", "DB_BACKUP_JOBS": "many"},
         "DB_BACKUP_JOBS"),
    # Parallel dumps are pg_dump -Fd only: with plain (the default) or custom, exit 2.
    Case("jobs-with-plain", ["backup"], {"DB_BACKUP_JOBS": "4"}, "DB_BACKUP_JOBS"),
    Case("jobs-with-custom", ["backup"], {"DB_BACKUP_FORMAT": "custom", "DB_BACKUP_JOBS": "2"},
         "DB_BACKUP_JOBS"),
    Case("restore-maintenance-work-mem-word", ["list"],
         {"DB_RESTORE_MAINTENANCE_WORK_MEM": "lots"}, "DB_RESTORE_MAINTENANCE_WORK_MEM"),
    Case("directory-level-10", ["backup"],
         {"DB_BACKUP_FORMAT": "directory", "DB_BACKUP_COMPRESSION_LEVEL": "10"},
         "DB_BACKUP_COMPRESSION_LEVEL"),
    Case("health-port-negative", ["list"], {"HEALTH_PORT": "-5"}, "HEALTH_PORT"),
    Case("s3-sse-unknown", ["list"], {"S3_SSE": "foo"}, "S3_SSE"),
    Case("s3-timeout-zero", ["list"], {"S3_TIMEOUT_SECONDS": "0"}, "S3_TIMEOUT_SECONDS"),
    Case("s3-prefix-dotdot", ["list"], {"DB_BACKUP_S3_PREFIX": "a/../b"}, "DB_BACKUP_S3_PREFIX"),
    Case("slack-notify-on-unknown", ["list"], {"SLACK_NOTIFY_ON": "sometimes"},
         "SLACK_NOTIFY_ON"),
    Case("notify-timeout-negative", ["list"], {"NOTIFY_TIMEOUT_SECONDS": "-1"},
         "NOTIFY_TIMEOUT_SECONDS"),
    Case("backup-on-start-maybe", ["list"], {"BACKUP_ON_START": "maybe"}, "BACKUP_ON_START"),
    Case("misfire-grace-word", ["list"], {"SCHEDULE_MISFIRE_GRACE_SECONDS": "abc"},
         "SCHEDULE_MISFIRE_GRACE_SECONDS"),
    Case("log-format-xml", ["list"], {"BACKUPD_LOG_FORMAT": "xml"}, "BACKUPD_LOG_FORMAT"),
    Case("shrink-percent-150", ["list"], {"BACKUP_SHRINK_WARN_PERCENT": "150"},
         "BACKUP_SHRINK_WARN_PERCENT"),
    Case("drill-free-percent-101", ["list"], {"DRILL_MIN_FREE_PERCENT": "101"},
         "DRILL_MIN_FREE_PERCENT"),
    Case("restore-jobs-zero", ["list"], {"DB_RESTORE_JOBS": "0"}, "DB_RESTORE_JOBS"),
    Case("stall-negative", ["backup"], {"DB_BACKUP_STALL_SECONDS": "-1"},
         "DB_BACKUP_STALL_SECONDS"),
    Case("stall-word", ["backup"], {"DB_BACKUP_STALL_SECONDS": "ten minutes"},
         "DB_BACKUP_STALL_SECONDS"),
    Case("stall-fraction", ["backup"], {"DB_BACKUP_STALL_SECONDS": "1.5"},
         "DB_BACKUP_STALL_SECONDS"),
    Case("job-timeout-negative", ["backup"], {"DB_BACKUP_JOB_TIMEOUT_SECONDS": "-30"},
         "DB_BACKUP_JOB_TIMEOUT_SECONDS"),
    Case("job-timeout-word", ["backup"], {"DB_BACKUP_JOB_TIMEOUT_SECONDS": "1h"},
         "DB_BACKUP_JOB_TIMEOUT_SECONDS"),
    Case("database-name-too-long", ["list"], {"POSTGRES_DB": "d" * 64}, "POSTGRES_DB"),
    Case("database-list-empty-element", ["backup"], {"POSTGRES_DB": "app,,billing"},
         "POSTGRES_DB"),
    Case("database-list-duplicate", ["backup"], {"POSTGRES_DB": "app,billing,app"},
         "POSTGRES_DB"),
    Case("exclude-without-star", ["backup"],
         {"POSTGRES_DB": "app", "DB_BACKUP_EXCLUDE": "billing"}, "DB_BACKUP_EXCLUDE"),
    Case("globals-maybe", ["backup"], {"DB_BACKUP_GLOBALS": "maybe"}, "DB_BACKUP_GLOBALS"),
    Case("password-file-missing", ["list"], {"POSTGRES_PASSWORD_FILE": "/nonexistent"},
         "POSTGRES_PASSWORD_FILE"),
    Case("schedule-minute-61", ["run"], {"BACKUP_SCHEDULE": "61 * * * *"}, "BACKUP_SCHEDULE"),
    Case("timezone-unknown", ["run"], {"TZ": "Mars/Olympus"}, "TZ"),
    Case("keep-daily-negative", ["prune"], {"DB_BACKUP_KEEP_DAILY": "-1"},
         "DB_BACKUP_KEEP_DAILY"),
    Case("keep-weekly-word", ["prune"], {"DB_BACKUP_KEEP_WEEKLY": "four"},
         "DB_BACKUP_KEEP_WEEKLY"),
    Case("keep-monthly-negative", ["backup"], {"DB_BACKUP_KEEP_MONTHLY": "-1"},
         "DB_BACKUP_KEEP_MONTHLY"),
    # TZ is read by the tiers (one-off commands too): checked before anything is done.
    Case("tiers-with-a-tz-that-is-no-zone", ["backup"],
         {"DB_BACKUP_KEEP_WEEKLY": "4", "TZ": "CET-1CEST"}, "TZ"),
    Case("webhook-not-http", ["list"], {"WEBHOOK_URL": "ftp://hooks.example.com/x"},
         "WEBHOOK_URL"),
    Case("webhook-no-scheme", ["backup"], {"WEBHOOK_URL": "hooks.example.com/x"},
         "WEBHOOK_URL"),
    Case("webhook-secret-without-url", ["backup"], {"WEBHOOK_SECRET": "s3cr3t-signing-key"},
         "WEBHOOK_SECRET"),
    Case("heartbeat-style-unknown", ["backup"], {"HEARTBEAT_STYLE": "pingdom"},
         "HEARTBEAT_STYLE"),
    Case("backup-dir-under-a-file", ["prune"], {"DB_BACKUP_DIR": "/etc/passwd/backups"},
         "DB_BACKUP_DIR"),
    Case("backup-dir-is-a-file", ["backup"], {"DB_BACKUP_DIR": "/etc/passwd"}, "DB_BACKUP_DIR"),
    Case("basebackup-keep-zero", ["basebackup"], {"BASEBACKUP_KEEP": "0"}, "BASEBACKUP_KEEP"),
    Case("basebackup-max-age-negative", ["prune"], {"BASEBACKUP_MAX_AGE_DAYS": "-1"},
         "BASEBACKUP_MAX_AGE_DAYS"),
    Case("basebackup-checkpoint-unknown", ["basebackup"], {"BASEBACKUP_CHECKPOINT": "slow"},
         "BASEBACKUP_CHECKPOINT"),
    Case("basebackup-schedule-minute-61", ["run"], {"BASEBACKUP_SCHEDULE": "61 * * * *"},
         "BASEBACKUP_SCHEDULE"),
    # Names in bytes that are not UTF-8 (NOT_UTF8): said as such, not a codec's message, nor
    # an internal error where the name was first encoded.
    Case("database-not-utf8", ["list"], {"POSTGRES_DB": NOT_UTF8},
         f"POSTGRES_DB: {NOT_UTF8_SHOWN} is not UTF-8"),
    Case("database-list-not-utf8", ["backup"], {"POSTGRES_DB": f"app,{NOT_UTF8}"},
         f"POSTGRES_DB: {NOT_UTF8_SHOWN} is not UTF-8"),
    Case("exclude-not-utf8", ["backup"], {"POSTGRES_DB": "*", "DB_BACKUP_EXCLUDE": NOT_UTF8},
         f"DB_BACKUP_EXCLUDE: {NOT_UTF8_SHOWN} is not UTF-8"),
    Case("user-not-utf8", ["backup"], {"POSTGRES_USER": NOT_UTF8},
         f"POSTGRES_USER: {NOT_UTF8_SHOWN} is not UTF-8"),
    Case("drill-user-not-utf8", ["drill"],
         {"DRILL_POSTGRES_HOST": "127.0.0.1", "DRILL_POSTGRES_PORT": "2",
          "DRILL_POSTGRES_USER": NOT_UTF8},
         f"DRILL_POSTGRES_USER: {NOT_UTF8_SHOWN} is not UTF-8"),
    Case("drill-database-not-utf8", ["drill"], {"DRILL_DATABASE": NOT_UTF8},
         f"DRILL_DATABASE: {NOT_UTF8_SHOWN} is not UTF-8"),
]

COMMAND_CASES = [
    Case("unknown-command", ["frobnicate"], names="frobnicate"),
    Case("unknown-option", ["list", "--frob"], names="--frob"),
    Case("flag-with-a-value", ["backup", "--no-prune=yes"], names="--no-prune"),
    Case("unexpected-argument", ["prune", "everything"], names="everything"),
    Case("restore-without-name", ["restore", "--yes"], names="NAME"),
    Case("restore-name-and-latest",
         ["restore", "db_20200101_000000.sql.gz", "--latest", "--yes"], names="--latest"),
    Case("restore-without-yes-no-tty", ["restore", "--latest"], names="--yes"),
    Case("verify-path-traversal", ["verify", "../../etc/passwd"], names="NAME"),
    Case("restore-absolute-path-outside", ["restore", "/etc/passwd", "--yes"], names="NAME"),
    Case("verify-not-a-backup-name", ["verify", "notes.txt"], names="NAME"),
    Case("verify-wal-with-a-name", ["verify", "--wal", "base_20200101_000000.tar.gz"],
         names="NAME"),
    Case("restore-missing-backup", ["restore", "db_20200101_000000.sql.gz", "--yes"],
         names="NAME"),
    # Which of several databases goes into --target-db is not said: not "no backup of 'a,b'".
    Case("restore-latest-target-db-of-several",
         ["restore", "--latest", "--target-db", "copy", "--yes"],
         {"POSTGRES_DB": "appdb,billing"}, "--target-db"),
    Case("restore-database-empty", ["restore", "--latest", "--database", "", "--yes"],
         names="--database"),
    Case("restore-database-without-backups",
         ["restore", "--latest", "--database", "nosuch", "--yes"], names="--database"),
    Case("restore-database-not-utf8", ["restore", "--latest", "--database", NOT_UTF8, "--yes"],
         names=f"--database: {NOT_UTF8_SHOWN} is not UTF-8"),
    Case("restore-skip-not-utf8", ["restore", "--latest", "--skip", NOT_UTF8, "--yes"],
         {"POSTGRES_DB": "*"}, f"--skip: {NOT_UTF8_SHOWN} is not UTF-8"),
    *(Case(f"{command}-name-not-utf8", [command, f"{NOT_UTF8}_20200101_000000.sql.gz", *more],
           names="NAME: 'caf\\xe9_20200101_000000.sql.gz' is not UTF-8")
      for command, more in (("restore", ["--yes"]), ("verify", []), ("drill", []))),
]


@pytest.mark.parametrize("case", SETTINGS_CASES + COMMAND_CASES, ids=lambda c: c.id)
def test_bad_input_is_exit_2_with_one_line_naming_it(case: Case, tmp_path: Path) -> None:
    backup_dir = tmp_path / "backups"
    env = {
        # Nothing listens here: a case that wrongly got as far as connecting fails differently.
        "POSTGRES_HOST": "127.0.0.1",
        "POSTGRES_PORT": "1",
        "POSTGRES_DB": "db",
        "POSTGRES_PASSWORD": SECRET_PASSWORD,
        "DB_BACKUP_DIR": str(backup_dir),
        "BACKUPD_LOG_FORMAT": "json",
        **case.env,
    }
    proc = run_backupd(case.args, env, timeout=60)

    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    human = human_lines(proc.stderr)
    assert len(human) == 1, proc.stderr
    assert human[0].startswith("backupd: error: ")
    assert case.names in human[0]
    assert SECRET_PASSWORD not in proc.stderr
    # Nothing half-done: the backup directory was not even created.
    if "DB_BACKUP_DIR" not in case.env:
        assert not backup_dir.exists()


def test_a_backup_dir_backupd_cannot_look_into_is_exit_2_naming_it(tmp_path: Path) -> None:
    # Under a directory it may not search (mode 0), as the image's uid 10001 meets it on a
    # volume owned by someone else: a traceback from the settings before.
    locked = tmp_path / "locked"
    locked.mkdir(mode=0)
    env = {"POSTGRES_HOST": "127.0.0.1", "POSTGRES_PORT": "1", "POSTGRES_DB": "db",
           "DB_BACKUP_DIR": str(locked / "backups"), "BACKUPD_LOG_FORMAT": "json"}
    try:
        proc = run_backupd(["list"], env, timeout=60, obey_file_modes=True)
    finally:
        locked.chmod(0o700)
    assert proc.returncode == 2, proc.stderr
    human = human_lines(proc.stderr)
    assert len(human) == 1, proc.stderr
    assert human[0].startswith("backupd: error: DB_BACKUP_DIR"), human
    assert "Permission denied" in human[0] and str(locked) in human[0], human
    assert not (locked / "backups").exists()


def test_a_recover_target_dir_that_is_a_dangling_symlink_is_exit_2_naming_it(
        tmp_path: Path) -> None:
    # Recover cannot make a directory where a symlink points nowhere: that failed as "File
    # exists" naming the parent (exit 1), as if the parent were at fault.
    link = tmp_path / "volumes" / "data"
    link.parent.mkdir()
    link.symlink_to(tmp_path / "gone" / "data")
    env = {"POSTGRES_HOST": "127.0.0.1", "POSTGRES_PORT": "1", "POSTGRES_DB": "db",
           "DB_BACKUP_DIR": str(tmp_path / "backups"), "BACKUPD_LOG_FORMAT": "json"}
    proc = run_backupd(["recover", "--target-dir", str(link)], env, timeout=60)
    assert proc.returncode == 2, proc.stderr
    [line] = human_lines(proc.stderr)
    assert line.startswith(f"backupd: error: --target-dir: {link} is a symlink to "
                           f"{tmp_path / 'gone' / 'data'}, which does not exist"), line
    assert "create" in line, line
    assert sorted(p.name for p in link.parent.iterdir()) == ["data"] and link.is_symlink()
    assert not (tmp_path / "gone").exists()


def test_the_table_is_at_least_twenty_cases() -> None:
    assert len(SETTINGS_CASES) + len(COMMAND_CASES) >= 20


@pytest.mark.parametrize("args", [["restore", "../outside.sql.gz", "--yes"],
                                  ["verify", "not-a-backup.txt"]])
def test_on_a_terminal_bad_input_is_exactly_one_line(args: list[str], tmp_path: Path) -> None:
    """A person at a terminal sees the one error line and nothing else (no log records)."""
    import os
    import pty
    import subprocess
    import sys

    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "LANG": "C.UTF-8",
           "POSTGRES_HOST": "127.0.0.1", "POSTGRES_DB": "postgres",
           "DB_BACKUP_DIR": str(tmp_path / "backups"), "HEALTH_PORT": "0"}
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "backupd", *args], env=env,
                            stdin=follower, stdout=follower, stderr=follower)
    os.close(follower)
    output = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(leader)
    assert proc.wait(timeout=30) == 2
    lines = [line for line in output.decode().splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("backupd: error: NAME:")

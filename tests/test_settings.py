"""Bad settings and bad command lines: exit 2 and exactly one line on stderr, naming the variable
or argument, never echoing a secret. Checked before anything touches the database."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.cli import EnvFactory, run_backupd

from backupd.errors import ConfigError
from backupd.settings import load_settings

SECRET = "sup3r-s3cret'\"$ \\:pw"


# (variable, bad value with {tmp} for a scratch directory holding a regular file "a-file",
#  a word the message must contain besides the variable)
BAD_SETTINGS: list[tuple[str, str, str]] = [
    ("POSTGRES_PORT", "five-four-three-two", "integer"),
    ("POSTGRES_PORT", SECRET, "integer"),  # a secret typed in the wrong place: not echoed
    ("POSTGRES_CONNECT_TIMEOUT", "0", "1"),
    ("DB_BACKUP_RETENTION_DAYS", "-1", "0"),
    ("DB_BACKUP_KEEP_MIN", "0", "1"),
    ("DB_BACKUP_DIR", "{tmp}/a-file/backups", "not a directory"),
    ("DB_BACKUP_DIR", "{tmp}/a-file", "not a directory"),
    ("POSTGRES_PASSWORD_FILE", "{tmp}/missing", "cannot read"),
    ("DB_BACKUP_COMPRESSION", "rar", "gzip"),
    ("DB_BACKUP_COMPRESSION_LEVEL", "99", "22"),
    ("DB_BACKUP_FORMAT", "xml", "plain"),
    ("POSTGRES_DB", "x" * 64, "63"),
]


@pytest.mark.parametrize(("variable", "value", "hint"), BAD_SETTINGS,
                         ids=[f"{v}-{i}" for i, (v, _, _) in enumerate(BAD_SETTINGS)])
def test_bad_setting_is_one_line_exit_2(
    backupd_env: EnvFactory, tmp_path: Path, backup_dir: Path, variable: str, value: str,
    hint: str,
) -> None:
    (tmp_path / "a-file").write_text("x")
    env = backupd_env("anydb", POSTGRES_PASSWORD=SECRET,
                      **{variable: value.replace("{tmp}", str(tmp_path))})

    proc = run_backupd(["backup"], env, cwd=tmp_path)

    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert variable in lines[0]
    assert hint in lines[0]
    assert SECRET not in proc.stderr + proc.stdout
    assert proc.stdout == ""
    assert not backup_dir.exists()  # rejected before anything was created


@pytest.mark.parametrize(("settings", "lowest", "highest"), [
    ({}, 0, 9),  # gzip, the default: gzip's own 0-9 scale
    ({"DB_BACKUP_COMPRESSION": "zstd"}, 1, 22),
    # custom format: pg_dump compresses (its --compress takes 0-9), whatever the compression
    ({"DB_BACKUP_FORMAT": "custom"}, 0, 9),
    ({"DB_BACKUP_FORMAT": "custom", "DB_BACKUP_COMPRESSION": "zstd"}, 0, 9),
], ids=["gzip", "zstd", "custom", "custom-zstd"])
def test_compression_level_range_is_the_compressors_and_nothing_is_clamped(
    settings: dict[str, str], lowest: int, highest: int,
) -> None:
    for level in (lowest, highest):
        loaded = load_settings(**settings, DB_BACKUP_COMPRESSION_LEVEL=str(level))
        assert loaded.compression_level == level
    for level in (lowest - 1, highest + 1):
        if level < 0:
            continue  # below 0 is refused for every compressor (the bad-setting table)
        with pytest.raises(ConfigError) as refused:
            load_settings(**settings, DB_BACKUP_COMPRESSION_LEVEL=str(level))
        (line,) = str(refused.value).splitlines()
        assert line.startswith("DB_BACKUP_COMPRESSION_LEVEL: "), line
        assert f"{lowest}-{highest}" in line, line


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["backup", "--frobnicate"], "--frobnicate"),
        (["restore", "--yes"], "NAME"),
        (["restore", "x_20240101_000000.sql.gz", "--latest", "--yes"], "--latest"),
        (["verify", "--nope"], "--nope"),
        (["frobnicate"], "frobnicate"),
    ],
    ids=["unknown-option", "restore-without-name", "name-and-latest", "verify-option",
         "unknown-command"],
)
def test_bad_usage_is_one_line_exit_2(
    backupd_env: EnvFactory, tmp_path: Path, args: list[str], names: str
) -> None:
    proc = run_backupd(args, backupd_env("anydb"), cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert names in lines[0]
    assert proc.stdout == ""


def test_good_settings_from_env_file_are_used(
    small_db: str, backupd_env: EnvFactory, tmp_path: Path, backup_dir: Path
) -> None:
    """Compose users keep settings in ./.env; an empty variable means "not set"."""
    env = backupd_env(small_db)
    del env["DB_BACKUP_DIR"]
    (tmp_path / ".env").write_text(f"DB_BACKUP_DIR={backup_dir}\n")
    proc = run_backupd(["backup", "--no-prune"], {**env, "DB_BACKUP_RETENTION_DAYS": ""},
                       cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert any(p.name.endswith(".sql.gz") for p in backup_dir.iterdir())

"""Backup file names: any database name becomes a safe, recognisable, reversible file name, and
only backupd's own names parse as backups."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from helpers.cli import NOT_UTF8, run_backupd

from backupd.naming import (
    backup_name,
    data_suffix,
    decode_database,
    encode_database,
    is_partial,
    manifest_name,
    parse_backup_name,
    partial_name,
)

WHEN = datetime(2024, 3, 5, 1, 2, 3, tzinfo=UTC)

ODD_NAMES = [
    "certificate_verification",
    "we'ird \"db\" /../ näme",
    "..",
    "../../etc/passwd",
    "-rf",
    ".hidden",
    "a%2Fb",  # looks already encoded: must still round-trip
    "line\nbreak\ttab",
    "東京 データ",
    "emoji 🐘",
    "x_20240101_000000",  # looks like it already carries a timestamp
    "x" * 63,
    "\x7f" * 63,  # the longest encoding there is: every byte percent-encoded
]


@pytest.mark.parametrize("database", ODD_NAMES)
def test_any_database_name_makes_a_safe_reversible_file_name(database: str) -> None:
    name = backup_name(database, WHEN)

    assert "/" not in name and "\x00" not in name and "\n" not in name
    assert not name.startswith((".", "-"))
    assert name not in (".", "..")
    # Even its longest relative (encrypted, manifest, being written) fits a file name.
    longest = partial_name(manifest_name(backup_name(database, WHEN, ".sql.gz.age")))
    assert len(longest.encode()) <= 255
    parsed = parse_backup_name(name)
    assert parsed is not None
    assert parsed.database == database
    assert decode_database(encode_database(database)) == database
    assert parsed.taken_at == WHEN
    assert parsed.suffix == ".sql.gz"


def test_plain_names_stay_readable() -> None:
    assert backup_name("certificate_verification", WHEN) == (
        "certificate_verification_20240305_010203.sql.gz"
    )
    assert encode_database("näme-2") == "näme-2"
    assert encode_database("a b") == "a%20b"


def test_timestamp_is_utc_whatever_the_input_zone() -> None:
    local = WHEN.astimezone(timezone(timedelta(hours=5, minutes=30)))
    assert backup_name("db", local) == backup_name("db", WHEN)


def test_distinct_databases_never_share_a_name() -> None:
    names = {encode_database(db) for db in ["a b", "a%20b", "a_b", "a-b", "a/b", "a.b"]}
    assert len(names) == 6


@pytest.mark.parametrize(
    "name",
    [
        "notes.txt",
        "db.sql.gz",  # no timestamp
        "db_20240305.sql.gz",  # the date alone
        "db_2024-03-05_010203.sql.gz",
        "db_20240305_010203.sql",  # uncompressed: the old scripts never wrote these
        "db_20240305_010203.sql.gz.bak",
        "db_20240305_010203.sql.gz.manifest.json",
        "db_20241305_010203.sql.gz",  # month 13
        "_20240305_010203.sql.gz",  # no database part
        ".db_20240305_010203.sql.gz.partial",
        # `$` matches before a trailing newline: names are parsed by full match (issue 13).
        "db_20240305_010203.sql.gz\n",
        "db_20240305_010203.dump.age\n",
        "db\n_20240305_010203.sql.gz\n",
        # Bytes that are not UTF-8 (b"caf\xe9", as os.listdir gives them): backupd writes
        # none, and decoding the name crashed (`list` with such a file in DB_BACKUP_DIR).
        f"{NOT_UTF8}_20240305_010203.sql.gz",
    ],
)
def test_foreign_names_are_not_backups(name: str) -> None:
    assert parse_backup_name(name) is None


def test_list_leaves_out_a_file_whose_name_is_not_utf8(tmp_path: Path) -> None:
    # Someone's file in DB_BACKUP_DIR, named in Latin-1: `list` was an internal error.
    backups = tmp_path / "backups"
    backups.mkdir()
    (backups / f"{NOT_UTF8}_20240305_010203.sql.gz").write_bytes(b"x")
    env = {"POSTGRES_HOST": "127.0.0.1", "POSTGRES_PORT": "1", "POSTGRES_DB": "db",
           "DB_BACKUP_DIR": str(backups)}
    proc = run_backupd(["list"], env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "no backups", proc.stdout
    assert "internal error" not in proc.stderr, proc.stderr


def test_suffixes_and_helpers() -> None:
    assert data_suffix("plain", "gzip", False) == ".sql.gz"
    assert data_suffix("plain", "zstd", False) == ".sql.zst"
    assert data_suffix("custom", "gzip", True) == ".dump.age"
    for suffix in (".sql.gz", ".sql.zst", ".dump", ".sql.gz.age"):
        parsed = parse_backup_name(backup_name("db", WHEN, suffix))
        assert parsed is not None and parsed.suffix == suffix
    name = backup_name("db", WHEN)
    assert manifest_name(name) == name + ".manifest.json"
    assert is_partial(partial_name(name))
    assert parse_backup_name(partial_name(name)) is None
    assert not is_partial(name)


@pytest.mark.parametrize("leftover", ["final", "partial"])
def test_a_new_backup_never_takes_a_name_in_use_not_even_by_a_killed_runs_leftover(
        tmp_path: Path, leftover: str) -> None:
    """Names have one-second resolution. A run killed mid-write leaves its dot-named
    temporary file, which atomic_write's O_EXCL refuses to share: the next run in the same
    second failed with "File exists" (a base backup right after a killed one, in CI)."""
    from backupd.naming import base_backup_name, partial_name
    from backupd.storage.local import LocalRepository

    store = LocalRepository(tmp_path)

    def names(at: datetime) -> list[str]:
        return [base_backup_name(at, "gzip", encrypted=False)]

    # This second and the next are both in use: a check that ignored the leftovers would
    # take one of them even should the clock pass a second boundary before it runs.
    now = datetime.now(UTC).replace(microsecond=0)
    taken = [names(now + timedelta(seconds=ahead))[0] for ahead in (0, 1)]
    for name in taken:
        (tmp_path / (name if leftover == "final" else partial_name(name))).write_bytes(b"x")

    started = store.unique_start(names)
    assert started > now
    assert names(started)[0] not in taken

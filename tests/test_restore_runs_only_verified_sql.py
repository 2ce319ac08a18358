"""``backupd restore`` runs only verified SQL, and commits only what still verifies.

The whole file is verified before a byte reaches psql (SQL that fails its checksum must
never run: psql meta-commands act outside any transaction); the SQL is then checked again
as it streams, inside one transaction, and COMMIT is sent only if it still matches. These
tests damage what only the end of a pass can see (the last bytes, the footer) and check,
with a psql stand-in that records its input, that none of the damaged SQL reached psql,
that no COMMIT did, and that the target holds nothing afterwards.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers.age import make_age_keys
from helpers.backups import (
    flip_byte,
    path_with,
    recording_psql,
    refresh_manifest,
    sql_of,
    take_backup,
    write_gzip_sql,
)
from helpers.cli import EnvFactory, run_backupd
from helpers.pg import ServerAddress, database_exists, fingerprint, psql, unique_db_name

from backupd.pipeline.verification import READ_SIZE

COMMIT = b"\nCOMMIT;\n"
FOOTER_START = b"--\n-- PostgreSQL database dump complete"


def restore_recorded(env: dict[str, str], name: str, target: str,
                     tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], bytes]:
    """Restore through the recording psql; returns the result and what psql was fed."""
    transcript = tmp_path / "psql-input.sql"
    shim = recording_psql(tmp_path / "shim", transcript)
    proc = run_backupd(["restore", name, "--yes", "--target-db", target],
                       {**env, "PATH": path_with(shim)})
    return proc, transcript.read_bytes() if transcript.exists() else b""


@pytest.fixture(params=["existing-empty", "new"])
def target(request: pytest.FixtureRequest, pg_server: ServerAddress,
           make_db: Callable[..., str]) -> Iterator[str]:
    """An existing empty database (never dropped by restore) or a name restore creates."""
    if request.param == "existing-empty":
        yield make_db()
        return
    name = unique_db_name("target")
    yield name
    psql(pg_server, "postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def assert_refused_and_nothing_committed(
    pg_server: ServerAddress, env: dict[str, str], proc: subprocess.CompletedProcess[str],
    fed: bytes, name: str, target: str, existed: bool, empty: dict[str, str] | None,
    failed_check: str,
) -> None:
    assert proc.returncode == 1, proc.stderr
    assert f"refusing to restore {name}: it failed verification: {failed_check}" in proc.stderr
    # The COMMIT never reached psql: the restore's transaction could only be rolled back.
    assert COMMIT not in fed
    assert b"restore committed" not in fed
    if existed:
        assert database_exists(pg_server, target)
        assert fingerprint(pg_server, target) == empty
    else:
        assert not database_exists(pg_server, target)
    log = (Path(env["DB_BACKUP_DIR"]) / "restore_log.txt").read_text()
    assert "failed verification" in log


def test_good_backup_is_streamed_once_and_committed(
    pg_server: ServerAddress, small_db: str, env: dict[str, str], backup: Path, tmp_path: Path,
) -> None:
    """The control for the recording psql: a good backup ends with our COMMIT."""
    name = unique_db_name("target")
    try:
        proc, fed = restore_recorded(env, backup.name, name, tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert fed.startswith(b"BEGIN;\n")
        assert fed.rstrip().endswith(COMMIT + b"\\echo backupd: restore committed")
        assert fingerprint(pg_server, name) == fingerprint(pg_server, small_db)
    finally:
        psql(pg_server, "postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_corrupt_last_bytes_roll_back_what_was_already_streamed(
    pg_server: ServerAddress, small_db: str, env: dict[str, str], target: str, tmp_path: Path,
) -> None:
    """A flipped byte in gzip's trailer (CRC-32): every SQL statement is intact; only the end
    of a pass finds the damage. None of it may reach psql, nothing may be committed."""
    # Several read blocks of compressed data, so the SQL is streamed before the end is read.
    psql(pg_server, small_db, "CREATE TABLE filler AS SELECT g AS id, md5(g::text) || "
         "md5((-g)::text) AS v FROM generate_series(1, 150000) g")
    backup = take_backup(env)
    assert backup.stat().st_size > 2 * READ_SIZE
    flip_byte(backup, backup.stat().st_size - 6)  # the manifest is kept: sha256 differs too
    existed = database_exists(pg_server, target)
    empty = fingerprint(pg_server, target) if existed else None

    proc, fed = restore_recorded(env, backup.name, target, tmp_path)

    assert b"COPY public.filler" not in fed, "damaged SQL reached psql before the verdict"
    assert_refused_and_nothing_committed(pg_server, env, proc, fed, backup.name, target,
                                         existed, empty, "gzip integrity")


def test_flipped_byte_in_the_middle_is_refused(
    pg_server: ServerAddress, env: dict[str, str], backup: Path, target: str, tmp_path: Path,
) -> None:
    flip_byte(backup)
    existed = database_exists(pg_server, target)
    empty = fingerprint(pg_server, target) if existed else None

    proc, fed = restore_recorded(env, backup.name, target, tmp_path)

    assert_refused_and_nothing_committed(pg_server, env, proc, fed, backup.name, target,
                                         existed, empty, "")
    assert "sha256: checksum does not match" in proc.stderr


def test_dump_cut_before_its_footer_is_refused(
    pg_server: ServerAddress, env: dict[str, str], backup: Path, target: str, tmp_path: Path,
) -> None:
    """Valid gzip, a manifest that vouches for the file, every statement complete: only the
    missing pg_dump footer says the dump was cut short. psql runs none of it."""
    sql = sql_of(backup)
    write_gzip_sql(backup, sql[: sql.rindex(FOOTER_START)])
    refresh_manifest(backup)
    existed = database_exists(pg_server, target)
    empty = fingerprint(pg_server, target) if existed else None

    proc, fed = restore_recorded(env, backup.name, target, tmp_path)

    assert b"COPY public.items" not in fed and b"CREATE INDEX items_owner_idx" not in fed
    assert_refused_and_nothing_committed(pg_server, env, proc, fed, backup.name, target,
                                         existed, empty, "sql content: the dump is incomplete")


def test_content_that_is_not_a_pg_dump_never_reaches_psql(
    pg_server: ServerAddress, env: dict[str, str], backup: Path, tmp_path: Path,
) -> None:
    """The header is checked before anything is passed on: arbitrary SQL that the manifest
    vouches for is not executed, even inside the transaction."""
    write_gzip_sql(backup, b"CREATE TABLE should_never_run (id int);\n" * 100)
    refresh_manifest(backup)
    target = unique_db_name("target")

    proc, fed = restore_recorded(env, backup.name, target, tmp_path)

    assert proc.returncode == 1, proc.stderr
    assert "sql content: the content does not start with pg_dump's header" in proc.stderr
    assert b"should_never_run" not in fed
    assert not database_exists(pg_server, target)


def test_corrupt_backup_over_a_database_with_tables_says_it_is_corrupt(
    pg_server: ServerAddress, small_db: str, env: dict[str, str], backup: Path,
) -> None:
    """Without --replace a target with tables is refused; a corrupt backup is still
    reported as corrupt first, as when the whole file was verified up front."""
    flip_byte(backup)
    before = fingerprint(pg_server, small_db)
    proc = run_backupd(["restore", backup.name, "--yes"], env)
    assert proc.returncode == 1, proc.stderr
    assert "failed verification" in proc.stderr
    assert fingerprint(pg_server, small_db) == before


# --- encrypted plain backups: the same guarantees over the decrypted stream -----------------------


@pytest.fixture
def encrypted(small_db: str, backupd_env: EnvFactory, tmp_path: Path) -> tuple[Path, Path]:
    keys = make_age_keys(tmp_path / "keys")
    made = take_backup(backupd_env(small_db,
                                   DB_BACKUP_AGE_RECIPIENTS_FILE=str(keys.recipients_file)))
    return made, keys.identity_file


def test_encrypted_backup_damaged_at_the_end_commits_nothing(
    pg_server: ServerAddress, small_db: str, backupd_env: EnvFactory,
    encrypted: tuple[Path, Path], make_db: Callable[..., str], tmp_path: Path,
) -> None:
    """age authenticates chunk by chunk and the last one fails: whatever plaintext came
    before was streamed into the transaction, which is rolled back."""
    backup, identity = encrypted
    flip_byte(backup, backup.stat().st_size - 3)
    refresh_manifest(backup)  # the manifest vouches for it: only decryption can object
    env = backupd_env(small_db, DB_BACKUP_AGE_IDENTITY_FILE=str(identity))
    target = make_db()
    empty = fingerprint(pg_server, target)

    proc, fed = restore_recorded(env, backup.name, target, tmp_path)

    assert_refused_and_nothing_committed(pg_server, env, proc, fed, backup.name, target,
                                         True, empty, "age decryption")


def test_encrypted_backup_restores_in_one_pass(
    pg_server: ServerAddress, small_db: str, backupd_env: EnvFactory,
    encrypted: tuple[Path, Path], tmp_path: Path,
) -> None:
    backup, identity = encrypted
    env = backupd_env(small_db, DB_BACKUP_AGE_IDENTITY_FILE=str(identity))
    target = unique_db_name("target")
    try:
        proc, fed = restore_recorded(env, backup.name, target, tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert fed.startswith(b"BEGIN;\n") and COMMIT in fed
        assert fingerprint(pg_server, target) == fingerprint(pg_server, small_db)
    finally:
        psql(pg_server, "postgres", f'DROP DATABASE IF EXISTS "{target}" WITH (FORCE)')


def test_wrong_identity_is_refused_before_the_database_is_touched(
    pg_server: ServerAddress, small_db: str, backupd_env: EnvFactory,
    encrypted: tuple[Path, Path], tmp_path: Path,
) -> None:
    backup, _ = encrypted
    wrong = make_age_keys(tmp_path / "wrong", "wrong")
    env = backupd_env(small_db, DB_BACKUP_AGE_IDENTITY_FILE=str(wrong.identity_file))
    target = unique_db_name("target")

    proc, fed = restore_recorded(env, backup.name, target, tmp_path)

    assert proc.returncode == 1, proc.stderr
    assert "no identity in DB_BACKUP_AGE_IDENTITY_FILE matches" in proc.stderr
    assert fed == b"", "psql should never have been started"
    assert not database_exists(pg_server, target)

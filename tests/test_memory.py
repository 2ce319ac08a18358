"""Memory stays bounded whatever the size of the database (issue 18: zstd under 100 MB).

Measured on real backupd processes (peak RSS, VmHWM), against a generous bound: memory, never
time. ~64 MiB of SQL is several times every buffer the pipeline holds (zstd's jobs and window,
gzip members in flight), so a buffer that grows with the dump would show.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from helpers.cli import EnvFactory, peak_rss_of_backupd
from helpers.pg import ServerAddress, psql

# The goal: under 100 MB (the interpreter and its imports are ~60 MiB of it).
BOUND = 100_000_000


@pytest.fixture
def big_db(pg_server: ServerAddress, make_db: Callable[..., str]) -> str:
    name = make_db()
    psql(pg_server, name, """
        CREATE TABLE rows (id bigint PRIMARY KEY, label text, digest text, at timestamptz);
        INSERT INTO rows SELECT g, 'row ' || (g::bigint * 7919 % 100003),
               md5(g::text) || md5((-g)::text), '2024-01-01'::timestamptz + g * interval '1 s'
        FROM generate_series(1, 600000) g;
    """)
    return name


@pytest.mark.parametrize("compression", ["zstd", "gzip"])
def test_a_backup_of_64_mib_of_sql_stays_under_100_mb(
    big_db: str, backupd_env: EnvFactory, compression: str,
) -> None:
    proc, peak = peak_rss_of_backupd(["backup", "--no-prune"],
                                     backupd_env(big_db, DB_BACKUP_COMPRESSION=compression))

    assert proc.returncode == 0, proc.stderr
    print(f"peak RSS of a {compression} backup: {peak / 2**20:.0f} MiB")
    assert peak < BOUND, f"peak RSS {peak / 2**20:.0f} MiB"

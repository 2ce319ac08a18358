"""Files are private, names cannot escape DB_BACKUP_DIR or break the logs, and a manual backup
never runs a second pg_dump beside one already running."""

from __future__ import annotations

import json
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.cli import BackupdProcess, run_backupd, stop_backupd
from helpers.faults import SlowDump, dump_partials, wait_until
from helpers.logs import parse_event
from helpers.pg import ServerAddress, psql

WEIRD_NAMES = {
    "quotes-slash-dotdot": 'we\'ird "db" /../ näme',
    "path-escape": "../../escape",
    "newline": "two\nlines",
    "leading-dash": "-h localhost",
}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.mark.parametrize("name", list(WEIRD_NAMES.values()), ids=list(WEIRD_NAMES))
def test_database_names_cannot_escape_or_break_logs(
    name: str, pg_server: ServerAddress, make_db: Callable[..., str],
    backupd_env: Callable[..., dict[str, str]], tmp_path: Path, backup_dir: Path,
) -> None:
    database = make_db(name)
    psql(pg_server, database, "CREATE TABLE t (id int); INSERT INTO t VALUES (1);")
    before = set(tmp_path.rglob("*"))
    env = backupd_env(database)

    backup = run_backupd(["backup"], env)
    assert backup.returncode == 0, backup.stderr

    created = set(tmp_path.rglob("*")) - before
    assert created, "nothing was written"
    # Everything new is directly inside DB_BACKUP_DIR (or is the directory itself).
    assert {p for p in created if p != backup_dir and p.parent != backup_dir} == set()
    # The directory is 0700 and every file in it 0600: data, manifest, human log.
    assert _mode(backup_dir) == 0o700
    assert {p.name: _mode(p) for p in backup_dir.iterdir()} == {
        p.name: 0o600 for p in backup_dir.iterdir()}
    # Log lines stay lines: one timestamped entry per line, JSON on stderr.
    for line in (backup_dir / "backup_log.txt").read_text().splitlines():
        assert line.startswith("[20"), line
    assert all(parse_event(line) is not None for line in backup.stderr.splitlines()), \
        backup.stderr
    rows = json.loads(run_backupd(["list", "--json"], env).stdout)
    assert len(rows) == 1 and rows[0]["state"] == "verified"
    assert run_backupd(["verify", rows[0]["name"]], env).returncode == 0


def test_manual_backup_while_one_is_running(
    pg_server: ServerAddress, make_db: Callable[..., str],
    backupd_env: Callable[..., dict[str, str]], backupd_daemon: Callable[..., BackupdProcess],
    tmp_path: Path, backup_dir: Path,
) -> None:
    database = make_db()
    psql(pg_server, database, "CREATE TABLE t AS SELECT g AS id, repeat(md5(g::text), 3) AS v "
                              "FROM generate_series(1, 30000) g;")
    slow = SlowDump(tmp_path / "shims", chunk=16384, delay=0.1)
    env = backupd_env(database, PATH=slow.path())
    first = backupd_daemon(["backup"], env)
    wait_until(lambda: dump_partials(backup_dir), what="the first backup's temporary file")
    # The temporary file is private from its first byte.
    assert {_mode(p) for p in dump_partials(backup_dir)} == {0o600}

    second = run_backupd(["backup"], env)

    assert second.returncode == 1
    assert "already running" in second.stderr and "skipped" in second.stderr
    assert len(dump_partials(backup_dir)) == 1, "a second dump was started"
    slow.slow = False
    assert stop_backupd(first, sig=0, timeout=60) == 0, first.read_stderr()
    data = [p for p in backup_dir.iterdir() if p.name.endswith(".sql.gz")]
    assert len(data) == 1

"""Passwords that break naive quoting work end to end against a scram-auth server, and never
show up in a child's argv or in any output backupd writes."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.backups import only_backup, path_with, read_tool_log, tool_wrapper_dir
from helpers.cli import EnvFactory, run_backupd
from helpers.cluster import DEFAULT_CLUSTER_PASSWORD, PrivateCluster
from helpers.pg import create_database, fingerprint, psql

PASSWORD = DEFAULT_CLUSTER_PASSWORD
assert all(c in PASSWORD for c in "'\":\\ $")  # the characters this file is about


def _seed(cluster: PrivateCluster, db: str) -> None:
    create_database(cluster.address, db)
    psql(cluster.address, db,
         "CREATE TABLE t (id int PRIMARY KEY, x text);"
         "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 500) g;")


def _everything_written(backup_dir: Path, *procs: subprocess.CompletedProcess[str]) -> str:
    texts = [p.stdout + p.stderr for p in procs]
    texts += [f.read_text(errors="replace") for f in backup_dir.iterdir()
              if f.name.endswith((".txt", ".json"))]
    return "\n".join(texts)


def test_special_password_backup_and_restore_without_argv_or_log_leaks(
    private_cluster: Callable[..., PrivateCluster], backupd_env: EnvFactory,
    backup_dir: Path, tmp_path: Path,
) -> None:
    cluster = private_cluster()
    _seed(cluster, "source")
    argv_log = tmp_path / "argv.jsonl"
    tools = tool_wrapper_dir(tmp_path / "bin", argv_log)
    env = backupd_env("source", POSTGRES_HOST="127.0.0.1", POSTGRES_PORT=str(cluster.port),
                      POSTGRES_PASSWORD=PASSWORD, PATH=path_with(tools))

    dump = run_backupd(["backup", "--no-prune"], env)
    backup = only_backup(backup_dir)
    restore = run_backupd(["restore", backup.name, "--yes", "--target-db", "restored"], env)

    assert dump.returncode == 0, dump.stderr
    assert restore.returncode == 0, restore.stderr
    assert fingerprint(cluster.address, "restored") == fingerprint(cluster.address, "source")
    calls = read_tool_log(argv_log)
    dumps = [c for c in calls if c["tool"] == "pg_dump" and "--version" not in c["argv"]]
    restores = [c for c in calls if c["tool"] == "psql"]
    assert dumps and restores, calls  # the wrappers really saw both children
    for call in calls:
        assert not any(PASSWORD in arg for arg in call["argv"]), call["argv"]
    for call in dumps + restores:
        assert "PGPASSWORD" in call["env_keys"]  # the password's only way in
        # No other secret-bearing variable of backupd's reaches the child.
        assert "POSTGRES_PASSWORD" not in call["env_keys"]
    assert PASSWORD not in _everything_written(backup_dir, dump, restore)
    assert PASSWORD.encode() not in backup.read_bytes()


def test_password_file_works_and_beats_the_variable(
    private_cluster: Callable[..., PrivateCluster], backupd_env: EnvFactory,
    backup_dir: Path, tmp_path: Path,
) -> None:
    cluster = private_cluster()
    _seed(cluster, "source")
    secret_file = tmp_path / "pg_password"
    secret_file.write_text(PASSWORD + "\n")  # trailing newline as `echo > file` leaves it
    base = backupd_env("source", POSTGRES_HOST="127.0.0.1", POSTGRES_PORT=str(cluster.port),
                       POSTGRES_PASSWORD="wrong-password-in-variable")

    wrong = run_backupd(["backup", "--no-prune"], base)
    proc = run_backupd(["backup", "--no-prune"], {**base,
                                                   "POSTGRES_PASSWORD_FILE": str(secret_file)})

    assert wrong.returncode == 1
    assert "password authentication failed" in wrong.stderr
    assert "wrong-password-in-variable" not in wrong.stdout + wrong.stderr
    assert proc.returncode == 0, proc.stderr
    assert PASSWORD not in _everything_written(backup_dir, wrong, proc)


@pytest.mark.parametrize("kind", ["missing", "directory", "empty", "binary"])
def test_unreadable_password_file_is_exit_2_naming_the_variable(
    backupd_env: EnvFactory, tmp_path: Path, kind: str
) -> None:
    path = tmp_path / "secret"
    if kind == "directory":
        path.mkdir()  # tests run as root, so a directory stands in for "no permission"
    elif kind == "empty":
        path.write_text("\n")  # a secret that was never filled in
    elif kind == "binary":
        path.write_bytes(b"\xff\xfe" + PASSWORD.encode())
    proc = run_backupd(["backup"], backupd_env("anydb", POSTGRES_PASSWORD_FILE=str(path)))
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert "POSTGRES_PASSWORD_FILE" in lines[0]
    assert PASSWORD not in proc.stderr
    assert proc.stdout == ""

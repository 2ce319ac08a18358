"""`backupd basebackup` (issue 15): a verified base backup of a private cluster, checked
against PostgreSQL's backup_manifest while it streams; damage caught by verify; encryption;
offsite copies through the repository; the server's prerequisites refused in one line."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from helpers.age import make_age_keys
from helpers.backups import flip_byte, read_manifest
from helpers.basebackups import (
    archive_cluster,
    basebackup_env,
    pg_verifybackup,
    rewrite_member,
    take_base_backup,
)
from helpers.cli import kill_group, run_backupd, start_backupd
from helpers.cluster import PrivateCluster
from helpers.faults import wait_until
from helpers.offsite import object_keys, s3_env
from helpers.pg import REPO_ROOT as REPO
from helpers.pg import connect, pg_binary
from helpers.procs import kill_processes, processes_with_env
from helpers.s3server import S3Server

from backupd.archive.basebackups import BaseBackupDamaged, extract_base_backup, list_base_backups
from backupd.pipeline.config import AgeKeyFiles
from backupd.pipeline.encrypt import load_identities
from backupd.storage.local import LocalRepository


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivateCluster]:
    with archive_cluster() as server:
        server.start()
        with connect(server.address) as conn:
            conn.execute("CREATE TABLE kept (id int PRIMARY KEY, label text)")
            conn.execute("INSERT INTO kept SELECT g, 'row ' || g FROM generate_series(1, 5000) g")
        yield server


@pytest.fixture(scope="module")
def taken(cluster: PrivateCluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One base backup of the module's cluster (tests copy it before changing anything)."""
    directory = tmp_path_factory.mktemp("base")
    return take_base_backup(basebackup_env(cluster, directory))


def copy_of(taken: Path, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for source in (taken, taken.with_name(taken.name + ".manifest.json")):
        shutil.copy2(source, directory / source.name)
    return directory / taken.name


def system_identifier(cluster: PrivateCluster) -> int:
    with connect(cluster.address) as conn:
        row = conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()
    assert row is not None
    return int(row[0])


def test_base_backup_is_verified_and_extracts_to_what_pg_verifybackup_accepts(
        cluster: PrivateCluster, taken: Path, tmp_path: Path) -> None:
    manifest = read_manifest(taken)
    facts = manifest["base_backup"]
    assert manifest["kind"] == "base" and manifest["verified"] is True, manifest
    assert facts["system_identifier"] == system_identifier(cluster)
    assert facts["files"] > 900 and facts["wal_files"], facts
    [info] = list_base_backups(LocalRepository(taken.parent))
    assert info.name == taken.name and info.verified and info.start_lsn < info.stop_lsn
    assert info.wal_segment_size == 16 * 1024 * 1024 and info.timeline == 1
    target = tmp_path / "data"
    extracted = extract_base_backup(LocalRepository(taken.parent), taken.name, target, None)
    assert extracted.facts.start_lsn == facts["start_lsn"]
    assert extracted.left_out == frozenset()
    # PostgreSQL's own verifier (every file, and the WAL parsed by pg_waldump) agrees.
    proc = pg_verifybackup(target)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (target / "backup_label").read_text().startswith("START WAL LOCATION")


def test_verify_names_a_damaged_member_the_stored_checksum_vouches_for(
        taken: Path, tmp_path: Path) -> None:
    damaged = copy_of(taken, tmp_path / "repo")
    rewrite_member(damaged, "PG_VERSION", lambda data: b"14\n" if data != b"14\n" else b"13\n")
    env = {"DB_BACKUP_DIR": str(damaged.parent), "POSTGRES_DB": "postgres"}
    proc = run_backupd(["verify", damaged.name], env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "PG_VERSION does not match its SHA-256 in backup_manifest" in proc.stdout
    assert read_manifest(damaged)["verified"] is False
    # Extraction refuses it too, and leaves nothing behind.
    target = tmp_path / "data"
    with pytest.raises(BaseBackupDamaged, match="PG_VERSION"):
        extract_base_backup(LocalRepository(damaged.parent), damaged.name, target, None)
    assert list(target.iterdir()) == []


def test_verify_catches_a_missing_wal_segment_and_a_flipped_byte(taken: Path,
                                                                 tmp_path: Path) -> None:
    wal_name = read_manifest(taken)["base_backup"]["wal_files"][0]
    no_wal = copy_of(taken, tmp_path / "wal")
    rewrite_member(no_wal, f"pg_wal/{wal_name}", lambda data: data[: len(data) // 2])
    proc = run_backupd(["verify", no_wal.name],
                       {"DB_BACKUP_DIR": str(no_wal.parent), "POSTGRES_DB": "postgres"})
    assert proc.returncode == 1 and wal_name in proc.stdout, proc.stdout + proc.stderr
    flipped = copy_of(taken, tmp_path / "flip")
    flip_byte(flipped)
    proc = run_backupd(["verify", flipped.name],
                       {"DB_BACKUP_DIR": str(flipped.parent), "POSTGRES_DB": "postgres"})
    # Exit 1 alone would pass were verify to crash: the flipped backup itself must fail.
    assert proc.returncode == 1 and f"FAILED {flipped.name}" in proc.stdout, (
        proc.stdout + proc.stderr)


def test_encrypted_base_backup_is_checked_with_the_identity(cluster: PrivateCluster,
                                                            tmp_path: Path) -> None:
    keys = make_age_keys(tmp_path / "keys")
    env = basebackup_env(cluster, tmp_path / "repo",
                         DB_BACKUP_AGE_RECIPIENTS_FILE=str(keys.recipients_file),
                         DB_BACKUP_AGE_IDENTITY_FILE=str(keys.identity_file),
                         DB_BACKUP_COMPRESSION="zstd")
    path = take_base_backup(env)
    assert path.name.endswith(".tar.zst.age")
    assert b"PG_VERSION" not in path.read_bytes()  # no plaintext stored
    manifest = read_manifest(path)
    assert manifest["verified"] and manifest["encrypted"]
    target = tmp_path / "data"
    extract_base_backup(LocalRepository(path.parent), path.name, target,
                        load_identities(AgeKeyFiles(identity_file=keys.identity_file)))
    assert pg_verifybackup(target).returncode == 0
    # A wrong identity says nothing about the file: verify fails, nothing is recorded.
    other = make_age_keys(tmp_path / "other", "other")
    proc = run_backupd(["verify", path.name],
                       {**env, "DB_BACKUP_AGE_IDENTITY_FILE": str(other.identity_file)})
    assert proc.returncode == 1 and "matches" in proc.stdout, proc.stdout + proc.stderr
    assert read_manifest(path)["verified"] is True
    # Without the identity, verify checks what it can and says the content was not checked.
    del env["DB_BACKUP_AGE_IDENTITY_FILE"]
    proc = run_backupd(["verify", "--json", path.name], env)
    assert proc.returncode == 0, proc.stderr
    [report] = json.loads(proc.stdout)
    assert report["ok"] and not report["content_checked"]


def test_base_backup_reaches_s3_and_verifies_there(cluster: PrivateCluster, tmp_path: Path,
                                                   s3_server: S3Server, s3_bucket: str) -> None:
    env = basebackup_env(cluster, tmp_path / "repo", **s3_env(s3_server, s3_bucket, "site"))
    path = take_base_backup(env)
    assert object_keys(s3_server, s3_bucket) == [f"site/{path.name}",
                                                 f"site/{path.name}.manifest.json"]
    assert read_manifest(path)["uploaded_at"] is not None
    proc = run_backupd(["verify", "--remote", path.name], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = run_backupd(["list", "--remote", "--json"], env)
    assert path.name in [row["name"] for row in json.loads(proc.stdout)]


def test_a_role_without_replication_is_refused_in_one_line(cluster: PrivateCluster,
                                                           tmp_path: Path) -> None:
    with connect(cluster.address) as conn:
        conn.execute("DROP ROLE IF EXISTS plain_user")
        conn.execute("CREATE ROLE plain_user LOGIN PASSWORD 'plain-pw'")
        conn.execute("GRANT pg_read_all_settings TO plain_user")
    env = basebackup_env(cluster, tmp_path / "repo", POSTGRES_USER="plain_user",
                         POSTGRES_PASSWORD="plain-pw")
    proc = run_backupd(["basebackup"], env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("backupd: error: POSTGRES_REPLICATION_USER: ")
    assert "plain_user" in last and "REPLICATION" in last
    assert not list((tmp_path / "repo").glob("base_*"))


def test_another_clusters_archive_is_refused(cluster: PrivateCluster, taken: Path,
                                             tmp_path: Path) -> None:
    foreign = copy_of(taken, tmp_path / "repo")
    manifest = read_manifest(foreign)
    manifest["base_backup"]["system_identifier"] += 1
    foreign.with_name(foreign.name + ".manifest.json").write_text(json.dumps(manifest))
    proc = run_backupd(["basebackup"], basebackup_env(cluster, foreign.parent))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("backupd: error: DB_BACKUP_DIR: ") and "another cluster" in last
    assert foreign.name in last



def test_the_compose_servers_settings_let_the_sidecar_take_a_base_backup(
        tmp_path: Path) -> None:
    """config/pg_hba.conf and the compose file's `-c` options on a real server: the sidecar's
    role connects for replication over TCP with its password and takes a base backup."""
    compose = yaml.safe_load((REPO / "docker-compose.backup.yml").read_text())
    command = compose["services"]["postgres"]["command"]
    settings = dict(str(value).split("=", 1) for value in command[2::2])
    # The compose file mounts config/pg_hba.conf at hba_file: here it replaces the cluster's.
    del settings["hba_file"]
    settings["max_slot_wal_keep_size"] = f"'{settings['max_slot_wal_keep_size']}'"
    with PrivateCluster("compose-pw", server_settings=settings) as server:
        (server.data_dir / "pg_hba.conf").write_text((REPO / "config" / "pg_hba.conf").read_text())
        server.start()
        path = take_base_backup(basebackup_env(server, tmp_path / "repo"))
    assert read_manifest(path)["verified"] is True


def test_wal_level_minimal_is_refused_in_one_line(tmp_path: Path) -> None:
    settings = {"wal_level": "minimal", "max_wal_senders": "0"}
    with PrivateCluster("minimal-pw", server_settings=settings) as server:
        server.start()
        proc = run_backupd(["basebackup"], basebackup_env(server, tmp_path / "repo"))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("backupd: error: wal_level: ") and "wal_level = replica" in last
    assert not list((tmp_path / "repo").glob("base_*"))


def test_killed_mid_stream_leaves_no_base_backup_and_no_child(cluster: PrivateCluster,
                                                              tmp_path: Path) -> None:
    """SIGKILL of backupd while pg_basebackup streams: pg_basebackup goes too (the
    supervisor), only a dot-named .partial is left, nothing is listed, the next run works."""
    wrappers = tmp_path / "bin"
    wrappers.mkdir()
    stall = wrappers / "pg_basebackup"
    # The real tool, its stream stalled after 20 MB: the kill lands mid-stream.
    stall.write_text(f"#!/bin/sh\n'{pg_binary('pg_basebackup')}' \"$@\" | "
                     "{ head -c 20000000; sleep 120; cat; }\n")
    stall.chmod(0o755)
    repo = tmp_path / "repo"
    env = basebackup_env(cluster, repo, PATH=f"{wrappers}:{os.environ['PATH']}")
    proc = start_backupd(["basebackup"], env)
    try:
        wait_until(lambda: any(p.stat().st_size > 0 for p in repo.glob(".base_*.partial")),
                   60, "the base backup's temporary file growing")
        proc.kill()
        proc.wait(30)
        wait_until(lambda: not processes_with_env("PGPORT", str(cluster.port)), 30,
                   "pg_basebackup and its wrapper gone with backupd")
    finally:
        kill_group(proc)
        kill_processes(processes_with_env("PGPORT", str(cluster.port)))
    assert [p.name for p in repo.iterdir() if p.name.startswith("base_")] == []
    listed = run_backupd(["list", "--json"], basebackup_env(cluster, repo))
    assert "base_" not in listed.stdout, listed.stdout
    assert take_base_backup(basebackup_env(cluster, repo)).exists()


def test_health_wants_a_verified_base_backup_with_the_wal_archive(taken: Path,
                                                                  tmp_path: Path) -> None:
    env = {"DB_BACKUP_DIR": str(tmp_path / "repo"), "POSTGRES_DB": "postgres",
           "WAL_ARCHIVE": "on"}
    (tmp_path / "repo").mkdir()
    proc = run_backupd(["health"], env)
    assert proc.returncode == 1 and "base backups: no verified base backup" in proc.stdout, \
        proc.stdout + proc.stderr
    copy_of(taken, tmp_path / "repo")
    proc = run_backupd(["health"], env)
    assert "base backups:" not in proc.stdout, proc.stdout


def test_a_base_backup_is_of_the_cluster_whatever_postgres_db_names(cluster: PrivateCluster,
                                                                      tmp_path: Path) -> None:
    path = take_base_backup(basebackup_env(cluster, tmp_path / "repo", POSTGRES_DB="*"))
    assert read_manifest(path)["verified"] is True

"""The age identity where part of the archive is encrypted: only the files a command reads
need it.

Encryption turned off later leaves a mixed archive while the older, encrypted base backups
and WAL are still retained. A recover that reads only plain files (to the end: the newest,
plain base backup and the WAL after it) needs no identity, as before the identity check
came; one whose plan reads an encrypted file is refused naming DB_BACKUP_AGE_IDENTITY_FILE
and that file, before any file is fetched (exit 2, nothing created).

``backupd mark`` runs in the sidecar, which holds no identity: when its name check would
read encrypted WAL and DB_BACKUP_AGE_IDENTITY_FILE is not set, it warns that the name was
not looked for and makes the restore point (as whenever the check cannot run); base
backups, which it never unpacks, do not count. A set identity file it cannot read is a
setting to fix (exit 2, no restore point).

One private cluster for the module: a daemon with age encryption takes the first base
backup and archives batch A; then a daemon without it (DB_BACKUP_AGE_RECIPIENTS_FILE
unset) streams on into the same archive, a plain base backup is taken, and batch C
follows. No identity in any command's environment unless a test gives one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import leakcheck
from helpers.age import make_age_keys
from helpers.cli import as_a_user_sees_it, run_backupd, start_backupd, stop_backupd
from helpers.file_opens import OpenCounter
from helpers.recovered import (
    PitrCluster,
    insert_batch,
    pitr_cluster,
    recover,
    recovered_batches,
    wait_first_base_backup,
)
from helpers.wal import (
    local_archive,
    put_base_backup_record,
    restore_points_in_pg_wal,
    store_wal_files,
    switch_wal,
    wait_archived,
    wait_streaming,
    wal_dir,
)

from backupd.archive.basebackups import list_base_backups
from backupd.storage.local import LocalRepository

pytestmark = pytest.mark.slow
PASSWORD = "recover-identity-pw"


@dataclasses.dataclass(frozen=True)
class Mixed:
    pitr: PitrCluster
    encrypted_base: str
    plain_base: str
    before_plain: str  # an LSN between batch A and the plain base backup
    identity_file: Path


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mixed]:
    keys = make_age_keys(tmp_path_factory.mktemp("age"))
    with pitr_cluster(PASSWORD) as pitr:
        backup_dir, work = pitr.backup_dir, pitr.work
        encrypting = {**pitr.env, "DB_BACKUP_AGE_RECIPIENTS_FILE": str(keys.recipients_file)}
        daemon = start_backupd(["run"], encrypting, log_dir=work / "encrypting")
        try:
            wait_first_base_backup(backup_dir)
            before_plain = insert_batch(pitr.cluster.address, "A")
            wait_archived(backup_dir, switch_wal(pitr.cluster.address, 2), 90)
        finally:
            stop_backupd(daemon, timeout=60)
        [encrypted_base] = [b.name for b in list_base_backups(LocalRepository(backup_dir))]
        assert encrypted_base.endswith(".age")
        daemon = start_backupd(["run"], pitr.env, log_dir=work / "plain")
        try:
            wait_streaming(backup_dir)
            taken = run_backupd(["basebackup"], pitr.env, timeout=300)
            assert taken.returncode == 0, taken.stderr
            insert_batch(pitr.cluster.address, "C")
            wait_archived(backup_dir, switch_wal(pitr.cluster.address, 2), 90)
        finally:
            stop_backupd(daemon, timeout=60)
        [plain_base] = [b.name for b in list_base_backups(LocalRepository(backup_dir))
                        if b.name != encrypted_base]
        assert not plain_base.endswith(".age")
        # Both kinds of WAL are in the archive.
        kinds = {w.artifact.endswith(".age") for w in local_archive(backup_dir).segments()
                 if w.artifact is not None}
        assert kinds == {True, False}
        yield Mixed(pitr, encrypted_base, plain_base, before_plain, keys.identity_file)


def _one_line(proc_stderr: str) -> str:
    lines = proc_stderr.strip().splitlines()
    assert len(lines) == 1, proc_stderr
    assert "Traceback" not in proc_stderr
    return lines[0]


def test_a_recover_that_reads_only_plain_files_needs_no_identity(mixed: Mixed) -> None:
    # It was refused (exit 2: "not set, and the archive is encrypted") for the encrypted
    # base backup and WAL still retained, which a recover to the end never reads.
    target = mixed.pitr.work / "to-the-end"
    out = recover(as_a_user_sees_it(mixed.pitr.env), target)
    assert f"base backup: {mixed.plain_base}" in out, out
    assert recovered_batches(target, PASSWORD) == {"A": 40, "C": 40}


def test_a_recover_whose_plan_reads_encrypted_files_is_refused_naming_them(
        mixed: Mixed) -> None:
    target = mixed.pitr.work / "before-plain"
    proc = run_backupd(["recover", "--target-dir", str(target), "--to-lsn",
                        mixed.before_plain], as_a_user_sees_it(mixed.pitr.env), timeout=300)
    assert proc.returncode == 2, proc.stderr
    line = _one_line(proc.stderr)
    assert "DB_BACKUP_AGE_IDENTITY_FILE: not set" in line, line
    assert mixed.encrypted_base in line, line
    assert not target.exists()


def test_a_recover_that_reads_encrypted_files_reads_the_identity_file_once(
        mixed: Mixed) -> None:
    # It was read for the checks, then again for every encrypted WAL file fetched and for
    # the encrypted base backup.
    target = mixed.pitr.work / "identity-once"
    env = {**as_a_user_sees_it(mixed.pitr.env),
           "DB_BACKUP_AGE_IDENTITY_FILE": str(mixed.identity_file)}
    with OpenCounter(mixed.identity_file) as opens:
        out = recover(env, target, "--to-lsn", mixed.before_plain)
        during = opens.count()
        # The harness reads every run's secret files too (the leak check), before the run:
        # counted the same way, and taken off.
        leakcheck.record_run(["recover"], env)
        harness = opens.count() - during
    assert f"base backup: {mixed.encrypted_base}" in out, out
    assert harness == 1
    assert during - harness == 1
    assert recovered_batches(target, PASSWORD) == {"A": 40}


def test_mark_without_the_identity_warns_the_name_was_not_looked_for_and_makes_the_point(
        mixed: Mixed) -> None:
    # The sidecar holds no identity (docs: keep it off the sidecar): mark refused (exit 2)
    # every restore point over an archive holding any encrypted file.
    proc = run_backupd(["mark", "sidecar-mark"], as_a_user_sees_it(mixed.pitr.env),
                       timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "restore point 'sidecar-mark' not looked for" in proc.stderr, proc.stderr
    assert "DB_BACKUP_AGE_IDENTITY_FILE not set" in proc.stderr, proc.stderr
    assert restore_points_in_pg_wal(mixed.pitr.cluster, "sidecar-mark") == 1


def test_mark_with_an_identity_file_that_is_not_there_is_refused_and_makes_no_point(
        mixed: Mixed, tmp_path: Path) -> None:
    missing = tmp_path / "secrets" / "age_identity"
    env = {**as_a_user_sees_it(mixed.pitr.env), "DB_BACKUP_AGE_IDENTITY_FILE": str(missing)}
    proc = run_backupd(["mark", "unreadable-key"], env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    line = _one_line(proc.stderr)
    assert f"DB_BACKUP_AGE_IDENTITY_FILE: cannot read {missing}" in line, line
    assert restore_points_in_pg_wal(mixed.pitr.cluster, "unreadable-key") == 0


def test_mark_never_counts_base_backups_for_the_identity(mixed: Mixed, tmp_path: Path) -> None:
    # An archive whose WAL is plain and whose base backup is encrypted (stand-ins: mark reads
    # only listings and WAL, never a base backup's content). The name check reads the plain
    # WAL (the stand-in's is no WAL pg_waldump reads: it warns for that, not the identity).
    backup_dir = tmp_path / "backups"
    archive = local_archive(backup_dir)
    wal_dir(backup_dir).mkdir(parents=True)
    store_wal_files(archive, ["000000010000000000000005", "000000010000000000000006"],
                    tmp_path)
    put_base_backup_record(LocalRepository(backup_dir), tmp_path, timeline=1, segno=5,
                           encrypted=True)
    env = {**as_a_user_sees_it(mixed.pitr.env), "DB_BACKUP_DIR": str(backup_dir)}
    proc = run_backupd(["mark", "plain-wal"], env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "DB_BACKUP_AGE_IDENTITY_FILE" not in proc.stderr, proc.stderr
    assert "restore point 'plain-wal' not looked for in the archive's WAL" in proc.stderr
    assert restore_points_in_pg_wal(mixed.pitr.cluster, "plain-wal") == 1

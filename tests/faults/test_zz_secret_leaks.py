"""The secret-leak check: runs last (see tests/faults/conftest.py) and searches everything the
session's backupd processes produced for every secret value the session gave them.

Searched: stdout/stderr of every backupd command and daemon, every file left in every
DB_BACKUP_DIR (human logs, manifests, state files, file names), every request Slack/heartbeat
stand-ins received, and the argv of every child process backupd started (audit hook, see
tests/helpers/argv_hook/). Secrets: POSTGRES_PASSWORD(_FILE), SLACK_WEBHOOK_URL, HEARTBEAT_URL,
AWS keys, S3_SSE_KMS_KEY_ID and age identities, as given to each backupd subprocess.

The first test makes sure every kind of secret is in play even when this file runs alone.
Under pytest-xdist (`pytest -n N`), this file runs last on its worker while other workers may
still be running; the controller then repeats the search over every worker's evidence once all
have finished (tests/conftest.py), and fails the session on any leak.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import leakcheck
from helpers.cli import run_backupd, server_env
from helpers.cluster import PrivateCluster
from helpers.http_receiver import HttpReceiver
from helpers.leakcheck import (
    ARGV_LOG,
    AWS_KEY_ID,
    AWS_SECRET,
    KMS_KEY,
    SECRET_PASSWORD,
    find_leaks,
    session_leaks,
)


def test_secret_rich_runs(
    private_cluster: Callable[..., PrivateCluster], http_receiver: HttpReceiver, tmp_path: Path,
) -> None:
    """Every kind of secret through every path: success, failure, notifiers, S3 errors, age."""
    import pyrage

    cluster = private_cluster(SECRET_PASSWORD)
    identity = pyrage.x25519.Identity.generate()
    identity_file = tmp_path / "age-identity.txt"
    identity_file.write_text(f"# test identity\n{identity}\n")
    identity_file.chmod(0o600)
    password_file = tmp_path / "pgpass-secret"
    password_file.write_text(SECRET_PASSWORD + "\n")
    base = f"http://127.0.0.1:{http_receiver.port}"
    http_receiver.set_behaviour("error")
    secret_rich = {
        "POSTGRES_PASSWORD_FILE": str(password_file), "NOTIFY_TIMEOUT_SECONDS": "2",
        "SLACK_WEBHOOK_URL": base + "/services/T000/B000/XXXXSECRETXXXX",
        "HEARTBEAT_URL": base + "/ping/hb-SECRET-token-0001",
        "AWS_ACCESS_KEY_ID": AWS_KEY_ID, "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
        "S3_SSE": "aws:kms", "S3_SSE_KMS_KEY_ID": KMS_KEY,
        # S3 refuses connections: the upload fails, and its error text is searched too.
        "DB_BACKUP_S3_BUCKET": "leak-check", "S3_ENDPOINT_URL": http_receiver.refused_url(),
        "S3_REGION": "us-east-1", "S3_TIMEOUT_SECONDS": "2",
        "DB_BACKUP_AGE_RECIPIENTS": str(identity.to_public()),
        "DB_BACKUP_AGE_IDENTITY_FILE": str(identity_file),
    }
    env = server_env(cluster.address, "postgres", tmp_path / "backups", **secret_rich)
    backup = run_backupd(["backup"], env)
    assert backup.returncode == 0, backup.stderr
    wrong = run_backupd(["backup"], {**env, "POSTGRES_PASSWORD_FILE": "",
                                     "POSTGRES_PASSWORD": SECRET_PASSWORD + "-wrong"})
    assert wrong.returncode == 1
    for args in (["verify", "--all"], ["list", "--json"], ["status"], ["health"],
                 ["restore", "--latest", "--yes", "--target-db", "leakcheck_restored"]):
        run_backupd(args, env)
    assert ARGV_LOG.is_file() and "pg_dump" in ARGV_LOG.read_text(), "argv hook not active"


def test_no_secret_anywhere_in_the_sessions_output() -> None:
    searched, leaks = session_leaks()
    assert searched > 10, "nothing was collected: the evidence recorder is broken"
    assert not leaks, "secrets leaked:\n" + "\n".join(f"  {s!r} in {w}" for w, s in leaks)


@pytest.mark.parametrize("where", ["output", "backup-dir file", "child argv"])
def test_the_leak_check_itself_can_fail(
    where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A leak planted in each kind of evidence (JSON-escaped) is found by the same search."""
    monkeypatch.setattr(leakcheck, "EVIDENCE", leakcheck.Evidence())
    monkeypatch.setattr(leakcheck, "ARGV_LOG", tmp_path / "argv.log")
    line = json.dumps({"msg": f"connecting with {SECRET_PASSWORD}"})
    if where == "output":
        leakcheck.record_output("planted", line)
    elif where == "backup-dir file":
        (tmp_path / "backup_log.txt").write_text(line)
        leakcheck.record_run(["backup"], {"DB_BACKUP_DIR": str(tmp_path)})
    else:
        leakcheck.ARGV_LOG.write_text(json.dumps(["pg_dump", f"--password={SECRET_PASSWORD}"]))
    leaks = find_leaks({SECRET_PASSWORD}, leakcheck.collected_texts())
    assert [secret for _, secret in leaks] == [SECRET_PASSWORD]

"""The generic webhook: one JSON POST per finished job, in the documented schema
(docs/webhook-schema-v1.json), signed with HMAC-SHA256 when WEBHOOK_SECRET is set; a
receiver that hangs, fails or drops the connection never fails the job nor holds it up
beyond the notifier's budget.

A local HTTP receiver stands in for the user's service; the backups are real.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from helpers.backups import backup_files
from helpers.cli import EnvFactory, run_backupd
from helpers.cluster import free_port
from helpers.http_receiver import HttpReceiver, RecordedRequest

from backupd.notify.webhook import WebhookError, WebhookNotifier, json_schema, webhook_payload
from backupd.outcomes import DatabaseDrill, DrillOutcome, RestoreOutcome
from backupd.result import JobResult, Status

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "docs" / "webhook-schema-v1.json"


def hook_url(receiver: HttpReceiver) -> str:
    return f"{receiver.url}/{secrets.token_hex(8)}"  # the path is the receiver's credential


def checked_body(request: RecordedRequest, secret: str | None) -> dict[str, Any]:
    """What a receiver does: check the signature over the exact bytes, then the schema."""
    if secret is None:
        assert "x-backupd-signature-256" not in request.headers
    else:
        expected = hmac.new(secret.encode(), request.body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(request.headers["x-backupd-signature-256"],
                                   f"sha256={expected}")
    assert request.headers["content-type"] == "application/json"
    payload = request.payload
    jsonschema.validate(payload, json.loads(SCHEMA_FILE.read_text()))
    assert payload["schema_version"] == 1 and payload["event"] == "job.finished"
    return payload


def test_the_documented_schema_is_the_one_the_code_sends() -> None:
    """docs/webhook-schema-v1.json is generated from the payload model; regenerate it with
    ``python -m backupd.notify.webhook > docs/webhook-schema-v1.json`` (and raise
    SCHEMA_VERSION when a change is not purely additive)."""
    assert json.loads(SCHEMA_FILE.read_text()) == json_schema(), (
        "docs/webhook-schema-v1.json is stale: regenerate it with `python -m "
        "backupd.notify.webhook > docs/webhook-schema-v1.json` (additive: same version)")


def test_a_drilled_databases_unusable_tablespaces_keep_their_published_name() -> None:
    """Schema v1 calls them ``tablespaces_missing``; they are also those the drill's role
    may not create in, so the code says ``tablespaces_unusable``. The body, the result
    record and the state file read back keep the published name."""
    drilled = DatabaseDrill(database="appdb", backup_name="appdb_x.dump",
                            tablespaces_unusable=["pg_default", "space_tbl"])
    outcome = DrillOutcome(scratch_database="s", restore=RestoreOutcome(target_database="s"),
                           databases=[drilled])
    result = JobResult(job="drill", database="appdb", outcome=outcome)
    body = webhook_payload(result)
    jsonschema.validate(body, json.loads(SCHEMA_FILE.read_text()))
    [sent] = body["outcome"]["databases"]
    assert sent["tablespaces_missing"] == ["pg_default", "space_tbl"]
    assert "tablespaces_unusable" not in sent
    record = result.to_dict()
    assert record["outcome"]["databases"][0]["tablespaces_missing"] == ["pg_default",
                                                                        "space_tbl"]
    read_back = JobResult.model_validate(record).outcome
    assert isinstance(read_back, DrillOutcome)
    assert read_back.databases[0].tablespaces_unusable == ["pg_default", "space_tbl"]


def test_each_backup_posts_its_signed_result(
    http_receiver: HttpReceiver, small_db: str, backupd_env: EnvFactory, backup_dir: Path
) -> None:
    url, secret = hook_url(http_receiver), secrets.token_urlsafe(24)
    env = backupd_env(small_db, WEBHOOK_URL=url, WEBHOOK_SECRET=secret)
    ok = run_backupd(["backup"], env)
    assert ok.returncode == 0, ok.stderr
    port = free_port()
    failed = run_backupd(["backup"], {**env, "POSTGRES_PORT": str(port)})
    assert failed.returncode == 1

    good, bad = (checked_body(r, secret) for r in http_receiver.wait_for(2))
    assert good["job"] == "backup" and good["status"] == "success" and good["exit_code"] == 0
    assert good["database"] == small_db
    assert [good["backup_name"]] == backup_files(backup_dir)
    assert good["outcome"]["kind"] == "backup" and good["size_bytes"] > 0
    assert good["text"].startswith("backup success")
    assert bad["status"] == "failed" and bad["exit_code"] == 1
    assert str(port) in bad["error"] and bad["backup_name"] is None
    # Neither the URL nor the secret leaves backupd: not in the logs, not in the body.
    for output in (ok.stdout + ok.stderr, failed.stdout + failed.stderr,
                   *(r.body.decode() for r in http_receiver.requests)):
        assert url not in output and secret not in output


def test_without_a_secret_the_post_is_unsigned(http_receiver: HttpReceiver) -> None:
    result = JobResult(job="verify", database="certificate_verification")
    result.finish(Status.SUCCESS)
    WebhookNotifier(hook_url(http_receiver)).notify(result)
    (request,) = http_receiver.wait_for(1)
    assert checked_body(request, None)["job"] == "verify"


@pytest.mark.parametrize("behaviour", ["hang", "error", "close", "refuse"])
def test_a_bad_receiver_is_bounded_retried_and_redacted(
    http_receiver: HttpReceiver, behaviour: str
) -> None:
    url = http_receiver.refused_url() if behaviour == "refuse" else hook_url(http_receiver)
    if behaviour != "refuse":
        http_receiver.set_behaviour(behaviour)  # type: ignore[arg-type]
    result = JobResult(job="backup", database="certificate_verification")
    result.finish(Status.SUCCESS)
    started = time.monotonic()
    with pytest.raises(WebhookError) as caught:
        WebhookNotifier(url, secret="k" * 16, timeout_seconds=2).notify(result)
    # Its own budget (90% of NOTIFY_TIMEOUT_SECONDS), whatever the receiver does: two
    # attempts that each took the whole budget would add up past 3 s. No tighter bound: under
    # load the budget itself runs late.
    assert time.monotonic() - started < 3.0
    assert url not in str(caught.value)
    if behaviour in ("error", "close"):  # retried, with the same signed body each time
        requests = http_receiver.requests
        assert len(requests) >= 2 and len({r.body for r in requests}) == 1
        # ...and one delivery id, so a receiver can drop a retry it already processed.
        assert len({r.headers["x-backupd-delivery"] for r in requests}) == 1


@pytest.mark.parametrize("behaviour", ["hang", "error", "close"])
def test_the_job_succeeds_whatever_the_receiver_does(
    http_receiver: HttpReceiver, small_db: str, backupd_env: EnvFactory, backup_dir: Path,
    behaviour: str,
) -> None:
    http_receiver.set_behaviour(behaviour)  # type: ignore[arg-type]
    url = hook_url(http_receiver)
    proc = run_backupd(["backup"], backupd_env(small_db, WEBHOOK_URL=url,
                                               WEBHOOK_SECRET="signing-key-123",
                                               NOTIFY_TIMEOUT_SECONDS="3"))
    assert proc.returncode == 0, proc.stderr
    assert len(backup_files(backup_dir)) == 1
    assert http_receiver.requests, "the webhook was never tried"
    assert "webhook" in proc.stderr  # the notifier's failure is logged...
    assert url not in proc.stderr + proc.stdout  # ...without its URL

"""A generic webhook: one signed JSON POST per finished job, for everything that is not Slack
(Teams/Discord/Mattermost bridges, n8n, PagerDuty's events endpoint, a user's own service).

The body is the job's result exactly as the structured "job finished" record carries it
(``JobResult.to_dict``), plus ``schema_version``, ``event``, ``host`` and ``text`` (the
summary line; ``WebhookPayload``); the schema is documented in docs/operations.md ("Webhook") and
docs/webhook-schema-v1.json, and a change that is not purely additive raises
``SCHEMA_VERSION``. With a secret, ``X-Backupd-Signature-256: sha256=<hex>`` is the
HMAC-SHA256 of the exact body bytes (GitHub's convention), so receivers can authenticate it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import uuid
from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field

from backupd import __version__
from backupd.log import redact
from backupd.notify.deadline import BUDGET_SHARE, Deadline, register_secret_url
from backupd.notify.posting import post
from backupd.result import JobResult

SCHEMA_VERSION: Literal[1] = 1
SIGNATURE_HEADER = "X-Backupd-Signature-256"


class WebhookError(RuntimeError):
    """The receiver did not accept the POST; the text is already redacted."""


class WebhookNotifier:
    name = "webhook"
    remote: ClassVar[bool] = True  # told at the same time as the other network notifiers

    def __init__(self, url: str, *, secret: str | None = None,
                 timeout_seconds: float = 10.0) -> None:
        register_secret_url(url)
        self._url = url
        self._secret = secret.encode("utf-8") if secret else None
        self.budget_seconds = timeout_seconds * BUDGET_SHARE

    def __repr__(self) -> str:  # never the URL nor the secret
        return f"WebhookNotifier(signed={self._secret is not None})"

    def notify(self, result: JobResult) -> None:
        body = webhook_body(result)
        headers = {"Content-Type": "application/json",
                   "User-Agent": f"backupd-webhook/{__version__}",
                   "X-Backupd-Event": "job.finished",
                   # The same on every attempt: a receiver that answered too late to be
                   # heard sees the retry as the delivery it already has.
                   "X-Backupd-Delivery": str(uuid.uuid4())}
        if self._secret is not None:
            headers[SIGNATURE_HEADER] = signature(self._secret, body)
        problem = post(self._url, body, headers, Deadline(self.budget_seconds))
        if problem is not None:
            raise WebhookError(f"webhook POST failed: {problem}")


class WebhookPayload(JobResult):
    """The body: the job's result (as the "job finished" record has it) and, first, what a
    receiver needs to route it. Its JSON Schema is docs/webhook-schema-v1.json."""

    # Every field is always sent (null when unknown): the schema says so.
    model_config = ConfigDict(extra="ignore", title="backupd webhook payload, schema version 1",
                              json_schema_serialization_defaults_required=True)

    schema_version: Literal[1] = SCHEMA_VERSION
    event: Literal["job.finished"] = "job.finished"
    host: str = Field(default_factory=socket.gethostname)
    # The one-line summary the CLI prints and the log file holds. Named "text" because
    # Slack-compatible incoming webhooks (Mattermost, Rocket.Chat) show that field as is.
    text: str = ""


def webhook_payload(result: JobResult) -> dict[str, Any]:
    """The result as the body carries it, every text redacted."""
    payload = WebhookPayload.model_validate({**result.model_dump(), "text": result.summary()})
    data = payload.model_dump(mode="json")
    # The routing fields first, so a person reading the raw body sees them at once.
    ordered = {key: data.pop(key) for key in ("schema_version", "event", "host", "job")}
    scrubbed: dict[str, Any] = redact.scrub({**ordered, **data})
    return scrubbed


def json_schema() -> dict[str, Any]:
    """The body's JSON Schema (what docs/webhook-schema-v1.json holds)."""
    return WebhookPayload.model_json_schema(mode="serialization")


def webhook_body(result: JobResult) -> bytes:
    return json.dumps(webhook_payload(result), ensure_ascii=False,
                      separators=(",", ":")).encode("utf-8")


def signature(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


if __name__ == "__main__":  # regenerates docs/webhook-schema-v1.json
    print(json.dumps(json_schema(), indent=2, sort_keys=True))

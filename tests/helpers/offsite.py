"""Helpers for tests of the offsite (S3) copies: backupd's S3 settings and looking into the bucket
from outside, with the test's own boto3 client (never through backupd's code)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .s3server import S3Server

# moto accepts any credentials: a distinctive secret lets the session's leak check look for it.
SECRET_KEY = "offsite-Secret-Key-9f3Kq7Zx"
ACCESS_KEY = "AKIAOFFSITETEST7Q2X"


def s3_env(s3_server: S3Server, bucket: str, prefix: str = "", **overrides: str) -> dict[str, str]:
    """The variables that turn offsite copies on, against the moto server."""
    env = {
        **s3_server.env(),
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "DB_BACKUP_S3_BUCKET": bucket,
        # Short: a run facing a dead S3 gives up (and leaves the backup pending) quickly.
        "S3_TIMEOUT_SECONDS": "3",
    }
    if prefix:
        env["DB_BACKUP_S3_PREFIX"] = prefix
    return {**env, **overrides}


def object_keys(s3_server: S3Server, bucket: str, prefix: str = "") -> list[str]:
    client = s3_server.client()
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(item["Key"] for item in page.get("Contents", []))
    return sorted(keys)


def get_bytes(s3_server: S3Server, bucket: str, key: str) -> bytes:
    data: bytes = s3_server.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    return data


def put_bytes(s3_server: S3Server, bucket: str, key: str, data: bytes) -> None:
    s3_server.client().put_object(Bucket=bucket, Key=key, Body=data)


def remote_manifest(s3_server: S3Server, bucket: str, key: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(get_bytes(s3_server, bucket, key + ".manifest.json"))
    return result


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()

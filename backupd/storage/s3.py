"""The S3 store: offsite copies in AWS S3 or any S3-compatible store (MinIO, Ceph, R2, ...).

Layout: ``<prefix><backup name>`` holds the data and ``<prefix><backup name>.manifest.json``
its manifest. The manifest is uploaded after the data and is the commit marker: a data
object without one is an incomplete upload, never listed or restored as a backup.
Only keys directly under the prefix whose names parse as this database's backups are
ever listed or deleted, so other objects (and other databases' backups) in the same
bucket are never touched.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

import boto3
from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
from s3transfer.subscribers import BaseSubscriber

from backupd.cancel import CancelToken
from backupd.errors import ConfigError, OffsiteError
from backupd.log import redact
from backupd.manifest import Manifest, manifest_for
from backupd.naming import (
    DUMP_KIND,
    MANIFEST_SUFFIX,
    manifest_name,
    parse_backup_name,
    partial_name,
)
from backupd.progress import Progress, Stream
from backupd.storage.atomic import FILE_MODE
from backupd.storage.base import BackupEntry, UnknownBackup, sort_newest_first
from backupd.storage.retry import with_retries

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MiB = 1024 * 1024
# S3's hard limits: at most 10,000 parts, each at least 5 MiB (except the last) and at
# most 5 GiB. Aim below the part limit so a file that grows a little while we plan it
# (it cannot, it is committed, but a margin costs nothing) still fits.
MAX_PARTS = 10_000
TARGET_PARTS = 9_000
MIN_PART_SIZE = 8 * MiB  # boto3's default; comfortably above S3's 5 MiB minimum
MAX_PART_SIZE = 5 * 1024 * MiB
# A few parallel parts saturate most links; more only costs memory and connections.
MAX_CONCURRENCY = 4


def part_size_for(size: int) -> int:
    """Multipart chunk size for a file of ``size`` bytes: a whole number of MiB, at least
    8 MiB, and large enough that the upload needs fewer than 10,000 parts (1 TB -> ~106 MiB)."""
    needed = math.ceil(size / TARGET_PARTS) if size > 0 else 0
    chunk = max(MIN_PART_SIZE, math.ceil(needed / MiB) * MiB)
    return min(chunk, MAX_PART_SIZE)


def describe_error(exc: BaseException) -> str:
    """One line for people; never includes credentials (and is redacted anyway)."""
    if isinstance(exc, NoCredentialsError):
        text = ("no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                "AWS_PROFILE, or give the machine an instance role")
    elif isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = error.get("Code", "error")
        message = error.get("Message") or ""
        operation = getattr(exc, "operation_name", "request")
        text = f"{operation} failed: {code}" + (f" ({message})" if message else "")
    elif isinstance(exc, BotoCoreError | OSError):
        text = str(exc) or type(exc).__name__
    else:
        # s3transfer's S3UploadFailedError and friends carry the ClientError text.
        text = f"{type(exc).__name__}: {exc}"
    return redact(" ".join(text.split()))


@contextlib.contextmanager
def translated_errors(action: str) -> Iterator[None]:
    """Turn boto/network exceptions into OffsiteError("<action>: <reason>")."""
    try:
        yield
    except OffsiteError:
        raise
    except (BotoCoreError, ClientError, OSError) as exc:
        raise OffsiteError(f"{action}: {describe_error(exc)}") from None
    except Exception as exc:
        # boto3.exceptions.S3UploadFailedError, s3transfer errors: not BotoCoreError.
        if type(exc).__module__.split(".")[0] in ("boto3", "s3transfer", "botocore", "urllib3"):
            raise OffsiteError(f"{action}: {describe_error(exc)}") from None
        raise


@dataclass(frozen=True)
class S3Config:
    """What the S3 repository needs, built from Settings at the edge (backupd.job)."""

    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    sse: str | None = None
    sse_kms_key_id: str | None = field(default=None, repr=False)
    storage_class: str | None = None
    timeout_seconds: float = 30.0

    def check(self) -> None:
        """Settings that would only fail at upload time, refused up front with one line."""
        endpoint = self.endpoint_url
        if endpoint is not None and not endpoint.startswith(("http://", "https://")):
            raise ConfigError("S3_ENDPOINT_URL: must start with http:// or https:// "
                              "(e.g. https://minio.example.com:9000)")
        if self.sse_kms_key_id is not None and self.sse != "aws:kms":
            raise ConfigError("S3_SSE_KMS_KEY_ID: only used with S3_SSE=aws:kms; set "
                              "S3_SSE=aws:kms or unset S3_SSE_KMS_KEY_ID")
        if not self.bucket or "/" in self.bucket or not self.bucket.strip():
            raise ConfigError("DB_BACKUP_S3_BUCKET: give the bucket name only (no s3:// or "
                              "path); put a path in DB_BACKUP_S3_PREFIX")


class S3Repository:
    """The Repository protocol on an S3 bucket (see the module docstring for the layout)."""

    def __init__(self, config: S3Config, client: S3Client | None = None) -> None:
        config.check()
        self.config = config
        self.bucket = config.bucket
        self.prefix = config.prefix
        self.client: S3Client = client or make_client(config)

    @property
    def description(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def key(self, name: str) -> str:
        return self.prefix + name

    def uri(self, name: str) -> str:
        return f"s3://{self.bucket}/{self.key(name)}"

    def location(self, name: str) -> str:
        return self.uri(name)

    # --- listing -------------------------------------------------------------------
    def databases(self) -> list[str]:
        sizes, _ = self._objects()
        return sorted({parsed.database for name in sizes
                       if (parsed := parse_backup_name(name)) is not None
                       and parsed.kind == DUMP_KIND})

    def names(self) -> list[str]:
        """Every data object's name directly under the prefix (one listing, no manifest
        read): what a caller needs to find a few artifacts among thousands."""
        sizes, _ = self._objects()
        return sorted(sizes)

    def _objects(self) -> tuple[dict[str, int], set[str]]:
        """(size of every data object, names that have a manifest) directly under the prefix."""
        sizes: dict[str, int] = {}
        manifests: set[str] = set()
        with translated_errors(f"listing {self.description}"):
            paginator = self.client.get_paginator("list_objects_v2")
            # Delimiter "/": only keys directly under the prefix; names never hold "/".
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix,
                                           Delimiter="/"):
                for item in page.get("Contents", []):
                    name = item["Key"][len(self.prefix):]
                    if name.endswith(MANIFEST_SUFFIX):
                        manifests.add(name[: -len(MANIFEST_SUFFIX)])
                    else:
                        sizes[name] = item.get("Size", 0)
        return sizes, manifests

    def scan(self, database: str, kind: str = DUMP_KIND) -> list[BackupEntry]:
        """Every data object of ``database`` under the prefix, committed or not, newest first."""
        sizes, manifests = self._objects()
        entries: list[BackupEntry] = []
        for name, size in sizes.items():
            parsed = parse_backup_name(name)
            if parsed is None or parsed.database != database or parsed.kind != kind:
                continue  # not ours: never listed, never deleted
            committed = name in manifests
            manifest, problem = self.load_manifest(name) if committed else (None, None)
            entries.append(BackupEntry(parsed, size, manifest, problem, committed=committed))
        return sort_newest_first(entries)

    def list_backups(self, database: str, kind: str = DUMP_KIND) -> list[BackupEntry]:
        """This database's committed backups (data object + manifest), newest first."""
        return [e for e in self.scan(database, kind) if e.committed]

    def entry(self, name: str) -> BackupEntry:
        """One object by name, committed or not; UnknownBackup when there is no data object."""
        parsed = parse_backup_name(name)
        if parsed is None:
            raise UnknownBackup(f"{name!r} is not a backupd backup name (expected "
                                "<db>_<YYYYmmdd_HHMMSS>.sql.gz, as `backupd list --remote` "
                                "shows)")
        with translated_errors(f"reading {self.uri(name)}"):
            try:
                head = self.client.head_object(Bucket=self.bucket, Key=self.key(name))
            except ClientError as exc:
                if _is_missing(exc):
                    raise UnknownBackup(f"no backup {name!r} in {self.description}; "
                                        "see `backupd list --remote`") from None
                raise
        manifest, problem = self.load_manifest(name)
        committed = manifest is not None or problem is not None
        return BackupEntry(parsed, head["ContentLength"], manifest, problem, committed=committed)

    # --- manifests -----------------------------------------------------------------
    def load_manifest(self, name: str) -> tuple[Manifest | None, str | None]:
        """(manifest, None), (None, None) when there is none, or (None, problem)."""
        with translated_errors(f"reading {self.uri(manifest_name(name))}"):
            try:
                response = self.client.get_object(Bucket=self.bucket,
                                                  Key=self.key(manifest_name(name)))
            except ClientError as exc:
                if _is_missing(exc):
                    return None, None
                raise
            data = response["Body"].read()
        return manifest_for(name, data)

    def write_manifest(self, manifest: Manifest) -> None:
        with translated_errors(f"writing {self.uri(manifest_name(manifest.name))}"):
            self.client.put_object(Bucket=self.bucket, Key=self.key(manifest_name(manifest.name)),
                                   Body=manifest.to_json(), ContentType="application/json",
                                   **self._object_args())

    # --- data ----------------------------------------------------------------------
    def put(self, manifest: Manifest, source: Path, cancel: CancelToken | None = None) -> None:
        """Upload ``source``, check its size in S3, then commit its manifest (retried, within
        twice S3_TIMEOUT_SECONDS)."""
        name = manifest.name
        size = source.stat().st_size
        if size != manifest.stored_bytes:
            raise OffsiteError(f"{name}: {size} bytes on disk but the manifest says "
                               f"{manifest.stored_bytes}; not uploaded")

        def upload() -> None:
            with translated_errors(f"uploading {name} to {self.description}"):
                self._transfer(lambda manager, subscribers: manager.upload(
                    str(source), self.bucket, self.key(name),
                    extra_args={"ContentType": "application/octet-stream",
                                **self._object_args()}, subscribers=subscribers,
                ), size, cancel, f"S3 upload of {name}")
                head = self.client.head_object(Bucket=self.bucket, Key=self.key(name))
            if head["ContentLength"] != size:
                raise OffsiteError(f"uploaded {name} but S3 holds {head['ContentLength']} "
                                   f"bytes, not {size}; it stays pending")
            self.write_manifest(manifest)

        with_retries(upload, budget_seconds=2 * self.config.timeout_seconds, cancel=cancel)

    @contextlib.contextmanager
    def open(self, name: str) -> Iterator[BinaryIO]:
        with translated_errors(f"reading {self.uri(name)}"):
            response = self.client.get_object(Bucket=self.bucket, Key=self.key(name))
        body = response["Body"]
        try:
            yield cast(BinaryIO, _TranslatedBody(body, self.uri(name)))
        finally:
            body.close()

    @contextlib.contextmanager
    def local_copy(self, name: str, scratch: Path,
                   cancel: CancelToken | None = None) -> Iterator[Path]:
        """Download into ``scratch/.<name>.download.partial`` (never taken for a backup; start-up
        cleanup removes it if we die mid-way), removed afterwards."""
        path = scratch / partial_name(f"{name}.download")

        def fetch() -> None:
            path.unlink(missing_ok=True)  # our own leftover, from an earlier attempt or run
            self.fetch(name, path, cancel)

        try:
            with_retries(fetch, budget_seconds=2 * self.config.timeout_seconds, cancel=cancel)
            yield path
        finally:
            path.unlink(missing_ok=True)

    def fetch(self, name: str, destination: Path, cancel: CancelToken | None = None) -> None:
        """Download into ``destination`` (created here, 0600; must not exist)."""
        fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        with os.fdopen(fd, "wb") as handle, \
                translated_errors(f"downloading {self.uri(name)}"):
            head = self.client.head_object(Bucket=self.bucket, Key=self.key(name))
            self._transfer(lambda manager, subscribers: manager.download(
                self.bucket, self.key(name), handle, subscribers=subscribers),
                head["ContentLength"], cancel, f"S3 download of {name}")
            handle.flush()
            os.fsync(handle.fileno())

    def delete(self, name: str) -> None:
        # Manifest first: a crash in between leaves an uncommitted object (never listed,
        # reported by verify --remote), never a manifest vouching for missing data.
        with translated_errors(f"deleting {self.uri(name)}"):
            self.client.delete_object(Bucket=self.bucket, Key=self.key(manifest_name(name)))
            self.client.delete_object(Bucket=self.bucket, Key=self.key(name))

    # --- helpers -------------------------------------------------------------------
    def _object_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {}
        if self.config.sse:
            args["ServerSideEncryption"] = self.config.sse
        if self.config.sse_kms_key_id is not None:
            args["SSEKMSKeyId"] = self.config.sse_kms_key_id
        if self.config.storage_class:
            args["StorageClass"] = self.config.storage_class
        return args

    def _transfer(self, start: Any, size: int, cancel: CancelToken | None, what: str) -> None:
        """``start(manager, subscribers)`` begins the transfer; its progress is counted on
        the job's Progress as ``what``."""
        chunk = part_size_for(size)
        config = TransferConfig(
            multipart_threshold=MIN_PART_SIZE, multipart_chunksize=chunk,
            max_concurrency=MAX_CONCURRENCY, use_threads=True,
            # Bounded memory for downloads: a few chunks in flight, whatever the file size.
            max_io_queue=MAX_CONCURRENCY * 4, preferred_transfer_client="classic",
        )
        progress = cancel.progress if cancel is not None else Progress()
        with create_transfer_manager(self.client, config) as manager, \
                progress.stream(what, total=size) as stream:
            future = start(manager, [_Counted(stream)])
            unregister = cancel.on_cancel(future.cancel) if cancel is not None else None
            try:
                future.result()
            finally:
                if unregister is not None:
                    unregister()
        if cancel is not None:
            cancel.raise_if_cancelled()


class _Counted(BaseSubscriber):
    """s3transfer's progress callbacks, counted on the job's Progress."""

    def __init__(self, stream: Stream) -> None:
        self._stream = stream

    def on_progress(self, future: Any, bytes_transferred: int, **kwargs: Any) -> None:
        self._stream.moved(bytes_transferred)


class _TranslatedBody:
    """A streaming object body whose network errors are OffsiteErrors, like every other call."""

    def __init__(self, body: Any, uri: str) -> None:
        self._body = body
        self._uri = uri

    def read(self, size: int = -1) -> bytes:
        with translated_errors(f"reading {self._uri}"):
            data: bytes = self._body.read(size if size >= 0 else None)
        return data


def _is_missing(exc: ClientError) -> bool:
    return str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound")


def make_client(config: S3Config) -> S3Client:
    """A client that works against AWS and real S3-compatible stores.

    Credentials come from boto3's standard chain only (environment, profile, instance
    role); the values found are registered with the log redactor.
    """
    timeout = config.timeout_seconds
    client_config = Config(
        region_name=config.region,
        retries={"mode": "standard", "max_attempts": 4},
        connect_timeout=timeout,
        read_timeout=timeout,
        # Stores that predate the 2025 default integrity headers (older MinIO, Ceph, R2
        # at the time) reject them; send and check checksums only where S3 requires them.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        # Custom endpoints rarely have wildcard DNS for virtual-hosted buckets.
        s3={"addressing_style": "path" if config.endpoint_url else "auto"},
        max_pool_connections=MAX_CONCURRENCY * 2,
        user_agent_extra="backupd",
    )
    try:
        session = boto3.session.Session()
        credentials = session.get_credentials()
        if credentials is not None:
            frozen = credentials.get_frozen_credentials()
            redact.add(frozen.access_key, frozen.secret_key, frozen.token)
        return session.client("s3", endpoint_url=config.endpoint_url, config=client_config)
    except ValueError as exc:  # botocore: invalid endpoint or region
        raise ConfigError(f"S3_ENDPOINT_URL/S3_REGION: {redact(str(exc))}") from None
    except BotoCoreError as exc:  # a broken profile, for example
        raise ConfigError(f"AWS configuration: {describe_error(exc)}") from None

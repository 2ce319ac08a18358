"""Encryption at rest with age (https://age-encryption.org), streaming, via pyrage.

The sidecar only ever holds *public* keys (DB_BACKUP_AGE_RECIPIENTS[_FILE]): a stolen
sidecar or bucket cannot read the backups. Decrypting (restore, full verify) takes the
identity file (DB_BACKUP_AGE_IDENTITY_FILE) on the restoring machine.

pyrage's ``encrypt_io``/``decrypt_io`` stream in age's 64 KiB STREAM chunks, but they
*pull* from a reader while the backup pipeline *pushes* into writers. The adapters here
join the two with a small bounded queue or a pipe and one thread, so memory stays at
a few blocks whatever the size of the backup.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable
from typing import BinaryIO, Protocol

import pyrage
from pyrage import x25519

from backupd.errors import ConfigError, JobFailed
from backupd.log import redact
from backupd.pipeline.config import AgeKeyFiles
from backupd.secret_files import read_setting_file

# Chunks in flight between the compressor and the encrypting thread (each <= ~1 MiB).
QUEUE_DEPTH = 8
_EOF = b""


class AgeError(JobFailed):
    """Decryption failed: wrong identity, or a damaged/tampered file. One line, no secret."""

    @property
    def key_mismatch(self) -> bool:
        """The identity does not fit: says nothing about the file itself."""
        return str(self).startswith(_NO_MATCHING_KEY)


_NO_MATCHING_KEY = "no identity in DB_BACKUP_AGE_IDENTITY_FILE matches"


# --- keys ----------------------------------------------------------------------------------

def _key_lines(text: str) -> list[str]:
    """age key files: one key per line, ``#`` comments and blank lines ignored."""
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def load_recipients(keys: AgeKeyFiles) -> list[x25519.Recipient]:
    """The public keys to encrypt to; empty when encryption is off. ConfigError if invalid."""
    sources: list[tuple[str, str]] = []
    if keys.recipients:
        # Several keys may be given separated by commas, spaces or newlines.
        text = keys.recipients.replace(",", " ")
        sources += [("DB_BACKUP_AGE_RECIPIENTS", key) for key in text.split()]
    if keys.recipients_file is not None:
        text = read_setting_file(keys.recipients_file, "DB_BACKUP_AGE_RECIPIENTS_FILE",
                                 "point it at a file of age public keys (age1...), one a line")
        sources += [("DB_BACKUP_AGE_RECIPIENTS_FILE", key) for key in _key_lines(text)]
        if not any(s == "DB_BACKUP_AGE_RECIPIENTS_FILE" for s, _ in sources):
            raise ConfigError(f"DB_BACKUP_AGE_RECIPIENTS_FILE: {keys.recipients_file} "
                              "holds no public key; add one age1... key a line")
    recipients: list[x25519.Recipient] = []
    for setting, key in sources:
        if key.startswith("AGE-SECRET-KEY-"):
            # Someone pasted the private key: never echo it, and say why it is refused.
            redact.add(key)
            raise ConfigError(f"{setting}: holds an age *identity* (private key); give the "
                              "public key instead (age-keygen -y FILE prints it) and keep the "
                              "identity off this machine")
        try:
            recipients.append(x25519.Recipient.from_str(key))
        except pyrage.RecipientError:
            shown = key if len(key) <= 80 else key[:77] + "..."
            raise ConfigError(f"{setting}: {shown!r} is not an age public key (expected "
                              "age1...; create one with age-keygen)") from None
    return recipients


def load_identities(keys: AgeKeyFiles) -> list[x25519.Identity] | None:
    """The private keys for decrypting, or None when DB_BACKUP_AGE_IDENTITY_FILE is unset."""
    path = keys.identity_file
    if path is None:
        return None
    text = read_setting_file(path, "DB_BACKUP_AGE_IDENTITY_FILE",
                             "point it at the age identity file (age-keygen output)")
    lines = _key_lines(text)
    redact.add(*lines)  # secrets: masked in every log line from here on
    identities: list[x25519.Identity] = []
    for key in lines:
        try:
            identities.append(x25519.Identity.from_str(key))
        except pyrage.IdentityError:
            raise ConfigError(f"DB_BACKUP_AGE_IDENTITY_FILE: {path} holds a line that is not "
                              "an age identity (expected AGE-SECRET-KEY-1...)") from None
    if not identities:
        raise ConfigError(f"DB_BACKUP_AGE_IDENTITY_FILE: {path} holds no age identity "
                          "(expected a line AGE-SECRET-KEY-1...)")
    return identities


def describe_decrypt_error(exc: BaseException) -> str:
    text = str(exc)
    if "No matching keys" in text:
        return f"{_NO_MATCHING_KEY} this backup's recipients (wrong key file?)"
    if "Header MAC" in text or "header" in text.lower():
        return f"the age header is damaged or was tampered with ({text})"
    return f"the encrypted data is damaged, truncated or was tampered with ({text})"


# --- encrypting: a writer in the backup pipeline -------------------------------------------

class _QueueReader:
    """The reader end handed to pyrage: hands out the queued chunks in small slices."""

    def __init__(self, chunks: queue.Queue[bytes]) -> None:
        self._chunks = chunks
        self._current = memoryview(b"")
        self._done = False

    def read(self, size: int = -1) -> bytes:
        while not self._current:
            if self._done:
                return b""
            chunk = self._chunks.get()
            if chunk is _EOF:
                self._done = True
                return b""
            self._current = memoryview(chunk)
        if size < 0:
            size = len(self._current)
        piece = bytes(self._current[:size])
        self._current = self._current[size:]
        return piece


class AgeEncryptingWriter:
    """A writable stream that age-encrypts into ``sink`` (the hashing writer) in a thread."""

    def __init__(self, sink: BinaryIO, recipients: list[x25519.Recipient]) -> None:
        self._chunks: queue.Queue[bytes] = queue.Queue(QUEUE_DEPTH)
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(
            target=self._encrypt, args=(_QueueReader(self._chunks), sink, recipients),
            name="age-encrypt", daemon=True)
        self._thread.start()

    def _encrypt(self, reader: _QueueReader, sink: BinaryIO,
                 recipients: list[x25519.Recipient]) -> None:
        try:
            pyrage.encrypt_io(reader, sink, recipients)
        except BaseException as exc:  # reported by write()/close() in the pipeline's thread
            self._error = exc

    def _put(self, chunk: bytes) -> None:
        while True:
            if self._error is not None or not self._thread.is_alive():
                raise JobFailed(f"age encryption failed: {self._error or 'encryptor stopped'}")
            try:
                self._chunks.put(chunk, timeout=0.5)
                return
            except queue.Full:
                continue

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if data:
            self._put(bytes(data))
        return len(data)

    def flush(self) -> None:
        """Nothing to flush: close() finishes the age stream."""

    def writable(self) -> bool:
        return True

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Finish the age stream (final chunk and its tag); raise if encryption failed."""
        if self._closed:
            return
        self._closed = True
        self._put(_EOF)
        self._thread.join()
        if self._error is not None:
            raise JobFailed(f"age encryption failed: {self._error}")

    def abort(self) -> None:
        """Stop the thread after a failure elsewhere in the pipeline (the file is discarded)."""
        if self._closed:
            return
        self._closed = True
        # Unblock a reader waiting for data; drop whatever is queued.
        while True:
            try:
                self._chunks.get_nowait()
            except queue.Empty:
                break
        with contextlib.suppress(queue.Full):
            self._chunks.put_nowait(_EOF)
        self._thread.join(10)


def encryptor_for(keys: AgeKeyFiles) -> Callable[[BinaryIO], BinaryIO] | None:
    """The pipeline's EncryptorFactory, or None when no recipients are configured."""
    recipients = load_recipients(keys)
    if not recipients:
        return None
    return lambda sink: AgeEncryptingWriter(sink, recipients)  # type: ignore[return-value]


def recipient_strings(keys: AgeKeyFiles) -> list[str]:
    return [str(r) for r in load_recipients(keys)]


# --- decrypting -----------------------------------------------------------------------------

class Feed(Protocol):
    def write(self, data: bytes) -> int: ...


def decrypt_into(source: BinaryIO, sink: Feed, identities: list[x25519.Identity]) -> None:
    """Stream-decrypt ``source`` into ``sink``; AgeError (one line) on any failure.

    age authenticates every 64 KiB chunk before it is released, so ``sink`` only ever
    sees authentic plaintext; a truncated or altered file fails at the damaged chunk.
    """
    try:
        pyrage.decrypt_io(source, sink, identities)
    except (pyrage.DecryptError, OSError, ValueError) as exc:
        raise AgeError(describe_decrypt_error(exc)) from None

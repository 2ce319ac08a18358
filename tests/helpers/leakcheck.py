"""Session-wide evidence for the secret-leak check (tests/faults/test_zz_secret_leaks.py).

Every backupd subprocess started through helpers.cli is recorded here: the secrets its
environment held, its stdout/stderr, its DB_BACKUP_DIR, and (through an audit hook loaded by
``sitecustomize`` in argv_hook/) the argv of every child process it started. Webhook and
heartbeat requests received by HttpReceiver are recorded too. At the end of the session one
test searches all of it for every secret value the suite used.

Under pytest-xdist every worker is a process of its own: each appends what it records to a file
in one directory the whole session shares (BACKUPD_LEAKCHECK_DIR, set by the controller in
tests/conftest.py before the workers start), and the check reads every worker's file. The
controller runs the check once more after the last worker has finished (tests/conftest.py),
since no test can be scheduled after every other worker's tests.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

HOOK_DIR = Path(__file__).resolve().parent / "argv_hook"
# One directory per session, shared by every xdist worker; every backupd child appends a line
# per process it starts to ARGV_LOG, and every test process its evidence to a file of its own.
RECORD_DIR = Path(os.environ.get("BACKUPD_LEAKCHECK_DIR")
                  or tempfile.mkdtemp(prefix="backupd-leakcheck-"))
ARGV_LOG = RECORD_DIR / "child-argv.log"

# The password the fault and bad-input tests give backupd (and their private clusters): quote,
# double quote, dollar, space, backslash and colon break naive quoting. One copy, so the leak
# check below searches for exactly the value those tests used.
SECRET_PASSWORD = "s3cr3t-PW'\"$ \\:x"
# The fault suite's other secrets (tests/faults/test_zz_secret_leaks.py gives them to backupd).
AWS_KEY_ID = "AKIAFAULTSUITE00001"
AWS_SECRET = "fault/Suite+Secret/Key0000000000000000000"
KMS_KEY = "arn:aws:kms:us-east-1:000000000000:key/fault-suite-kms-secret"

# Variables whose value is a secret, and variables naming a file that holds one.
SECRET_VARS = (
    "POSTGRES_PASSWORD",
    "SLACK_WEBHOOK_URL",
    "HEARTBEAT_URL",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_ACCESS_KEY_ID",
    "AWS_SESSION_TOKEN",
    "S3_SSE_KMS_KEY_ID",
    "POSTGRES_REPLICATION_PASSWORD",
    "DRILL_POSTGRES_PASSWORD",
    "WEBHOOK_URL",
    "WEBHOOK_SECRET",
    "STATUS_PAGE_TOKEN",
)
SECRET_FILE_VARS = ("POSTGRES_PASSWORD_FILE", "DB_BACKUP_AGE_IDENTITY_FILE",
                    "POSTGRES_REPLICATION_PASSWORD_FILE", "DRILL_POSTGRES_PASSWORD_FILE")
# Placeholder values that are also ordinary words in output (the default user and database
# are "postgres"; moto's keys are "testing"): searching for them would prove nothing.
PLACEHOLDERS = frozenset({"postgres", "testing"})
MIN_SECRET_LENGTH = 8
SECRET_FILE_MAX_BYTES = 1 << 20
# Backup data is compressed (or encrypted); everything else in the directory is read.
DATA_SUFFIXES = (".gz", ".zst", ".dump", ".age", ".partial")


@dataclass
class Evidence:
    """What this process recorded; with ``directory``, also appended to this process's file
    there, so that the evidence of every process of the session can be read back."""

    secrets: set[str] = field(default_factory=set)
    outputs: list[tuple[str, str]] = field(default_factory=list)  # (label, text)
    output_files: list[Path] = field(default_factory=list)
    backup_dirs: set[Path] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    directory: Path | None = None

    def persist(self, kind: str, value: str, label: str = "") -> None:
        if self.directory is None:
            return
        with (self.directory / f"evidence-{os.getpid()}.jsonl").open("a") as handle:
            handle.write(json.dumps([kind, value, label]) + "\n")

    def merged(self) -> Evidence:
        """This process's evidence plus every other process's in ``directory``."""
        merged = Evidence(set(self.secrets), list(self.outputs), list(self.output_files),
                          set(self.backup_dirs))
        if self.directory is None:
            return merged
        own = self.directory / f"evidence-{os.getpid()}.jsonl"
        for path in sorted(self.directory.glob("evidence-*.jsonl")):
            if path == own:
                continue
            for line in path.read_text().splitlines():
                kind, value, label = json.loads(line)
                if kind == "secret":
                    merged.secrets.add(value)
                elif kind == "output":
                    merged.outputs.append((label, value))
                elif kind == "output_file":
                    merged.output_files.append(Path(value))
                elif kind == "backup_dir":
                    merged.backup_dirs.add(Path(value))
        return merged


EVIDENCE = Evidence(directory=RECORD_DIR)


def hook_env() -> dict[str, str]:
    """Variables that load the argv audit hook into a backupd subprocess."""
    return {"PYTHONPATH": str(HOOK_DIR), "BACKUPD_TEST_ARGV_LOG": str(ARGV_LOG)}


def _small_file_text(path: Path) -> str | None:
    """A secret file's text; None unless it is a regular file of at most 1 MiB. Tests point
    these settings at /dev/zero and FIFOs on purpose: reading those here would never end."""
    try:
        if not path.is_file() or path.stat().st_size > SECRET_FILE_MAX_BYTES:
            return None
        with path.open("rb") as file:
            return file.read(SECRET_FILE_MAX_BYTES).decode(errors="replace")
    except OSError:
        return None


def _secret_values(env: dict[str, str]) -> set[str]:
    values: set[str] = set()
    for name in SECRET_VARS:
        if env.get(name):
            values.add(env[name])
    for name in SECRET_FILE_VARS:
        path = env.get(name)
        if not path:
            continue
        text = _small_file_text(Path(path))
        if text is None:
            continue
        if name == "DB_BACKUP_AGE_IDENTITY_FILE":
            values.update(line.strip() for line in text.splitlines()
                          if line.strip().startswith("AGE-SECRET-KEY-"))
        else:
            values.add(text.rstrip("\r\n"))
    public = [v for k, v in env.items() if k not in SECRET_VARS]
    # A "secret" that is part of a public setting (POSTGRES_USER=postgres) cannot be told
    # apart from that setting in the output.
    return {
        v for v in values
        if len(v) >= MIN_SECRET_LENGTH and v not in PLACEHOLDERS
        and not any(v in p for p in public)
    }


def record_run(args: list[str], env: dict[str, str]) -> None:
    with EVIDENCE.lock:
        for secret in _secret_values(env) - EVIDENCE.secrets:
            EVIDENCE.secrets.add(secret)
            EVIDENCE.persist("secret", secret)
        if env.get("DB_BACKUP_DIR") and Path(env["DB_BACKUP_DIR"]) not in EVIDENCE.backup_dirs:
            EVIDENCE.backup_dirs.add(Path(env["DB_BACKUP_DIR"]))
            EVIDENCE.persist("backup_dir", env["DB_BACKUP_DIR"])


def record_output(label: str, text: str) -> None:
    """Anything backupd said that a user, a log shipper or a scraper could see."""
    with EVIDENCE.lock:
        EVIDENCE.outputs.append((label, text))
        EVIDENCE.persist("output", text, label)


def record_output_file(path: Path) -> None:
    with EVIDENCE.lock:
        EVIDENCE.output_files.append(path)
        EVIDENCE.persist("output_file", str(path))


def record_secret(value: str) -> None:
    with EVIDENCE.lock:
        EVIDENCE.secrets.add(value)
        EVIDENCE.persist("secret", value)


def session_secrets() -> set[str]:
    """Every secret any process of the session gave backupd."""
    with EVIDENCE.lock:
        return EVIDENCE.merged().secrets


def collected_texts() -> list[tuple[str, str]]:
    """(where, text) for everything recorded so far by every process of the session, read now."""
    with EVIDENCE.lock:
        evidence = EVIDENCE.merged()
    texts = list(evidence.outputs)
    files = list(evidence.output_files)
    dirs = sorted(evidence.backup_dirs)
    for path in files:
        if path.is_file():
            texts.append((str(path), path.read_text(errors="replace")))
    for directory in dirs:
        if not directory.is_dir():
            continue
        for path in sorted(directory.rglob("*")):
            if path.is_file() and not path.is_symlink():
                # Data files are compressed; names and manifests are what could leak.
                texts.append((f"file name {path}", path.name))
                if not path.name.endswith(DATA_SUFFIXES) and path.stat().st_size < 4 << 20:
                    texts.append((str(path), path.read_text(errors="replace")))
    if ARGV_LOG.is_file():
        texts.append(("child argv", ARGV_LOG.read_text(errors="replace")))
    return texts


def _forms(secret: str) -> set[str]:
    """The ways a secret can be written out: raw, JSON/repr-escaped, URL-quoted."""
    forms = {secret, json.dumps(secret)[1:-1], repr(secret)[1:-1],
             urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret)}
    return {f for f in forms if len(f) >= 8}


def find_leaks(secrets: set[str], texts: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(where, secret) for every form of every secret found in any text."""
    return sorted({(where, secret) for where, text in texts for secret in secrets
                   for form in _forms(secret) if form in text})


def session_leaks() -> tuple[int, list[tuple[str, str]]]:
    """(how many texts were searched, the leaks found) over the whole session's evidence."""
    secrets = session_secrets() | {SECRET_PASSWORD, AWS_SECRET, AWS_KEY_ID, KMS_KEY}
    texts = collected_texts()
    return len(texts), find_leaks(secrets, texts)

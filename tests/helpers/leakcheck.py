"""Session-wide evidence for the secret-leak check (tests/faults/test_zz_secret_leaks.py).

Every backupd subprocess started through helpers.cli is recorded here: the secrets its
environment held, its stdout/stderr, its DB_BACKUP_DIR, and (through an audit hook loaded by
``sitecustomize`` in argv_hook/) the argv of every child process it started. Webhook and
heartbeat requests received by HttpReceiver are recorded too. At the end of the session one
test searches all of it for every secret value the suite used.
"""

from __future__ import annotations

import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

HOOK_DIR = Path(__file__).resolve().parent / "argv_hook"
# One file per session; every backupd child appends a line per process it starts.
RECORD_DIR = Path(tempfile.mkdtemp(prefix="backupd-leakcheck-"))
ARGV_LOG = RECORD_DIR / "child-argv.log"

# The password the fault and bad-input tests give backupd (and their private clusters): quote,
# double quote, dollar, space, backslash and colon break naive quoting. One copy, so the leak
# check below searches for exactly the value those tests used.
SECRET_PASSWORD = "s3cr3t-PW'\"$ \\:x"

# Variables whose value is a secret, and variables naming a file that holds one.
SECRET_VARS = (
    "POSTGRES_PASSWORD",
    "SLACK_WEBHOOK_URL",
    "HEARTBEAT_URL",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_ACCESS_KEY_ID",
    "AWS_SESSION_TOKEN",
    "S3_SSE_KMS_KEY_ID",
)
SECRET_FILE_VARS = ("POSTGRES_PASSWORD_FILE", "DB_BACKUP_AGE_IDENTITY_FILE")
# Placeholder values that are also ordinary words in output (the default user and database
# are "postgres"; moto's keys are "testing"): searching for them would prove nothing.
PLACEHOLDERS = frozenset({"postgres", "testing"})
MIN_SECRET_LENGTH = 8
SECRET_FILE_MAX_BYTES = 1 << 20
# Backup data is compressed (or encrypted); everything else in the directory is read.
DATA_SUFFIXES = (".gz", ".zst", ".dump", ".age", ".partial")


@dataclass
class Evidence:
    secrets: set[str] = field(default_factory=set)
    outputs: list[tuple[str, str]] = field(default_factory=list)  # (label, text)
    output_files: list[Path] = field(default_factory=list)
    backup_dirs: set[Path] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


EVIDENCE = Evidence()


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
        EVIDENCE.secrets.update(_secret_values(env))
        if env.get("DB_BACKUP_DIR"):
            EVIDENCE.backup_dirs.add(Path(env["DB_BACKUP_DIR"]))


def record_output(label: str, text: str) -> None:
    """Anything backupd said that a user, a log shipper or a scraper could see."""
    with EVIDENCE.lock:
        EVIDENCE.outputs.append((label, text))


def record_output_file(path: Path) -> None:
    with EVIDENCE.lock:
        EVIDENCE.output_files.append(path)


def record_secret(value: str) -> None:
    with EVIDENCE.lock:
        EVIDENCE.secrets.add(value)


def collected_texts() -> list[tuple[str, str]]:
    """(where, text) for everything recorded so far, read now."""
    with EVIDENCE.lock:
        texts = list(EVIDENCE.outputs)
        files = list(EVIDENCE.output_files)
        dirs = sorted(EVIDENCE.backup_dirs)
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

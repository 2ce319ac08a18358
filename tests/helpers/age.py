"""age key pairs for tests: real x25519 keys written the way age-keygen writes them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pyrage import x25519


@dataclass(frozen=True)
class AgeKeys:
    identity_file: Path  # private: only the restoring machine has it
    recipients_file: Path  # public: what the sidecar gets
    public: str
    secret: str


def make_age_keys(directory: Path, name: str = "key") -> AgeKeys:
    directory.mkdir(parents=True, exist_ok=True)
    identity = x25519.Identity.generate()
    public = str(identity.to_public())
    identity_file = directory / f"{name}.identity.txt"
    identity_file.write_text(f"# created: by the tests\n# public key: {public}\n{identity}\n")
    identity_file.chmod(0o600)
    recipients_file = directory / f"{name}.recipients.txt"
    recipients_file.write_text(f"# the backup key\n{public}\n")
    return AgeKeys(identity_file, recipients_file, public, str(identity))

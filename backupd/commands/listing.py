"""``backupd list``: what backups exist, newest first, and whether each is proven good."""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel

from backupd.result import human_bytes
from backupd.storage.base import BackupEntry


class ListRow(BaseModel):
    """One line of ``backupd list`` (and one object of ``--json``)."""

    name: str
    size_bytes: int
    taken_at: str
    age_seconds: int
    verified: bool
    state: str
    # Its clock was wrong when it was taken: never the newest, never kept as one of
    # DB_BACKUP_KEEP_MIN (docs/reliability.md).
    dated_in_future: bool
    uploaded: bool
    sha256: str | None


def state(entry: BackupEntry, now: datetime | None = None) -> str:
    if entry.from_the_future(now):
        return "dated in the future"
    if entry.manifest_error:
        return "broken manifest"
    if entry.manifest is None:
        return "no manifest"
    if entry.manifest.stored_bytes != entry.size:
        return "size mismatch"
    if entry.manifest.verified:
        return "verified"
    return "FAILED verify" if entry.manifest.verify_error else "unverified"


def rows(entries: list[BackupEntry], now: datetime | None = None) -> list[ListRow]:
    now = now or datetime.now(UTC)
    return [ListRow(
        name=entry.name,
        size_bytes=entry.size,
        taken_at=entry.parsed.taken_at.isoformat(),
        age_seconds=int((now - entry.parsed.taken_at).total_seconds()),
        verified=entry.verified,
        state=state(entry, now),
        dated_in_future=entry.from_the_future(now),
        uploaded=bool(entry.manifest and entry.manifest.uploaded_at),
        sha256=entry.manifest.sha256 if entry.manifest else None,
    ) for entry in entries]


def render_table(data: list[ListRow]) -> str:
    if not data:
        return "no backups"
    header = f"{'NAME':<48} {'SIZE':>10} {'AGE':>8}  STATE"
    lines = [header]
    for row in data:
        lines.append(f"{row.name:<48} {human_bytes(row.size_bytes):>10} "
                     f"{human_age(row.age_seconds):>8}  {row.state}")
    return "\n".join(lines)


def human_age(seconds: float) -> str:
    if seconds < 120:
        return f"{int(seconds)}s"
    if seconds < 7200:
        return f"{int(seconds // 60)}m"
    if seconds < 172800:
        return f"{int(seconds // 3600)}h"
    return f"{int(seconds // 86400)}d"

"""``backupd list``: what backups exist, newest first, and whether each is proven good."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from backupd.result import human_bytes
from backupd.storage.base import BackupEntry


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


def rows(entries: list[BackupEntry], now: datetime | None = None) -> list[dict[str, Any]]:
    now = now or datetime.now(UTC)
    out = []
    for entry in entries:
        manifest = entry.manifest
        out.append({
            "name": entry.name,
            "size_bytes": entry.size,
            "taken_at": entry.parsed.taken_at.isoformat(),
            "age_seconds": int((now - entry.parsed.taken_at).total_seconds()),
            "verified": entry.verified,
            "state": state(entry, now),
            # Its clock was wrong when it was taken: never the newest, never kept as one of
            # DB_BACKUP_KEEP_MIN (docs/reliability.md).
            "dated_in_future": entry.from_the_future(now),
            "uploaded": bool(manifest and manifest.uploaded_at),
            "sha256": manifest.sha256 if manifest else None,
        })
    return out


def render_table(data: list[dict[str, Any]]) -> str:
    if not data:
        return "no backups"
    header = f"{'NAME':<48} {'SIZE':>10} {'AGE':>8}  STATE"
    lines = [header]
    for row in data:
        lines.append(f"{row['name']:<48} {human_bytes(row['size_bytes']):>10} "
                     f"{human_age(row['age_seconds']):>8}  {row['state']}")
    return "\n".join(lines)


def human_age(seconds: float) -> str:
    if seconds < 120:
        return f"{int(seconds)}s"
    if seconds < 7200:
        return f"{int(seconds // 60)}m"
    if seconds < 172800:
        return f"{int(seconds // 3600)}h"
    return f"{int(seconds // 86400)}d"

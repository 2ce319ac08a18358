"""What a verification found: the checks, in order, and whether the content was checked."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class VerifyReport:
    name: str
    checks: list[Check] = field(default_factory=list)
    content_checked: bool = True
    content_note: str = ""  # why the content was not checked, when it was not
    # The failure says nothing about the file (a wrong age identity): not to be recorded.
    inconclusive: bool = False

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(check.ok for check in self.checks)

    @property
    def problem(self) -> str | None:
        failed = [c for c in self.checks if not c.ok]
        return "; ".join(f"{c.name}: {c.detail}" for c in failed) if failed else None

    def add(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append(Check(name, ok, detail))
        return ok

    def clear_passing_details(self) -> None:
        """The "ok" detail text of passing checks only describes failures: drop it."""
        for check in self.checks:
            if check.ok:
                check.detail = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ok": self.ok,
            "content_checked": self.content_checked,
            "content_note": self.content_note,
            "checks": [{"check": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks],
        }



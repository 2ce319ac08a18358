"""Notifiers: every job result goes through the chain built here."""

from __future__ import annotations

from backupd.notify.base import Notifier, NotifierChain
from backupd.notify.logfile import LogFileNotifier, StructuredLogNotifier
from backupd.settings import Settings


def build_chain(settings: Settings, *extra: Notifier) -> NotifierChain:
    """The notifiers the settings ask for, in delivery order; ``extra`` go last."""
    notifiers: list[Notifier] = [StructuredLogNotifier(), LogFileNotifier(settings.backup_dir)]
    notifiers.extend(extra)
    return NotifierChain(notifiers, timeout_seconds=settings.notify_timeout_seconds)


__all__ = ["Notifier", "NotifierChain", "build_chain"]

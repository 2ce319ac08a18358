"""The per-job text files in DB_BACKUP_DIR, and the structured log line, for every result."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from backupd.log import JobLogFile, get_logger
from backupd.result import JobResult, Status


class LogFileNotifier:
    name = "logfile"
    remote: ClassVar[bool] = False

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def notify(self, result: JobResult) -> None:
        log = JobLogFile(self.directory, result.job)
        log.write(result.summary())
        for warning in result.warnings:
            log.write(f"WARNING: {warning}")
        if result.stderr_tail and result.status == Status.FAILED:
            log.write(f"{result.stderr_tool or 'child process'} stderr (tail): "
                      f"{result.stderr_tail}")


class StructuredLogNotifier:
    name = "structlog"
    remote: ClassVar[bool] = False

    def notify(self, result: JobResult) -> None:
        data = result.to_dict()
        data.pop("job")
        event = get_logger(job=result.job)
        if result.status in (Status.SUCCESS, Status.SKIPPED):
            event.info("job finished", **data)
        else:
            event.error("job finished", **data)

"""Verifying a backup file: everything that can be proven without a database.

``check`` runs the checks in their one order; ``scan`` is the single read of the stored
bytes they rest on; ``content`` checks the compressed SQL; ``report`` holds the outcome.
"""

from backupd.pipeline.verification.check import (
    Identities,
    check_file_shape,
    check_gzip_members,
    check_other_content,
    verify_file,
)
from backupd.pipeline.verification.content import (
    CustomArchiveCheck,
    HeaderGate,
    ParallelGzipCheck,
    PlainSqlCheck,
)
from backupd.pipeline.verification.directory import DirectoryArchiveCheck
from backupd.pipeline.verification.report import Check, VerifyReport
from backupd.pipeline.verification.scan import (
    READ_SIZE,
    DecryptingScan,
    FileScan,
    follow_growing_file,
    scan_file,
)

__all__ = [
    "READ_SIZE", "Check", "CustomArchiveCheck", "DecryptingScan", "DirectoryArchiveCheck",
    "FileScan", "HeaderGate", "Identities", "ParallelGzipCheck", "PlainSqlCheck", "VerifyReport",
    "check_file_shape", "check_gzip_members", "check_other_content", "follow_growing_file",
    "scan_file", "verify_file",
]

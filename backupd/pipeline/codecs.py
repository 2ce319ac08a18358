"""Which codec pg_dump compresses custom and directory archives with.

pg_dump 16 added ``--compress=METHOD[:LEVEL]`` (gzip, lz4, zstd), but which methods a given
pg_dump has depends on how it was built, not on its major: Debian's and the PGDG's builds
have all three, a self-built PostgreSQL without ``--with-zstd`` (or a PostgreSQL shipped in
a Python wheel) may have gzip only, and ``--compress=zstd`` then fails the whole backup.
So each pg_dump is asked once what it has (``supported``), cached by its path and mtime:
a package upgrade that replaces the binary is asked again.

The probe never connects anywhere: pg_dump checks ``--compress`` while it reads its options,
then opens its output file, then connects. The probe's output file is in a directory that
does not exist, so pg_dump stops either at the codec ("this build does not support
compression with ZSTD") or at the file; PGHOST is an empty private directory in case some
build ever got further (a Unix socket that is not there: no network, no wait).

The order of preference: zstd, else gzip; lz4 never (docs/configuration.md, "The custom and
directory formats' codec").
Measured with pg_dump 17 -Fc on the bench's scale 20 (223 MiB of SQL): gzip 10.2 s and
66.4 MB, zstd 3.7 s and 64.7 MB (smaller and ~3x faster: zstd wins on both counts), lz4
2.8 s but 110 MB. lz4 would make every archive of a build without zstd two thirds larger
than the gzip it has today, kept for the whole retention and sent offsite, to save time
once per dump; so such a build keeps gzip (zlib), which every pg_dump has.
"""

from __future__ import annotations

import functools
import tempfile
from dataclasses import dataclass
from pathlib import Path

from backupd.pipeline.supervisor import BinaryKey, Child, binary_key

# pg_dump 16 added --compress=METHOD; older clients take a zlib level only.
METHOD_MAJOR = 16
# zlib's level when DB_BACKUP_COMPRESSION_LEVEL is unset: 1, not pg_dump's own default (6).
# Like the plain format's ISA-L level 1, this is the fast end: measured with pg_dump 15 -Fc
# at bench scale 20 (223 MiB of SQL), level 1 took 3.8-4.9 s for 76.0 MB against 8.6-9.5 s
# for 66.4 MB at level 6: half the CPU on the database's host for 14% more bytes. zstd (16+)
# keeps its own default, which is fast already.
ZLIB_DEFAULT_LEVEL = 1
PREFERENCE = ("zstd", "gzip")
PROBE_SECONDS = 30.0
_UNSUPPORTED = "does not support compression"



@dataclass(frozen=True)
class ArchiveCodec:
    """pg_dump's compression of a custom or directory archive, and why."""

    codec: str  # zstd, gzip, none, or "pg_dump's default" when neither was proven
    option: str | None  # the value of pg_dump's --compress; None: no option (its default)
    reason: str

    def line(self) -> str:
        """The job log's one line about it."""
        return f"Archive compression: {self.codec} ({self.reason})"


def supported(pg_dump: str) -> frozenset[str]:
    """The methods of PREFERENCE that this pg_dump (16 or newer) was built with."""
    return frozenset(method for method in PREFERENCE if accepts(pg_dump, method))


def accepts(pg_dump: str, method: str) -> bool:
    """Whether this pg_dump was built with ``method``: probed once per binary and method."""
    return _accepts(binary_key(pg_dump), pg_dump, method)


# The key argument makes a replaced binary (a package upgrade) a new entry.
@functools.cache
def _accepts(key: BinaryKey, pg_dump: str, method: str) -> bool:
    """Whether pg_dump accepts ``--compress=method``: it fails either way (no output file),
    only the reason differs. A probe that fails otherwise (a crash, a timeout) counts as no:
    the next method in order is used, never a codec that was not proven."""
    del key
    with tempfile.TemporaryDirectory(prefix="backupd-codec-probe-") as scratch:
        argv = [pg_dump, "--format=custom", f"--compress={method}", "--no-password",
                f"--file={Path(scratch) / 'absent' / 'probe.dump'}"]
        # LC_ALL=C: a pg_dump built with NLS would otherwise answer in the user's language.
        env = {"PGHOST": scratch, "PGPORT": "1", "PGDATABASE": "backupd_codec_probe",
               "PGCONNECT_TIMEOUT": "1", "LC_ALL": "C"}
        with Child(argv, env=env) as child:
            code = child.wait(PROBE_SECONDS)
        lines = child.stderr_lines
    if code == 0 or any(_UNSUPPORTED in line for line in lines):
        return False  # 0: it wrote somewhere it should not have; trust nothing it says
    # Whatever it complained about came after the codec was accepted: the output file.
    return any("could not open output file" in line for line in lines)


def archive_codec(pg_dump: str, major: int, level: int | None) -> ArchiveCodec:
    """The codec for ``pg_dump`` of ``major`` at DB_BACKUP_COMPRESSION_LEVEL ``level``
    (None: zstd's own default, zlib's ZLIB_DEFAULT_LEVEL; 0: no compression)."""
    if major < METHOD_MAJOR:
        option = str(ZLIB_DEFAULT_LEVEL if level is None else min(level, 9))
        codec = "none" if level == 0 else "gzip"
        return ArchiveCodec(codec, option, f"pg_dump {major} compresses archives with zlib "
                            "only; zstd needs pg_dump 16 or newer")
    if level == 0:
        return ArchiveCodec("none", "none", "DB_BACKUP_COMPRESSION_LEVEL=0")
    # In order of preference, stopping at the first the build has: one probe for most builds.
    for method in PREFERENCE:
        if accepts(pg_dump, method):
            if level is None:
                option = method if method == "zstd" else f"{method}:{ZLIB_DEFAULT_LEVEL}"
            else:
                option = f"{method}:{level}"
            return ArchiveCodec(method, option, _why(method, pg_dump, major))
    # Not even gzip proven: a build without zlib, or a pg_dump whose answers the probe does
    # not know. Then no option at all: pg_dump's own default (gzip where it has zlib).
    return ArchiveCodec("pg_dump's default", None, f"pg_dump {major} ({pg_dump}) accepted "
                        "neither zstd nor gzip when asked")


def _why(method: str, pg_dump: str, major: int) -> str:
    # Every method before the chosen one in PREFERENCE was probed and refused.
    missing = " and ".join(PREFERENCE[:PREFERENCE.index(method)])
    if not missing:
        return f"pg_dump {major} ({pg_dump}) has it"
    return f"pg_dump {major} ({pg_dump}) was built without {missing}"

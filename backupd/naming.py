"""Backup file names: ``<db>_<YYYYmmdd_HHMMSS><suffix>``, safe for any database name; and
the cluster's globals (roles, tablespaces): ``globals_<YYYYmmdd_HHMMSS>.globals.sql.gz``.

PostgreSQL allows almost any character in a database name (spaces, quotes, ``/``,
``..``, newlines, non-ASCII). The file name keeps letters, digits, ``_`` and ``-``
as they are, so ``certificate_verification`` stays recognisable, and percent-encodes
every other byte, so no name can leave DB_BACKUP_DIR or break a log line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

TIMESTAMP_FORMAT = "%Y%m%d_%H%M%S"
MANIFEST_SUFFIX = ".manifest.json"
PARTIAL_SUFFIX = ".partial"

# Every data suffix backupd writes; the shell scripts wrote only ".sql.gz".
DATA_SUFFIXES = (".sql.gz", ".sql.zst", ".dump", ".dir.tar")
ENCRYPTED_SUFFIX = ".age"
# pg_dump's directory format (-Fd), stored as one uncompressed tar of the directory: its
# data files are compressed by pg_dump already (see pipeline/directory.py).
DIRECTORY_SUFFIX = ".dir.tar"

# Always applied with fullmatch: `$` would also match before a trailing newline.
_NAME_RE = re.compile(
    r"(?P<db>.+)_(?P<ts>\d{8}_\d{6})"
    r"(?P<suffix>(?:\.sql\.gz|\.sql\.zst|\.dump|\.dir\.tar)(?:\.age)?)"
)

# The kinds of artifact (manifest.kind, ParsedName.kind).
DUMP_KIND = "dump"
GLOBALS_KIND = "globals"
# The cluster's globals (pg_dumpall --globals-only), one artifact per backup run. Listed and
# retained under the "database" key GLOBALS_DATABASE with kind GLOBALS_KIND, so a database
# that happens to be called "globals" keeps its own dumps apart (repositories filter by kind).
GLOBALS_DATABASE = "globals"
# The template a backup run of '*' also dumps when it holds objects template0 lacks
# (backupd.commands.template1).
TEMPLATE_DATABASE = "template1"
# The comment a drill puts on its scratch database at once (backupd.commands.drill): what
# allows dropping one an interrupted drill left behind, and keeps '*' from backing it up.
SCRATCH_MARK = "backupd restore drill scratch database"
GLOBALS_SUFFIX = ".globals.sql.gz"
# `.globals.sql.gz` can never end a dump's name: _NAME_RE needs the timestamp right before
# `.sql.gz`, so a globals file never parses as a database's backup, nor the reverse.
_GLOBALS_RE = re.compile(r"globals_(?P<ts>\d{8}_\d{6})(?P<suffix>\.globals\.sql\.gz(?:\.age)?)")
# A base backup (pg_basebackup's tar stream, WAL included), one artifact each, listed under
# the key BASE_DATABASE with kind BASE_KIND: ``base_<YYYYmmdd_HHMMSS>.tar.gz`` (or .tar.zst,
# .age appended when encrypted). No dump name ends in `.tar.*`, so neither parses as the other.
BASE_KIND = "base"
BASE_DATABASE = "base"
_BASE_RE = re.compile(r"base_(?P<ts>\d{8}_\d{6})(?P<suffix>\.tar\.(?:gz|zst)(?:\.age)?)")

# WAL archived by pg_receivewal (issue 15; backupd.archive): PostgreSQL's own file name (a
# segment, a segment's `.partial` or a timeline's `.history`) plus `.wal.gz`/`.wal.zst` and
# `.age` when encrypted. Listed under the key WAL_DATABASE with kind WAL_KIND. They carry no
# time in their name: WAL is ordered by its name (timeline, then position), so every one of
# them has the same taken_at (WAL_TAKEN_AT) and sorts by name.
WAL_KIND = "wal"
WAL_DATABASE = "wal"
WAL_TAKEN_AT = datetime(1970, 1, 1, tzinfo=UTC)
_WAL_RE = re.compile(r"(?P<wal>[0-9A-F]{24}(?:\.partial)?|[0-9A-F]{8}\.history)"
                     r"(?P<suffix>\.wal\.(?:gz|zst)(?:\.age)?)")


def encode_database(database: str) -> str:
    """The file-name form of a database name (reversible with :func:`decode_database`)."""
    out: list[str] = []
    for index, char in enumerate(database):
        keep = (char.isascii() and (char.isalnum() or char in "_-")) or (
            not char.isascii() and char.isalnum()
        )
        if char == "-" and index == 0:
            keep = False  # a leading dash would read as an option to gunzip, psql, ...
        if keep:
            out.append(char)
        else:
            out.extend(f"%{byte:02X}" for byte in char.encode("utf-8"))
    return "".join(out)


# The one way argv and the environment bring a byte that is not UTF-8 (a Latin-1 terminal's
# "café", b"caf\xe9"): Python decodes them with surrogateescape, each such byte a lone
# surrogate U+DC80-U+DCFF, which no UTF-8 encode takes.
_ESCAPED_BYTES = range(0xDC80, 0xDD00)
NOT_UTF8_FIX = ("give it in UTF-8, not in another encoding such as Latin-1 (set by the "
                "terminal, script or file it came from)")


def not_utf8(name: str, fix: str = NOT_UTF8_FIX) -> str | None:
    """Why ``name``, given on the command line or in a setting, cannot be used: it holds
    bytes that are not UTF-8 (``'caf\\xe9' is not UTF-8; ...``). None when it is text.
    Checked before any other check of a name: every one of them encodes it (a length in
    bytes, a connection string, a file name), which failed as an internal error."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        pass
    else:
        return None
    shown = "".join(f"\\x{ord(char) - 0xDC00:02x}" if ord(char) in _ESCAPED_BYTES
                    else repr(char)[1:-1] for char in name)
    return f"'{shown}' is not UTF-8; {fix}"


def require_utf8(name: str) -> None:
    """A settings validator's check (pydantic turns the ValueError into the setting's one
    line): ``name`` is text, else ValueError saying why (not_utf8)."""
    problem = not_utf8(name)
    if problem is not None:
        raise ValueError(problem)

def decode_database(encoded: str) -> str:
    raw = bytearray()
    index = 0
    while index < len(encoded):
        if encoded[index] == "%" and _is_hex(encoded[index + 1 : index + 3]):
            raw.append(int(encoded[index + 1 : index + 3], 16))
            index += 3
        else:
            raw.extend(encoded[index].encode("utf-8"))
            index += 1
    return raw.decode("utf-8", errors="replace")


def _is_hex(text: str) -> bool:
    return len(text) == 2 and all(c in "0123456789ABCDEFabcdef" for c in text)


def data_suffix(backup_format: str, compression: str, encrypted: bool) -> str:
    if backup_format == "custom":
        base = ".dump"
    elif backup_format == "directory":
        base = DIRECTORY_SUFFIX
    else:
        base = ".sql.zst" if compression == "zstd" else ".sql.gz"
    return base + (ENCRYPTED_SUFFIX if encrypted else "")


def backup_name(database: str, when: datetime, suffix: str = ".sql.gz") -> str:
    return f"{encode_database(database)}_{when.astimezone(UTC).strftime(TIMESTAMP_FORMAT)}{suffix}"


def run_id(when: datetime) -> str:
    """A backup run's id: its start time, UTC, ``YYYYmmdd_HHMMSS`` (manifest.run_id)."""
    return when.astimezone(UTC).strftime(TIMESTAMP_FORMAT)


def globals_name(when: datetime, encrypted: bool = False) -> str:
    """``globals_<YYYYmmdd_HHMMSS>.globals.sql.gz`` (``.age`` appended when encrypted)."""
    return (f"globals_{when.astimezone(UTC).strftime(TIMESTAMP_FORMAT)}{GLOBALS_SUFFIX}"
            + (ENCRYPTED_SUFFIX if encrypted else ""))


def wal_artifact_name(wal_file: str, compression: str, encrypted: bool) -> str:
    """The stored name of a WAL file (``000000010000000000000003.wal.zst``, ``.age`` when
    encrypted); ``wal_file`` is PostgreSQL's name (a segment, ``.partial`` or ``.history``)."""
    suffix = ".wal.zst" if compression == "zstd" else ".wal.gz"
    return wal_file + suffix + (ENCRYPTED_SUFFIX if encrypted else "")


def base_backup_name(when: datetime, compression: str, encrypted: bool = False) -> str:
    """``base_<YYYYmmdd_HHMMSS>.tar.gz`` (``.tar.zst`` with zstd; ``.age`` when encrypted)."""
    return (f"base_{when.astimezone(UTC).strftime(TIMESTAMP_FORMAT)}"
            f".tar.{'zst' if compression == 'zstd' else 'gz'}"
            + (ENCRYPTED_SUFFIX if encrypted else ""))


def manifest_name(name: str) -> str:
    return name + MANIFEST_SUFFIX


def partial_name(name: str) -> str:
    # Leading dot and a suffix no reader accepts: a partial file never looks like a backup.
    return f".{name}{PARTIAL_SUFFIX}"


def is_partial(name: str) -> bool:
    return name.startswith(".") and name.endswith(PARTIAL_SUFFIX)


# A backup run's reservation of its id in DB_BACKUP_DIR (LocalRepository.reserved_run_start),
# held while the run lasts. A leading dot and no ".partial": no listing takes it for a backup,
# and the start-up cleanup of partial files, which may run while another process's run is
# live, does not remove it (only a stale one, see LocalRepository.remove_leftovers).
RUN_RESERVATION = ".backupd-run-"


def run_reservation_name(rid: str) -> str:
    return f"{RUN_RESERVATION}{rid}"


@dataclass(frozen=True)
class ParsedName:
    name: str
    database: str
    encoded_database: str
    taken_at: datetime
    suffix: str
    kind: str = DUMP_KIND

    @property
    def is_globals(self) -> bool:
        return self.kind == GLOBALS_KIND

    @property
    def wal_file(self) -> str | None:
        """PostgreSQL's name of an archived WAL file (None for any other kind)."""
        return self.encoded_database if self.kind == WAL_KIND else None

    @property
    def encrypted(self) -> bool:
        return self.suffix.endswith(ENCRYPTED_SUFFIX)

    @property
    def backup_format(self) -> str:
        if self.suffix.startswith(".dump"):
            return "custom"
        return "directory" if self.suffix.startswith(DIRECTORY_SUFFIX) else "plain"

    @property
    def compression(self) -> str:
        if self.kind == WAL_KIND:
            return "zstd" if self.suffix.startswith(".wal.zst") else "gzip"
        if self.suffix.startswith(GLOBALS_SUFFIX):
            return "gzip"
        if self.suffix.startswith((".sql.zst", ".tar.zst")):
            return "zstd"
        return "gzip" if self.suffix.startswith((".sql.gz", ".tar.gz")) else "none"


def parse_backup_name(name: str) -> ParsedName | None:
    """Parse a backup file name (a dump, the globals, a base backup); ``None`` for anything
    that is not one of ours."""
    if "/" in name or not_utf8(name) is not None:
        return None  # backupd never writes a name that is not UTF-8
    wal_match = _WAL_RE.fullmatch(name)
    if wal_match is not None:
        return ParsedName(name=name, database=WAL_DATABASE, encoded_database=wal_match["wal"],
                          taken_at=WAL_TAKEN_AT, suffix=wal_match["suffix"], kind=WAL_KIND)
    for pattern, database, kind in ((_GLOBALS_RE, GLOBALS_DATABASE, GLOBALS_KIND),
                                    (_BASE_RE, BASE_DATABASE, BASE_KIND)):
        match = pattern.fullmatch(name)
        if match is not None:
            try:
                taken = datetime.strptime(match["ts"], TIMESTAMP_FORMAT).replace(tzinfo=UTC)
            except ValueError:
                return None
            return ParsedName(name=name, database=database, encoded_database=database,
                              taken_at=taken, suffix=match["suffix"], kind=kind)
    match = _NAME_RE.fullmatch(name)
    if match is None:
        return None
    try:
        taken_at = datetime.strptime(match["ts"], TIMESTAMP_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None
    return ParsedName(
        name=name,
        database=decode_database(match["db"]),
        encoded_database=match["db"],
        taken_at=taken_at,
        suffix=match["suffix"],
    )

"""The data directory a recover writes: refused when it holds anything, built in a staging
directory inside it, and made a data directory only by its very last step.

A server refuses a directory without ``PG_VERSION`` ("not a valid data directory"). So the
base backup and the WAL are unpacked into ``DIR/.backupd-recover-incomplete/``; at the end
every entry is renamed up into ``DIR``, ``PG_VERSION`` last. A recover killed or failed at
any point leaves no ``PG_VERSION`` in ``DIR`` and the staging directory as the mark of an
incomplete recover, which the next ``recover --force`` removes.

The directory is self-contained: the WAL it needs is copied into ``pg_wal_archive/`` inside
it and the ``restore_command`` reads only that copy (the server runs it in the data
directory), so starting it never needs backupd, the archive or S3.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from backupd.archive.recovery import RecoveryTarget
from backupd.errors import ConfigError, JobFailed, os_error_text
from backupd.storage.local import is_read_only_error

STAGING_NAME = ".backupd-recover-incomplete"
WAL_COPY_NAME = "pg_wal_archive"
# Files of the source server a recovered copy must not keep: they would make it a standby,
# start recovery twice, or claim a running postmaster.
_SOURCE_ONLY = ("postmaster.pid", "postmaster.opts", "standby.signal", "recovery.signal",
                "backup_manifest")
# A fresh filesystem's root holds this; it is no data.
_IGNORED = frozenset({"lost+found"})
RESTORE_COMMAND = f"cp {WAL_COPY_NAME}/%f %p"


# chown's ids are 32 bits; 4294967295 ((uid_t) -1) means "leave it as it is".
MAX_ID = 2**32 - 2


def parse_owner(text: str) -> tuple[int, int]:
    user, sep, group = text.partition(":")
    if not (sep and user.isdigit() and group.isdigit()):
        raise ConfigError(f"--owner: {text!r} is not UID:GID; give numbers, e.g. 999:999 "
                          "(the postgres user of the official image)")
    uid, gid = int(user), int(group)
    if uid > MAX_ID or gid > MAX_ID:
        raise ConfigError(f"--owner: {text!r} is out of range; give a UID and GID from 0 to "
                          f"{MAX_ID}, e.g. 999:999 (the postgres user of the official image)")
    return uid, gid


def _live_server(directory: Path) -> str | None:
    """Why ``directory`` looks like a running server's data directory (None: it does not)."""
    pid_file = directory / "postmaster.pid"
    if not pid_file.exists():
        return None
    try:
        first = pid_file.read_text().splitlines()[0].strip()
        pid = int(first)
    except (OSError, ValueError, IndexError):
        return "it has a postmaster.pid"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return f"it has a postmaster.pid (of process {pid}, not running here)"
    except PermissionError:
        pass
    return f"a postmaster (process {pid}) is running on it"


def check_target(directory: Path, *, force: bool,
                 owner: tuple[int, int] | None = None) -> None:
    """ConfigError (exit 2, nothing touched) unless ``directory`` is missing, empty, or, with
    ``force``, what an interrupted recover left; and backupd can make it (or write in it),
    make it 0700, and give what it makes to ``owner``, as :func:`complete` will. Another
    OSError (EIO, a full disk) is the environment's: JobFailed (exit 1) naming it."""
    try:
        _check_target(directory, force=force, owner=owner)
    except OSError as exc:
        where = exc.filename or directory
        if is_read_only_error(exc):
            raise ConfigError(
                f"--target-dir: backupd (uid {os.geteuid()}) cannot write in {where} "
                f"({exc.strerror}); give a directory it can create and write, or fix the "
                f"owner or permissions of {where}") from None
        raise JobFailed(f"--target-dir: {directory} cannot be used: "
                        f"{os_error_text(exc)}") from None


def _check_target(directory: Path, *, force: bool, owner: tuple[int, int] | None) -> None:
    if not directory.exists():
        if directory.is_symlink():
            # Recover makes a missing directory, but not through a link that points nowhere.
            points_to = directory.parent / os.readlink(directory)
            raise ConfigError(f"--target-dir: {directory} is a symlink to {points_to}, which "
                              "does not exist; create that directory, or give --target-dir a "
                              "directory (or a new path) instead of the link")
        if not directory.parent.is_dir():
            raise ConfigError(f"--target-dir: {directory.parent} does not exist; create it or "
                              "give another directory")
        # What staging does first; the empty directory goes again (a kill in between
        # leaves an empty directory, which a recover takes).
        _probe(directory.parent, directory, owner)
        return
    if not directory.is_dir():
        raise ConfigError(f"--target-dir: {directory} is not a directory")
    live = _live_server(directory)
    if live is not None:
        raise ConfigError(f"--target-dir: {directory} is a live server's data directory "
                          f"({live}); stop that server and move its data aside, or recover "
                          "into another directory")
    entries = sorted(p.name for p in directory.iterdir() if p.name not in _IGNORED)
    if STAGING_NAME in entries and not force:
        raise ConfigError(f"--target-dir: {directory} holds an incomplete recover "
                          f"({STAGING_NAME}); run again with --force to clean it up")
    if entries and STAGING_NAME not in entries:
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise ConfigError(f"--target-dir: {directory} is not empty ({shown}); recover only "
                          "into an empty directory (move its contents aside first)")
    _check_mode_can_be_set(directory)
    # Can a directory be made in it, as staging does? A kill in between leaves the staging
    # mark (the next recover says so; --force removes it and this probe's own name).
    _probe(directory, directory / (f"{STAGING_NAME}.probe" if STAGING_NAME in entries
                                   else STAGING_NAME), owner)


def _check_mode_can_be_set(directory: Path) -> None:
    """complete() makes ``directory`` 0700, as a data directory must be: only its owner (or
    root) may. Asked with a chmod to the mode it has, so nothing changes."""
    info = directory.stat()
    if info.st_uid == os.geteuid():
        return
    try:
        os.chmod(directory, stat.S_IMODE(info.st_mode))
    except PermissionError as exc:
        if exc.errno != errno.EPERM:
            raise
        raise ConfigError(
            f"--target-dir: {directory} is owned by uid {info.st_uid}, and backupd (uid "
            f"{os.geteuid()}) may not make it 0700 as a data directory must be; chown it to "
            f"uid {os.geteuid()}, or give a directory backupd can create") from None


def _probe(place: Path, probe: Path, owner: tuple[int, int] | None) -> None:
    """Make directory ``probe`` in ``place``, give it to ``owner`` (and back), and remove
    it, whatever the chown did; an OSError names ``place``, a chown refused names --owner
    first (also when the probe could not be removed after it: then the leftover probe
    too)."""
    try:
        if probe.name.endswith(".probe") and probe.is_dir() and not probe.is_symlink():
            probe.rmdir()  # this very probe, left by a check killed between its two steps
        probe.mkdir(mode=0o700)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(place)) from None
    refused: OSError | OverflowError | None = None
    left = ""
    try:
        if owner is not None:
            try:
                os.chown(probe, *owner)
                # Back again: in a sticky directory only its owner may remove it.
                os.chown(probe, os.geteuid(), os.getegid())
            except (OSError, OverflowError) as exc:
                refused = exc
    finally:
        try:
            probe.rmdir()
        except OSError as exc:
            # A probe that cannot be removed must not hide why --owner was refused (raised
            # below): that is the error to fix first. But it is said: left in an existing
            # directory, the probe is the incomplete-recover mark (the next recover would
            # ask for --force).
            if refused is None:
                raise OSError(exc.errno, exc.strerror, str(place)) from None
            left = (f"; and the probe {probe} could not be removed ({exc.strerror}); "
                    "remove it by hand")
    if refused is not None and owner is not None:
        raise ConfigError(f"{_owner_refused(place, owner, refused)}{left}")


def _owner_refused(place: Path, owner: tuple[int, int],
                   exc: OSError | OverflowError) -> ConfigError:
    """--owner's one line for a chown of the probe in ``place`` that failed with ``exc``."""
    given = f"{owner[0]}:{owner[1]}"
    if not isinstance(exc, OSError):
        return ConfigError(f"--owner: {given} is not a UID:GID chown takes ({exc}); give ids "
                           f"from 0 to {MAX_ID}")
    if exc.errno != errno.EPERM:
        # EINVAL: an id this system (its user namespace, in a container) does not map.
        return ConfigError(f"--owner: files in {place} cannot be given to {given} "
                           f"({exc.strerror}: an id this system, or the container's user "
                           "namespace, does not map); give ids it maps (999:999 in the "
                           "official image), or leave out --owner (the files are then "
                           "backupd's)")
    if _may_change_owners():
        # Root, and still refused: NFS with root_squash, vfat or CIFS.
        return ConfigError(f"--owner: the filesystem at {place} refuses ownership changes, "
                           f"even to backupd as root ({exc.strerror}); recover onto a "
                           "filesystem that keeps ownership, or leave out --owner (the files "
                           "are then backupd's)")
    return ConfigError(f"--owner: backupd (uid {os.geteuid()}) may not give files to {given} "
                       f"({exc.strerror}); run recover as root, or leave out --owner (the "
                       "files are then backupd's)")


def _may_change_owners() -> bool:
    """Whether backupd holds CAP_CHOWN (root, unless a container dropped it)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return os.geteuid() == 0
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) & 1)  # bit 0: CAP_CHOWN
    return os.geteuid() == 0


def write_failed(directory: Path, exc: OSError) -> JobFailed:
    """A recover into ``directory`` that failed on ``exc`` (a full disk, a read-only
    remount, ...), after :func:`staging` cleaned up: one line naming the file, and whether
    anything was left."""
    if exc.filename and not Path(str(exc.filename)).is_relative_to(directory):
        return JobFailed(f"recover into {directory} failed reading {os_error_text(exc)}; "
                         "the target directory is left as it was")
    text = f"writing the recovered data directory {directory} failed: {os_error_text(exc)}"
    try:
        left = (directory / STAGING_NAME).exists()
    except OSError:
        left = True
    if left:
        return JobFailed(f"{text}; the incomplete recover is left in it ({STAGING_NAME}): "
                         "remove it, or run again with --force once it can be written")
    return JobFailed(f"{text}; the target directory is left as it was")


def clean_incomplete(directory: Path) -> bool:
    """Remove what an interrupted recover left (only when its staging mark is there)."""
    if not (directory / STAGING_NAME).exists():
        return False
    for entry in directory.iterdir():
        if entry.name in _IGNORED:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    return True


@contextmanager
def staging(directory: Path) -> Iterator[Path]:
    """The staging directory inside ``directory`` (created 0700, as a data directory must be).
    Left behind on failure, as the incomplete mark; moved into place by :func:`complete`."""
    created = not directory.exists()
    directory.mkdir(mode=0o700, exist_ok=True)
    stage = directory / STAGING_NAME
    stage.mkdir(mode=0o700)
    try:
        yield stage
    except BaseException:
        # A failure before the last step began (a failed fetch, a target past the archive's
        # end, ...) leaves the directory as it was. Once entries were moved up, the staging
        # directory stays as the mark (as after a kill) for `--force` to clean.
        moved = [p for p in directory.iterdir() if p.name not in _IGNORED | {STAGING_NAME}]
        if not moved:
            shutil.rmtree(stage, ignore_errors=True)
            if created:
                shutil.rmtree(directory, ignore_errors=True)
        raise


def prepare(stage: Path, target: RecoveryTarget, note: str) -> None:
    """After the base backup is in ``stage``: drop the source server's files and write the
    recovery settings (appended to postgresql.auto.conf, read after postgresql.conf, so
    they win over any the base backup carries: every target setting is written)."""
    for name in _SOURCE_ONLY:
        (stage / name).unlink(missing_ok=True)
    if not (stage / "postgresql.conf").exists():
        # The source kept its configuration outside the data directory (Debian's
        # /etc/postgresql): the recovered server starts on defaults, which the user can edit.
        (stage / "postgresql.conf").write_text(
            "# written by backupd recover: the source server kept its configuration outside "
            "its data directory\n")
    if not (stage / "pg_hba.conf").exists():
        (stage / "pg_hba.conf").write_text(
            "# written by backupd recover: local connections only; edit before opening it up\n"
            "local all all peer\nhost all all 127.0.0.1/32 scram-sha-256\n"
            "host all all ::1/128 scram-sha-256\n")
    if not (stage / "pg_ident.conf").exists():
        (stage / "pg_ident.conf").write_text("")
    (stage / "pg_wal").mkdir(mode=0o700, exist_ok=True)
    (stage / "pg_wal" / "archive_status").mkdir(mode=0o700, exist_ok=True)
    settings = {"restore_command": RESTORE_COMMAND, **target.settings()}
    when = datetime.now(UTC).isoformat(timespec="seconds")
    lines = [f"\n# backupd recover {when}: {note}",
             "# Recovery settings: only read while recovering; reset them (ALTER SYSTEM RESET "
             "...) and remove pg_wal_archive/ after checking the recovered data."]
    lines += [f"{key} = '{_quote(value)}'" for key, value in settings.items()]
    with (stage / "postgresql.auto.conf").open("a") as auto:
        auto.write("\n".join(lines) + "\n")
    (stage / "recovery.signal").write_text("")


def _quote(value: str) -> str:
    return value.replace("'", "''")


def complete(directory: Path, stage: Path, owner: tuple[int, int] | None) -> None:
    """The last step: ownership, everything on disk, every entry renamed up into
    ``directory``, ``PG_VERSION`` last; then the staging mark goes."""
    if owner is not None:
        for path in _walk(stage):
            os.lchown(path, *owner)
        os.chown(directory, *owner)
    os.chmod(directory, 0o700)
    # One sync of the filesystem makes every file and directory entry durable before
    # PG_VERSION can vouch for them (far cheaper than an fsync per file).
    _sync_filesystem(directory)
    for entry in sorted(stage.iterdir()):
        if entry.name != "PG_VERSION":
            entry.rename(directory / entry.name)
    _fsync(directory)
    (stage / "PG_VERSION").rename(directory / "PG_VERSION")
    _fsync(directory)
    stage.rmdir()
    _fsync(directory)


def _walk(root: Path) -> Iterator[Path]:
    yield root
    for parent, dirs, files in os.walk(root):
        for name in dirs + files:
            yield Path(parent) / name


def _sync_filesystem(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if getattr(libc, "syncfs", None) is None or libc.syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

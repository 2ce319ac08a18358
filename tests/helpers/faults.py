"""Helpers for the fault-injection suite (tests/faults/): a slow pg_dump, waiting, leftovers."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from backupd.naming import parse_backup_name

from .pg import pg_binary

# --- PATH shims: a pg_dump that can be slowed down on demand ------------------------------------

_SLOW_PG_DUMP = '''#!{python}
"""pg_dump shim: runs the real pg_dump; while {flag} exists, passes its output on slowly."""
import os, signal, subprocess, sys, time
real = {real!r}
if any(a in ("--version", "-V") for a in sys.argv[1:]):
    os.execv(real, [real, *sys.argv[1:]])
child = subprocess.Popen([real, *sys.argv[1:]], stdout=subprocess.PIPE)
def stop(signum, frame):
    child.terminate()
    child.wait()
    sys.exit(128 + signum)
signal.signal(signal.SIGTERM, stop)
out = sys.stdout.buffer
while True:
    chunk = child.stdout.read1({chunk})
    if not chunk:
        break
    out.write(chunk)
    out.flush()
    if os.path.exists({flag!r}):
        time.sleep({delay})
sys.exit(child.wait())
'''


class SlowDump:
    """A PATH directory whose pg_dump throttles its output while ``slow`` is on."""

    def __init__(self, directory: Path, chunk: int = 65536, delay: float = 0.02) -> None:
        self.bin_dir = directory
        self.flag = directory / "slow.flag"
        directory.mkdir(parents=True, exist_ok=True)
        shim = directory / "pg_dump"
        shim.write_text(_SLOW_PG_DUMP.format(python=sys.executable, real=pg_binary("pg_dump"),
                                             flag=str(self.flag), chunk=chunk, delay=delay))
        shim.chmod(0o755)
        self.slow = True

    @property
    def slow(self) -> bool:
        return self.flag.exists()

    @slow.setter
    def slow(self, on: bool) -> None:
        if on:
            self.flag.touch()
        else:
            with contextlib.suppress(FileNotFoundError):
                self.flag.unlink()

    def path(self) -> str:
        """PATH for backupd with this shim first."""
        return f"{self.bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"


_STUBBORN_PG_DUMP = '''#!{python}
"""pg_dump shim deaf to SIGTERM (a wedged tool, a wrapper that traps it): the real pg_dump
dumps into a temporary file first (it would obey SIGTERM itself), then the shim ignores
SIGTERM, touches {writing} and passes the dump on slowly, then holds its output open for
{linger} s more (however small the dump)."""
import os, pathlib, signal, subprocess, sys, tempfile, time
real = {real!r}
if any(a in ("--version", "-V") for a in sys.argv[1:]):
    os.execv(real, [real, *sys.argv[1:]])
with tempfile.TemporaryFile() as held:
    code = subprocess.call([real, *sys.argv[1:]], stdout=held)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    pathlib.Path({writing!r}).touch()
    held.seek(0)
    out = sys.stdout.buffer
    while chunk := held.read({chunk}):
        out.write(chunk)
        out.flush()
        time.sleep({delay})
    time.sleep({linger})
sys.exit(code)
'''

_SLOW_VERSION_PG_DUMP = '''#!/bin/sh
# pg_dump shim: `--version` answers after {delay} s (touching {asked} first); the rest runs
# the real pg_dump.
case "$1" in
    --version|-V) touch '{asked}'; sleep {delay} ;;
esac
exec '{real}' "$@"
'''


def _shim(directory: Path, text: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    shim = directory / "pg_dump"
    shim.write_text(text)
    shim.chmod(0o755)


def _path_with(directory: Path) -> str:
    return f"{directory}:{os.environ.get('PATH', '/usr/bin:/bin')}"


class StubbornDump:
    """A PATH directory whose pg_dump ignores SIGTERM once it passes its output on (about
    ``chunk / delay`` bytes a second, then ``linger`` seconds of nothing before its end):
    only SIGKILL ends it sooner. ``writing`` exists from then."""

    def __init__(self, directory: Path, chunk: int = 4096, delay: float = 0.05,
                 linger: float = 300) -> None:
        self.bin_dir = directory
        self.writing = directory / "writing"
        _shim(directory, _STUBBORN_PG_DUMP.format(
            python=sys.executable, real=pg_binary("pg_dump"), writing=str(self.writing),
            chunk=chunk, delay=delay, linger=linger))

    def path(self) -> str:
        """PATH for backupd with this shim first."""
        return _path_with(self.bin_dir)


class SlowVersionDump:
    """A PATH directory whose pg_dump takes ``delay`` seconds to answer ``--version``: a job
    holds still in the check of pg_dump against the server. ``asked`` exists once asked."""

    def __init__(self, directory: Path, delay: float = 3.0) -> None:
        self.bin_dir = directory
        self.asked = directory / "asked"
        _shim(directory, _SLOW_VERSION_PG_DUMP.format(
            real=pg_binary("pg_dump"), asked=str(self.asked), delay=delay))

    def path(self) -> str:
        """PATH for backupd with this shim first."""
        return _path_with(self.bin_dir)


def wait_until(predicate: Callable[[], object], timeout: float = 30, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what or predicate}")


def partial_files(directory: Path) -> list[Path]:
    """Every temporary file backupd may leave (what a clean directory must not hold)."""
    if not directory.is_dir():
        return []
    return [p for p in directory.iterdir() if p.name.endswith(".partial")]


def dump_partials(directory: Path) -> list[Path]:
    """Temporary files of backups being written: what "a dump is running" looks like. Not the
    short-lived write probe that preparing the directory creates, which a wait could catch."""
    suffix = ".partial"
    return [p for p in partial_files(directory)
            if parse_backup_name(p.name[1:].removesuffix(suffix)) is not None]


def place_copy(source: Path, directory: Path, stamp: str) -> Path:
    """Copy backup ``source`` (and its manifest) into ``directory`` as if taken at ``stamp``
    (``YYYYmmdd_HHMMSS``): how tests make "old" backups without waiting for time to pass."""
    prefix, _date, _time_and_suffix = source.name.rsplit("_", 2)
    suffix = _time_and_suffix[6:]
    name = f"{prefix}_{stamp}{suffix}"
    target = directory / name
    shutil.copyfile(source, target)
    target.chmod(0o600)
    manifest = json.loads(Path(f"{source}.manifest.json").read_text())
    manifest_path = Path(f"{target}.manifest.json")
    manifest_path.write_text(json.dumps({**manifest, "name": name}))
    manifest_path.chmod(0o600)
    return target


# --- a small real filesystem (for ENOSPC and read-only directories) -----------------------------

@contextlib.contextmanager
def small_filesystems(root: Path) -> Iterator[Callable[..., Path]]:
    """``mount(size="1m", readonly=False, inodes=None)``: a freshly mounted tmpfs of that size
    under ``root`` (and, with ``inodes``, that many inodes, the root directory's included);
    every one unmounted on leaving.

    A real filesystem with a real limit: writes past it fail with ENOSPC in the kernel, exactly
    as on a full volume. Needs CAP_SYS_ADMIN (root here); skips with the reason otherwise.
    """
    mounted: list[Path] = []

    def mount(size: str = "1m", *, readonly: bool = False, inodes: int | None = None) -> Path:
        target = root / f"fs{len(mounted)}"
        target.mkdir()
        options = (f"size={size},mode=0700" + (",ro" if readonly else "")
                   + (f",nr_inodes={inodes}" if inodes is not None else ""))
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs CAP_SYS_ADMIN): {proc.stderr.strip()}")
        mounted.append(target)
        return target

    try:
        yield mount
    finally:
        for target in reversed(mounted):
            # Lazy unmount: a daemon killed by the test may still hold a file open a moment.
            subprocess.run(["umount", "-l", str(target)], capture_output=True, check=False)


def fill_up(directory: Path, inodes: int) -> None:
    """Leave no block and no inode free on the small filesystem at ``directory`` (mounted
    with ``inodes``): even an empty file cannot be created there. Asserts the kernel said
    ENOSPC for both."""
    with pytest.raises(OSError) as filled, (directory / "filler").open("wb", buffering=0) as out:
        while True:
            out.write(b"x" * 4096)
    assert filled.value.errno == errno.ENOSPC
    with pytest.raises(OSError) as no_inode:
        for index in range(inodes):
            (directory / f"empty{index}").touch()
    assert no_inode.value.errno == errno.ENOSPC


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """``small_fs(size="1m", readonly=False, inodes=None)``: small_filesystems under the
    test's tmp_path, each unmounted at teardown (skips without CAP_SYS_ADMIN). Registered
    for every test by tests/conftest.py."""
    with small_filesystems(tmp_path) as mount:
        yield mount

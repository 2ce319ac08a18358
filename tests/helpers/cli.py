"""Run backupd as a real subprocess, the way a container runtime would: explicit environment,
no terminal, exit codes and output observed from outside.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from . import leakcheck
from .pg import ServerAddress

# A name as argv or the environment brings bytes that are not UTF-8 (a Latin-1 terminal's
# "café"): Python decodes them with surrogateescape, so b"caf\xe9" arrives as "caf\udce9", and
# subprocess encodes it back to the same bytes for the child.
NOT_UTF8 = b"caf\xe9".decode("utf-8", "surrogateescape")
# How backupd shows it in its one error line.
NOT_UTF8_SHOWN = "'caf\\xe9'"

# The ``backupd_env`` fixture's type: keyword settings in, a child's environment out.
EnvFactory = Callable[..., dict[str, str]]


def build_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` over a minimal base, so a developer's POSTGRES_*/AWS_*/DB_BACKUP_* never leak in."""
    base = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        # Unbuffered so a daemon's log files are current while it runs, and on SIGKILL.
        "PYTHONUNBUFFERED": "1",
        # Records every child's argv for the secret-leak check (helpers/leakcheck.py).
        **leakcheck.hook_env(),
    }
    return {**base, **env}


def server_env(server: ServerAddress, database: str, directory: Path,
               **extra: str) -> dict[str, str]:
    """backupd's settings for backing up ``database`` on ``server`` (the shared one or a
    PrivateCluster's address) into ``directory``, logging JSON; ``extra`` adds or overrides.
    Given POSTGRES_PASSWORD_FILE, the password comes from that file alone."""
    env = {
        "POSTGRES_HOST": server.host,
        "POSTGRES_PORT": str(server.port),
        "POSTGRES_USER": server.user,
        "POSTGRES_DB": database,
        "DB_BACKUP_DIR": str(directory),
        "BACKUPD_LOG_FORMAT": "json",
    }
    if "POSTGRES_PASSWORD_FILE" not in extra:
        # Trust auth ignores it; set anyway since backupd may require a non-empty password.
        env["POSTGRES_PASSWORD"] = server.password or "postgres"
    return {**env, **extra}


def drill_server_env(server: ServerAddress, database: str, directory: Path,
                     drill_server: ServerAddress, **extra: str) -> dict[str, str]:
    """server_env's settings, with the drill's scratch databases made on ``drill_server``
    (DRILL_POSTGRES_HOST, _PORT and _PASSWORD) instead of beside the live ones."""
    return server_env(server, database, directory, DRILL_POSTGRES_HOST=drill_server.host,
                      DRILL_POSTGRES_PORT=str(drill_server.port),
                      DRILL_POSTGRES_PASSWORD=drill_server.password or "", **extra)


def as_a_user_sees_it(env: dict[str, str], **extra: str) -> dict[str, str]:
    """``env`` with ``extra``, logging to the console as a user sees it (not JSON)."""
    return {**{k: v for k, v in env.items() if k != "BACKUPD_LOG_FORMAT"}, **extra}


def one_error_line(stderr: str) -> str:
    """The one ``backupd: error:`` line that bad input gets (fails unless there is exactly one)."""
    lines = [line for line in stderr.splitlines() if line.startswith("backupd: error:")]
    assert len(lines) == 1, stderr
    return lines[0]


def not_utf8_failure(proc: subprocess.CompletedProcess[str]) -> str:
    """The one error line of a command that failed (exit code 1) on a name that is not UTF-8:
    failed cleanly (no internal error, no traceback), saying to rename the object."""
    said = proc.stdout + proc.stderr
    assert proc.returncode == 1, said
    assert "internal error" not in said and "Traceback" not in said, said
    [line] = [line for line in said.splitlines() if "not UTF-8" in line and "error" in line]
    assert "rename it" in line, line
    return line


def _command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "backupd", *args]


# Linux capabilities (linux/capability.h) and prctl's PR_CAPBSET_DROP.
_CAP_CHOWN, _CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH, _CAP_FOWNER = 0, 1, 2, 3
_PR_CAPBSET_DROP = 24
_FILE_OVERRIDE = (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH)
_OWNERSHIP_OVERRIDE = (_CAP_CHOWN, _CAP_FOWNER)


def _drop_capabilities(capabilities: tuple[int, ...]) -> None:
    """In the child before exec: as root, none of ``capabilities`` (out of the bounding set,
    so exec does not give them back). Without the file override a file's mode binds it as it
    binds any other user (a file chmod 0 cannot be read); without the ownership override it
    can neither give a file away (chown) nor chmod another user's. Raises if that cannot be
    done."""
    if os.geteuid() != 0:
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for capability in capabilities:
        if libc.prctl(_PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def run_backupd(
    args: list[str],
    env: dict[str, str],
    *,
    input: str | None = None,
    timeout: float = 120,
    cwd: str | os.PathLike[str] | None = None,
    memory_limit: int | None = None,
    stdout: int | IO[Any] | None = None,
    stderr: int | IO[Any] | None = None,
    obey_file_modes: bool = False,
    obey_ownership: bool = False,
    file_size_limit: int | None = None,
    own_user_namespace: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run one backupd command to completion; never raises on a non-zero exit code.

    ``memory_limit`` (bytes of address space) keeps a runaway read, such as of /dev/zero,
    from taking the machine's memory with it: backupd fails instead. ``stdout``: where its
    standard output goes instead of being captured (``proc.stdout`` is then empty).
    ``obey_file_modes``: file modes bind backupd even when the tests run as root, as they
    bind the image's uid 10001 (a file made unreadable with chmod 0 is unreadable to it).
    ``obey_ownership``: ownership binds it too, as it binds uid 10001 (no chown to another
    user, no chmod of another user's directory).
    ``file_size_limit`` (bytes, RLIMIT_FSIZE): a write past it fails with EFBIG ("File too
    large"; Python ignores SIGXFSZ), part way through a file as on a full disk (ENOSPC).
    ``own_user_namespace``: in a user namespace of its own where only root (uid and gid 0,
    the same outside) exists, as in a container whose namespace maps few ids: root there,
    and a chown to any other id fails with EINVAL (``unshare --map-root-user``)."""
    leakcheck.record_run(args, env)

    def before_exec() -> None:
        if memory_limit is not None:
            resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
        if file_size_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))
        dropped = (_FILE_OVERRIDE if obey_file_modes else ()) + (
            _OWNERSHIP_OVERRIDE if obey_ownership else ())
        if dropped:
            _drop_capabilities(dropped)

    namespace = ["unshare", "--user", "--map-root-user"] if own_user_namespace else []
    proc = subprocess.run(
        namespace + _command(args),
        env=build_env(env),
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE if stdout is None else stdout,
        stderr=subprocess.PIPE if stderr is None else stderr,
        text=True,
        timeout=timeout,
        cwd=cwd,
        check=False,
        preexec_fn=before_exec if memory_limit is not None or obey_file_modes
        or obey_ownership or file_size_limit is not None else None,
    )
    proc.stdout, proc.stderr = proc.stdout or "", proc.stderr or ""
    leakcheck.record_output(f"backupd {' '.join(args)}", proc.stdout + proc.stderr)
    return proc


class BackupdProcess(subprocess.Popen[str]):
    """A long-running backupd whose stdout/stderr go to files (pipes could fill and block it)."""

    stdout_path: Path
    stderr_path: Path

    def read_stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def read_stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


def start_backupd(
    args: list[str],
    env: dict[str, str],
    *,
    log_dir: str | os.PathLike[str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    stderr: int | None = None,
) -> BackupdProcess:
    """``stderr``: a descriptor for its standard error instead of ``stderr.log``."""
    out_dir = Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix="backupd-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    stdout_path, stderr_path = out_dir / "stdout.log", out_dir / "stderr.log"
    files: list[IO[Any]] = [stdout_path.open("w"), stderr_path.open("w")]
    try:
        proc = BackupdProcess(
            _command(args),
            env=build_env(env),
            stdin=subprocess.DEVNULL,
            stdout=files[0],
            stderr=files[1] if stderr is None else stderr,
            text=True,
            cwd=cwd,
            # Own process group: stop_backupd can kill stray children (pg_dump) without
            # touching pytest, and terminal signals (Ctrl-C) don't hit the daemon directly.
            start_new_session=True,
        )
    finally:
        for f in files:
            f.close()  # the child holds its own copies
    proc.stdout_path, proc.stderr_path = stdout_path, stderr_path
    leakcheck.record_run(args, env)
    leakcheck.record_output_file(stdout_path)
    leakcheck.record_output_file(stderr_path)
    return proc


def command_probe(body: str) -> str:
    """A script that registers one command running ``body`` and runs the console script's
    entry point on it, as `backupd probe` would run."""
    return ("import atexit, errno, os, signal, sys, time\n"
            "from backupd.cli import app, run\n"
            "from backupd.cli.app import bootstrap, execute, finish\n"
            "@app.command()\n"
            "def probe() -> None:\n"
            + "".join(f"    {line}\n" for line in body.splitlines())
            + "sys.argv = ['backupd', 'probe']\n"
            "run()\n")


def run_patched(prelude: str, argv: list[str], env: dict[str, str],
                **popen: Any) -> subprocess.CompletedProcess[str]:
    """A real command (``backupd *argv``) run by the console script's entry point, after
    ``prelude`` (which may patch a step of it: a timing injection), in ``build_env(env)``."""
    script = ("import os, signal, sys, time\n" + prelude + "\n"
              "from backupd.cli import run\n"
              f"sys.argv = {['backupd', *argv]!r}\n"
              "run()\n")
    return subprocess.run([sys.executable, "-c", script], env=build_env(env),
                          text=True, timeout=60, check=False, **popen)


def run_probe(body: str, env: dict[str, str], **popen: Any) -> subprocess.CompletedProcess[str]:
    """``command_probe(body)`` run to its end, in the environment ``build_env(env)``."""
    return subprocess.run([sys.executable, "-c", command_probe(body)], env=build_env(env),
                          text=True, timeout=60, check=False, **popen)


def stop_backupd(
    proc: subprocess.Popen[str],
    *,
    sig: int = signal.SIGTERM,
    timeout: float = 30,
    reap_group: bool = True,
) -> int:
    """Send ``sig`` to the daemon only (as an orchestrator would) and wait for it to exit.

    If it is still alive after ``timeout``, SIGKILL its whole process group and raise
    TimeoutError: a daemon that ignores SIGTERM is a bug. Returns the exit code. With
    ``reap_group`` leftover children (an orphaned pg_dump) are killed too; pass False to
    check ``group_alive`` yourself first.
    """
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        proc.wait()
        raise TimeoutError(f"backupd did not exit within {timeout}s of signal {sig}") from None
    finally:
        if reap_group:
            kill_group(proc)


def group_alive(proc: subprocess.Popen[str]) -> bool:
    """Whether any process (the daemon or a child it left behind) remains in its group."""
    try:
        os.killpg(proc.pid, 0)
    except ProcessLookupError:
        return False
    return True


def kill_group(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


# Runs argv[1:] and prints the peak resident set size (KiB) of it and of every process it
# waited for (RUSAGE_CHILDREN of this small parent: the test runner's own children never count).
_PEAK_RSS = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)")


def peak_rss_of_backupd(args: list[str], env: dict[str, str],
                        timeout: float = 300) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run one backupd command; (the finished process, its peak RSS in bytes: the largest
    of backupd and the tools it ran, pg_dump etc., which are far smaller)."""
    leakcheck.record_run(args, env)
    proc = subprocess.run([sys.executable, "-c", _PEAK_RSS, *_command(args)],
                          env=build_env(env), stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=timeout, check=False)
    leakcheck.record_output(f"backupd {' '.join(args)}", proc.stdout + proc.stderr)
    return proc, int(proc.stdout.strip().splitlines()[-1]) * 1024

"""The one child-process supervisor (backupd.pipeline.supervisor): children and their own
children die with backupd, even by SIGKILL; a cancel stops the whole process group; the
child's environment is minimal; a failure quotes the error line, not its DETAIL."""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers.faults import wait_until

from backupd.cancel import CancelToken
from backupd.pipeline import supervisor
from backupd.pipeline.reaper import REAPER
from backupd.pipeline.supervisor import Child, error_line


def alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _spawner_script(tmp_path: Path) -> str:
    """A child that leaves a grandchild (``sleep``) running in its process group; their pids
    land in files so the test can watch them."""
    return (f"echo $$ > '{tmp_path}/child'; sleep 300 & echo $! > '{tmp_path}/grandchild'; "
            "wait")


def _pids(tmp_path: Path) -> tuple[int, int]:
    wait_until(lambda: (tmp_path / "grandchild").is_file()
               and (tmp_path / "grandchild").read_text().strip(), 30, "the grandchild")
    return int((tmp_path / "child").read_text()), int((tmp_path / "grandchild").read_text())


def test_child_and_grandchild_die_when_backupd_is_sigkilled(tmp_path: Path) -> None:
    program = textwrap.dedent(f"""
        import time
        from backupd.pipeline.supervisor import Child
        Child(["sh", "-c", {_spawner_script(tmp_path)!r}]).start()
        time.sleep(300)
    """)
    backupd = subprocess.Popen([sys.executable, "-c", program], start_new_session=True)
    try:
        child, grandchild = _pids(tmp_path)
        assert alive(child) and alive(grandchild)
        backupd.kill()
        backupd.wait()
        wait_until(lambda: not alive(child), 10, "the child to die with its parent")
        wait_until(lambda: not alive(grandchild), 10, "the grandchild to die with backupd")
    finally:
        backupd.kill()
        backupd.wait()
        for name in ("child", "grandchild"):
            if (tmp_path / name).is_file() and alive(pid := int((tmp_path / name).read_text())):
                os.kill(pid, signal.SIGKILL)


def test_cancel_stops_the_whole_process_group(tmp_path: Path) -> None:
    cancel = CancelToken()
    with Child(["sh", "-c", _spawner_script(tmp_path)], cancel=cancel) as child:
        _, grandchild = _pids(tmp_path)
        cancel.cancel()
        code = child.wait(30)
    assert code == -signal.SIGTERM
    wait_until(lambda: not alive(grandchild), 10, "the grandchild to be stopped")


def test_a_cancelled_child_deaf_to_sigterm_is_killed_after_the_grace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancel may not wait on a child that ignores SIGTERM: its group gets SIGKILL after
    STOP_GRACE_SECONDS (shortened here), grandchildren too."""
    monkeypatch.setattr(supervisor, "STOP_GRACE_SECONDS", 1.0)
    cancel = CancelToken()
    script = "trap '' TERM; " + _spawner_script(tmp_path)
    with Child(["sh", "-c", script], cancel=cancel) as child:
        _, grandchild = _pids(tmp_path)
        began = time.monotonic()
        cancel.cancel()
        assert child.has_exited(15), "the child outlived its cancel"
        assert time.monotonic() - began >= 1.0, "killed before its grace was over"
        code = child.wait()
    assert code == -signal.SIGKILL
    wait_until(lambda: not alive(grandchild), 10, "the grandchild to be killed")


def test_leaving_the_block_by_an_exception_kills_the_group(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), Child(["sh", "-c", _spawner_script(tmp_path)]):
        _, grandchild = _pids(tmp_path)
        raise RuntimeError("our side of the pipe failed")
    wait_until(lambda: not alive(grandchild), 10, "the grandchild to be killed")


def test_child_environment_is_minimal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-for-children")
    monkeypatch.setenv("SLACK_WEBHOOK_URL", "https://hooks.example/secret")
    monkeypatch.setenv("PGSSLMODE", "require")
    with Child(["env"], env={"PGHOST": "db.example"}, stdout=subprocess.PIPE) as child:
        assert child.stdout is not None
        seen = dict(line.split("=", 1) for line in
                    child.stdout.read().decode().splitlines() if "=" in line)
        assert child.wait(30) == 0
    assert "AWS_SECRET_ACCESS_KEY" not in seen and "SLACK_WEBHOOK_URL" not in seen
    assert seen["PGHOST"] == "db.example" and seen["PGSSLMODE"] == "require"
    assert seen["PATH"] == os.environ["PATH"]


def test_stderr_tail_and_error_line_of_a_real_child() -> None:
    script = ("echo 'pg_dump: error: query failed: ERROR:  permission denied for table t' >&2; "
              "echo 'pg_dump: detail: Query was: LOCK TABLE public.error_log' >&2; exit 1")
    with Child(["sh", "-c", script]) as child:
        assert child.wait(30) == 1
    assert child.error_line == ("pg_dump: error: query failed: ERROR:  permission denied "
                                "for table t")
    assert child.stderr_tail.endswith("LOCK TABLE public.error_log")


@pytest.mark.parametrize(("lines", "expected"), [
    # pg_dump: the server's ERROR, not the DETAIL that follows (even if it says "error").
    (["pg_dump: error: query failed: ERROR:  permission denied for table error_log",
      "pg_dump: detail: Query was: LOCK TABLE public.error_log IN ACCESS SHARE MODE"], 0),
    # A connection failure: the line carrying FATAL.
    (["pg_dump: error: connection to server at \"h\" (1.2.3.4), port 5432 failed: "
      "FATAL:  password authentication failed for user \"u\""], 0),
    # psql: ERROR beats the DETAIL/CONTEXT lines, whatever they quote.
    (["psql:<stdin>:42: ERROR:  duplicate key value violates unique constraint \"p\"",
      "DETAIL:  Key (id)=(1) already exists; ERROR: in the data", "CONTEXT:  COPY t, line 1"],
     0),
    # pg_restore: the first error, not the command it echoes.
    (["pg_restore: error: could not execute query: ERROR:  relation \"t\" already exists",
      "Command was: CREATE TABLE public.t (id integer);"], 0),
    # A tool's own error without a server severity.
    (["pg_restore: error: input file does not appear to be a valid archive"], 0),
    # No error line: the last line that is not a DETAIL/HINT.
    (["something odd", "HINT:  try again"], 0),
])
def test_error_line_rule(lines: list[str], expected: int) -> None:
    assert error_line(lines) == lines[expected]


def test_error_line_of_nothing_is_empty() -> None:
    assert error_line([]) == ""


_VICTIM = textwrap.dedent("""
    import subprocess, sys
    from backupd.pipeline.reaper import REAPER
    from backupd.pipeline.supervisor import Child
    LAST_PID = "/proc/sys/kernel/ns_last_pid"
    with Child(["/bin/true"]) as started:  # the reaper is running from here on
        started.wait()
    try:
        Child([sys.argv[1]]).start()  # registers its group, then cannot execute
    except OSError:
        pass
    failed = int(open(LAST_PID).read())
    with open(LAST_PID, "w") as last:
        last.write(str(failed - 1))  # the next process gets the failed child's pid...
    leader = subprocess.Popen(["sleep", "300"], start_new_session=True,  # ...and group id
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert REAPER._process is not None
    print(REAPER._process.pid, leader.pid, failed, flush=True)
""")
_PID_ONE = textwrap.dedent("""
    import os, subprocess, sys
    victim = subprocess.run([sys.executable, "-c", sys.argv[1], sys.argv[2]],
                            stdout=subprocess.PIPE, text=True, check=True)
    reaper, leader, failed = map(int, victim.stdout.split())
    assert leader == failed, (leader, failed)
    while True:  # both are ours now (we are pid 1): wait for the reaper to have done its work
        pid, _ = os.waitpid(-1, 0)
        if pid == leader:
            print("killed", flush=True)
            sys.exit(0)
        if pid == reaper:
            break
    if os.waitpid(leader, os.WNOHANG)[0] != 0:
        print("killed", flush=True)
    else:
        print("alive", flush=True)
        os.kill(leader, 9)
""")


@pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/bin/unshare").exists(),
                    reason="needs root and unshare(1) for a pid namespace of its own")
def test_a_child_that_cannot_execute_leaves_no_group_for_the_reaper(tmp_path: Path) -> None:
    # In a pid namespace of its own, pids are handed out as the test says: the failed
    # child's pid goes to an unrelated process group leader, which must outlive backupd.
    cannot_execute = tmp_path / "not-a-program"
    cannot_execute.write_bytes(b"\x7fELF garbage")
    cannot_execute.chmod(0o755)
    proc = subprocess.run(
        ["/usr/bin/unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c",
         _PID_ONE, _VICTIM, str(cannot_execute)],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "alive"


def test_children_still_run_after_the_reaper_was_killed() -> None:
    # The reaper is a process like any other (the OOM killer, a careless `kill`): the next
    # child must neither die registering with a dead reaper nor go unprotected.
    with Child(["/bin/true"]) as first:
        assert first.wait() == 0
    reaper = REAPER._process
    assert reaper is not None
    os.kill(reaper.pid, signal.SIGKILL)
    wait_until(lambda: not alive(reaper.pid), 30, "the reaper to die")

    with Child(["/bin/true"]) as child:
        assert child.wait() == 0
    assert REAPER._process is not None and REAPER._process.pid != reaper.pid
    assert alive(REAPER._process.pid)


def test_replacing_a_dead_reaper_closes_its_pipe_once() -> None:
    # The dead reaper's pipe is closed when it is replaced; its number is then free for any
    # file or socket (often the new reaper's own pipe). Collecting the dead reaper's Popen
    # later must not close that number a second time, whatever holds it by then.
    with Child(["/bin/true"]) as first:
        assert first.wait() == 0
    reaper, old_fd = REAPER._process, REAPER._fd
    assert reaper is not None and old_fd is not None
    pid = reaper.pid
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not alive(pid), 30, "the reaper to die")
    with Child(["/bin/true"]) as child:
        assert child.wait() == 0
    reuser_r, reuser_w = os.pipe()  # takes the freed number if nothing else did
    try:
        held = {fd for fd in (old_fd, reuser_r, reuser_w, REAPER._fd) if _is_open(fd)}
        del reaper
        gc.collect()
        assert {fd for fd in held if _is_open(fd)} == held
    finally:
        for fd in (reuser_r, reuser_w):
            with contextlib.suppress(OSError):
                os.close(fd)


def _is_open(fd: int | None) -> bool:
    if fd is None:
        return False
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_a_tools_version_is_asked_once_until_the_binary_changes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A backup needed pg_dump's version up to three times (the compatibility check, the
    archive codec, the log line) and the daemon at every run: now once per binary, and again
    only once the file is replaced (a package upgrade)."""
    from backupd.pipeline.supervisor import tool_version

    calls = tmp_path / "calls"
    tool = tmp_path / "bin" / "pg_fakeversion"
    tool.parent.mkdir()
    script = f"#!/bin/sh\necho \"$@\" >> '{calls}'\necho 'pg_fakeversion (PostgreSQL) {{}}'\n"
    tool.write_text(script.format("16.4"))
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tool.parent}:{os.environ.get('PATH', '/usr/bin:/bin')}")

    assert tool_version("pg_fakeversion") == ("16.4", 16)
    assert tool_version("pg_fakeversion") == ("16.4", 16)
    assert calls.read_text().splitlines() == ["--version"]

    tool.write_text(script.format("17.2"))
    assert tool_version("pg_fakeversion") == ("17.2", 17)
    assert calls.read_text().splitlines() == ["--version", "--version"]


@pytest.mark.timeout(60)  # the old code waited forever: fail soon, not at the suite's 300 s
def test_a_tool_that_hangs_on_version_fails_in_one_line_and_is_killed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither the stall watchdog nor the job timeout reaches the version's child: before,
    a binary that never answered `--version` held the job forever."""
    from backupd.errors import ConfigError
    from backupd.pipeline import supervisor

    tool = tmp_path / "bin" / "pg_hangs"
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\nsleep 3000\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tool.parent}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    monkeypatch.setattr(supervisor, "VERSION_TIMEOUT_SECONDS", 0.5)

    with pytest.raises(ConfigError, match=r"pg_hangs: `.*pg_hangs --version` did not answer "
                                          r"within 0 s"):
        supervisor.tool_version("pg_hangs")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # its group was killed: the shell and its sleep
        alive = subprocess.run(["pgrep", "-f", str(tool)], capture_output=True).returncode == 0
        if not alive:
            break
        time.sleep(0.05)
    assert not alive

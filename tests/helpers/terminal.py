"""Run backupd on a real pseudo-terminal (the stdlib pty module), as a person at a terminal
would: stdin, stdout and stderr are the terminal, prompts are answered when they appear, and
everything the terminal received is returned (escape sequences included)."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time

from . import leakcheck
from .cli import build_env

COLUMNS, ROWS = 200, 50
# Typed as an answer: the terminal's interrupt character. The line discipline turns it into
# SIGINT to the foreground process group, as Ctrl-C at a person's terminal does.
CTRL_C = "\x03"
ESCAPES = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


def run_in_terminal(args: list[str], env: dict[str, str], *,
                    answers: dict[str, str] | None = None,
                    timeout: float = 180) -> tuple[int, str]:
    """(exit code, the terminal's transcript). ``answers``: a prompt's text -> the line typed
    once it has appeared (``CTRL_C``: that key alone, no line)."""
    pending = dict(answers or {})
    main, child_side = pty.openpty()
    fcntl.ioctl(child_side, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
    leakcheck.record_run(args, env)
    proc = subprocess.Popen(
        [sys.executable, "-m", "backupd", *args],
        env=build_env({"TERM": "xterm-256color", "COLUMNS": str(COLUMNS), **env}),
        stdin=child_side, stdout=child_side, stderr=child_side, start_new_session=True,
        preexec_fn=_take_as_controlling_terminal)
    os.close(child_side)
    received = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 0.2)
            if ready:
                try:
                    data = os.read(main, 65536)
                except OSError:  # EIO: the terminal's last writer has gone
                    break
                if not data:
                    break
                received += data
                for prompt in list(pending):
                    if prompt.encode() in plain(received).encode():
                        typed = pending.pop(prompt)
                        os.write(main, typed.encode() + (b"" if typed == CTRL_C else b"\n"))
            elif proc.poll() is not None:
                break
        else:
            proc.kill()
            raise TimeoutError(f"backupd {' '.join(args)} still running after {timeout}s; "
                               f"the terminal shows: {plain(received)[-2000:]}")
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(main)
    text = received.decode(errors="replace")
    leakcheck.record_output(f"backupd {' '.join(args)} (terminal)", text)
    return code, text


def _take_as_controlling_terminal() -> None:
    # In the child, after setsid: without a controlling terminal the interrupt character
    # signals nobody, where a person's Ctrl-C interrupts the command.
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def plain(transcript: bytes | bytearray | str) -> str:
    """The transcript without terminal escape sequences and carriage returns."""
    data = transcript.encode() if isinstance(transcript, str) else bytes(transcript)
    return ESCAPES.sub(b"", data).decode(errors="replace")

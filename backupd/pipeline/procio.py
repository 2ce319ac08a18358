"""What a process group has read and written: Linux's ``/proc/<pid>/io`` counters.

For children that move their data themselves (pg_restore reading its file): the stall
watchdog sees their movement through ``Child.io_bytes``."""

from __future__ import annotations

import os


def group_io_bytes(pgid: int) -> int:
    """rchar + wchar of every process in group ``pgid`` (0 where /proc cannot tell). Files,
    pipes and sockets alike; a process that has exited takes its counts with it."""
    try:
        pids = [name for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return 0
    return sum(_io_bytes_in_group(pid, pgid) for pid in pids)


def _io_bytes_in_group(pid: str, pgid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # After the command name (which may hold spaces and parentheses): state, ppid, pgrp.
            if int(stat.read().rsplit(b")", 1)[1].split()[2]) != pgid:
                return 0
        total = 0
        with open(f"/proc/{pid}/io", "rb") as io:
            for line in io:
                if line.startswith((b"rchar:", b"wchar:")):
                    total += int(line.split()[1])
        return total
    except (OSError, ValueError, IndexError):
        return 0

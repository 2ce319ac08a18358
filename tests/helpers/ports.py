"""Ports for the servers the tests start themselves (private clusters, a daemon's health
server, moto, the HTTP receiver), safe when several pytest-xdist workers run at once.

A port the OS hands out for ``bind(("", 0))`` lies in the kernel's ephemeral range, the same
range every outgoing connection on the machine takes its local port from: between the choice
and the server's bind (initdb runs in between), a psql or HTTP client of any worker could take
it, and a server restarted on "its" port could find it gone. So ports come from below that
range, and each xdist worker has a slice of its own: two workers never choose the same port.
"""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path

FIRST_PORT = 20000
PORTS_PER_WORKER = 500
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_handed_out: set[int] = set()


def free_port() -> int:
    """A port nothing listens on now, in this worker's slice below the ephemeral range (the
    OS's choice when the slice does not fit there)."""
    first = FIRST_PORT + _worker_index() * PORTS_PER_WORKER
    if first + PORTS_PER_WORKER > _first_ephemeral_port():
        return _os_choice()
    slice_ = [port for port in range(first, first + PORTS_PER_WORKER) if port not in _handed_out]
    random.shuffle(slice_)  # another session on the machine (same slices) rarely picks the same
    for port in slice_:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    return _os_choice()


def _worker_index() -> int:
    # pytest-xdist names its workers gw0, gw1, ...; without xdist there is one process.
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    return int(worker) if worker.isdigit() else 0


def _first_ephemeral_port() -> int:
    try:
        return int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _os_choice() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])

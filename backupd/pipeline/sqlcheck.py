"""Is this plain SQL a complete pg_dump (or, for the cluster's globals artifact, a complete
``pg_dumpall --globals-only``)? Looks at the very start and the very end only.

Text inside the data (a row that happens to contain the closing line) never counts:
the closing line must be the last thing pg_dump wrote.
"""

from __future__ import annotations

HEADER = b"--\n-- PostgreSQL database dump\n--\n"
FOOTER = b"--\n-- PostgreSQL database dump complete\n--"
# pg_dumpall's own first and last lines (the globals artifact); it writes its
# "\unrestrict" before the closing line.
CLUSTER_HEADER = b"--\n-- PostgreSQL database cluster dump\n--\n"
CLUSTER_FOOTER = b"--\n-- PostgreSQL database cluster dump complete\n--"
# pg_dump 17.6/16.10/15.14 and later end with "\unrestrict <key>" after the footer.
_UNRESTRICT = b"\\unrestrict "

HEAD_BYTES = max(len(HEADER), len(CLUSTER_HEADER))
TAIL_BYTES = 4096


def header_problem(head: bytes, *, cluster: bool = False) -> str | None:
    """``cluster``: pg_dumpall's header is expected instead of pg_dump's (never both: a
    cluster dump fed to a database restore would run its CREATE ROLE or \\connect)."""
    if not head:
        return "the dump is empty"
    if cluster:
        return None if head.startswith(CLUSTER_HEADER) else (
            "the content does not start with pg_dumpall's header (not a globals dump)")
    if not head.startswith(HEADER[: len(head)]) or len(head) < len(HEADER):
        return "the content does not start with pg_dump's header (not a pg_dump plain SQL file)"
    return None


def footer_problem(tail: bytes, *, cluster: bool = False) -> str | None:
    end = tail.rstrip()
    if cluster:
        return None if end.endswith(CLUSTER_FOOTER) else (
            "the globals dump is incomplete: it does not end with pg_dumpall's closing line "
            "'-- PostgreSQL database cluster dump complete'")
    last_newline = end.rfind(b"\n")
    if end[last_newline + 1 :].startswith(_UNRESTRICT):
        end = end[: last_newline + 1].rstrip()
    if not end.endswith(FOOTER):
        return ("the dump is incomplete: it does not end with pg_dump's closing line "
                "'-- PostgreSQL database dump complete'")
    return None


class HeadTail:
    """Keeps the first and last bytes of a stream, for the checks above."""

    def __init__(self) -> None:
        self.head = b""
        self.tail = b""
        self.total = 0

    def feed(self, chunk: bytes) -> None:
        if len(self.head) < HEAD_BYTES:
            self.head += chunk[: HEAD_BYTES - len(self.head)]
        self.tail = (self.tail + chunk[-TAIL_BYTES:])[-TAIL_BYTES:]
        self.total += len(chunk)

    def feed_part(self, head: bytes, tail: bytes, size: int) -> None:
        """Account for the next ``size`` bytes of the stream, known only by their first and
        last bytes (each the whole part when it is shorter than HEAD_BYTES/TAIL_BYTES):
        parts inflated in parallel are summed up in order without keeping their content."""
        if len(self.head) < HEAD_BYTES:
            self.head += head[: HEAD_BYTES - len(self.head)]
        self.tail = (self.tail + tail[-TAIL_BYTES:])[-TAIL_BYTES:]
        self.total += size

    def problem(self, *, cluster: bool = False) -> str | None:
        return (header_problem(self.head, cluster=cluster)
                or footer_problem(self.tail, cluster=cluster))
